//! The client against a scripted in-test server: answers split across writes, stale
//! ids, errors, silence, early close, and a socket that appears late.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A private directory for one test's socket, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let unique = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("peerless-rpc-client-{test}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("rpc.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the server does after reading one request. `{id}` in a chunk becomes the
/// request's id.
enum Answer {
    Chunks(Vec<&'static str>),
    Silence(Duration),
    Close,
}

/// Accepts one connection and follows `script`, one answer per request; returns the raw
/// text of every request it read.
fn serve(listener: UnixListener, script: Vec<Answer>) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = Vec::new();
        let mut requests = Vec::new();
        for answer in script {
            let (request, used) = loop {
                if let Some(found) = next_value(&buffer).unwrap() {
                    break found;
                }
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).unwrap();
                assert!(read > 0, "the client closed early");
                buffer.extend_from_slice(&chunk[..read]);
            };
            requests.push(String::from_utf8(buffer.drain(..used).collect()).unwrap());
            let id = request["id"].to_string();
            match answer {
                Answer::Chunks(chunks) => {
                    for chunk in chunks {
                        stream.write_all(chunk.replace("{id}", &id).as_bytes()).unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Answer::Silence(how_long) => std::thread::sleep(how_long),
                Answer::Close => return requests,
            }
        }
        requests
    })
}

fn options(timeout: Duration) -> ClientOptions {
    ClientOptions { timeout, ..ClientOptions::default() }
}

fn connect(path: &Path) -> RpcClient {
    RpcClient::connect(&Address::Unix(path.to_path_buf()), options(Duration::from_secs(10))).unwrap()
}

#[test]
fn requests_are_encoded_as_rpc_py_encodes_them() {
    let bare = "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get_version\",\n  \"id\": 1\n}";
    assert_eq!(encode_request(1, "spdk_get_version", None), bare);
    assert_eq!(encode_request(1, "spdk_get_version", Some(&json!({}))), bare, "empty params are left out");
    let with_params = encode_request(7, "log_set_flag", Some(&json!({"flag": "nvmf"})));
    assert_eq!(
        with_params,
        "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"log_set_flag\",\n  \"id\": 7,\n  \"params\": {\n    \"flag\": \"nvmf\"\n  }\n}"
    );
}

#[test]
fn a_response_split_across_writes_and_after_a_stale_one() {
    let scratch = Scratch::new("split");
    let server = serve(
        UnixListener::bind(scratch.socket()).unwrap(),
        vec![
            Answer::Chunks(vec![
                "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":\"stale\"}\n{\"jsonrpc\":",
                "\"2.0\",\"id\":{id},\"res",
                "ult\":{\"version\":\"SPDK v25.05\"}}",
                "\n",
            ]),
            Answer::Chunks(vec!["  {\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":[\"a\",", "\"b\"]}"]),
        ],
    );
    let mut client = connect(&scratch.socket());
    assert_eq!(client.call("spdk_get_version", None).unwrap(), json!({"version": "SPDK v25.05"}));
    assert_eq!(client.call("rpc_get_methods", Some(json!({"current": true}))).unwrap(), json!(["a", "b"]));
    let requests = server.join().unwrap();
    assert!(!requests[0].contains("params"), "{}", requests[0]);
    assert!(requests[1].ends_with('}'), "no terminator after a request: {:?}", requests[1]);
    assert!(requests[1].contains("\"current\": true"), "{}", requests[1]);
}

#[test]
fn an_error_response_keeps_code_message_and_object() {
    let scratch = Scratch::new("error");
    let server = serve(
        UnixListener::bind(scratch.socket()).unwrap(),
        vec![Answer::Chunks(vec![
            "{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{\"code\":-32601,",
            "\"message\":\"Method not found\"}}\n",
        ])],
    );
    let mut client = connect(&scratch.socket());
    match client.call("no_such_method", Some(json!({"x": 1}))) {
        Err(ClientError::Rpc(failure)) => {
            assert_eq!(
                ClientError::Rpc(failure.clone()).to_string(),
                "no_such_method: JSON-RPC error -32601: Method not found"
            );
            let RpcFailure { method, id, params, code, message, error } = *failure;
            assert_eq!(
                (method.as_str(), id, code, message.as_str()),
                ("no_such_method", 1, -32601, "Method not found")
            );
            assert_eq!(params, Some(json!({"x": 1})));
            assert_eq!(error, json!({"code": -32601, "message": "Method not found"}));
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn a_silent_server_times_out() {
    let scratch = Scratch::new("timeout");
    let server = serve(UnixListener::bind(scratch.socket()).unwrap(), vec![Answer::Silence(Duration::from_secs(2))]);
    let address = Address::Unix(scratch.socket());
    let mut client = RpcClient::connect(&address, options(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let err = client.call("framework_wait_init", None).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "waited {waited:?}");
    assert!(err.to_string().contains("framework_wait_init: no response within 300ms"), "{err}");
    server.join().unwrap();
}

#[test]
fn a_close_before_the_answer_is_reported() {
    let scratch = Scratch::new("close");
    let server = serve(UnixListener::bind(scratch.socket()).unwrap(), vec![Answer::Close]);
    let mut client = connect(&scratch.socket());
    let err = client.call("spdk_kill_instance", Some(json!({"sig_name": "SIGTERM"}))).unwrap_err();
    assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
    server.join().unwrap();
}

#[test]
fn garbage_from_the_server_is_an_invalid_response() {
    let scratch = Scratch::new("garbage");
    let server = serve(UnixListener::bind(scratch.socket()).unwrap(), vec![Answer::Chunks(vec!["{\"id\": oops}"])]);
    let mut client = connect(&scratch.socket());
    let err = client.call("spdk_get_version", None).unwrap_err();
    assert!(matches!(err, ClientError::InvalidResponse { .. }), "{err:?}");
    server.join().unwrap();
}

#[test]
fn connect_failures_say_what_to_do() {
    let scratch = Scratch::new("noserver");
    let address = Address::Unix(scratch.socket());
    let err = RpcClient::connect(&address, ClientOptions::default()).err().expect("nothing listens there");
    let expected = format!(
        "cannot connect to {}: No such file or directory; is peerless-tgt running? (-s sets the socket)",
        scratch.socket().display()
    );
    assert_eq!(err.to_string(), expected);
}

#[test]
fn connect_retries_wait_for_a_late_socket() {
    let scratch = Scratch::new("retry");
    let path = scratch.socket();
    let late = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let listener = UnixListener::bind(&path).unwrap();
            serve(listener, vec![Answer::Chunks(vec!["{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":true}"])])
                .join()
                .unwrap()
        })
    };
    let retries = ClientOptions { conn_retries: 25, ..options(Duration::from_secs(10)) };
    let started = Instant::now();
    let mut client = RpcClient::connect(&Address::Unix(path), retries).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400), "connected before the socket existed?");
    assert_eq!(client.call("framework_wait_init", None).unwrap(), json!(true));
    late.join().unwrap();
}

#[test]
fn addresses_follow_rpc_py() {
    assert_eq!(Address::parse("/var/tmp/spdk.sock", 5260), Address::Unix("/var/tmp/spdk.sock".into()));
    assert_eq!(Address::parse("127.0.0.1", 5260), Address::Tcp("127.0.0.1:5260".parse().unwrap()));
    assert_eq!(Address::parse("::1", 4444), Address::Tcp("[::1]:4444".parse().unwrap()));
    assert_eq!(Address::parse("10.0.0.1:7000", 5260), Address::Tcp("10.0.0.1:7000".parse().unwrap()));
    assert_eq!(Address::parse("rpc.sock", 5260), Address::Unix("rpc.sock".into()));
}

#[test]
fn tcp_works_like_unix() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = Vec::new();
        while next_value(&buffer).unwrap().is_none() {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).unwrap();
            buffer.extend_from_slice(&chunk[..read]);
        }
        stream.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"NOTICE\"}").unwrap();
    });
    let mut client = RpcClient::connect(&Address::parse("127.0.0.1", port), ClientOptions::default()).unwrap();
    assert_eq!(client.call("log_get_level", None).unwrap(), Value::String("NOTICE".into()));
    server.join().unwrap();
}

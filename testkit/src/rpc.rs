//! A raw JSON-RPC 2.0 client over the target's Unix socket. It writes requests exactly
//! as SPDK's `scripts/rpc.py` does (pretty-printed with indent 2, no terminator,
//! `params` only when given) and reads answers as rpc.py does (one JSON value after
//! another, whitespace between them skipped), so tests see what rpc.py users see. It
//! also sends raw bytes, for tests of framing, garbage and limits.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::WAIT;

/// How much one read from the socket takes at most.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    buffer: Vec<u8>,
    next_id: u64,
}

impl Client {
    /// Connects to the RPC socket at `path`; reads and writes give up after [`WAIT`].
    #[track_caller]
    pub fn connect(path: &Path) -> Client {
        let stream = match UnixStream::connect(path) {
            Ok(stream) => stream,
            Err(err) => panic!("cannot connect to the RPC socket {}: {err}", path.display()),
        };
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout on a Unix socket");
        stream.set_write_timeout(Some(WAIT)).expect("a write timeout on a Unix socket");
        Client { stream, socket: path.to_path_buf(), buffer: Vec::new(), next_id: 1 }
    }

    /// Writes raw bytes: several requests, partial ones, garbage.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(err) = self.try_send_raw(bytes) {
            panic!("writing to {}: {err}", self.socket.display());
        }
    }

    /// Writes raw bytes where the server may legitimately close the connection first
    /// (an oversized request, a refused connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next request as rpc.py encodes it: indent=2, no trailing newline, `params`
    /// only if given. Returns its id and bytes; nothing is sent.
    pub fn request_bytes(&mut self, method: &str, params: Option<Value>) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(params) = params {
            request["params"] = params;
        }
        (id, serde_json::to_vec_pretty(&request).expect("a JSON value serializes"))
    }

    /// Reads one complete JSON value from the stream, or `None` once the server has
    /// closed the connection.
    #[track_caller]
    pub fn read_value(&mut self) -> Option<Value> {
        loop {
            let start = self.buffer.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(self.buffer.len());
            let mut values = serde_json::Deserializer::from_slice(&self.buffer[start..]).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = start + values.byte_offset();
                    self.buffer.drain(..used);
                    return Some(value);
                }
                Some(Err(err)) if !err.is_eof() => panic!("the server sent invalid JSON: {err}"),
                _ => {}
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                // A connection the server refused outright may reset instead of closing.
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return None,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no answer on {} within {WAIT:?}", self.socket.display())
                }
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(err) => panic!("reading an answer from {}: {err}", self.socket.display()),
            }
        }
    }

    /// Calls a method and returns the whole response object.
    #[track_caller]
    pub fn call_raw(&mut self, method: &str, params: Option<Value>) -> Value {
        let (id, bytes) = self.request_bytes(method, params);
        self.send_raw(&bytes);
        let Some(response) = self.read_value() else { panic!("{method}: connection closed before the answer") };
        assert_eq!(response["id"], json!(id), "{method}: the answer is for another request: {response}");
        response
    }

    /// Calls a method that must succeed; returns its result.
    #[track_caller]
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Value {
        let response = self.call_raw(method, params.clone());
        match response.get("result") {
            Some(result) => result.clone(),
            None => panic!("{method} {params:?} failed: {response}"),
        }
    }

    /// Calls a method that must fail; returns the error's (code, message).
    #[track_caller]
    pub fn call_err(&mut self, method: &str, params: Option<Value>) -> (i64, String) {
        let response = self.call_raw(method, params.clone());
        let Some(error) = response.get("error") else { panic!("{method} {params:?} should fail: {response}") };
        match (error["code"].as_i64(), error["message"].as_str()) {
            (Some(code), Some(message)) => (code, message.to_string()),
            _ => panic!("{method}: an error without a code and a message: {response}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::Scratch;

    /// A client connected to a listener the test plays the server on.
    fn pair(dir: &Scratch) -> (Client, UnixStream) {
        let path = dir.join("rpc.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = Client::connect(&path);
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn requests_are_encoded_as_rpc_py_encodes_them() {
        let dir = Scratch::new("rpc-encode");
        let (mut client, _server) = pair(&dir);
        let (id, bytes) = client.request_bytes("spdk_get_version", None);
        assert_eq!(id, 1);
        // json.dumps({"jsonrpc": "2.0", "method": ..., "id": 1}, indent=2)
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get_version\",\n  \"id\": 1\n}"
        );
        let (id, bytes) = client.request_bytes("log_set_flag", Some(json!({"flag": "bdev"})));
        assert_eq!(id, 2);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\"params\": {\n    \"flag\": \"bdev\"\n  }\n}"), "{text}");
    }

    #[test]
    fn answers_split_and_joined_anyhow_are_read_one_value_at_a_time() {
        let dir = Scratch::new("rpc-read");
        let (mut client, mut server) = pair(&dir);
        server.write_all(b"  {\"id\": 1, \"res").unwrap();
        server.write_all(b"ult\": true}\n{\"id\": 2}[1,").unwrap();
        server.write_all(b"2]").unwrap();
        assert_eq!(client.read_value(), Some(json!({"id": 1, "result": true})));
        assert_eq!(client.read_value(), Some(json!({"id": 2})));
        assert_eq!(client.read_value(), Some(json!([1, 2])));
        drop(server);
        assert_eq!(client.read_value(), None, "a closed connection reads as None");
    }
}

//! A real `peerless-tgt` process for end-to-end tests, and a raw JSON-RPC client that
//! writes what SPDK's rpc.py writes: pretty-printed requests with no terminator.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(20);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory for one test's socket and files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "peerless-{}-{}-{}",
        test,
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Target {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Target {
    /// Starts the target with `args` (plus `-r <socket>`) and waits for its socket.
    pub fn start(test: &str, args: &[&str]) -> Target {
        let dir = scratch_dir(test);
        let socket = dir.join("rpc.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_peerless-tgt"))
            .args(args)
            .arg("-r")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerless-tgt");
        let mut target = Target { child, socket, dir };
        target.wait_for_socket();
        if !args.contains(&"--wait-for-rpc") {
            // As SPDK's scripts do: the socket opens before init and config are done.
            assert_eq!(target.client().call("framework_wait_init", None), json!(true));
        }
        target
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("peerless-tgt exited early with {status}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("peerless-tgt did not open {}", self.socket.display());
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "peerless-tgt did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Client {
    pub stream: UnixStream,
    buffer: Vec<u8>,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).expect("connect to the RPC socket");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client { stream, buffer: Vec::new(), next_id: 1 }
    }

    /// Writes raw bytes: several requests, partial ones, garbage.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The request as rpc.py encodes it: indent=2, no trailing newline, params only if
    /// non-empty.
    pub fn request_bytes(&mut self, method: &str, params: Option<Value>) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(params) = params {
            request["params"] = params;
        }
        (id, serde_json::to_vec_pretty(&request).unwrap())
    }

    /// Reads one complete JSON value from the stream.
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
                Some(Err(err)) if !err.is_eof() => panic!("server sent invalid JSON: {err}"),
                _ => {}
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                // A connection the server refused outright may reset instead of closing.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(err) => panic!("reading a response: {err}"),
            }
        }
    }

    /// Calls a method and returns the whole response object.
    pub fn call_raw(&mut self, method: &str, params: Option<Value>) -> Value {
        let (id, bytes) = self.request_bytes(method, params);
        self.send_raw(&bytes);
        let response = self.read_value().expect("connection closed before the response");
        assert_eq!(response["id"], json!(id), "response for another request: {response}");
        response
    }

    pub fn call(&mut self, method: &str, params: Option<Value>) -> Value {
        let response = self.call_raw(method, params);
        match response.get("result") {
            Some(result) => result.clone(),
            None => panic!("{method} failed: {response}"),
        }
    }

    /// Calls a method that must fail; returns (code, message).
    pub fn call_err(&mut self, method: &str, params: Option<Value>) -> (i64, String) {
        let response = self.call_raw(method, params);
        let error = response.get("error").unwrap_or_else(|| panic!("{method} should fail: {response}"));
        (error["code"].as_i64().unwrap(), error["message"].as_str().unwrap().to_string())
    }
}

//! A blocking JSON-RPC 2.0 client that talks to a target the way SPDK's `rpc.py` does:
//! requests pretty-printed with indent 2 and no terminator, `params` left
//! out when empty, responses stream-parsed without framing (one may arrive in many
//! reads, several in one), matched to their request by id.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// SPDK's default socket (`SPDK_DEFAULT_RPC_ADDR`), as rpc.py's `-s`.
pub const DEFAULT_SERVER: &str = "/var/tmp/spdk.sock";
/// rpc.py's `-p` default, used only when `-s` is an IP address.
pub const DEFAULT_PORT: u16 = 5260;
/// rpc.py's `-t` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// rpc.py sleeps this long between connect attempts (`-r`).
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// A response larger than this is refused rather than buffered without bound; SPDK's
/// server caps its own response buffer at 32 MiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Where the target listens: a Unix socket path, or a TCP address when `-s` is an IP
/// address (with `-p` for the port) or an `ip:port` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Address {
    /// Reads `-s`/`-p` as rpc.py does: an IP address means TCP on `port`; anything else
    /// is a Unix socket path. `ip:port` and `[ipv6]:port` carry their own port.
    pub fn parse(server: &str, port: u16) -> Address {
        if let Ok(ip) = server.parse::<IpAddr>() {
            return Address::Tcp(SocketAddr::new(ip, port));
        }
        if let Ok(addr) = server.parse::<SocketAddr>() {
            return Address::Tcp(addr);
        }
        Address::Unix(PathBuf::from(server))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "{}", path.display()),
            Address::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {reason}; is peerless-tgt running? (-s sets the socket)")]
    Connect { address: String, reason: String },
    /// The server answered with a JSON-RPC error object (boxed: it is large, and the
    /// common result is Ok).
    #[error("{}: JSON-RPC error {}: {}", .0.method, .0.code, .0.message)]
    Rpc(Box<RpcFailure>),
    #[error("{method}: no response within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("{method}: the server closed the connection before answering{partial}")]
    Closed { method: String, partial: String },
    #[error("{method}: the server sent something that is not JSON: {reason}")]
    InvalidResponse { method: String, reason: String },
    #[error("{method}: {reason}")]
    Io { method: String, reason: String },
}

/// A JSON-RPC error answer, with the request it answered (rpc.py prints both).
#[derive(Clone, Debug)]
pub struct RpcFailure {
    pub method: String,
    pub id: u64,
    pub params: Option<Value>,
    pub code: i64,
    pub message: String,
    /// The error object as the server sent it, for printing verbatim.
    pub error: Value,
}

/// The text of an I/O error without Rust's " (os error N)" suffix, which means nothing
/// to the person reading it.
fn describe(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(address: &Address, timeout: Duration) -> std::io::Result<Stream> {
        match address {
            Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Address::Tcp(addr) => TcpStream::connect_timeout(addr, timeout).map(Stream::Tcp),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.set_read_timeout(Some(timeout)),
            Stream::Tcp(stream) => stream.set_read_timeout(Some(timeout)),
        }
    }

    fn set_write_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.set_write_timeout(Some(timeout)),
            Stream::Tcp(stream) => stream.set_write_timeout(Some(timeout)),
        }
    }

    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(stream) => stream.read(buffer),
            Stream::Tcp(stream) => stream.read(buffer),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(stream) => stream.write_all(bytes),
            Stream::Tcp(stream) => stream.write_all(bytes),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call may wait for its response.
    pub timeout: Duration,
    /// Extra connect attempts, `RETRY_INTERVAL` apart, before giving up.
    pub conn_retries: u32,
    /// Print each request and response to stderr.
    pub verbose: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { timeout: DEFAULT_TIMEOUT, conn_retries: 0, verbose: false }
    }
}

pub struct RpcClient {
    stream: Stream,
    /// Bytes received and not yet parsed into a response.
    received: Vec<u8>,
    next_id: u64,
    options: ClientOptions,
}

/// The request exactly as rpc.py writes it: keys jsonrpc, method, id, then params only
/// when there are any (`client.py add_request: if params:`), pretty-printed with indent 2,
/// no trailing newline.
pub fn encode_request(id: u64, method: &str, params: Option<&Value>) -> String {
    let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
    if let Some(params) = params.filter(|params| !is_empty(params)) {
        request["params"] = params.clone();
    }
    serde_json::to_string_pretty(&request).unwrap_or_default()
}

fn is_empty(params: &Value) -> bool {
    match params {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// What the stream holds so far: a complete value and the bytes it used, or not yet.
fn next_value(buffer: &[u8]) -> Result<Option<(Value, usize)>, String> {
    let Some(start) = buffer.iter().position(|byte| !byte.is_ascii_whitespace()) else { return Ok(None) };
    let mut values = serde_json::Deserializer::from_slice(&buffer[start..]).into_iter::<Value>();
    match values.next() {
        // A response is always an object or an array, so a value that parses is complete.
        Some(Ok(value)) => Ok(Some((value, start + values.byte_offset()))),
        Some(Err(err)) if err.is_eof() => Ok(None),
        Some(Err(err)) => Err(err.to_string()),
        None => Ok(None),
    }
}

impl RpcClient {
    /// Connects, retrying `conn_retries` times as rpc.py's `-r` does.
    pub fn connect(address: &Address, options: ClientOptions) -> Result<RpcClient, ClientError> {
        let mut attempt = 0;
        let stream = loop {
            match Stream::connect(address, options.timeout) {
                Ok(stream) => break stream,
                Err(err) if attempt >= options.conn_retries => {
                    return Err(ClientError::Connect { address: address.to_string(), reason: describe(&err) })
                }
                Err(err) => {
                    if options.verbose {
                        eprintln!("connect to {address} failed ({}); retrying", describe(&err));
                    }
                    attempt += 1;
                    std::thread::sleep(RETRY_INTERVAL);
                }
            }
        };
        let setup = stream.set_write_timeout(options.timeout);
        setup.map_err(|err| ClientError::Connect { address: address.to_string(), reason: describe(&err) })?;
        Ok(RpcClient { stream, received: Vec::new(), next_id: 1, options })
    }

    /// Calls `method` and returns its `result`, or the server's error as `ClientError::Rpc`.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = encode_request(id, method, params.as_ref());
        if self.options.verbose {
            eprintln!("request:\n{request}");
        }
        let io = |err: std::io::Error| ClientError::Io { method: method.to_string(), reason: describe(&err) };
        self.stream.write_all(request.as_bytes()).map_err(io)?;
        let mut response = self.read_response(method, id)?;
        if self.options.verbose {
            eprintln!("response:\n{}", serde_json::to_string_pretty(&response).unwrap_or_default());
        }
        if let Some(error) = response.get("error") {
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = error.get("message").and_then(Value::as_str).unwrap_or("").to_string();
            let failure = RpcFailure { method: method.to_string(), id, params, code, message, error: error.clone() };
            return Err(ClientError::Rpc(Box::new(failure)));
        }
        match response.get_mut("result") {
            Some(result) => Ok(result.take()),
            None => Err(ClientError::InvalidResponse {
                method: method.to_string(),
                reason: format!("a response with neither result nor error: {response}"),
            }),
        }
    }

    /// Reads until the response to request `id` arrives. Answers to other ids (left over
    /// from an earlier call that timed out) are skipped; an error with a null id is ours,
    /// since the server sends one when it could not read the request's id (-32700).
    fn read_response(&mut self, method: &str, id: u64) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.options.timeout;
        let timeout = || ClientError::Timeout { method: method.to_string(), timeout: self.options.timeout };
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            while let Some((value, used)) = next_value(&self.received)
                .map_err(|reason| ClientError::InvalidResponse { method: method.to_string(), reason })?
            {
                self.received.drain(..used);
                let ours = value.get("id") == Some(&json!(id))
                    || (value.get("id") == Some(&Value::Null) && value.get("error").is_some());
                if ours {
                    return Ok(value);
                }
                if self.options.verbose {
                    eprintln!("skipping a response that is not for request {id}: {value}");
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout());
            }
            let io = |err: std::io::Error| ClientError::Io { method: method.to_string(), reason: describe(&err) };
            self.stream.set_read_timeout(left).map_err(io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let text = String::from_utf8_lossy(&self.received);
                    let partial = if text.trim().is_empty() { String::new() } else { format!(" (partial: {text})") };
                    return Err(ClientError::Closed { method: method.to_string(), partial });
                }
                Ok(read) => {
                    self.received.extend_from_slice(&chunk[..read]);
                    if self.received.len() > MAX_RESPONSE_BYTES {
                        return Err(ClientError::InvalidResponse {
                            method: method.to_string(),
                            reason: format!("the response exceeds {} MiB", MAX_RESPONSE_BYTES >> 20),
                        });
                    }
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(timeout()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                    return Err(ClientError::Closed { method: method.to_string(), partial: String::new() })
                }
                Err(err) => return Err(io(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests;

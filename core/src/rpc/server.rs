//! The JSON-RPC server on a Unix stream socket. It runs on its own OS thread, off the
//! reactors (a reactor never blocks): accept, read, stream-parse, validate and decode
//! happen here; the decoded call runs on the app thread and its answer comes back
//! through a queue and an eventfd, in whatever order calls complete.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde_json::Value;

use super::error::{RpcError, INVALID_REQUEST, PARSE_ERROR};
use super::registry::{Registry, Reply, Responder};
use super::request::{parse_request, response};
use super::stream::{next_value, Parsed};
use crate::log::flags;
use crate::reactor::AppHandle;

/// SPDK's default socket (`SPDK_DEFAULT_RPC_ADDR`).
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/spdk.sock";
/// Bytes of one request that may be buffered before it must be complete.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
pub const MAX_CONNECTIONS: usize = 64;
/// A client that does not read its answers is cut off past this much pending output.
pub const MAX_PENDING_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// After a fatal error the server keeps reading, and discarding, up to this much of what
/// the client was still sending, so the close does not reset the connection and destroy
/// the error answer before the client reads it.
const MAX_DISCARD_BYTES: usize = 4 * 1024 * 1024;
const EVENTS_PER_WAIT: usize = 64;
const LISTENER_TOKEN: u64 = 0;
const WAKE_TOKEN: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("RPC socket {path} is in use by another process (it holds {path}.lock)")]
    InUse { path: String },
    #[error("cannot set up RPC socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The running server; `stop` (or drop) ends its thread and removes the socket and lock.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl RpcServer {
    pub fn start(path: &Path, registry: Arc<Registry>, app: AppHandle) -> Result<RpcServer, ServerError> {
        let io_err = |source| ServerError::Io { path: path.display().to_string(), source };
        let lock_path = lock_path(path);
        let lock_file =
            OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path).map_err(io_err)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| ServerError::InUse { path: path.display().to_string() })?;
        // We hold the lock, so a socket file left here belongs to a dead process.
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(io_err(err)),
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|err| io_err(err.into()))?,
        );
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|err| io_err(err.into()))?;
        epoll
            .add(listener.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN))
            .map_err(|err| io_err(err.into()))?;
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN)).map_err(|err| io_err(err.into()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (completions_tx, completions) = mpsc::channel();
        let mut worker = Worker {
            listener,
            epoll,
            wake: wake.clone(),
            completions_tx,
            completions,
            registry,
            app,
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            stop: stop.clone(),
            _lock: lock,
        };
        let thread = std::thread::Builder::new().name("rpc".into()).spawn(move || worker.run()).map_err(io_err)?;
        crate::log_notice!("RPC server listening on {}", path.display());
        Ok(RpcServer { path: path.to_path_buf(), stop, wake, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        let _ = thread.join();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(lock_path(&self.path));
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

/// Where an answer goes: a single request, or a slot of a batch. An id of `None` marks a
/// notification, whose answer nobody hears.
enum Slot {
    Single(Option<Value>),
    Batch { batch: u64, index: usize, id: Option<Value> },
}

struct Completion {
    conn: u64,
    slot: Slot,
    reply: Reply,
}

struct Batch {
    answers: Vec<Option<Value>>,
    outstanding: usize,
}

struct Conn {
    stream: UnixStream,
    received: Vec<u8>,
    outgoing: Vec<u8>,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    close_when_flushed: bool,
    /// Output is shut down; input is read and dropped until EOF or the discard limit.
    draining: bool,
    discarded: usize,
    watching_writes: bool,
}

struct Worker {
    listener: UnixListener,
    epoll: Epoll,
    wake: Arc<EventFd>,
    completions_tx: Sender<Completion>,
    completions: Receiver<Completion>,
    registry: Arc<Registry>,
    app: AppHandle,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    stop: Arc<AtomicBool>,
    _lock: Flock<File>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = [EpollEvent::empty(); EVENTS_PER_WAIT];
        while !self.stop.load(Ordering::SeqCst) {
            let ready = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    crate::log_error!("RPC server: epoll_wait failed: {err}; stopping");
                    return;
                }
            };
            for event in &events[..ready] {
                match event.data() {
                    LISTENER_TOKEN => self.accept(),
                    WAKE_TOKEN => {
                        let _ = self.wake.read();
                    }
                    token => self.service(token, event.events()),
                }
            }
            while let Ok(completion) = self.completions.try_recv() {
                self.complete(completion);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) => {
                    crate::log_warn!("RPC server: accept failed: {err}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                crate::log_warn!("RPC server: refusing a connection, already serving the limit of {MAX_CONNECTIONS}");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            if self.epoll.add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token)).is_err() {
                continue;
            }
            let conn = Conn {
                stream,
                received: Vec::new(),
                outgoing: Vec::new(),
                batches: HashMap::new(),
                next_batch: 0,
                close_when_flushed: false,
                draining: false,
                discarded: 0,
                watching_writes: false,
            };
            self.conns.insert(token, conn);
        }
    }

    fn service(&mut self, token: u64, events: EpollFlags) {
        if events.contains(EpollFlags::EPOLLOUT) {
            self.flush(token);
        }
        if events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
            self.receive(token);
        }
    }

    fn receive(&mut self, token: u64) {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let Some(conn) = self.conns.get_mut(&token) else { return };
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    self.close(token);
                    return;
                }
                Ok(read) if conn.draining || conn.close_when_flushed => {
                    conn.discarded += read;
                    if conn.discarded > MAX_DISCARD_BYTES {
                        self.close(token);
                        return;
                    }
                }
                Ok(read) => {
                    conn.received.extend_from_slice(&chunk[..read]);
                    self.parse_requests(token);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        }
    }

    fn parse_requests(&mut self, token: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else { return };
            match next_value(&conn.received) {
                Parsed::Value(value, used) => {
                    conn.received.drain(..used);
                    self.dispatch(token, value);
                }
                Parsed::Incomplete => {
                    if conn.received.len() > MAX_REQUEST_BYTES {
                        let message =
                            format!("Parse error: request exceeds the {} KiB limit", MAX_REQUEST_BYTES / 1024);
                        self.fail_connection(token, message);
                    }
                    return;
                }
                Parsed::Invalid(why) => {
                    self.fail_connection(token, format!("Parse error: {why}"));
                    return;
                }
            }
        }
    }

    /// Answers -32700 and closes once the answer is out, as SPDK does.
    fn fail_connection(&mut self, token: u64, message: String) {
        let answer = response(&Value::Null, &Err(RpcError::new(PARSE_ERROR, message)));
        self.send(token, &answer);
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.received.clear();
            conn.close_when_flushed = true;
        }
        self.flush(token);
    }

    fn dispatch(&mut self, token: u64, value: Value) {
        match value {
            Value::Array(items) if items.is_empty() => {
                let answer =
                    response(&Value::Null, &Err(RpcError::new(INVALID_REQUEST, "Invalid request: empty batch")));
                self.send(token, &answer);
            }
            Value::Array(items) => {
                let Some(conn) = self.conns.get_mut(&token) else { return };
                let batch = conn.next_batch;
                conn.next_batch += 1;
                conn.batches.insert(batch, Batch { answers: vec![None; items.len()], outstanding: items.len() });
                for (index, item) in items.into_iter().enumerate() {
                    self.start_call(token, item, move |id| Slot::Batch { batch, index, id });
                }
            }
            single => self.start_call(token, single, Slot::Single),
        }
    }

    fn start_call(&mut self, token: u64, value: Value, slot_for: impl FnOnce(Option<Value>) -> Slot) {
        let request = match parse_request(value) {
            Ok(request) => request,
            Err((error, id)) => {
                self.complete(Completion { conn: token, slot: slot_for(Some(id)), reply: Err(error) });
                return;
            }
        };
        crate::log_debug!(flags::RPC, "call {} id {:?}", request.method, request.id);
        let slot = slot_for(request.id);
        let (tx, wake) = (self.completions_tx.clone(), self.wake.clone());
        let responder = Responder::new(&request.method, move |reply| {
            let completion = Completion { conn: token, slot, reply };
            if tx.send(completion).is_ok() {
                let _ = wake.write(1);
            }
        });
        self.registry.call(&self.app, &request.method, request.params, responder);
    }

    fn complete(&mut self, completion: Completion) {
        let Completion { conn: token, slot, reply } = completion;
        match slot {
            Slot::Single(None) => {}
            Slot::Single(Some(id)) => self.send(token, &response(&id, &reply)),
            Slot::Batch { batch, index, id } => {
                let Some(conn) = self.conns.get_mut(&token) else { return };
                let Some(state) = conn.batches.get_mut(&batch) else { return };
                if let Some(id) = id {
                    state.answers[index] = Some(response(&id, &reply));
                }
                state.outstanding -= 1;
                if state.outstanding == 0 {
                    let Some(done) = conn.batches.remove(&batch) else { return };
                    let answers: Vec<Value> = done.answers.into_iter().flatten().collect();
                    if !answers.is_empty() {
                        self.send(token, &Value::Array(answers));
                    }
                }
            }
        }
    }

    fn send(&mut self, token: u64, answer: &Value) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if serde_json::to_writer(&mut conn.outgoing, answer).is_err() {
            return;
        }
        conn.outgoing.push(b'\n');
        if conn.outgoing.len() > MAX_PENDING_RESPONSE_BYTES {
            crate::log_warn!(
                "RPC server: a client stopped reading {} bytes of answers; closing it",
                conn.outgoing.len()
            );
            self.close(token);
            return;
        }
        self.flush(token);
    }

    fn flush(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        while !conn.outgoing.is_empty() {
            match conn.stream.write(&conn.outgoing) {
                Ok(written) => {
                    conn.outgoing.drain(..written);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.close(token);
                    return;
                }
            }
        }
        let pending = !conn.outgoing.is_empty();
        if pending != conn.watching_writes {
            let flags = if pending { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
            let mut event = EpollEvent::new(flags, token);
            if self.epoll.modify(conn.stream.as_fd(), &mut event).is_ok() {
                conn.watching_writes = pending;
            }
        }
        if !pending && conn.close_when_flushed && !conn.draining {
            conn.draining = true;
            if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                self.close(token);
            }
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = self.epoll.delete(conn.stream.as_fd());
        }
    }
}

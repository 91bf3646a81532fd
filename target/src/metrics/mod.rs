//! `peerless-tgt --metrics ADDR:PORT`: Prometheus metrics over HTTP.
//!
//! The server is one OS thread of its own, never a reactor: it accepts one connection
//! at a time, reads one bounded request head under a read timeout, gathers a snapshot by
//! asking the app thread (which asks the poll groups) through the RPC registry
//! (`collect`), renders it (`render`) and answers with `Connection: close`. A scrape
//! costs the reactors what the equivalent RPC calls cost, and nothing when nobody
//! scrapes.

pub mod collect;
pub mod http;
pub mod render;

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use peerless_core::{log_notice, log_warn};

pub use collect::Sources;
use http::{HeadError, Request};

/// How long a client has to send its request head; a scraper sends it at once.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the answer before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, and how many bytes, a lingering close waits for the client to finish.
const LINGER_TIMEOUT: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 64 * 1024;
/// How often the accept loop looks at the stop flag while nobody connects.
const ACCEPT_POLL_MS: u16 = 100;

/// Binds the metrics listener. Done before the reactors start, so a bad address fails
/// the start at once instead of after the target is configured.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The running metrics thread; `stop` ends it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(listener: TcpListener, sources: Sources) -> io::Result<MetricsServer> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread =
            std::thread::Builder::new().name("metrics".into()).spawn(move || serve(listener, sources, flag))?;
        log_notice!("metrics on http://{addr}{}", http::METRICS_PATH);
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the thread; a scrape in progress finishes first
    /// (bounded by the timeouts above and the collector's).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(listener: TcpListener, sources: Sources, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ACCEPT_POLL_MS)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                log_warn!("metrics: poll on the listener failed: {err}; metrics stop");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(err) = answer(stream, &sources) {
                    // A scraper that went away mid-answer is its own business.
                    peerless_core::log_debug!(peerless_core::log::flags::APP, "metrics: connection ended early: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => log_warn!("metrics: accept failed: {err}"),
        }
    }
}

/// Serves one connection: one request, one answer, then a lingering close.
fn answer(mut stream: TcpStream, sources: &Sources) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    respond(&mut stream, sources)?;
    linger(&mut stream)
}

/// Closing a socket with unread input makes the kernel send a reset, which can reach
/// the client before it has read the answer (an oversized request, a pipelined one).
/// So the write side closes first and what the client still sends is read and dropped,
/// bounded in bytes and time, until it closes too.
fn linger(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(LINGER_TIMEOUT))?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_MAX_BYTES {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(read) => drained += read,
        }
    }
    Ok(())
}

fn respond(stream: &mut TcpStream, sources: &Sources) -> io::Result<()> {
    let text = "text/plain; charset=utf-8";
    let request = match http::read_head(stream) {
        Ok(head) => http::parse_request(&head),
        Err(HeadError::TooLarge) => {
            return http::write_response(stream, 431, text, b"request head too large\n", false);
        }
        Err(HeadError::Io(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)) => {
            return http::write_response(stream, 408, text, b"no request within the timeout\n", false);
        }
        Err(HeadError::Truncated | HeadError::Io(_)) => return Ok(()),
    };
    match request {
        Request::Metrics { head_only } => match sources.snapshot() {
            Ok(snapshot) => {
                let body = render::render(&snapshot);
                http::write_response(stream, 200, render::CONTENT_TYPE, body.as_bytes(), head_only)
            }
            Err(why) => http::write_response(stream, 503, text, format!("{why}\n").as_bytes(), head_only),
        },
        Request::Index { head_only } => {
            let body = format!("peerless-tgt: metrics at {}\n", http::METRICS_PATH);
            http::write_response(stream, 200, text, body.as_bytes(), head_only)
        }
        Request::NotFound { head_only } => {
            let body = format!("not found; metrics are at {}\n", http::METRICS_PATH);
            http::write_response(stream, 404, text, body.as_bytes(), head_only)
        }
        Request::MethodNotAllowed => http::write_response(stream, 405, text, b"GET or HEAD only\n", false),
        Request::Malformed => http::write_response(stream, 400, text, b"malformed request line\n", false),
    }
}

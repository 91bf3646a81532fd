//! A TLS 1.3 server connection as the NVMe/TCP driver's [`Socket`]: the handshake runs
//! inside `read` until it completes (each attempt takes what the socket has and returns
//! `WouldBlock` for more, so a reactor never waits on it), then reads and writes go
//! through OpenSSL's record layer. A host that stalls mid-handshake has not sent ICReq,
//! so the connection's ICReq deadline evicts it like any silent host. Where the kernel
//! can, the record layer then moves into it (see [`ktls`]).

use std::cell::RefCell;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, Ssl, SslContext, SslStream};
use peerless_core::throttle::Throttle;

use super::ktls::{self, Offloaded};
use super::{peer_of, refusal_index};
use crate::nvmf::connect::TlsPeer;
use crate::tcp::socket::Socket;

/// Bytes gathered into one TLS write at most: four full records.
const GATHER_BYTES: usize = 64 * 1024;
/// Refused handshakes are logged at most this often per thread, with how many more.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

thread_local! {
    static REFUSALS: RefCell<(Instant, Throttle)> = RefCell::new((Instant::now(), Throttle::new(REFUSAL_LOG_INTERVAL)));
}

pub struct TlsSocket {
    stream: SslStream<TcpStream>,
    established: bool,
    /// The directions whose records the kernel carries (kTLS) since the handshake.
    kernel: Offloaded,
    /// Small PDUs and their payloads gathered into one record rather than one each.
    gather: Vec<u8>,
}

impl TlsSocket {
    pub fn new(context: &SslContext, tcp: TcpStream) -> io::Result<TlsSocket> {
        let mut ssl = Ssl::new(context).map_err(io::Error::other)?;
        if ktls::worth_trying() {
            ktls::collect_secrets(&mut ssl);
        }
        let stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
        Ok(TlsSocket { stream, established: false, kernel: Offloaded::default(), gather: Vec::new() })
    }

    /// Which directions the kernel carries.
    pub fn offloaded(&self) -> Offloaded {
        self.kernel
    }

    /// Hands the record layer to the kernel where it can take it; otherwise (or for
    /// the direction it cannot take) OpenSSL keeps it, and the first connection to find
    /// it so says why.
    fn offload_records(&mut self) {
        if !ktls::worth_trying() {
            return;
        }
        match ktls::offload(self.stream.ssl(), self.stream.get_ref()) {
            Ok(offloaded) => {
                self.kernel = offloaded;
                if !offloaded.tx {
                    log_once(&KTLS_PARTIAL_LOGGED, || {
                        "kTLS: the kernel took the receive side only; TLS writes stay in OpenSSL".to_string()
                    });
                }
            }
            Err(why) => {
                log_once(&KTLS_REFUSED_LOGGED, || format!("kTLS unavailable, TLS records stay in OpenSSL: {why}"))
            }
        }
    }

    /// Moves the handshake on with what has arrived; Ok(true) once it is complete. The
    /// server's flight is a few hundred bytes, which a fresh socket's send buffer always
    /// takes; should it not (WANT_WRITE), the next readiness or the ICReq deadline
    /// decides.
    fn handshake(&mut self) -> io::Result<bool> {
        match self.stream.accept() {
            Ok(()) => {
                self.established = true;
                self.offload_records();
                Ok(true)
            }
            Err(err) if matches!(err.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => Ok(false),
            Err(err) => {
                let why = match self.stream.ssl().ex_data(refusal_index()) {
                    Some(reason) => reason.clone(),
                    None => match err.ssl_error() {
                        Some(stack) => format!("TLS handshake failed: {stack}"),
                        None => format!("TLS handshake failed: {err}"),
                    },
                };
                let peer = self
                    .stream
                    .get_ref()
                    .peer_addr()
                    .map_or_else(|_| "an unknown address".into(), |addr| addr.to_string());
                REFUSALS.with(|cell| {
                    let (start, throttle) = &mut *cell.borrow_mut();
                    if let Some(report) = throttle.event(start.elapsed().as_nanos() as u64) {
                        peerless_core::log_warn!("TLS connection from {peer} refused: {why}{}", report.suffix());
                    }
                });
                Err(io::Error::new(ErrorKind::PermissionDenied, why))
            }
        }
    }
}

/// One message for the whole process, the first time it applies.
fn log_once(logged: &AtomicBool, message: impl FnOnce() -> String) {
    if !logged.swap(true, Ordering::Relaxed) {
        peerless_core::log_notice!("{}", message());
    }
}

static KTLS_REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);
static KTLS_PARTIAL_LOGGED: AtomicBool = AtomicBool::new(false);

/// A read of records the kernel decrypts. A record that is not application data (the
/// host's close_notify or another alert, a KeyUpdate) fails a plain read with EIO; on
/// an NVMe/TCP connection nothing may follow an alert, so it reads as the end of the
/// stream.
fn kernel_read(tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    match Read::read(tcp, buf) {
        Err(err) if err.raw_os_error() == Some(nix::libc::EIO) => Ok(0),
        other => other,
    }
}

/// An OpenSSL error as the driver reads errors: `WouldBlock` for "try again later",
/// end of stream for the peer's close_notify or a closed socket.
fn io_result(result: Result<usize, openssl::ssl::Error>) -> io::Result<usize> {
    match result {
        Ok(count) => Ok(count),
        Err(err) => match err.code() {
            ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => Err(ErrorKind::WouldBlock.into()),
            ErrorCode::ZERO_RETURN => Ok(0),
            ErrorCode::SYSCALL if err.io_error().is_none() && err.ssl_error().is_none() => Ok(0),
            _ => Err(err.into_io_error().unwrap_or_else(|err| io::Error::other(err.to_string()))),
        },
    }
}

impl Socket for TlsSocket {
    fn prepare(&mut self, priority: u32) -> io::Result<()> {
        self.stream.get_mut().prepare(priority)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.established && !self.handshake()? {
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.kernel.rx {
            return kernel_read(self.stream.get_mut(), buf);
        }
        // One record (16 KiB at most) per OpenSSL read: take every whole one there is,
        // so a large PDU costs one poll, not one per record.
        let mut total = 0;
        while total < buf.len() {
            match io_result(self.stream.ssl_read(&mut buf[total..])) {
                Ok(0) if total > 0 => break,
                Ok(read) if read > 0 => total += read,
                Err(err) if total > 0 && err.kind() == ErrorKind::WouldBlock => break,
                // End of stream, or an error, with nothing read before it: say so now;
                // after data, the next read says it.
                other => return if total > 0 { Ok(total) } else { other },
            }
        }
        Ok(total)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.established {
            // Nothing is sent before ICReq, which comes after the handshake.
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.kernel.tx {
            return Write::write(self.stream.get_mut(), buf);
        }
        io_result(self.stream.ssl_write(buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.established {
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.kernel.tx {
            // The kernel cuts records from whatever the iovecs hold: no gather copy.
            return Write::write_vectored(self.stream.get_mut(), bufs);
        }
        let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(0, |buf| buf.len());
        if first >= GATHER_BYTES || bufs.len() == 1 {
            let buf = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &buf[..]);
            return io_result(self.stream.ssl_write(buf));
        }
        // A retry after WANT_WRITE presents the same bytes first, as OpenSSL requires:
        // the outbox offers what it has not sent yet, in order, every time.
        self.gather.clear();
        for buf in bufs {
            let room = GATHER_BYTES - self.gather.len();
            self.gather.extend_from_slice(&buf[..buf.len().min(room)]);
            if self.gather.len() == GATHER_BYTES {
                break;
            }
        }
        io_result(self.stream.ssl_write(&self.gather))
    }

    fn shutdown(&mut self) {
        if self.established && !self.kernel.tx {
            // close_notify, if the socket takes it now; the TCP shutdown follows regardless.
            // With the kernel sending, OpenSSL's send state is stale and must not write:
            // the peer sees the TCP close alone.
            let _ = self.stream.shutdown();
        }
        let _ = self.stream.get_ref().shutdown(Shutdown::Both);
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.get_ref().local_addr()
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.get_ref().as_fd())
    }

    /// OpenSSL may hold decrypted bytes the last read had no room for; the socket's fd
    /// then says nothing, so the connection must be polled again without it.
    fn has_buffered_input(&self) -> bool {
        !self.kernel.rx && self.stream.ssl().pending() > 0
    }

    fn tls_peer(&self) -> Option<TlsPeer> {
        peer_of(self.stream.ssl())
    }
}

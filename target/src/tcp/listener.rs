//! Listeners: bound on the app thread, accepting from a poller there (woken by the
//! socket when the reactor sleeps), handing each connection to a poll group round-robin.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use openssl::ssl::SslContext;
use peerless_core::reactor::{PollStatus, PollerId, ThreadCtx};
use peerless_core::throttle::Throttle;

use super::conn::Conn;
use super::lifecycle::{ListenerCounts, Seat};
use super::options::TcpOptions;
use super::poll_group::TcpPollGroup;
use super::tls::{self, TlsSocket};
use super::TRTYPE;
use crate::nvmf::transport::{SockImpl, TransportListener};
use crate::nvmf::{poll_group, NvmfTarget};

/// Connections accepted per poll, so a connection storm cannot hold the app thread.
const ACCEPTS_PER_POLL: usize = 16;
/// A repeated refusal is logged at most this often, with how many it stands for.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A listening socket and its accept poller on the app thread. The target keeps it in
/// shared state, so it names the poller by id (a `Poller` cannot leave its thread) and
/// `stop` ends it on the app thread.
pub struct Listener {
    pub addr: SocketAddr,
    poller: PollerId,
    /// Its connections, established or not, counted by the poll groups serving them.
    pub counts: Arc<ListenerCounts>,
    sock_impl: SockImpl,
    /// Its connections begin with a TLS 1.3 handshake (`secure_channel`).
    secure: bool,
}

/// Why accepting stopped short, each logged through its own throttle.
struct Refusals {
    full: Throttle,
    no_fds: Throttle,
    spare: SpareFd,
}

/// A descriptor held in reserve for when the process runs out of them. Closing it lets
/// the listener take the waiting connection and close it at once, so the host hears no
/// (a FIN) instead of hanging in the backlog until its own timeout, and the listening
/// socket, level-triggered in the reactor's epoll, stops being readable and waking a
/// sleeping reactor over and over.
struct SpareFd(Option<File>);

/// What the spare descriptor did for a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A waiting connection was taken and closed.
    Closed,
    /// Nothing was waiting: accept(2) takes a descriptor before it looks at the
    /// backlog, so it reports EMFILE even when no host is there to refuse.
    NoneWaiting,
    /// There was no spare (another thread took the descriptor it freed); the
    /// connection waits in the backlog.
    NoSpare,
}

impl SpareFd {
    fn open() -> SpareFd {
        SpareFd(File::open("/dev/null").ok())
    }

    /// Refuses one waiting connection with the spare descriptor.
    fn refuse_one(&mut self, socket: &TcpListener) -> Refusal {
        let Some(spare) = self.0.take() else {
            self.0 = File::open("/dev/null").ok();
            return Refusal::NoSpare;
        };
        drop(spare);
        // The accepted stream is dropped at once: the refusal is the close.
        let refusal = match socket.accept() {
            Ok(_) => Refusal::Closed,
            Err(err) if err.kind() == ErrorKind::WouldBlock => Refusal::NoneWaiting,
            Err(_) => Refusal::NoSpare,
        };
        self.0 = File::open("/dev/null").ok();
        refusal
    }
}

/// Whether an accept failed for want of a file descriptor (per process or system-wide).
fn out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == Errno::EMFILE as i32 || code == Errno::ENFILE as i32)
}

impl Listener {
    /// Binds `addr` and starts accepting on the calling (app) thread.
    pub fn bind(
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        addr: SocketAddr,
        acceptor_poll_rate_us: u32,
        options: TcpOptions,
        sock_impl: SockImpl,
        secure: bool,
    ) -> std::io::Result<Listener> {
        let socket = Arc::new(TcpListener::bind(addr)?);
        socket.set_nonblocking(true)?;
        let bound = socket.local_addr()?;
        let tls = if secure { Some(tls::server_context(target, bound).map_err(std::io::Error::other)?) } else { None };
        let counts = Arc::new(ListenerCounts::default());
        let (accepting, counter, target) = (socket.clone(), counts.clone(), target.clone());
        let options = Arc::new(options);
        let mut refusals = Refusals {
            full: Throttle::new(REFUSAL_LOG_INTERVAL),
            no_fds: Throttle::new(REFUSAL_LOG_INTERVAL),
            spare: SpareFd::open(),
        };
        // Every acceptor_poll_rate while the reactor spins (an accept that finds nothing
        // costs microseconds), at once when a connection wakes a sleeping reactor.
        let name = format!("nvmf_tcp_accept_{bound}");
        let period_us = u64::from(acceptor_poll_rate_us);
        let poller = ctx.fd_poller(&name, std::os::fd::AsFd::as_fd(&*socket), period_us, move |ctx| {
            let now_ns = ctx.now_ns();
            let accepted =
                accept(&accepting, &target, &counter, &options, sock_impl, tls.as_ref(), &mut refusals, now_ns);
            if let Some(report) = refusals.full.flush(now_ns) {
                log_full(bound, &options, report);
            }
            PollStatus::from_work(accepted > 0)
        })?;
        let secured = if secure { " (secure channel: TLS 1.3 with PSK)" } else { "" };
        peerless_core::log_notice!("NVMe/TCP target listening on {bound}{secured}");
        Ok(Listener { addr: bound, poller: poller.detach(), counts, sock_impl, secure })
    }
}

impl TransportListener for Listener {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn sock_impl(&self) -> SockImpl {
        self.sock_impl
    }

    fn secure(&self) -> bool {
        self.secure
    }

    /// Stops accepting (the poller's end unwatches the socket); connections already made
    /// stay.
    fn stop(self: Box<Self>, ctx: &mut ThreadCtx) {
        ctx.unregister_poller(self.poller);
    }
}

fn log_full(addr: SocketAddr, options: &TcpOptions, report: peerless_core::throttle::Report) {
    peerless_core::log_warn!(
        "listener {addr}: refusing a connection, already serving the limit of {} established connections \
         (max_connections_per_listener){}",
        options.max_connections_per_listener,
        report.suffix()
    );
}

/// Accepts what is waiting. A connection is refused only when the established ones fill
/// the listener; unestablished ones never refuse a newcomer (the poll group evicts the
/// oldest of them instead, see `lifecycle.rs`).
#[allow(clippy::too_many_arguments)]
fn accept(
    socket: &TcpListener,
    target: &NvmfTarget,
    counts: &Arc<ListenerCounts>,
    options: &Arc<TcpOptions>,
    sock_impl: SockImpl,
    tls: Option<&SslContext>,
    refusals: &mut Refusals,
    now_ns: u64,
) -> usize {
    let mut accepted = 0;
    for _ in 0..ACCEPTS_PER_POLL {
        let stream = match socket.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::Interrupted => break,
            Err(err) => {
                let refusal =
                    if out_of_descriptors(&err) { refusals.spare.refuse_one(socket) } else { Refusal::NoSpare };
                if refusal == Refusal::NoneWaiting {
                    break;
                }
                let refused = refusal == Refusal::Closed;
                if let Some(report) = refusals.no_fds.event(now_ns) {
                    peerless_core::log_warn!(
                        "listener {:?}: cannot accept: {err} (open files limit {}); {}{}",
                        socket.local_addr().ok(),
                        crate::app::open_files_limit().map_or_else(|| "unknown".to_string(), |limit| limit.to_string()),
                        if refused { "the connection was closed at once" } else { "it waits in the backlog" },
                        report.suffix()
                    );
                }
                if refused {
                    accepted += 1;
                    continue;
                }
                break;
            }
        };
        accepted += 1;
        if counts.established() >= options.max_connections_per_listener {
            if let Some(report) = refusals.full.event(now_ns) {
                log_full(socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))), options, report);
            }
            continue;
        }
        let Some(transport) = target.transport(TRTYPE) else { continue };
        let Some(group) = target.pick_poll_group() else { continue };
        let id = target.next_conn_id();
        // Counted at once, so the next accept (and the eviction on arrival) sees it.
        let seat = Seat::take(counts);
        let (target, options) = (target.clone(), options.clone());
        if let Some(tls) = tls {
            let tls = tls.clone();
            let _ = group.send(move |ctx| {
                let conn = TlsSocket::new(&tls, stream)
                    .and_then(|socket| Conn::new(id, socket, &target, &transport, &options));
                match conn {
                    Ok(conn) => poll_group::with(&target, ctx, |group, ctx| {
                        let tcp = group.transport_group(ctx, &transport);
                        if let Some(tcp) = tcp.as_any_mut().downcast_mut::<TcpPollGroup>() {
                            tcp.secure_group(ctx, &options).add_conn(ctx, conn, Some(seat), sock_impl);
                        }
                    }),
                    Err(err) => peerless_core::log_warn!("cannot set up an accepted TLS connection: {err}"),
                }
            });
            continue;
        }
        // A connection is built on its poll group's thread: it owns thread-local state.
        let _ = group.send(move |ctx| {
            let mut conn = Conn::new(id, stream, &target, &transport, &options);
            if let (Ok(conn), Some(threshold)) = (conn.as_mut(), super::zerocopy::threshold_for(sock_impl)) {
                conn.enable_zerocopy_sends(threshold);
            }
            match conn {
                Ok(conn) => poll_group::with(&target, ctx, |group, ctx| {
                    let tcp = group.transport_group(ctx, &transport);
                    if let Some(tcp) = tcp.as_any_mut().downcast_mut::<TcpPollGroup>() {
                        tcp.add_conn(ctx, conn, Some(seat), sock_impl);
                    }
                }),
                Err(err) => peerless_core::log_warn!("cannot set up an accepted connection: {err}"),
            }
        });
    }
    accepted
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    fn listening() -> TcpListener {
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        socket
    }

    #[test]
    fn the_spare_closes_a_waiting_connection_and_is_taken_again() {
        let socket = listening();
        let mut host = TcpStream::connect(socket.local_addr().unwrap()).expect("connect");
        let mut spare = SpareFd::open();
        // The kernel queues the handshake; the listener sees it once it lands.
        let mut refusal = Refusal::NoneWaiting;
        for _ in 0..1000 {
            refusal = spare.refuse_one(&socket);
            if refusal != Refusal::NoneWaiting {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(refusal, Refusal::Closed);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(host.read(&mut [0; 8]).expect("the host hears a FIN"), 0);
        assert!(spare.0.is_some(), "the spare is held again for the next refusal");
    }

    #[test]
    fn an_empty_backlog_is_not_a_refusal() {
        let socket = listening();
        let mut spare = SpareFd::open();
        assert_eq!(spare.refuse_one(&socket), Refusal::NoneWaiting);
        assert!(spare.0.is_some());
    }

    #[test]
    fn without_a_spare_the_connection_waits_and_the_spare_is_taken_for_next_time() {
        let socket = listening();
        let host = TcpStream::connect(socket.local_addr().unwrap()).expect("connect");
        let mut spare = SpareFd(None);
        assert_eq!(spare.refuse_one(&socket), Refusal::NoSpare);
        assert!(spare.0.is_some());
        drop(host);
    }
}

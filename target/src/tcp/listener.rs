//! Listeners: bound on the app thread, accepting from a poller there (woken by the
//! socket when the reactor sleeps), handing each connection to a poll group round-robin.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use peerless_core::reactor::{PollStatus, PollerId, ThreadCtx};

use super::conn::Conn;
use super::options::TcpOptions;
use super::poll_group::TcpPollGroup;
use super::TRTYPE;
use crate::nvmf::transport::TransportListener;
use crate::nvmf::{poll_group, NvmfTarget};

/// Connections accepted per poll, so a connection storm cannot hold the app thread.
const ACCEPTS_PER_POLL: usize = 16;

/// A listening socket and its accept poller on the app thread. The target keeps it in
/// shared state, so it names the poller by id (a `Poller` cannot leave its thread) and
/// `stop` ends it on the app thread.
pub struct Listener {
    pub addr: SocketAddr,
    poller: PollerId,
    pub connections: Arc<AtomicU32>,
}

impl Listener {
    /// Binds `addr` and starts accepting on the calling (app) thread.
    pub fn bind(
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        addr: SocketAddr,
        acceptor_poll_rate_us: u32,
        options: TcpOptions,
    ) -> std::io::Result<Listener> {
        let socket = Arc::new(TcpListener::bind(addr)?);
        socket.set_nonblocking(true)?;
        let bound = socket.local_addr()?;
        let connections = Arc::new(AtomicU32::new(0));
        let (accepting, counter, target) = (socket.clone(), connections.clone(), target.clone());
        let options = Arc::new(options);
        // Every acceptor_poll_rate while the reactor spins (an accept that finds nothing
        // costs microseconds), at once when a connection wakes a sleeping reactor.
        let name = format!("nvmf_tcp_accept_{bound}");
        let period_us = u64::from(acceptor_poll_rate_us);
        let poller = ctx.fd_poller(&name, std::os::fd::AsFd::as_fd(&*socket), period_us, move |_| {
            PollStatus::from_work(accept(&accepting, &target, &counter, &options) > 0)
        })?;
        peerless_core::log_notice!("NVMe/TCP target listening on {bound}");
        Ok(Listener { addr: bound, poller: poller.detach(), connections })
    }
}

impl TransportListener for Listener {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (the poller's end unwatches the socket); connections already made
    /// stay.
    fn stop(self: Box<Self>, ctx: &mut ThreadCtx) {
        ctx.unregister_poller(self.poller);
    }
}

fn accept(socket: &TcpListener, target: &NvmfTarget, connections: &Arc<AtomicU32>, options: &Arc<TcpOptions>) -> usize {
    let mut accepted = 0;
    for _ in 0..ACCEPTS_PER_POLL {
        let stream = match socket.accept() {
            Ok((stream, _)) => stream,
            Err(_) => break,
        };
        accepted += 1;
        if connections.load(Ordering::Relaxed) >= options.max_connections_per_listener {
            peerless_core::log_warn!(
                "listener {:?}: refusing a connection, already serving the limit of {}",
                socket.local_addr().ok(),
                options.max_connections_per_listener
            );
            continue;
        }
        let Some(transport) = target.transport(TRTYPE) else { continue };
        let Some(group) = target.pick_poll_group() else { continue };
        let id = target.next_conn_id();
        let (target, counter, options) = (target.clone(), connections.clone(), options.clone());
        // A connection is built on its poll group's thread: it owns thread-local state.
        let _ = group.send(move |ctx| {
            let conn = Conn::new(id, stream, &target, &transport, &options, counter);
            match conn {
                Ok(conn) => poll_group::with(&target, ctx, |group, ctx| {
                    let tcp = group.transport_group(ctx, &transport);
                    if let Some(tcp) = tcp.as_any_mut().downcast_mut::<TcpPollGroup>() {
                        tcp.add_conn(ctx, conn);
                    }
                }),
                Err(err) => peerless_core::log_warn!("cannot set up an accepted connection: {err}"),
            }
        });
    }
    accepted
}

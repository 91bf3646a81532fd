//! The TCP transport's part of a poll group: its connections.

use std::any::Any;
use std::net::TcpStream;

use peerless_core::reactor::ThreadCtx;

use super::conn::Conn;
use super::socket::Socket;
use crate::nvmf::qpair::Qpair;
use crate::nvmf::transport::{GroupCtx, TransportPollGroup};

/// The connections of one poll group, over sockets of type `S` (kernel TCP streams, or
/// in-memory ones in tests and the simulation).
pub struct TcpPollGroup<S: Socket = TcpStream> {
    conns: Vec<Conn<S>>,
}

impl<S: Socket> Default for TcpPollGroup<S> {
    fn default() -> Self {
        TcpPollGroup { conns: Vec::new() }
    }
}

impl<S: Socket> TcpPollGroup<S> {
    pub fn add_conn(&mut self, ctx: &mut ThreadCtx, conn: Conn<S>) {
        if let Some(fd) = conn.fd() {
            if let Err(err) = ctx.watch_fd(fd) {
                peerless_core::log_warn!("conn {} from {}: cannot watch its socket: {err}", conn.id(), conn.peer());
            }
        }
        self.conns.push(conn);
    }
}

impl<S: Socket + 'static> TransportPollGroup for TcpPollGroup<S> {
    fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool {
        let mut busy = false;
        for conn in self.conns.iter_mut() {
            busy |= conn.poll(ctx, group);
            // Output the socket would not take yet keeps the reactor awake.
            busy |= conn.has_pending_output();
        }
        let mut index = 0;
        while index < self.conns.len() {
            if self.conns[index].is_done() {
                let conn = self.conns.swap_remove(index);
                if let Some(fd) = conn.fd() {
                    let _ = ctx.unwatch_fd(fd);
                }
                group.retired.retire(conn.qpair());
            } else {
                index += 1;
            }
        }
        busy
    }

    fn for_each_qpair(&mut self, visit: &mut dyn FnMut(&mut Qpair)) {
        for conn in &mut self.conns {
            visit(conn.qpair_mut());
        }
    }

    fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

//! The TCP transport's part of a poll group: its connections.

use std::any::Any;

use peerless_core::reactor::ThreadCtx;

use super::conn::Conn;
use crate::nvmf::qpair::Qpair;
use crate::nvmf::transport::{GroupCtx, TransportPollGroup};

#[derive(Default)]
pub struct TcpPollGroup {
    conns: Vec<Conn>,
}

impl TcpPollGroup {
    pub fn add_conn(&mut self, ctx: &mut ThreadCtx, conn: Conn) {
        if let Err(err) = ctx.watch_fd(conn.fd()) {
            peerless_core::log_warn!("conn {} from {}: cannot watch its socket: {err}", conn.id(), conn.peer());
        }
        self.conns.push(conn);
    }
}

impl TransportPollGroup for TcpPollGroup {
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
                let _ = ctx.unwatch_fd(conn.fd());
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

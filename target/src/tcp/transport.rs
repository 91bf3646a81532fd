//! The NVMe/TCP transport type: its options, its data buffers, its listeners and its
//! part of each poll group.

use std::net::SocketAddr;
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::decode_params;
use serde_json::{json, Value};

use super::listener::Listener;
use super::options::TcpOptions;
use super::poll_group::TcpPollGroup;
use crate::nvmf::buffers::DataPool;
use crate::nvmf::transport::{SockImpl, Transport, TransportListener, TransportOptions, TransportPollGroup};
use crate::nvmf::NvmfTarget;

pub const TRTYPE: &str = "TCP";

pub struct TcpTransport {
    opts: Arc<TransportOptions>,
    pub tcp: TcpOptions,
    pool: &'static DataPool,
}

impl TcpTransport {
    /// `nvmf_create_transport` for TCP: the shared options, TCP's own, and the buffers.
    pub fn create(params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String> {
        // Decoded as every RPC is, so a wrong type names its field.
        let mut opts: TransportOptions = decode_params(Some(params.clone())).map_err(|err| err.message)?;
        let tcp: TcpOptions = decode_params(Some(params.clone())).map_err(|err| err.message)?;
        opts.validate(poll_groups)?;
        tcp.validate()?;
        opts.trtype = TRTYPE.into();
        let pool = DataPool::create(&opts, poll_groups)?;
        peerless_core::log_notice!(
            "TCP transport: {} data buffers of {} and 8 KiB ({} MiB), {} cached per poll group",
            opts.num_shared_buffers,
            opts.io_unit_size,
            pool.memory_bytes() >> 20,
            pool.cache_size()
        );
        Ok(Arc::new(TcpTransport { opts: Arc::new(opts), tcp, pool }))
    }
}

impl Transport for TcpTransport {
    fn trtype(&self) -> &'static str {
        TRTYPE
    }

    fn opts(&self) -> &Arc<TransportOptions> {
        &self.opts
    }

    fn pool(&self) -> &'static DataPool {
        self.pool
    }

    fn to_json(&self) -> Value {
        let opts = &self.opts;
        json!({"trtype": TRTYPE, "max_queue_depth": opts.max_queue_depth,
            "max_io_qpairs_per_ctrlr": opts.max_io_qpairs_per_ctrlr, "in_capsule_data_size": opts.in_capsule_data_size,
            "max_io_size": opts.max_io_size, "io_unit_size": opts.io_unit_size, "max_aq_depth": opts.max_aq_depth,
            "num_shared_buffers": opts.num_shared_buffers, "buf_cache_size": opts.buf_cache_size,
            "dif_insert_or_strip": opts.dif_insert_or_strip, "zcopy": opts.zcopy, "c2h_success": self.tcp.c2h_success,
            "sock_priority": self.tcp.sock_priority, "abort_timeout_sec": opts.abort_timeout_sec,
            "acceptor_poll_rate": opts.acceptor_poll_rate, "disable_command_passthru": opts.disable_command_passthru,
            "kas": opts.kas, "min_kato": opts.min_kato,
            "max_connections_per_listener": self.tcp.max_connections_per_listener,
            "max_unestablished_connections_per_listener": self.tcp.max_unestablished_connections_per_listener,
            "icreq_timeout_ms": self.tcp.icreq_timeout_ms, "connect_timeout_ms": self.tcp.connect_timeout_ms,
            "enable_timeout_ms": self.tcp.enable_timeout_ms})
    }

    fn listen(
        &self,
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        addr: SocketAddr,
        sock_impl: SockImpl,
        secure: bool,
    ) -> Result<Box<dyn TransportListener>, String> {
        let rate = self.opts.acceptor_poll_rate;
        let listener = Listener::bind(ctx, target, addr, rate, self.tcp.clone(), sock_impl, secure)
            .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
        Ok(Box::new(listener))
    }

    fn create_poll_group(&self, ctx: &mut ThreadCtx) -> Box<dyn TransportPollGroup> {
        Box::new(TcpPollGroup::<std::net::TcpStream>::new(ctx, &self.tcp))
    }
}

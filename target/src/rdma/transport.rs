//! The NVMe/RDMA transport type: its options, its data buffers, its listeners and its
//! part of each poll group.

use std::net::SocketAddr;
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use serde_json::{json, Value};

use parking_lot::Mutex;

use super::listener::{CmState, Listener};
use super::options::RdmaOptions;
use super::poll_group::RdmaPollGroup;
use crate::nvmf::buffers::DataPool;
use crate::nvmf::transport::{SockImpl, Transport, TransportListener, TransportOptions, TransportPollGroup};
use crate::nvmf::NvmfTarget;

pub const TRTYPE: &str = "RDMA";

pub struct RdmaTransport {
    opts: Arc<TransportOptions>,
    pub rdma: RdmaOptions,
    pool: &'static DataPool,
    /// The RDMA CM's channel and devices, opened at the first listen: a transport is
    /// created (and its configuration replayed) on a host without RDMA too.
    cm: Arc<Mutex<Option<Arc<CmState>>>>,
}

impl RdmaTransport {
    /// `nvmf_create_transport -t RDMA`: the shared options (with RDMA's defaults), the
    /// RDMA ones, and the buffers.
    pub fn create(params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String> {
        let (mut opts, rdma) = RdmaOptions::decode(params)?;
        opts.validate(poll_groups)?;
        rdma.validate(&opts)?;
        opts.trtype = TRTYPE.into();
        let pool = DataPool::create(&opts, poll_groups)?;
        peerless_core::log_notice!(
            "RDMA transport: {} data buffers of {} and 8 KiB ({} MiB), {} cached per poll group, {}",
            opts.num_shared_buffers,
            opts.io_unit_size,
            pool.memory_bytes() >> 20,
            pool.cache_size(),
            if rdma.no_srq {
                format!("a receive queue per queue pair, {} CQ entries", rdma.num_cqe)
            } else {
                format!("a shared receive queue of {} per poll group", rdma.max_srq_depth)
            }
        );
        Ok(Arc::new(RdmaTransport { opts: Arc::new(opts), rdma, pool, cm: Arc::new(Mutex::new(None)) }))
    }
}

impl Transport for RdmaTransport {
    fn trtype(&self) -> &'static str {
        TRTYPE
    }

    fn opts(&self) -> &Arc<TransportOptions> {
        &self.opts
    }

    fn pool(&self) -> &'static DataPool {
        self.pool
    }

    /// SPDK's `nvmf_get_transports` fields for RDMA (the shared ones and
    /// `nvmf_rdma_dump_opts`): what `save_config` replays.
    fn to_json(&self) -> Value {
        let opts = &self.opts;
        let mut out = json!({"trtype": TRTYPE, "max_queue_depth": opts.max_queue_depth,
            "max_io_qpairs_per_ctrlr": opts.max_io_qpairs_per_ctrlr, "in_capsule_data_size": opts.in_capsule_data_size,
            "max_io_size": opts.max_io_size, "io_unit_size": opts.io_unit_size, "max_aq_depth": opts.max_aq_depth,
            "num_shared_buffers": opts.num_shared_buffers, "buf_cache_size": opts.buf_cache_size,
            "dif_insert_or_strip": opts.dif_insert_or_strip, "abort_timeout_sec": opts.abort_timeout_sec,
            "acceptor_poll_rate": opts.acceptor_poll_rate, "disable_command_passthru": opts.disable_command_passthru,
            "kas": opts.kas, "min_kato": opts.min_kato,
            "max_srq_depth": self.rdma.max_srq_depth, "no_srq": self.rdma.no_srq,
            "acceptor_backlog": self.rdma.acceptor_backlog, "no_wr_batching": self.rdma.no_wr_batching});
        if self.rdma.no_srq {
            out["num_cqe"] = self.rdma.num_cqe.into();
        }
        out
    }

    fn listen(
        &self,
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        addr: SocketAddr,
        sock_impl: SockImpl,
        secure: bool,
    ) -> Result<Box<dyn TransportListener>, String> {
        if secure {
            return Err("secure_channel (TLS) is for the TCP transport; NVMe/RDMA has none".into());
        }
        if sock_impl != SockImpl::Posix {
            return Err(format!("sock_impl \"{}\" is for the TCP transport's sockets", sock_impl.as_str()));
        }
        let state = {
            let mut cm = self.cm.lock();
            match cm.as_ref() {
                Some(state) => state.clone(),
                None => {
                    let state = CmState::open(self.pool).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
                    *cm = Some(state.clone());
                    state
                }
            }
        };
        let listener = Listener::bind(ctx, target, &state, self.opts.clone(), addr, self.rdma.acceptor_backlog)
            .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
        Ok(Box::new(listener))
    }

    fn create_poll_group(&self, ctx: &mut ThreadCtx) -> Box<dyn TransportPollGroup> {
        Box::new(RdmaPollGroup::new(ctx, self.opts.clone(), self.rdma.clone(), self.cm.clone()))
    }
}

//! Listeners: RDMA CM ids bound and listening on the app thread. One event channel
//! serves the transport's listeners and connections; its descriptor is watched by the
//! reactor, so a sleeping reactor wakes when a host connects. Connect requests are
//! checked here (NVMe/RDMA 1.0 §3.1) and sent, accepted or not, to a poll group; the
//! events of an established connection go to the poll group that holds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::reactor::{PollStatus, PollerId, ThreadCtx, ThreadHandle};
use peerless_core::{log_debug, log_warn};
use spdk_sys::rdma::nvme::{CmRequest, RejectStatus};
use spdk_sys::rdma::{CmEvent, CmEventKind, CmId};

use super::device::{Cm, Device};
use super::events::QueuePairs;
use super::poll_group::RdmaPollGroup;
use super::TRTYPE;
use crate::nvmf::transport::{TransportListener, TransportOptions};
use crate::nvmf::{poll_group, NvmfTarget};

/// Events handled per poll, so a storm of connects cannot hold the app thread.
const EVENTS_PER_POLL: usize = 32;

/// The transport's RDMA CM state, made at the first listen.
pub struct CmState {
    pub cm: Cm,
    /// The poll group serving each connection, by the token its events carry.
    pub routes: Mutex<HashMap<u64, ThreadHandle>>,
    /// Listening ids' tokens and their addresses.
    listeners: Mutex<HashMap<u64, SocketAddr>>,
    /// The event channel's poller on the app thread.
    poller: Mutex<Option<PollerId>>,
    /// The queue pairs of the transport's queues, for the devices' asynchronous events.
    pub qps: QueuePairs,
    /// Devices whose asynchronous events are watched, by name, with their pollers.
    pub(super) async_watched: Mutex<Vec<(String, PollerId)>>,
}

/// What a poll group needs to take a connection the listener let in.
pub struct NewConnection {
    pub id: CmId,
    pub token: u64,
    pub device: Arc<Device>,
    pub request: CmRequest,
    /// Commands the queue takes at once: the host's sizes, the target's and the device's.
    pub depth: u16,
    /// RDMA READs this side may have outstanding on the queue pair.
    pub read_depth: u8,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl CmState {
    pub fn open(pool: &'static crate::nvmf::buffers::DataPool) -> Result<Arc<CmState>, String> {
        Ok(Arc::new(CmState {
            cm: Cm::open(pool)?,
            routes: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            poller: Mutex::new(None),
            qps: QueuePairs::default(),
            async_watched: Mutex::new(Vec::new()),
        }))
    }

    /// Watches the event channel from the calling (app) thread, once.
    fn watch(
        self: &Arc<Self>,
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        opts: Arc<TransportOptions>,
    ) -> Result<(), String> {
        let period_us = u64::from(opts.acceptor_poll_rate).max(1);
        // Devices opened since the last listen are watched too.
        self.watch_devices(ctx, target, period_us);
        let mut poller = self.poller.lock();
        if poller.is_some() {
            return Ok(());
        }
        let (state, target) = (self.clone(), target.clone());
        let watching = ctx
            .fd_poller("nvmf_rdma_cm_events", self.cm.channel.fd(), period_us, move |_| {
                let mut handled = 0;
                while handled < EVENTS_PER_POLL {
                    match state.cm.channel.get_event() {
                        Ok(Some(event)) => {
                            handled += 1;
                            state.on_event(&target, &opts, event);
                        }
                        Ok(None) => break,
                        Err(err) => {
                            log_warn!("RDMA CM event channel: {err}");
                            break;
                        }
                    }
                }
                PollStatus::from_work(handled > 0)
            })
            .map_err(|err| format!("cannot watch the RDMA CM event channel: {err}"))?;
        *poller = Some(watching.detach());
        Ok(())
    }

    fn on_event(&self, target: &NvmfTarget, opts: &TransportOptions, event: CmEvent) {
        log_debug!(peerless_core::log::flags::NVMF, "RDMA CM event {:?} for {}", event.kind, event.token);
        if event.kind == CmEventKind::ConnectRequest {
            return self.connect_request(target, opts, event);
        }
        if let Some(addr) = self.listeners.lock().get(&event.token) {
            // A listener's own events: its device went away, or its address changed.
            log_warn!("RDMA listener {addr}: {:?}", event.kind);
            return;
        }
        let Some(thread) = self.routes.lock().get(&event.token).cloned() else { return };
        let (token, kind, target) = (event.token, event.kind, target.clone());
        let _ = thread.send(move |ctx| {
            let Some(transport) = target.transport(TRTYPE) else { return };
            poll_group::with(&target, ctx, |group, ctx| {
                group.with_transport(ctx, &transport, |part, ctx, group| {
                    if let Some(rdma) = part.as_any_mut().downcast_mut::<RdmaPollGroup>() {
                        rdma.cm_event(ctx, group, token, kind);
                    }
                })
            });
        });
    }

    fn connect_request(&self, target: &NvmfTarget, opts: &TransportOptions, event: CmEvent) {
        let Some(local) = self.listeners.lock().get(&event.token).copied() else { return };
        let Some(id) = event.new_id else { return };
        let reject = |id: CmId, status: RejectStatus| {
            log_warn!("RDMA listener {local}: refusing a connection: {status}");
            let _ = id.reject(&spdk_sys::rdma::nvme::CmReject { status }.encode());
        };
        let request = match CmRequest::decode(event.private_data.as_slice()) {
            Ok(request) => request,
            Err(status) => return reject(id, status),
        };
        // The host must let the controller read its memory: that is how write data
        // arrives (NVMe/RDMA 1.0 §3.1).
        if event.initiator_depth == 0 {
            return reject(id, RejectStatus::InvalidIrd);
        }
        let device = match self.cm.device_of(&id) {
            Ok(device) => device,
            Err(err) => {
                log_warn!("RDMA listener {local}: {err}");
                return reject(id, RejectStatus::NoResources);
            }
        };
        // As SPDK: the smallest of the target's depth, the device's work requests, the
        // host's receive entries (HRQSIZE) and its submission queue (HSQSIZE is 0's based).
        let target_depth =
            if request.qid == 0 { opts.max_aq_depth.min(u32::from(u16::MAX)) as u16 } else { opts.max_queue_depth };
        let device_depth = u16::try_from(device.attr.max_qp_wr.max(1) / 3).unwrap_or(u16::MAX);
        let depth = target_depth.min(device_depth).min(request.hrqsize).min(request.hsqsize.saturating_add(1));
        if depth == 0 {
            return reject(id, RejectStatus::InvalidHrqsize);
        }
        let read_depth = (depth.min(255) as u8)
            .min(u8::try_from(device.attr.max_qp_init_rd_atom.max(1)).unwrap_or(u8::MAX))
            .min(event.initiator_depth);
        let Some(group) = target.pick_poll_group() else { return reject(id, RejectStatus::NoResources) };
        let token = target.next_conn_id();
        let mut id = id;
        id.set_token(token);
        self.routes.lock().insert(token, group.clone());
        let peer = id.peer_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = NewConnection { id, token, device, request, depth, read_depth: read_depth.max(1), local, peer };
        let target = target.clone();
        let sent = group.send(move |ctx| {
            let Some(transport) = target.transport(TRTYPE) else { return };
            poll_group::with(&target, ctx, |group, ctx| {
                group.with_transport(ctx, &transport, |part, ctx, _| {
                    if let Some(rdma) = part.as_any_mut().downcast_mut::<RdmaPollGroup>() {
                        rdma.add_conn(ctx, &target, &transport, conn);
                    }
                })
            });
        });
        if sent.is_err() {
            self.routes.lock().remove(&token);
        }
    }
}

/// One listening address.
pub struct Listener {
    addr: SocketAddr,
    token: u64,
    state: Arc<CmState>,
    /// Dropping it stops listening.
    _id: CmId,
}

impl Listener {
    pub fn bind(
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        state: &Arc<CmState>,
        opts: Arc<TransportOptions>,
        addr: SocketAddr,
        backlog: i32,
    ) -> Result<Listener, String> {
        state.watch(ctx, target, opts)?;
        let token = target.next_conn_id();
        let id = state.cm.channel.create_id(token).map_err(|err| err.to_string())?;
        id.bind(addr).map_err(|err| err.to_string())?;
        id.listen(backlog).map_err(|err| err.to_string())?;
        let bound = SocketAddr::new(addr.ip(), id.local_port());
        state.listeners.lock().insert(token, bound);
        peerless_core::log_notice!("NVMe/RDMA target listening on {bound}");
        Ok(Listener { addr: bound, token, state: state.clone(), _id: id })
    }
}

impl TransportListener for Listener {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening; connections already made stay.
    fn stop(self: Box<Self>, _: &mut ThreadCtx) {
        self.state.listeners.lock().remove(&self.token);
    }
}

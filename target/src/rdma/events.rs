//! A device's asynchronous events (`ibv_get_async_event`), watched on the app thread
//! through each device's event descriptor, as SPDK's RDMA transport does: a queue pair
//! gone to the error state ends its queue; a fatal device error or a port error ends
//! every queue on that device; the rest is logged. A queue is ended on its poll group's
//! thread, as for the RDMA CM's events, and goes once its posted requests are back.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::reactor::{PollStatus, ThreadCtx};
use peerless_core::{log_debug, log_error, log_notice, log_warn};
use spdk_sys::rdma::{AsyncElement, AsyncEvent, AsyncEventKind};

use super::device::Device;
use super::listener::CmState;
use super::poll_group::RdmaPollGroup;
use super::TRTYPE;
use crate::nvmf::{poll_group, NvmfTarget};

/// Events handled per poll of one device.
const EVENTS_PER_POLL: usize = 16;

/// What an event asks of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// End the queue on this queue pair.
    EndQueue(u32),
    /// End every queue on the device.
    EndDevice,
    /// Nothing but a log line (at notice level when `notice`, else debug).
    Log { notice: bool },
}

/// The transport's answer to `event`, as SPDK's `nvmf_process_ib_event`: a queue pair's
/// fatal, request or access error moves it to the error state (InfiniBand's QP state
/// rules), so its queue ends; a device that failed, or whose port went down, can carry
/// none of its queues; the others change nothing here.
pub fn respond(event: AsyncEvent) -> Response {
    use AsyncEventKind as Kind;
    match (event.kind, event.element) {
        (Kind::QpFatal | Kind::QpRequestError | Kind::QpAccessError, AsyncElement::Qp(qp_num)) => {
            Response::EndQueue(qp_num)
        }
        (Kind::DeviceFatal | Kind::PortError, _) => Response::EndDevice,
        (Kind::QpLastWqeReached | Kind::SqDrained | Kind::CommEstablished, _) => Response::Log { notice: false },
        _ => Response::Log { notice: true },
    }
}

/// The queue pairs of the transport's queues, for events that name a queue pair or a
/// device: by QP number, the queue's token and its device's name.
#[derive(Default)]
pub struct QueuePairs(Mutex<HashMap<u32, (u64, String)>>);

impl QueuePairs {
    pub fn insert(&self, qp_num: u32, token: u64, device: String) {
        self.0.lock().insert(qp_num, (token, device));
    }

    pub fn remove(&self, qp_num: u32) {
        self.0.lock().remove(&qp_num);
    }

    fn token_of(&self, qp_num: u32) -> Option<u64> {
        self.0.lock().get(&qp_num).map(|(token, _)| *token)
    }

    fn tokens_on(&self, device: &str) -> Vec<u64> {
        self.0.lock().values().filter(|(_, name)| name == device).map(|(token, _)| *token).collect()
    }
}

impl CmState {
    /// Watches the asynchronous events of every device opened so far, from the calling
    /// (app) thread; each device once.
    pub(super) fn watch_devices(self: &Arc<Self>, ctx: &mut ThreadCtx, target: &NvmfTarget, period_us: u64) {
        let mut watched = self.async_watched.lock();
        for device in self.cm.opened() {
            let name = device.name();
            if watched.iter().any(|(watching, _)| *watching == name) {
                continue;
            }
            let (state, target, watched_device) = (self.clone(), target.clone(), device.clone());
            let poller = ctx.fd_poller("nvmf_rdma_async_events", device.context.async_fd(), period_us, move |_| {
                state.poll_async_events(&target, &watched_device)
            });
            match poller {
                Ok(poller) => watched.push((name, poller.detach())),
                Err(err) => log_warn!("RDMA device {name}: cannot watch its asynchronous events: {err}"),
            }
        }
    }

    fn poll_async_events(&self, target: &NvmfTarget, device: &Device) -> PollStatus {
        let mut handled = 0;
        while handled < EVENTS_PER_POLL {
            match device.context.get_async_event() {
                Ok(Some(event)) => {
                    handled += 1;
                    self.on_async_event(target, device, event);
                }
                Ok(None) => break,
                Err(err) => {
                    log_warn!("RDMA device {}: {err}", device.name());
                    break;
                }
            }
        }
        PollStatus::from_work(handled > 0)
    }

    fn on_async_event(&self, target: &NvmfTarget, device: &Device, event: AsyncEvent) {
        let name = device.name();
        let what = format!("RDMA device {name}: asynchronous event {:?} ({:?})", event.kind, event.element);
        let tokens = match respond(event) {
            Response::Log { notice: true } => return log_notice!("{what}"),
            Response::Log { notice: false } => {
                return log_debug!(peerless_core::log::flags::NVMF, "{what}");
            }
            Response::EndQueue(qp_num) => match self.qps.token_of(qp_num) {
                Some(token) => {
                    log_warn!("{what}: ending its queue");
                    vec![token]
                }
                None => return log_notice!("{what}: not a queue pair of this target"),
            },
            Response::EndDevice => {
                let tokens = self.qps.tokens_on(&name);
                log_error!("{what}: ending its {} queues", tokens.len());
                tokens
            }
        };
        for token in tokens {
            let Some(thread) = self.routes.lock().get(&token).cloned() else { continue };
            let (target, why) = (target.clone(), format!("{:?} on {name}", event.kind));
            let _ = thread.send(move |ctx| {
                let Some(transport) = target.transport(TRTYPE) else { return };
                poll_group::with(&target, ctx, |group, ctx| {
                    group.with_transport(ctx, &transport, |part, _, _| {
                        if let Some(rdma) = part.as_any_mut().downcast_mut::<RdmaPollGroup>() {
                            rdma.end_queue(token, &why);
                        }
                    })
                });
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: AsyncEventKind, element: AsyncElement) -> AsyncEvent {
        AsyncEvent { kind, element }
    }

    #[test]
    fn a_queue_pair_in_error_ends_its_queue_only() {
        for kind in [AsyncEventKind::QpFatal, AsyncEventKind::QpRequestError, AsyncEventKind::QpAccessError] {
            assert_eq!(respond(event(kind, AsyncElement::Qp(0x11))), Response::EndQueue(0x11), "{kind:?}");
        }
    }

    #[test]
    fn a_failed_device_or_port_ends_every_queue_on_it() {
        assert_eq!(respond(event(AsyncEventKind::DeviceFatal, AsyncElement::Device)), Response::EndDevice);
        assert_eq!(respond(event(AsyncEventKind::PortError, AsyncElement::Port(1))), Response::EndDevice);
    }

    #[test]
    fn other_events_are_logged() {
        for (kind, element, notice) in [
            (AsyncEventKind::QpLastWqeReached, AsyncElement::Qp(3), false),
            (AsyncEventKind::SqDrained, AsyncElement::Qp(3), false),
            (AsyncEventKind::CommEstablished, AsyncElement::Qp(3), false),
            (AsyncEventKind::PortActive, AsyncElement::Port(1), true),
            (AsyncEventKind::GidChange, AsyncElement::Port(1), true),
            (AsyncEventKind::CqError, AsyncElement::Cq, true),
            (AsyncEventKind::SrqLimitReached, AsyncElement::Srq, true),
            (AsyncEventKind::Other(99), AsyncElement::Device, true),
        ] {
            assert_eq!(respond(event(kind, element)), Response::Log { notice }, "{kind:?}");
        }
    }

    #[test]
    fn queue_pairs_are_found_by_number_and_by_device() {
        let qps = QueuePairs::default();
        qps.insert(10, 100, "rxe0".into());
        qps.insert(11, 101, "rxe0".into());
        qps.insert(12, 102, "mlx5_0".into());
        assert_eq!(qps.token_of(11), Some(101));
        let mut on_rxe = qps.tokens_on("rxe0");
        on_rxe.sort_unstable();
        assert_eq!(on_rxe, vec![100, 101]);
        qps.remove(10);
        assert_eq!((qps.token_of(10), qps.tokens_on("rxe0")), (None, vec![101]));
        assert!(qps.tokens_on("other").is_empty());
    }
}

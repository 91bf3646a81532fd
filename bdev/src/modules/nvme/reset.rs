//! Controller reset, as SPDK's bdev_nvme does it for PCIe: every channel stops
//! submitting (a message to each thread holding one), the controller is disabled and
//! enabled again with its admin queue from the start (CC.EN 1 to 0 deletes every I/O
//! queue and stops the controller's DMA, NVMe Base 2.0 §3.7.2), Number of Queues is set
//! again, and each channel creates its queue pair again on its own thread and submits
//! what was in flight once more. The register waits run on a thread of their own: they
//! can take up to CAP.TO, which no reactor may spend.

use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::reactor::ThreadCtx;

use super::controller::Controller;

type Done = Box<dyn FnOnce(&mut ThreadCtx, Result<(), String>) + Send>;

/// Resets `ctrlr`; `done` runs on the calling thread when every channel is back (or the
/// reset failed, and their I/O fails). A reset under way refuses a second one.
pub fn reset_controller(
    ctx: &mut ThreadCtx,
    ctrlr: Arc<Controller>,
    done: impl FnOnce(&mut ThreadCtx, Result<(), String>) + Send + 'static,
) {
    let bdf = ctrlr.pci().bdf().to_string();
    if ctrlr.is_gone() {
        return done(ctx, Err(format!("{bdf}: the device is gone")));
    }
    if !ctrlr.begin_reset() {
        return done(ctx, Err(format!("{bdf}: a reset is under way")));
    }
    peerless_core::log_notice!("nvme {bdf}: resetting the controller");
    let origin = ctx.handle();
    let threads = ctrlr.threads().clone();
    let done: Arc<Mutex<Option<Done>>> = Arc::new(Mutex::new(Some(Box::new(done))));
    threads.for_each_channel(
        ctx,
        |_, channels| channels.begin_reset(),
        move |ctx| {
            let (worker, carried) = (ctrlr.clone(), done.clone());
            let spawned = std::thread::Builder::new().name("nvme-reset".into()).spawn(move || {
                let result = worker.reenable();
                let back = worker.clone();
                // Refused only when the app is stopping; the channels go with it.
                let _ = origin.send(move |ctx| finish(ctx, back, result, carried));
            });
            if let Err(err) = spawned {
                finish(ctx, ctrlr, Err(format!("cannot start the reset thread: {err}")), done);
            }
        },
    );
}

fn finish(ctx: &mut ThreadCtx, ctrlr: Arc<Controller>, result: Result<(), String>, done: Arc<Mutex<Option<Done>>>) {
    let reenabled = result.is_ok();
    let bdf = ctrlr.pci().bdf().to_string();
    if let Err(err) = &result {
        peerless_core::log_error!("nvme {bdf}: the reset failed: {err}; its I/O fails");
    }
    let threads = ctrlr.threads().clone();
    threads.for_each_channel(
        ctx,
        move |_, channels| channels.end_reset(reenabled),
        move |ctx| {
            ctrlr.end_reset();
            if reenabled {
                peerless_core::log_notice!(
                    "nvme {bdf}: reset done, I/O queues created again ({} I/Os resubmitted since attach)",
                    ctrlr.resubmitted()
                );
            }
            if let Some(done) = done.lock().take() {
                done(ctx, result);
            }
        },
    );
}

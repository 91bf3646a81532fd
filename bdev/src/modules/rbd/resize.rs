//! An RBD bdev's size at run time. `bdev_rbd_resize` grows the image (SPDK's method and
//! rule: `new_size` in MiB, never smaller than now), and a header watch on every image
//! notices a resize made by any other client (`rbd resize`, or a second target over the
//! same image). Either way the bdev layer hears the new block count
//! (`BdevManager::notify_resize`) and passes it to whoever has the bdev open: the NVMe-oF
//! target raises a Namespace Attribute Changed notice, and hosts read the new size.
//!
//! librbd blocks while it resizes or re-reads a changed header, so both run on a thread
//! of their own, never on a reactor; only the bdev layer's update runs on the app thread.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use peerless_core::reactor::{ThreadCtx, ThreadHandle};
use peerless_core::rpc::{Responder, RpcError};
use serde::Deserialize;

use super::{cluster, RbdBdev, MODULE_NAME};
use crate::manager::{BdevManager, WeakBdevManager};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResizeParams {
    name: String,
    /// The image's new size in MiB, as SPDK takes it.
    new_size: u64,
}

/// Where a size change is reported: the registry, through the app thread.
#[derive(Clone)]
pub(super) struct SizeReporter {
    manager: WeakBdevManager,
    app_thread: ThreadHandle,
    /// Held from reading the image's size until the update is queued to the app thread,
    /// so updates reach the registry in the order their sizes were read and a stale
    /// read cannot undo a newer one.
    order: Arc<Mutex<()>>,
}

impl SizeReporter {
    pub(super) fn new(manager: &BdevManager, app_thread: ThreadHandle) -> SizeReporter {
        SizeReporter { manager: manager.downgrade(), app_thread, order: Arc::default() }
    }

    /// Reads the image's size (blocking: call off the reactors) and has the app thread
    /// tell the registry; `then` runs there after, with the outcome.
    fn report(
        &self,
        bdev: &RbdBdev,
        then: impl FnOnce(&mut ThreadCtx, Result<u64, RpcError>) + Send + 'static,
    ) -> Result<(), RpcError> {
        let _ordered = self.order.lock();
        let facts = bdev
            .image
            .facts()
            .map_err(|err| RpcError::errno(cluster::errno(err.errno), format!("bdev '{}': {err}", bdev.info.name)))?;
        let num_blocks = facts.size_bytes / u64::from(bdev.info.block_size);
        let (name, spec, manager) = (bdev.info.name.clone(), bdev.image.spec().to_string(), self.manager.clone());
        let sent = self.app_thread.send(move |ctx| {
            let Some(manager) = manager.upgrade() else { return };
            let outcome = manager.notify_resize(Some(ctx), &name, num_blocks).map(|()| num_blocks).map_err(|err| {
                peerless_core::log_warn!(
                    "rbd: image {spec} now holds {} bytes ({num_blocks} blocks) but bdev '{name}' keeps its size: {err}; \
                     I/O past the image's end fails",
                    facts.size_bytes
                );
                RpcError::from(err)
            });
            then(ctx, outcome);
        });
        sent.map_err(|_| RpcError::internal("the app thread is gone (shutting down)"))
    }
}

/// Watches the bdev's image: each header change re-reads its size on a short-lived thread.
pub(super) fn watch(bdev: &Arc<RbdBdev>) -> Result<(), RpcError> {
    let weak: Weak<RbdBdev> = Arc::downgrade(bdev);
    bdev.image
        .watch_updates(move || {
            // On librbd's thread, which must not wait on librbd: re-read elsewhere.
            let weak = weak.clone();
            let spawned = std::thread::Builder::new().name("rbd-size".into()).spawn(move || {
                let Some(bdev) = weak.upgrade() else { return };
                if let Err(err) = bdev.sizes.report(&bdev, |_, _| {}) {
                    peerless_core::log_warn!("rbd: bdev '{}' missed a header change: {}", bdev.info.name, err.message);
                }
            });
            if let Err(err) = spawned {
                peerless_core::log_warn!("rbd: no thread to re-read an image's size ({err})");
            }
        })
        .map_err(|err| RpcError::errno(cluster::errno(err.errno), format!("bdev '{}': {err}", bdev.info.name)))
}

/// `bdev_rbd_resize`: grows the image, then answers once the bdev has the new size.
pub(super) fn resize(manager: &BdevManager, params: ResizeParams, responder: Responder) {
    let bdev = match manager.get_as::<RbdBdev>(&params.name, MODULE_NAME) {
        Ok(bdev) => bdev,
        Err(err) => return responder.err(err.into()),
    };
    let block_size = u64::from(bdev.info.block_size);
    let current = manager.num_blocks(&params.name).unwrap_or(bdev.info.num_blocks) * block_size;
    let Some(new_bytes) = params.new_size.checked_mul(1 << 20) else {
        return responder.err(RpcError::invalid_params(format!("new_size: {} MiB is too large", params.new_size)));
    };
    if new_bytes < current {
        return responder.err(RpcError::invalid_params(format!(
            "new_size: {} MiB is smaller than bdev '{}' now ({current} bytes); an RBD bdev only grows",
            params.new_size, params.name
        )));
    }
    let spawned = std::thread::Builder::new().name("rbd-resize".into()).spawn(move || {
        if let Err(err) = bdev.image.resize(new_bytes) {
            let message = format!("bdev '{}': {err}", bdev.info.name);
            return responder.err(RpcError::errno(cluster::errno(err.errno), message));
        }
        // The responder goes to whichever of these runs: the report, or its failure.
        let responder = Arc::new(Mutex::new(Some(responder)));
        let answer = responder.clone();
        let reported = bdev.sizes.report(&bdev, move |_, outcome| {
            if let Some(responder) = answer.lock().take() {
                match outcome {
                    Ok(_) => responder.ok_true(),
                    Err(err) => responder.err(err),
                }
            }
        });
        if let Err(err) = reported {
            let unanswered = responder.lock().take();
            if let Some(responder) = unanswered {
                responder.err(err);
            }
        }
    });
    if let Err(err) = spawned {
        peerless_core::log_error!("rbd: no thread to resize an image ({err})");
    }
}

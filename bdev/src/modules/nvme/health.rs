//! The app thread's watch of each attached controller, every half second: it reaps the
//! controller's asynchronous events (`aer`); one removed from the bus (gone from sysfs, or
//! its registers reading all ones) is detached, its bdevs unregistered, which tells their
//! openers; one reporting a fatal status is reset. Over VFIO the kernel's device request
//! says a removal is coming before the device goes.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::reactor::{PollStatus, ThreadCtx};

use super::controller::Controller;
use super::rpc::{Attached, Controllers};
use super::{reset_controller, MODULE_NAME};
use crate::error::BdevError;
use crate::manager::BdevManager;

/// How often the app thread looks at each controller's status register.
const HEALTH_PERIOD_US: u64 = 500_000;

/// Watches an attached controller from the app thread until it is detached: a removed
/// device is detached here (the NVMe-oF namespaces on its bdevs go with them), a fatal
/// status reset. Over VFIO the kernel asks for the device first (its device request):
/// the controller is detached while it still answers, so it shuts down cleanly and the
/// descriptor closes, which lets the kernel's remove finish.
pub(super) fn watch_health(
    ctx: &mut ThreadCtx,
    bdevs: &BdevManager,
    controllers: &Controllers,
    name: &str,
    ctrlr: &Arc<Controller>,
) {
    let watched = Watched {
        ctrlr: Arc::downgrade(ctrlr),
        bdevs: bdevs.downgrade(),
        controllers: Arc::downgrade(controllers),
        name: name.to_string(),
    };
    if let Some(request) = ctrlr.pci().removal_request() {
        match request {
            Ok(eventfd) => watch_removal_request(ctx, watched.clone(), std::fs::File::from(eventfd)),
            Err(err) => peerless_core::log_warn!("nvme {name}: no removal notice from VFIO: {err}"),
        }
    }
    let poller = ctx.poller(&format!("nvme_health_{name}"), HEALTH_PERIOD_US, move |ctx| {
        let Some((ctrlr, names)) = watched.current() else { return PollStatus::Done };
        let Some(ctrlr) = ctrlr else { return PollStatus::Idle };
        let removed = ctrlr.is_gone() || !ctrlr.pci().present() || ctrlr.registers_gone();
        if !removed {
            if ctrlr.is_resetting() {
                return PollStatus::Idle;
            }
            super::aer::handle_events(ctx, &watched, &ctrlr);
            if ctrlr.fatal_status() {
                peerless_core::log_error!(
                    "nvme {}: controller fatal status (CSTS.CFS); resetting it",
                    ctrlr.pci().bdf()
                );
                reset_controller(ctx, ctrlr, |_, _| {});
            }
            return PollStatus::Idle;
        }
        ctrlr.mark_gone();
        watched.hot_removed(ctx, ctrlr, &names, "gone from the bus");
        PollStatus::Done
    });
    poller.detach();
}

fn watch_removal_request(ctx: &mut ThreadCtx, watched: Watched, eventfd: std::fs::File) {
    let eventfd = std::rc::Rc::new(eventfd);
    let held = eventfd.clone();
    let name = format!("nvme_removal_{}", watched.name);
    let registered = ctx.fd_poller(&name, std::os::fd::AsFd::as_fd(&*eventfd), HEALTH_PERIOD_US, move |ctx| {
        let Some((ctrlr, names)) = watched.current() else { return PollStatus::Done };
        let Some(ctrlr) = ctrlr else { return PollStatus::Idle };
        let mut count = [0u8; 8];
        if std::io::Read::read(&mut &*held, &mut count).is_err() {
            return PollStatus::Idle;
        }
        watched.hot_removed(ctx, ctrlr, &names, "the kernel asks for the device back");
        PollStatus::Done
    });
    match registered {
        Ok(poller) => {
            poller.detach();
        }
        Err(err) => peerless_core::log_warn!("{name}: cannot watch for removal requests: {err}"),
    }
}

/// What the app thread's watches of one controller hold: nothing that keeps it alive.
#[derive(Clone)]
pub(super) struct Watched {
    ctrlr: std::sync::Weak<Controller>,
    pub(super) bdevs: crate::manager::WeakBdevManager,
    pub(super) controllers: std::sync::Weak<Mutex<BTreeMap<String, Option<Attached>>>>,
    pub(super) name: String,
}

impl Watched {
    /// The controller (None while its attach finishes) and its bdevs; None once it is
    /// detached or its name taken by another.
    #[allow(clippy::type_complexity)]
    pub(super) fn current(&self) -> Option<(Option<Arc<Controller>>, Vec<String>)> {
        let (ctrlr, controllers) = (self.ctrlr.upgrade()?, self.controllers.upgrade()?);
        let controllers = controllers.lock();
        match controllers.get(&self.name) {
            Some(Some(attached)) if Arc::ptr_eq(&attached.ctrlr, &ctrlr) => Some((Some(ctrlr), attached.bdevs.clone())),
            // Its entry is filled in right after the watch starts.
            Some(None) => Some((None, Vec::new())),
            None | Some(Some(_)) => None,
        }
    }

    /// Logs the removal and detaches the controller, letting go of it first.
    fn hot_removed(&self, ctx: &mut ThreadCtx, ctrlr: Arc<Controller>, names: &[String], why: &str) {
        peerless_core::log_error!(
            "nvme {}: hot-removed ({why}): removing controller {} and its bdevs {}",
            ctrlr.pci().bdf(),
            self.name,
            names.join(", ")
        );
        drop(ctrlr);
        self.remove(ctx, names);
    }

    /// Unregisters the controller's bdevs (their openers are told), which detaches it.
    fn remove(&self, ctx: &mut ThreadCtx, names: &[String]) {
        if let Some(bdevs) = self.bdevs.upgrade() {
            for bdev in names {
                match bdevs.unregister_by_name(Some(ctx), bdev, MODULE_NAME) {
                    Ok(()) | Err(BdevError::NotFound(_)) => {}
                    Err(err) => peerless_core::log_error!("nvme {}: unregister {bdev}: {err}", self.name),
                }
            }
        }
        if let Some(controllers) = self.controllers.upgrade() {
            let mut controllers = controllers.lock();
            if matches!(controllers.get(&self.name), Some(Some(attached)) if attached.bdevs.is_empty()) {
                controllers.remove(&self.name);
            }
        }
    }
}

//! The `bdev` framework subsystem: its config for `save_config` and the removal of every
//! bdev at shutdown, stacked bdevs before their bases.

use peerless_core::reactor::{FiniDone, Subsystem, ThreadCtx};
use serde_json::{json, Value};

use crate::manager::BdevManager;

pub struct BdevSubsystem {
    pub manager: BdevManager,
}

impl Subsystem for BdevSubsystem {
    fn name(&self) -> &'static str {
        "bdev"
    }

    fn fini(&self, ctx: &mut ThreadCtx, done: FiniDone) {
        for bdev in self.manager.list().into_iter().rev() {
            if let Err(err) = self.manager.unregister(Some(ctx), &bdev.info().name) {
                peerless_core::log_warn!("shutdown: {err}");
            }
        }
        done(ctx);
    }

    fn config(&self, _ctx: &mut ThreadCtx) -> Vec<Value> {
        let mut entries: Vec<Value> = Vec::new();
        // Clusters first: the bdevs that name them replay after.
        #[cfg(feature = "rbd")]
        entries.extend(crate::modules::rbd::cluster_config_entries());
        // Driver options before the attaches they apply to.
        entries.extend(crate::modules::nvme::options_config_entry());
        entries.extend(self.manager.list().iter().filter_map(|bdev| bdev.config_entry()));
        for entry in self.manager.entries() {
            let limits = *entry.qos.lock();
            if !limits.is_unlimited() {
                entries.push(json!({"method": "bdev_set_qos_limit", "params": {
                    "name": entry.bdev.info().name, "rw_ios_per_sec": limits.rw_ios_per_sec,
                    "rw_mbytes_per_sec": limits.rw_mbytes_per_sec, "r_mbytes_per_sec": limits.r_mbytes_per_sec,
                    "w_mbytes_per_sec": limits.w_mbytes_per_sec,
                }}));
            }
        }
        entries.push(json!({"method": "bdev_wait_for_examine"}));
        entries
    }
}

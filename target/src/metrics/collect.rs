//! Gathering what `/metrics` exports, from the metrics thread. Every figure comes from
//! the RPC method an operator would call for it (`bdev_get_iostat`, `nvmf_get_stats`,
//! `thread_get_stats`, `mem_get_stats`, `nvmf_get_subsystems`,
//! `nvmf_subsystem_get_controllers`), dispatched through the same registry, so the
//! metrics and the RPCs cannot disagree and no second way of visiting poll groups
//! exists. Those methods run on the app thread and visit the poll group and channel
//! threads by message; this thread only waits for their answers.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use peerless_core::reactor::AppHandle;
use peerless_core::rpc::{Registry, Responder};
use serde_json::{json, Value};

use crate::nvmf::NvmfTarget;

/// How long one method may take to answer before the scrape fails with 503. The target
/// answers in microseconds; this bounds a scrape while the app thread is stuck or gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics thread may ask.
#[derive(Clone)]
pub struct Sources {
    pub registry: Arc<Registry>,
    pub app: AppHandle,
    pub target: NvmfTarget,
}

/// One subsystem as `nvmf_get_subsystems` lists it, with its controllers.
pub struct SubsystemSnapshot {
    pub subsystem: Value,
    pub controllers: Value,
}

/// The answers of one scrape, as the RPC methods gave them.
pub struct Snapshot {
    pub iostat: Value,
    pub nvmf_stats: Value,
    pub threads: Value,
    pub mem: Value,
    pub subsystems: Vec<SubsystemSnapshot>,
    pub connect_refusals: Vec<(String, u64)>,
}

impl Sources {
    /// Calls one method and waits for its answer.
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let responder = Responder::new(method, move |reply| {
            let _ = tx.send(reply);
        });
        self.registry.call(&self.app, method, params, responder);
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(format!("{method}: {} (code {})", err.message, err.code)),
            Err(_) => Err(format!("{method}: no answer within {} s", CALL_TIMEOUT.as_secs())),
        }
    }

    /// The refusal counts, read on the app thread like every other control-plane table.
    fn connect_refusals(&self) -> Result<Vec<(String, u64)>, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let target = self.target.clone();
        self.app
            .app_thread()
            .send_blocking(move |_| {
                let _ = tx.send(target.0.connect_refusals.snapshot());
            })
            .map_err(|_| "the app thread has exited".to_string())?;
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| "connect refusals: no answer from the app thread".to_string())
    }

    pub fn snapshot(&self) -> Result<Snapshot, String> {
        let subsystems = self.call("nvmf_get_subsystems", None)?;
        let mut with_controllers = Vec::new();
        for subsystem in subsystems.as_array().into_iter().flatten() {
            let Some(nqn) = subsystem["nqn"].as_str() else { continue };
            // A subsystem deleted between the two calls is left out of this scrape.
            if let Ok(controllers) = self.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": nqn}))) {
                with_controllers.push(SubsystemSnapshot { subsystem: subsystem.clone(), controllers });
            }
        }
        Ok(Snapshot {
            iostat: self.call("bdev_get_iostat", None)?,
            nvmf_stats: self.call("nvmf_get_stats", None)?,
            threads: self.call("thread_get_stats", None)?,
            mem: self.call("mem_get_stats", None)?,
            subsystems: with_controllers,
            connect_refusals: self.connect_refusals()?,
        })
    }
}

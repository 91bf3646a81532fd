//! `bdev_nvme_attach_controller`, `bdev_nvme_detach_controller`,
//! `bdev_nvme_get_controllers` and `bdev_nvme_reset_controller` for PCIe controllers,
//! with SPDK's names and shapes (`bdev_nvme_send_cmd` is in `send_cmd`).
//!
//! Bringing a controller up polls registers and admin commands for milliseconds to
//! seconds, so attach runs on a thread of its own and registers the bdevs back on the
//! app thread, where `health` watches each attached controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use nix::errno::Errno;
use parking_lot::Mutex;
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use super::controller::{Controller, DEFAULT_IO_QUEUES};
use super::{canonical_bdf, reset_controller, NvmeBdev, MODULE_NAME};
use crate::error::BdevError;
use crate::manager::BdevManager;
use crate::modules::BdevModule;

pub(super) struct Attached {
    pub(super) ctrlr: Arc<Controller>,
    pub(super) bdevs: Vec<String>,
    /// The attach's max_bdevs, which namespaces that appear later count against too.
    pub(super) max_bdevs: usize,
}

/// The attached controllers by name; None while an attach is under way. A controller
/// leaves when its last bdev does (detach, or shutdown), and shuts down once the last
/// channel on it is gone too.
pub(super) type Controllers = Arc<Mutex<BTreeMap<String, Option<Attached>>>>;

/// A namespace bdev's destruct: its controller forgets it, and is forgotten with its last.
/// A bdev whose namespace went away was taken off the list before, and leaves the
/// controller attached.
pub(super) fn forget_bdev(controllers: &Controllers, ctrlr_name: &str, bdev: &str) {
    let mut controllers = controllers.lock();
    let Some(Some(attached)) = controllers.get_mut(ctrlr_name) else { return };
    let listed = attached.bdevs.len();
    attached.bdevs.retain(|name| name != bdev);
    if attached.bdevs.len() < listed && attached.bdevs.is_empty() {
        controllers.remove(ctrlr_name);
    }
}

#[derive(Default)]
pub struct NvmeModule {
    /// By controller name; None while an attach is under way.
    controllers: Controllers,
}

/// SPDK's attach parameters. Those that only mean something over a fabric are named
/// so that a PCIe attach can refuse them by name instead of ignoring them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachParams {
    name: String,
    trtype: String,
    traddr: String,
    num_io_queues: Option<u32>,
    max_bdevs: Option<u32>,
    adrfam: Option<Value>,
    trsvcid: Option<Value>,
    priority: Option<Value>,
    subnqn: Option<Value>,
    hostnqn: Option<Value>,
    hostaddr: Option<Value>,
    hostsvcid: Option<Value>,
    prchk_reftag: Option<Value>,
    prchk_guard: Option<Value>,
    hdgst: Option<Value>,
    ddgst: Option<Value>,
    fabrics_connect_timeout_us: Option<Value>,
    multipath: Option<Value>,
    ctrlr_loss_timeout_sec: Option<Value>,
    reconnect_delay_sec: Option<Value>,
    fast_io_fail_timeout_sec: Option<Value>,
    psk: Option<Value>,
    allow_unrecognized_csi: Option<Value>,
    disable_sq_flow_control: Option<Value>,
}

impl AttachParams {
    fn fabric_only_given(&self) -> Option<&'static str> {
        [
            ("adrfam", &self.adrfam),
            ("trsvcid", &self.trsvcid),
            ("priority", &self.priority),
            ("subnqn", &self.subnqn),
            ("hostnqn", &self.hostnqn),
            ("hostaddr", &self.hostaddr),
            ("hostsvcid", &self.hostsvcid),
            ("prchk_reftag", &self.prchk_reftag),
            ("prchk_guard", &self.prchk_guard),
            ("hdgst", &self.hdgst),
            ("ddgst", &self.ddgst),
            ("fabrics_connect_timeout_us", &self.fabrics_connect_timeout_us),
            ("multipath", &self.multipath),
            ("ctrlr_loss_timeout_sec", &self.ctrlr_loss_timeout_sec),
            ("reconnect_delay_sec", &self.reconnect_delay_sec),
            ("fast_io_fail_timeout_sec", &self.fast_io_fail_timeout_sec),
            ("psk", &self.psk),
            ("allow_unrecognized_csi", &self.allow_unrecognized_csi),
            ("disable_sq_flow_control", &self.disable_sq_flow_control),
        ]
        .into_iter()
        // rpc.py sends its flags switched off on every call: false asks for nothing.
        .find_map(|(name, value)| {
            value.as_ref().filter(|value| !value.is_null() && **value != Value::Bool(false)).map(|_| name)
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    trtype: Option<String>,
    traddr: Option<String>,
    adrfam: Option<Value>,
    trsvcid: Option<Value>,
    subnqn: Option<Value>,
    hostaddr: Option<Value>,
    hostsvcid: Option<Value>,
}

/// SPDK's reset parameters: the controller, and optionally which of its controllers
/// (a PCIe one has exactly one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetParams {
    name: String,
    cntlid: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GetParams {
    name: Option<String>,
}

/// The checked parameters of a PCIe attach.
#[derive(Debug)]
struct Attach {
    name: String,
    bdf: String,
    io_queues: u16,
    max_bdevs: usize,
}

fn check_attach(params: AttachParams) -> Result<Attach, RpcError> {
    if !params.trtype.eq_ignore_ascii_case("pcie") {
        return Err(RpcError::invalid_params(format!(
            "trtype {:?}: this driver attaches PCIe controllers only (trtype PCIe, traddr 0000:00:04.0)",
            params.trtype
        )));
    }
    if let Some(name) = params.fabric_only_given() {
        return Err(RpcError::invalid_params(format!("{name} applies to fabrics controllers, not PCIe")));
    }
    if params.name.is_empty() || params.name.contains(['/', ' ']) {
        return Err(RpcError::invalid_params(format!(
            "controller name {:?} is empty or has a space or slash",
            params.name
        )));
    }
    let bdf = canonical_bdf(&params.traddr).map_err(RpcError::invalid_params)?;
    let io_queues = match params.num_io_queues {
        None => DEFAULT_IO_QUEUES,
        Some(count @ 1..=65534) => count as u16,
        Some(count) => return Err(RpcError::invalid_params(format!("num_io_queues {count} is outside 1..=65534"))),
    };
    let max_bdevs = match params.max_bdevs {
        None => 128,
        Some(0) => return Err(RpcError::invalid_params("max_bdevs must be at least 1")),
        Some(count) => count as usize,
    };
    Ok(Attach { name: params.name, bdf, io_queues, max_bdevs })
}

impl BdevModule for NvmeModule {
    fn name(&self) -> &'static str {
        MODULE_NAME
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let controllers = self.controllers.clone();
        registry.method(
            "bdev_nvme_set_options",
            StateMask::ANY,
            move |_: &mut ThreadCtx, params: super::options::SetOptionsParams, responder| match super::options::set(
                params,
                !controllers.lock().is_empty(),
            ) {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err),
            },
        );
        let (bdevs, controllers) = (manager.clone(), self.controllers.clone());
        registry.method(
            "bdev_nvme_attach_controller",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: AttachParams, responder| {
                let attach = match check_attach(params) {
                    Ok(attach) => attach,
                    Err(err) => return responder.err(err),
                };
                if let Err(err) = reserve(&controllers, &bdevs, &attach) {
                    return responder.err(err);
                }
                let (name, reserved) = (attach.name.clone(), controllers.clone());
                let (bdevs, controllers, app_thread) = (bdevs.clone(), controllers.clone(), ctx.handle());
                let spawned = std::thread::Builder::new().name("nvme-attach".into()).spawn(move || {
                    let attached = Controller::attach(&attach.bdf, attach.io_queues).inspect(|ctrlr| {
                        ctrlr.timeouts().set(super::options::timeouts());
                    });
                    let name = attach.name.clone();
                    let finish = move |ctx: &mut ThreadCtx| match attached
                        .and_then(|ctrlr| register(&bdevs, &controllers, &attach, ctrlr))
                    {
                        Ok(done) => {
                            let names = done.bdevs.clone();
                            super::health::watch_health(ctx, &bdevs, &controllers, &attach.name, &done.ctrlr);
                            controllers.lock().insert(attach.name.clone(), Some(done));
                            peerless_core::log_notice!(
                                "nvme: attached {} at {}: {}",
                                attach.name,
                                attach.bdf,
                                names.join(", ")
                            );
                            responder.ok(names);
                        }
                        Err(err) => {
                            controllers.lock().remove(&attach.name);
                            responder.err(RpcError::errno(Errno::ENODEV, err));
                        }
                    };
                    // Refused only when the app is stopping; the dropped responder answers.
                    if app_thread.send(finish).is_err() {
                        peerless_core::log_error!("nvme: attach of {name} finished after the app stopped");
                    }
                });
                if let Err(err) = spawned {
                    // The responder went with the closure and answers with an error.
                    reserved.lock().remove(&name);
                    peerless_core::log_error!("nvme: cannot start the attach thread: {err}");
                }
            },
        );
        let (bdevs, controllers) = (manager.clone(), self.controllers.clone());
        registry.method(
            "bdev_nvme_detach_controller",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: DetachParams, responder| match detach(ctx, &controllers, &bdevs, params)
            {
                Ok(()) => responder.ok_true(),
                Err(err) => responder.err(err),
            },
        );
        let controllers = self.controllers.clone();
        registry.method(
            "bdev_nvme_reset_controller",
            StateMask::RUNTIME,
            move |ctx: &mut ThreadCtx, params: ResetParams, responder| {
                let ctrlr = match controllers.lock().get(&params.name) {
                    Some(Some(attached)) => attached.ctrlr.clone(),
                    _ => {
                        let why = format!("controller {} does not exist", params.name);
                        return responder.err(RpcError::errno(Errno::ENODEV, why));
                    }
                };
                if let Some(cntlid) = params.cntlid.filter(|cntlid| *cntlid != ctrlr.identity().cntlid) {
                    let why = format!("controller {} has no controller with cntlid {cntlid}", params.name);
                    return responder.err(RpcError::errno(Errno::ENODEV, why));
                }
                let refusal = if ctrlr.is_gone() {
                    Some(Errno::ENODEV)
                } else if ctrlr.is_resetting() {
                    Some(Errno::EBUSY)
                } else {
                    None
                };
                reset_controller(ctx, ctrlr, move |_, result| match result {
                    Ok(()) => responder.ok_true(),
                    Err(err) => responder.err(RpcError::errno(refusal.unwrap_or(Errno::EIO), err)),
                });
            },
        );
        super::send_cmd::register(registry, self.controllers.clone());
        let controllers = self.controllers.clone();
        registry.method(
            "bdev_nvme_get_controllers",
            StateMask::RUNTIME,
            move |_: &mut ThreadCtx, params: Option<GetParams>, responder| {
                let name = params.unwrap_or_default().name;
                let controllers = controllers.lock();
                let listed: Vec<Value> = controllers
                    .iter()
                    .filter(|(each, _)| name.as_deref().is_none_or(|name| name == each.as_str()))
                    .filter_map(|(each, attached)| attached.as_ref().map(|attached| controller_json(each, attached)))
                    .collect();
                match name {
                    Some(name) if listed.is_empty() => {
                        responder.err(RpcError::errno(Errno::ENODEV, format!("controller {name} does not exist")))
                    }
                    _ => responder.ok(listed),
                }
            },
        );
    }
}

/// Claims the name (and checks the address is free) before the slow part starts, so two
/// attaches cannot race for one.
fn reserve(controllers: &Controllers, bdevs: &BdevManager, attach: &Attach) -> Result<(), RpcError> {
    let mut controllers = controllers.lock();
    if controllers.contains_key(&attach.name) {
        return Err(RpcError::errno(Errno::EEXIST, format!("controller {} already exists", attach.name)));
    }
    if let Some((other, _)) = controllers
        .iter()
        .find(|(_, attached)| attached.as_ref().is_some_and(|attached| attached.ctrlr.pci().bdf() == attach.bdf))
    {
        return Err(RpcError::errno(Errno::EEXIST, format!("{} is already attached as {other}", attach.bdf)));
    }
    if bdevs.list().iter().any(|bdev| bdev.info().name.starts_with(&format!("{}n", attach.name))) {
        return Err(RpcError::errno(Errno::EEXIST, format!("bdevs named {}n* exist already", attach.name)));
    }
    controllers.insert(attach.name.clone(), None);
    Ok(())
}

fn register(
    bdevs: &BdevManager,
    controllers: &Controllers,
    attach: &Attach,
    ctrlr: Arc<Controller>,
) -> Result<Attached, String> {
    let mut names: Vec<String> = Vec::new();
    for ns in ctrlr.namespaces().iter().take(attach.max_bdevs) {
        let bdev = match NvmeBdev::new(&attach.name, ctrlr.clone(), ns, controllers.clone()) {
            Ok(bdev) => bdev,
            Err(err) => {
                peerless_core::log_error!("nvme {}: {err}; it gets no bdev", attach.name);
                continue;
            }
        };
        let name = bdev.info.name.clone();
        if let Err(err) = bdevs.register(Arc::new(bdev)) {
            for done in &names {
                let _ = bdevs.unregister_by_name(None, done, MODULE_NAME);
            }
            return Err(format!("register {name}: {err}"));
        }
        names.push(name);
    }
    Ok(Attached { ctrlr, bdevs: names, max_bdevs: attach.max_bdevs })
}

fn detach(
    ctx: &mut ThreadCtx,
    controllers: &Controllers,
    bdevs: &BdevManager,
    params: DetachParams,
) -> Result<(), RpcError> {
    let given = [
        ("adrfam", &params.adrfam),
        ("trsvcid", &params.trsvcid),
        ("subnqn", &params.subnqn),
        ("hostaddr", &params.hostaddr),
        ("hostsvcid", &params.hostsvcid),
    ];
    if let Some((name, _)) = given.iter().find(|(_, value)| value.as_ref().is_some_and(|value| !value.is_null())) {
        return Err(RpcError::invalid_params(format!("{name} applies to fabrics controllers, not PCIe")));
    }
    let names = {
        let controllers = controllers.lock();
        let Some(Some(attached)) = controllers.get(&params.name) else {
            return Err(RpcError::errno(Errno::ENODEV, format!("controller {} does not exist", params.name)));
        };
        if let Some(trtype) = &params.trtype {
            if !trtype.eq_ignore_ascii_case("pcie") {
                return Err(RpcError::errno(Errno::ENODEV, format!("controller {} has no {trtype} path", params.name)));
            }
        }
        if let Some(traddr) = &params.traddr {
            let bdf = canonical_bdf(traddr).map_err(RpcError::invalid_params)?;
            if bdf != attached.ctrlr.pci().bdf() {
                return Err(RpcError::errno(Errno::ENODEV, format!("controller {} has no path {bdf}", params.name)));
            }
        }
        attached.bdevs.clone()
    };
    // Unregistered without the lock: each bdev's destruct takes it to forget itself, and
    // the last one removes the controller. It shuts down when its last channel is gone.
    for name in &names {
        match bdevs.unregister_by_name(Some(ctx), name, MODULE_NAME) {
            Ok(()) | Err(BdevError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    // A controller without namespaces has no bdev to take it along.
    let mut controllers = controllers.lock();
    if matches!(controllers.get(&params.name), Some(Some(attached)) if attached.bdevs.is_empty()) {
        controllers.remove(&params.name);
    }
    Ok(())
}

fn controller_json(name: &str, attached: &Attached) -> Value {
    let pci = attached.ctrlr.pci();
    let id = attached.ctrlr.identity();
    json!({
        "name": name,
        "ctrlrs": [{
            "state": if attached.ctrlr.is_gone() {
                "failed"
            } else if attached.ctrlr.is_resetting() {
                "resetting"
            } else {
                "enabled"
            },
            "resets": attached.ctrlr.resets(),
            "resubmitted_ios": attached.ctrlr.resubmitted(),
            "trid": {"trtype": "PCIe", "traddr": pci.bdf()},
            "cntlid": id.cntlid,
            "host": {"nqn": "", "addr": "", "svcid": ""},
            "route": pci.route().as_str(),
            "io_queues": attached.ctrlr.io_queues_granted(),
            // MSI-X vectors (the admin queue's among them) and wakes that found one raised.
            "interrupt_vectors": attached.ctrlr.interrupts().map_or(0, |irq| irq.vectors()),
            "completion_interrupts": attached.ctrlr.interrupts().map_or(0, |irq| irq.signalled()),
            "sgl": id.sgl_support().as_str(),
            "bdevs": attached.bdevs,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(params: Value) -> Result<Attach, String> {
        let params: AttachParams = serde_json::from_value(params).map_err(|err| err.to_string())?;
        check_attach(params).map_err(|err| err.to_string())
    }

    #[test]
    fn attach_takes_pcie_and_refuses_fabric_fields_by_name() {
        let ok = attach(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "00:04.0"})).unwrap();
        assert_eq!((ok.bdf.as_str(), ok.io_queues, ok.max_bdevs), ("0000:00:04.0", DEFAULT_IO_QUEUES, 128));
        let err = attach(json!({"name": "Nvme0", "trtype": "TCP", "traddr": "127.0.0.1"})).unwrap_err();
        assert!(err.contains("PCIe controllers only"), "{err}");
        let err =
            attach(json!({"name": "Nvme0", "trtype": "pcie", "traddr": "0000:00:04.0", "hdgst": true})).unwrap_err();
        assert!(err.contains("hdgst applies to fabrics"), "{err}");
        let err = attach(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0", "bogus": 1})).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = attach(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "/dev/nvme0"})).unwrap_err();
        assert!(err.contains("not a PCI address"), "{err}");
        let err =
            attach(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "00:04.0", "num_io_queues": 0})).unwrap_err();
        assert!(err.contains("num_io_queues 0"), "{err}");
        assert!(attach(json!({"name": "a b", "trtype": "PCIe", "traddr": "00:04.0"})).is_err());
    }

    #[test]
    fn reset_takes_spdks_parameters_and_refuses_others() {
        let params: ResetParams = serde_json::from_value(json!({"name": "Nvme0", "cntlid": 1})).unwrap();
        assert_eq!((params.name.as_str(), params.cntlid), ("Nvme0", Some(1)));
        let err = serde_json::from_value::<ResetParams>(json!({"name": "Nvme0", "hard": true})).err().unwrap();
        assert!(err.to_string().contains("hard"), "{err}");
        assert!(serde_json::from_value::<ResetParams>(json!({"cntlid": 1})).is_err());
    }

    #[test]
    fn names_and_addresses_are_reserved_before_the_attach_runs() {
        let controllers = Controllers::default();
        let bdevs = BdevManager::new();
        let first = attach(json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "00:04.0"})).unwrap();
        reserve(&controllers, &bdevs, &first).unwrap();
        let err = reserve(&controllers, &bdevs, &first).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        // An attach under way lists nothing.
        assert!(controllers.lock().values().all(Option::is_none));
    }
}

use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;
use peerless_core::reactor::{App, AppOptions, CoreMask, Subsystem};
use serde_json::Value;

use super::*;
use crate::bdev::{BdevChannelOps, BdevInfo, Uuid};
use crate::modules::null::NullBdev;
use crate::subsystem::BdevSubsystem;

const WAIT: Duration = Duration::from_secs(10);

/// A bdev that records its destructs, optionally stacked on a base it claims as the
/// stacked modules do.
struct Probe {
    info: BdevInfo,
    base: Option<String>,
    base_desc: Mutex<Option<Desc>>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Bdev for Probe {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn module_name(&self) -> &'static str {
        "probe"
    }
    fn supports(&self, _io_type: crate::io::IoType) -> bool {
        false
    }
    fn create_channel(&self, _ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        unreachable!("no test opens a channel of a probe")
    }
    fn config_entry(&self) -> Option<Value> {
        None
    }
    fn base_bdevs(&self) -> Vec<String> {
        self.base.iter().cloned().collect()
    }
    fn destruct(&self) {
        self.events.lock().push(format!("destruct {}", self.info.name));
        self.base_desc.lock().take();
    }
}

fn info(name: &str) -> BdevInfo {
    BdevInfo {
        name: name.into(),
        product_name: "probe".into(),
        block_size: 512,
        num_blocks: 8,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    }
}

fn probe(manager: &BdevManager, name: &str, base: Option<&str>, events: &Arc<Mutex<Vec<String>>>) {
    let base_desc = base.map(|base| {
        let desc = manager.open(base, true, None, None).unwrap();
        desc.claim(ClaimType::ExclusiveWrite, &format!("probe {name}")).unwrap();
        desc
    });
    let bdev = Probe {
        info: info(name),
        base: base.map(str::to_string),
        base_desc: Mutex::new(base_desc),
        events: events.clone(),
    };
    manager.register(Arc::new(bdev)).unwrap();
}

fn destructs(events: &Arc<Mutex<Vec<String>>>) -> usize {
    events.lock().iter().filter(|event| event.starts_with("destruct")).count()
}

fn app() -> App {
    let options =
        AppOptions { cpumask: CoreMask::parse("0x1").unwrap(), interrupt_mode: true, ..AppOptions::default() };
    App::start(options).unwrap()
}

fn on_app_thread<R: Send + 'static>(app: &App, work: impl FnOnce(&mut ThreadCtx) -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    app.handle().app_thread().send_blocking(move |ctx| tx.send(work(ctx)).unwrap()).unwrap();
    rx.recv_timeout(WAIT).expect("the app thread did not answer")
}

#[test]
fn destruct_runs_once_on_delete_and_never_on_a_refused_or_repeated_one() {
    let manager = BdevManager::new();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    probe(&manager, "P0", None, &events);
    let refused = manager.unregister_by_name(None, "P0", "malloc").unwrap_err();
    assert_eq!(refused, BdevError::OtherModule { name: "P0".into(), module: "malloc" });
    assert_eq!(destructs(&events), 0, "a delete refused for the wrong module destructed");
    assert!(manager.get("P0").is_ok());

    manager.unregister_by_name(None, "P0", "probe").unwrap();
    assert_eq!(*events.lock(), ["destruct P0"]);
    assert!(matches!(manager.unregister(None, "P0"), Err(BdevError::NotFound(_))));
    assert_eq!(destructs(&events), 1, "a second delete destructed again");
}

#[test]
fn racing_deletes_destruct_once() {
    for _ in 0..50 {
        let manager = BdevManager::new();
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        probe(&manager, "P0", None, &events);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (manager, barrier) = (manager.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    manager.unregister(None, "P0").is_ok()
                })
            })
            .collect();
        let won = racers.into_iter().map(|racer| racer.join().unwrap()).filter(|won| *won).count();
        assert_eq!((won, destructs(&events)), (1, 1));
    }
}

#[test]
fn destruct_runs_once_after_the_openers_heard_the_hot_remove() {
    let app = app();
    let manager = BdevManager::new();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    probe(&manager, "P0", None, &events);
    let (bdevs, log) = (manager.clone(), events.clone());
    let desc = on_app_thread(&app, move |ctx| {
        let heard = Box::new(move |_: &mut ThreadCtx| log.lock().push("hot-remove P0".into()));
        let desc = bdevs.open("P0", false, Some(ctx.handle()), Some(heard)).unwrap();
        bdevs.unregister(Some(ctx), "P0").unwrap();
        desc.is_removed()
    });
    assert!(desc, "the descriptor sees the removal");
    assert_eq!(*events.lock(), ["hot-remove P0", "destruct P0"]);
    app.handle().stop();
    app.wait();
    assert_eq!(destructs(&events), 1);
}

#[test]
fn deleting_a_stacked_bdev_releases_the_base_claim() {
    let manager = BdevManager::new();
    manager.register(Arc::new(NullBdev::new(info("Base0")))).unwrap();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    probe(&manager, "Stacked0", Some("Base0"), &events);
    assert_eq!(manager.claim_of("Base0"), Some((ClaimType::ExclusiveWrite, "probe Stacked0".into())));
    let refused = manager.unregister(None, "Base0").unwrap_err();
    assert!(matches!(&refused, BdevError::Claimed { by, .. } if by.contains("Stacked0")), "{refused}");

    manager.unregister(None, "Stacked0").unwrap();
    assert_eq!(manager.claim_of("Base0"), None, "the stacked bdev's destruct releases its base");
    assert_eq!(manager.open_descriptors(), 0);
    manager.unregister(None, "Base0").unwrap();
}

#[test]
fn shutdown_destructs_stacked_bdevs_before_their_bases_once_each() {
    let app = app();
    let manager = BdevManager::new();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    probe(&manager, "Base0", None, &events);
    probe(&manager, "Stacked0", Some("Base0"), &events);
    let subsystem = BdevSubsystem { manager: manager.clone() };
    on_app_thread(&app, move |ctx| subsystem.fini(ctx, Box::new(|_| {})));
    assert_eq!(*events.lock(), ["destruct Stacked0", "destruct Base0"]);
    assert!(manager.list().is_empty());
    app.handle().stop();
    app.wait();
}

#[test]
fn modules_get_their_own_type_back_and_nobody_elses() {
    let manager = BdevManager::new();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    probe(&manager, "P0", None, &events);
    manager.register(Arc::new(NullBdev::new(info("Null0")))).unwrap();
    assert_eq!(manager.get_as::<Probe>("P0", "probe").unwrap().info.name, "P0");
    assert!(matches!(manager.get_as::<Probe>("Null0", "probe"), Err(BdevError::OtherModule { .. })));
    assert!(matches!(manager.get_as::<Probe>("Nope", "probe"), Err(BdevError::NotFound(_))));
    let probes: Vec<String> = manager.list_as::<Probe>().iter().map(|probe| probe.info.name.clone()).collect();
    assert_eq!(probes, ["P0"]);
}

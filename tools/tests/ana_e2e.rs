//! Asymmetric Namespace Access end to end: a real `peerless-tgt` with one subsystem on two
//! listeners, states set over JSON-RPC, and a controller through each listener reading
//! its own states (NVMe Base 2.0, 8.1), hearing of changes, and having I/O refused where
//! its path is inaccessible.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, le16, le32, le64, Status};
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Completion, Controller, Options, Xfer};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:ana";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 2048;
const LID_ANA: u8 = 0x0c;
const FID_ASYNC_EVENT_CONFIG: u8 = 0x0b;
const AEC_ANA_CHANGE: u32 = 1 << 11;
/// Notice (type 2), ANA change (info 03h), log page 0Ch: NVMe Base 2.0, Figure 150.
const ANA_CHANGE_EVENT: u64 = 2 | (0x03 << 8) | (0x0c << 16);
const INACCESSIBLE: Status = Status { sct: 3, sc: 2 };
/// How long a test waits to see that no event came: events of one RPC are sent before it
/// answers, so one that was going to come arrives well within this.
const QUIET: Duration = Duration::from_millis(300);

/// One subsystem reporting ANA, with max_namespaces 4 (so ANAGRPMAX 4): NSID 1 in group 1
/// and NSID 2 in group 3; listeners A and B.
fn serve(target: &Target) -> (SocketAddr, SocketAddr) {
    target.create_tcp_transport(json!({}));
    target.call(
        "nvmf_create_subsystem",
        Some(json!({"nqn": NQN, "allow_any_host": true, "ana_reporting": true, "max_namespaces": 4,
            "serial_number": "ANA-E2E"})),
    );
    for (name, anagrpid) in [("Malloc0", 0), ("Malloc1", 3)] {
        target.call("bdev_malloc_create", Some(json!({"name": name, "num_blocks": BLOCKS, "block_size": BLOCK})));
        target.call(
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": NQN, "namespace": {"bdev_name": name, "anagrpid": anagrpid}})),
        );
    }
    (target.listen(NQN), target.listen(NQN))
}

fn listen_address(addr: SocketAddr) -> Value {
    json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": addr.ip().to_string(), "trsvcid": addr.port().to_string()})
}

fn set_state(target: &Target, addr: SocketAddr, state: &str, anagrpid: Option<u32>) {
    let mut params = json!({"nqn": NQN, "listen_address": listen_address(addr), "ana_state": state});
    if let Some(group) = anagrpid {
        params["anagrpid"] = json!(group);
    }
    target.call("nvmf_subsystem_listener_set_ana_state", Some(params));
}

/// A controller through `addr` that asked for ANA change notices and holds an AER.
fn connect(addr: SocketAddr) -> Controller {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    controller.set_features(FID_ASYNC_EVENT_CONFIG, AEC_ANA_CHANGE).unwrap();
    controller.submit_async_event_request().unwrap();
    controller
}

fn events_within(controller: &mut Controller, wait: Duration) -> Vec<Completion> {
    let mut events = Vec::new();
    let deadline = Instant::now() + wait;
    while events.is_empty() && Instant::now() < deadline {
        controller.poll_admin(&mut events).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    events
}

#[track_caller]
fn expect_ana_event(controller: &mut Controller) {
    let events = events_within(controller, WAIT);
    assert_eq!(events.len(), 1, "one ANA change notice: {events:?}");
    assert!(events[0].is_ok() && events[0].result == ANA_CHANGE_EVENT, "{:?}", events[0]);
}

#[track_caller]
fn expect_no_event(controller: &mut Controller) {
    let events = events_within(controller, QUIET);
    assert!(events.is_empty(), "no notice expected: {events:?}");
}

/// The ANA log page read raw: `rgo` asks for groups only, `rae` retains the event.
fn ana_log(controller: &mut Controller, offset: u32, len: usize, rgo: bool, rae: bool) -> Result<Vec<u8>, Status> {
    let numd = (len / 4 - 1) as u32;
    let cdw10 = u32::from(LID_ANA) | (u32::from(rgo) << 8) | (u32::from(rae) << 15) | (numd << 16);
    let cmd = SqeBuilder::new(admin::GET_LOG_PAGE, 0).cdw(10, cdw10).cdw(12, offset);
    let done = controller.admin().execute(cmd, Xfer::FromController, vec![0; len]).unwrap();
    if done.is_ok() {
        Ok(done.buf)
    } else {
        Err(done.status)
    }
}

/// (group, state, NSIDs) of each descriptor, after checking the header's count.
fn groups(page: &[u8]) -> Vec<(u32, u8, Vec<u32>)> {
    let count = le16(page, 8);
    let mut at = 16;
    let mut found = Vec::new();
    for _ in 0..count {
        let nsids = le32(page, at + 4) as usize;
        found.push((le32(page, at), page[at + 16], (0..nsids).map(|index| le32(page, at + 32 + 4 * index)).collect()));
        at += 32 + 4 * nsids;
    }
    found
}

#[test]
fn each_listener_reports_its_own_states_and_serves_io_by_them() {
    let target = tgt().start("ana-states", &[]);
    let (addr_a, addr_b) = serve(&target);
    let mut on_a = connect(addr_a);
    let mut on_b = connect(addr_b);

    // Identify Controller (Figure 275): CMIC bit 3, OAES bit 11, ANATT, ANACAP,
    // ANAGRPMAX, NANAGRPID, MNAN; Identify Namespace: ANAGRPID.
    let identify = on_a.identify(0x01, 0).unwrap();
    assert_eq!(identify[76] & (1 << 3), 1 << 3, "ANA reporting");
    assert_eq!(le32(&identify, 92) & (1 << 11), 1 << 11, "ANA change notices");
    assert_eq!((identify[342], identify[343]), (10, 0b0100_0111));
    assert_eq!((le32(&identify, 344), le32(&identify, 348), le32(&identify, 540)), (4, 4, 4));
    assert_eq!(le32(&on_a.identify(0x00, 2).unwrap(), 92), 3, "NSID 2 is in group 3");

    // Both paths optimized: groups 1 and 3 listed with their namespaces.
    let page = ana_log(&mut on_a, 0, 4096, false, false).unwrap();
    assert_eq!(groups(&page), vec![(1, 1, vec![1]), (3, 1, vec![2])]);
    assert_eq!(le64(&page, 0), 0, "no change yet");

    // Group 1 inaccessible through B: B hears of it, A does not.
    set_state(&target, addr_b, "inaccessible", Some(1));
    expect_ana_event(&mut on_b);
    expect_no_event(&mut on_a);
    let page_b = ana_log(&mut on_b, 0, 4096, false, false).unwrap();
    assert_eq!(groups(&page_b), vec![(1, 3, vec![1]), (3, 1, vec![2])]);
    assert_eq!(le64(&page_b, 0), 1, "B's change count");
    assert_eq!(groups(&ana_log(&mut on_a, 0, 4096, false, false).unwrap()), vec![(1, 1, vec![1]), (3, 1, vec![2])]);
    // Windows of the page: a dword-aligned offset, groups only, and past the end.
    let whole = &page_b[..16 + 32 + 4 + 32 + 4];
    assert_eq!(ana_log(&mut on_b, 16, 36, false, false).unwrap(), whole[16..52]);
    assert_eq!(ana_log(&mut on_b, 52, 36, false, false).unwrap(), whole[52..88]);
    let groups_only = ana_log(&mut on_b, 0, 80, true, false).unwrap();
    assert_eq!(groups(&groups_only), vec![(1, 3, vec![]), (3, 1, vec![])]);
    assert_eq!(ana_log(&mut on_b, 88, 4, false, false), Err(Status::INVALID_FIELD), "offset past the page");
    // Through B, namespace 1 shows no capacity in use.
    assert_eq!(le64(&on_b.identify(0x00, 1).unwrap(), 16), 0, "NUSE through an inaccessible path");
    assert_eq!(le64(&on_a.identify(0x00, 1).unwrap(), 16), BLOCKS);

    // I/O: refused with the path status through B for group 1 only.
    let data = vec![0x5a; BLOCK as usize];
    let mut queue_a = on_a.io_queue(8).unwrap();
    let mut queue_b = on_b.io_queue(8).unwrap();
    queue_a.write(1, 7, 1, &data).unwrap();
    let err = queue_b.write(1, 7, 1, &data).unwrap_err();
    assert_eq!(err.status(), Some(INACCESSIBLE), "{err}");
    let mut back = vec![0; BLOCK as usize];
    assert_eq!(queue_b.read(1, 7, 1, &mut back).unwrap_err().status(), Some(INACCESSIBLE));
    queue_b.write(2, 0, 1, &data).unwrap();

    // Optimized again (every group, anagrpid omitted): B reads what A wrote.
    on_b.submit_async_event_request().unwrap();
    set_state(&target, addr_b, "optimized", None);
    expect_ana_event(&mut on_b);
    queue_b.read(1, 7, 1, &mut back).unwrap();
    assert_eq!(back, data);

    let listeners = target.call("nvmf_subsystem_get_listeners", Some(json!({"nqn": NQN})));
    let states: Vec<Vec<&str>> = listeners
        .as_array()
        .unwrap()
        .iter()
        .map(|listener| {
            listener["ana_states"].as_array().unwrap().iter().map(|s| s["ana_state"].as_str().unwrap()).collect()
        })
        .collect();
    assert_eq!(states, vec![vec!["optimized"; 4]; 2]);
}

#[test]
fn one_notice_until_the_log_page_is_read_without_rae() {
    let target = tgt().start("ana-rae", &[]);
    let (_, addr_b) = serve(&target);
    let mut on_b = connect(addr_b);
    set_state(&target, addr_b, "non_optimized", Some(1));
    expect_ana_event(&mut on_b);
    on_b.submit_async_event_request().unwrap();
    // Unread: the next change sends nothing (NVMe Base 2.0, 5.2.2).
    set_state(&target, addr_b, "inaccessible", Some(1));
    expect_no_event(&mut on_b);
    // Read with Retain Asynchronous Event: still masked.
    assert_eq!(groups(&ana_log(&mut on_b, 0, 4096, false, true).unwrap())[0], (1, 3, vec![1]));
    set_state(&target, addr_b, "non_optimized", Some(3));
    expect_no_event(&mut on_b);
    // Read without it: the next change is told.
    ana_log(&mut on_b, 0, 4096, false, false).unwrap();
    set_state(&target, addr_b, "optimized", Some(3));
    expect_ana_event(&mut on_b);
    // A state set to what it already is changes nothing and sends nothing.
    on_b.submit_async_event_request().unwrap();
    ana_log(&mut on_b, 0, 4096, false, false).unwrap();
    set_state(&target, addr_b, "optimized", Some(3));
    expect_no_event(&mut on_b);
}

#[test]
fn io_queues_must_come_through_the_admin_queue_s_listener() {
    let target = tgt().start("ana-queues", &[]);
    let (addr_a, addr_b) = serve(&target);
    let mut on_a = connect(addr_a);
    let err = on_a.io_queue_via(addr_b, 1, 8).err().expect("an I/O queue through B for A's controller");
    assert!(err.status().is_some(), "refused by Connect: {err}");
    on_a.io_queue_via(addr_a, 1, 8).unwrap().write(1, 0, 1, &[1; BLOCK as usize]).unwrap();
}

#[test]
fn a_hostile_operator_gets_clear_refusals() {
    let target = tgt().start("ana-rpc", &[]);
    let (addr_a, _) = serve(&target);
    let set = |params: Value| target.call_err("nvmf_subsystem_listener_set_ana_state", Some(params));
    let base = json!({"nqn": NQN, "listen_address": listen_address(addr_a), "ana_state": "optimized"});
    let with = |key: &str, value: Value| {
        let mut params = base.clone();
        params[key] = value;
        params
    };
    for (params, code, why) in [
        (with("ana_state", json!("sleepy")), -32602, "'sleepy' is not an ANA state"),
        (with("ana_state", json!("persistent_loss")), -32602, "reported by the target"),
        (with("ana_state", json!("change")), -32602, "reported by the target"),
        (with("anagrpid", json!(5)), -32602, "anagrpid 5 is more than ANAGRPMAX, 4"),
        (with("anagrpid", json!(-1)), -32602, "anagrpid"),
        (with("listen_address", listen_address("127.0.0.1:1".parse().unwrap())), -19, "does not listen on"),
        (with("nqn", json!("nqn.2016-06.io.peerless:none")), -32602, "Unable to find subsystem"),
        (with("colour", json!("blue")), -32602, "colour"),
    ] {
        let (got, message) = set(params.clone());
        assert_eq!(got, code, "{params}: {message}");
        assert!(message.contains(why), "{params}: {message}");
    }
    // anagrpid 0 is every group, as SPDK takes it.
    let answer = target.call("nvmf_subsystem_listener_set_ana_state", Some(with("anagrpid", json!(0))));
    assert_eq!(answer, json!(true));
    // A subsystem without ANA reporting has no states to set and no groups to name.
    let plain = "nqn.2016-06.io.peerless:plain";
    target.create_subsystem(plain);
    let plain_addr = target.listen(plain);
    let (code, message) =
        set(json!({"nqn": plain, "listen_address": listen_address(plain_addr), "ana_state": "optimized"}));
    assert!(code == -32602 && message.contains("ana_reporting"), "{message}");
    target.call("bdev_malloc_create", Some(json!({"name": "Plain0", "num_blocks": 8, "block_size": 512})));
    let (code, message) = target.call_err(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": plain, "namespace": {"bdev_name": "Plain0", "anagrpid": 1}})),
    );
    assert!(code == -32602 && message.contains("anagrpid"), "{message}");
    // A plain subsystem's controller reads no ANA log page.
    let mut controller = Controller::connect(plain_addr, plain, HOSTNQN, &Options::default()).unwrap();
    let err = controller.get_log_page(LID_ANA, 0, 0, 4096).unwrap_err();
    assert_eq!(err.status(), Some(Status { sct: 1, sc: 0x09 }), "invalid log page: {err}");
}

//! Many hosts on one listener, against a real `peerless-tgt`: connections that never
//! say anything cannot lock a host out, each step to an established connection has a
//! deadline, and refusals are logged once per interval with a count.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use peerless_target::tcp::pdu::{self, Digests};
use peerless_testkit::WAIT;
use peerless_tools::initiator::{Controller, Options};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:crowd";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 8192;

/// This test process holds thousands of sockets: raise its own open files limit.
fn allow_open_files(wanted: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(hard >= wanted, "the open files hard limit {hard} is below the {wanted} this test needs");
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).expect("setrlimit");
    }
}

/// Whether the target has closed `stream` (EOF or reset); waits up to `within`.
fn closed_by_target(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 256];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            // An ICResp or TermReq before the close.
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

fn write_and_read_back(controller: &mut Controller, pattern: u8) {
    let mut queue = controller.io_queue(8).expect("an I/O queue");
    let data = vec![pattern; 8 * BLOCK as usize];
    queue.write(1, 16, 8, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    queue.read(1, 16, 8, &mut back).expect("read");
    assert!(back == data, "read back other data");
}

#[test]
fn two_thousand_silent_connections_do_not_lock_a_host_out() {
    const SILENT: usize = 2000;
    allow_open_files(SILENT as u64 + 512);
    let target = tgt().start("crowd-silent", &[]);
    // A deadline longer than the test: only the limit on unestablished connections acts.
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"icreq_timeout_ms": 120_000}));
    let mut silent: Vec<TcpStream> = (0..SILENT).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    // The host comes after all of them and must be serving I/O within 15 s.
    let started = Instant::now();
    let options = Options { connect_timeout: Duration::from_secs(15), ..Options::default() };
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options).expect("locked out by silent connections");
    write_and_read_back(&mut controller, 0x3c);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the host needed {took:?}");
    // The target kept at most its limit of unestablished connections (128 by default,
    // give or take one per poll group): the oldest silent ones were closed.
    let deadline = Instant::now() + WAIT;
    let mut open = silent.len();
    while Instant::now() < deadline {
        silent.retain_mut(|stream| !closed_by_target(stream, Duration::from_millis(1)));
        open = silent.len();
        if open <= 130 {
            break;
        }
    }
    assert!((100..=130).contains(&open), "{open} silent connections are still open");
    // The host is still served, and a second one gets in too.
    controller.keep_alive().expect("the first host kept its controller");
    let mut second = Controller::connect(addr, NQN, HOSTNQN, &options).expect("a second host");
    write_and_read_back(&mut second, 0xc3);
    assert!(!target.log().contains("refusing a connection"), "nobody was refused: {}", target.log());
}

#[test]
fn every_step_to_an_established_connection_has_a_deadline() {
    let target = tgt().launch("crowd-deadlines").poll_mode().start();
    let addr = target.serve_malloc(
        NQN,
        BLOCKS,
        BLOCK,
        json!({"icreq_timeout_ms": 300, "connect_timeout_ms": 300, "enable_timeout_ms": 300}),
    );
    // No ICReq: closed after icreq_timeout_ms.
    let mut silent = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    assert!(closed_by_target(&mut silent, Duration::from_secs(5)), "a silent connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before its deadline: {:?}", started.elapsed());
    // ICReq but no Connect: answered, then closed after connect_timeout_ms.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&pdu::IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }.encode()).unwrap();
    let mut icresp = [0u8; pdu::IC_BYTES];
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.read_exact(&mut icresp).expect("an ICResp");
    assert_eq!(icresp[0], pdu::pdu_type::IC_RESP);
    assert!(closed_by_target(&mut half, Duration::from_secs(5)), "a connection without Connect stayed open");
    // A host that completes every step is not bound by any deadline.
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).unwrap();
    let mut queue = controller.io_queue(4).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    controller.keep_alive().expect("an established admin queue outlives the deadlines");
    queue.write(1, 0, 1, &[9; BLOCK as usize]).expect("an established I/O queue outlives the deadlines");
}

#[test]
fn deadlines_and_limits_are_checked_at_rpc_time() {
    let target = tgt().start("crowd-options", &[]);
    for (params, named) in [
        (json!({"trtype": "TCP", "icreq_timeout_ms": 3_600_001}), "icreq_timeout_ms"),
        (json!({"trtype": "TCP", "connect_timeout_ms": 4_000_000_000u64}), "connect_timeout_ms"),
        (json!({"trtype": "TCP", "max_unestablished_connections_per_listener": 0}), "max_unestablished"),
    ] {
        let (_, err) = target.call_err("nvmf_create_transport", Some(params.clone()));
        assert!(err.contains(named), "{params}: {err}");
    }
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP", "enable_timeout_ms": 0})));
    let transports = target.call("nvmf_get_transports", None);
    assert_eq!(transports[0]["enable_timeout_ms"], json!(0), "{transports}");
    assert_eq!(transports[0]["max_unestablished_connections_per_listener"], json!(128), "{transports}");
}

#[test]
fn refusals_are_logged_once_per_interval_with_a_count() {
    let target = tgt().start("crowd-refusals", &[]);
    let addr: SocketAddr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_connections_per_listener": 1}));
    let _controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).unwrap();
    assert!(!target.log().contains("refusing a connection"), "the first host was refused");
    let refused: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let lines = |log: &str| log.lines().filter(|line| line.contains("refusing a connection")).count();
    let deadline = Instant::now() + WAIT;
    while lines(&target.log()) == 0 {
        assert!(Instant::now() < deadline, "no refusal was logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the listener take all 200, then one more after the 5 s interval.
    std::thread::sleep(Duration::from_millis(5200));
    let mut late = TcpStream::connect(addr).unwrap();
    assert!(closed_by_target(&mut late, Duration::from_secs(5)), "the late connection was served");
    // 201 refusals in two or three lines: the first alone, then the count of the rest.
    // When the listener's poller flushed the 199 before the late one came, the late one
    // waits for the next interval's line.
    let log = target.log();
    let refusal_lines: Vec<&str> = log.lines().filter(|line| line.contains("refusing a connection")).collect();
    let events: u64 = refusal_lines
        .iter()
        .map(|line| match line.rsplit_once(" (").and_then(|(_, rest)| rest.split_once(" times since")) {
            Some((count, _)) => count.parse::<u64>().expect("a count"),
            None => 1,
        })
        .sum();
    assert!((2..=3).contains(&refusal_lines.len()) && (200..=201).contains(&events), "{refusal_lines:#?}");
    drop(refused);
}

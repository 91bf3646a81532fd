//! Every limit the target enforces, each named in config/RPC and refused with the spec's
//! status or a JSON-RPC error, against a real `peerless-tgt` process. The RPC server's
//! own limits (request size, connections) and its socket and lock modes are covered in
//! core's server tests and target/tests/rpc_e2e.rs.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, io, status, Cqe, Status};
use peerless_target::tcp::pdu::{self, fes, pdu_type, Digests};
use peerless_testkit::WAIT;
use peerless_tools::initiator::{Controller, Options};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:limits";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 8192;

fn connect(addr: SocketAddr) -> Controller {
    Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect")
}

#[test]
fn queue_depth_and_qpairs_per_controller_are_connect_parameters() {
    let target = tgt().start("limits-queues", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_queue_depth": 16, "max_io_qpairs_per_ctrlr": 2}));
    let mut controller = connect(addr);
    // SQSIZE beyond max_queue_depth: Connect Invalid Parameters, IATTR 0 (command), IPO 44.
    let err = controller.io_queue(32).err().expect("a queue deeper than max_queue_depth is refused");
    assert_eq!(err.status(), Some(status::CONNECT_INVALID_PARAMETERS), "{err}");
    let mut first = controller.io_queue(16).expect("a queue at the limit is accepted");
    let _second = controller.io_queue(16).expect("the second of two queues");
    // A third queue: its QID exceeds the controller's queue count.
    let err = controller.io_queue(16).err().expect("a third I/O queue is refused");
    assert_eq!(err.status(), Some(status::CONNECT_INVALID_PARAMETERS), "{err}");
    let err = controller.io_queue_with_qid(1, 16).err().expect("a QID already connected is refused");
    assert_eq!(err.status(), Some(status::CONNECT_INVALID_PARAMETERS), "{err}");
    // The refusals left the accepted queues working.
    first.write(1, 0, 1, &[0x5a; BLOCK as usize]).unwrap();
}

#[test]
fn connections_per_listener_are_bounded_and_freed() {
    let target = tgt().start("limits-conns", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_connections_per_listener": 2}));
    let mut controller = connect(addr);
    let queue = controller.io_queue(8).unwrap();
    // Admin + I/O queue fill the listener: a third connection is closed unanswered.
    let options = Options { connect_timeout: Duration::from_secs(2), ..Options::default() };
    assert!(Controller::connect(addr, NQN, HOSTNQN, &options).is_err(), "a connection beyond the limit was served");
    // Closing one frees its place.
    drop(queue);
    let deadline = Instant::now() + WAIT;
    loop {
        match Controller::connect(addr, NQN, HOSTNQN, &options) {
            Ok(_) => break,
            Err(err) => assert!(Instant::now() < deadline, "the freed place never came back: {err}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    controller.keep_alive().expect("the first controller was never affected");
}

#[test]
fn in_capsule_data_beyond_the_limit_ends_the_connection() {
    let target = tgt().start("limits-icd", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"in_capsule_data_size": 4096}));
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(8).unwrap();
    // 8 KiB of in-capsule data where 4 KiB is allowed: the PDU is too long (TCP 1.0, 3.6.2.4).
    let sqe = SqeBuilder::new(io::WRITE, 9).rw(1, 0, 16).in_capsule(8192).build();
    let mut bytes = pdu::capsule_cmd(sqe.bytes(), 8192, Digests::default()).as_slice().to_vec();
    bytes.extend_from_slice(&[0xa5; 8192]);
    queue.send_raw(&bytes).unwrap();
    let answer = queue.recv_pdu(Duration::from_secs(5)).expect("a TermReq");
    assert_eq!(answer.header.pdu_type, pdu_type::C2H_TERM_REQ);
    assert_eq!(answer.term_req().map(|(fes, _)| fes), Some(fes::DATA_LIMIT_EXCEEDED));
    // Within the limit on a fresh queue, the same write works.
    let mut fresh = controller.io_queue(8).unwrap();
    fresh.write(1, 0, 8, &[0x11; 4096]).unwrap();
}

#[test]
fn h2c_data_beyond_the_r2t_is_a_fatal_error() {
    let target = tgt().start("limits-pdu", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(8).unwrap();
    // A 16 KiB transport-data write: the target asks for it with an R2T.
    let sqe = SqeBuilder::new(io::WRITE, 3).rw(1, 0, 32).transport_data(32 * BLOCK).build();
    queue.send_raw(pdu::capsule_cmd(sqe.bytes(), 0, Digests::default()).as_slice()).unwrap();
    let r2t = queue.recv_pdu(Duration::from_secs(5)).expect("an R2T");
    assert_eq!(r2t.header.pdu_type, pdu_type::R2T);
    let asked = pdu::DataHeader::parse(&r2t.bytes);
    // Data past the end of what the R2T asked for: Data Transfer Out Of Range (3.6.2.4).
    let header = pdu::DataHeader { cccid: 3, ttag: asked.ttag, offset: asked.length, length: 512 };
    let mut bytes =
        pdu::data_pdu(pdu_type::H2C_DATA, header, pdu::flags::LAST_PDU, Digests::default()).as_slice().to_vec();
    bytes.extend_from_slice(&[0u8; 512]);
    queue.send_raw(&bytes).unwrap();
    let answer = queue.recv_pdu(Duration::from_secs(5)).expect("a TermReq");
    assert_eq!(answer.header.pdu_type, pdu_type::C2H_TERM_REQ);
    let (fes, _) = answer.term_req().unwrap();
    assert!(matches!(fes, fes::DATA_OUT_OF_RANGE | fes::INVALID_HEADER_FIELD), "fes {fes:#x}");
}

/// Get Log Page's NUMD is the host's word for up to 16 GiB: before the fix the target
/// allocated whatever it said (found by the `pdu` fuzz target).
#[test]
fn a_log_page_larger_than_its_buffer_is_an_invalid_field() {
    let target = tgt().start("limits-logpage", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr);
    // Sent raw: the initiator itself refuses transfers beyond MDTS.
    for (cid, numd, sgl) in [(0x41u16, u32::MAX, 4096u32), (0x42, 0x3fff, 4096), (0x43, 0x0002_0000, 0x0008_0004)] {
        let cmd = SqeBuilder::new(admin::GET_LOG_PAGE, cid)
            .cdw(10, 0x02 | ((numd & 0xffff) << 16))
            .cdw(11, numd >> 16)
            .transport_data(sgl)
            .build();
        let admin = controller.admin();
        admin.send_raw(pdu::capsule_cmd(cmd.bytes(), 0, Digests::default()).as_slice()).unwrap();
        let answer = admin.recv_pdu(Duration::from_secs(5)).expect("an answer");
        assert_eq!(answer.header.pdu_type, pdu_type::CAPSULE_RESP, "NUMD {numd:#x}: no data may precede the refusal");
        let cqe = Cqe::decode(&answer.bytes[8..24]);
        assert_eq!((cqe.cid, cqe.status), (cid, Status::INVALID_FIELD), "NUMD {numd:#x} with a {sgl}-byte buffer");
    }
    // A proper read still works, and so does the rest of the target.
    assert_eq!(controller.get_log_page(0x02, 0, 0, 512).unwrap().len(), 512);
    let mut queue = controller.io_queue(4).unwrap();
    queue.write(1, 0, 1, &[7; BLOCK as usize]).unwrap();
}

/// An admin command whose buffer is zero bytes long gets its CapsuleResp and no
/// C2HData: a data PDU carrying nothing is malformed (found by the wire fuzzer).
#[test]
fn a_zero_length_admin_buffer_gets_no_data_pdu() {
    let target = tgt().start("limits-zero-buffer", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let digests = Digests { header: true, data: true };
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options { digests, ..Options::default() }).unwrap();
    let cmd = SqeBuilder::new(admin::IDENTIFY, 0x51).cdw(10, 0x01).transport_data(0).build();
    let admin = controller.admin();
    admin.send_raw(pdu::capsule_cmd(cmd.bytes(), 0, digests).as_slice()).unwrap();
    let answer = admin.recv_pdu(Duration::from_secs(5)).expect("an answer");
    assert_eq!(answer.header.pdu_type, pdu_type::CAPSULE_RESP, "no C2HData for a zero-length buffer");
    let cqe = Cqe::decode(&answer.bytes[8..24]);
    assert_eq!((cqe.cid, cqe.status), (0x51, Status::SUCCESS));
    assert_eq!(controller.identify(0x01, 0).unwrap().len(), 4096);
}

#[test]
fn namespaces_per_subsystem_and_spec_names_are_checked_at_rpc_time() {
    let target = tgt().start("limits-rpc", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    for name in ["M0", "M1"] {
        target.call("bdev_malloc_create", Some(json!({"name": name, "num_blocks": 64, "block_size": 512})));
    }
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "max_namespaces": 1})));
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}})));
    let (_, err) =
        target.call_err("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M1"}})));
    assert!(err.contains("max_namespaces 1"), "{err}");
    let (_, err) = target
        .call_err("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "M1", "nsid": 2}})));
    assert!(err.contains("exceeds max_namespaces"), "{err}");
    // NQNs (NVMe Base 2.0, 4.5) and serial/model numbers (5.17.2.1).
    for (nqn, why) in [
        ("iqn.2016-06.io.peerless:x", "must start with 'nqn.'"),
        ("nqn.2016-13.io.peerless:x", "needs a date"),
        ("nqn.2016-06.-bad-.io:x", "is not a reverse domain name"),
        ("nqn.2014-08.org.nvmexpress:uuid:not-a-uuid", "is not a UUID"),
    ] {
        let (_, err) = target.call_err("nvmf_create_subsystem", Some(json!({"nqn": nqn})));
        assert!(err.contains(why), "{nqn}: {err}");
    }
    let long = format!("nqn.2016-06.io.peerless:{}", "x".repeat(230));
    let (_, err) = target.call_err("nvmf_create_subsystem", Some(json!({"nqn": long})));
    assert!(err.contains("the limit is 223"), "{err}");
    let other = "nqn.2016-06.io.peerless:other";
    let (_, err) =
        target.call_err("nvmf_create_subsystem", Some(json!({"nqn": other, "serial_number": "S".repeat(21)})));
    assert!(err.contains("the limit is 20"), "{err}");
    let (_, err) = target.call_err("nvmf_create_subsystem", Some(json!({"nqn": other, "serial_number": "bad\u{7f}"})));
    assert!(err.contains("printable ASCII"), "{err}");
    let (_, err) =
        target.call_err("nvmf_create_subsystem", Some(json!({"nqn": other, "model_number": "M".repeat(41)})));
    assert!(err.contains("the limit is 40"), "{err}");
    let (_, err) = target.call_err("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": "host-without-nqn"})));
    assert!(err.contains("must start with 'nqn.'"), "{err}");
    // None of the refusals left anything behind.
    let subsystems = target.call("nvmf_get_subsystems", None);
    assert_eq!(subsystems.as_array().unwrap().len(), 2, "discovery and {NQN} only: {subsystems}");
}

/// The refused connection really is refused at the socket: nothing is read from it.
#[test]
fn a_refused_connection_gets_no_icresp() {
    let target = tgt().start("limits-socket", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_connections_per_listener": 1}));
    let _controller = connect(addr);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let icreq = pdu::IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }.encode();
    let _ = stream.write_all(&icreq);
    let mut buf = [0u8; 128];
    let read = stream.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "a connection beyond the limit was answered: {read:?}");
}

/// KATO rounds up to the 100 ms granularity; near u32::MAX that wrapped to 4 ms (found by
/// the `pdu` fuzz target as an overflow), so such a host lost its controller at once.
#[test]
fn a_huge_keep_alive_timeout_is_capped_not_wrapped() {
    let target = tgt().start("limits-kato", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    for (asked, granted) in [(u32::MAX, u32::MAX / 100 * 100), (u32::MAX - 150, u32::MAX / 100 * 100), (10_001, 10_100)]
    {
        let options = Options { kato_ms: asked, ..Options::default() };
        let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options).expect("connect");
        assert_eq!(controller.get_features(0x0f).unwrap(), granted, "KATO {asked}");
        std::thread::sleep(Duration::from_millis(50));
        controller.keep_alive().expect("the controller is still there");
    }
}

/// Access control: a host taken off the allow-list loses every queue of every controller
/// it has, at once; a host still on the list keeps its own.
#[test]
fn removing_a_host_ends_all_its_queues_and_only_its_own() {
    const OTHER: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000002";
    let target = tgt().start("limits-hosts", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    target.call("nvmf_subsystem_allow_any_host", Some(json!({"nqn": NQN, "allow_any_host": false})));
    for host in [HOSTNQN, OTHER] {
        target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": host})));
    }
    let mut removed = connect(addr);
    let mut removed_queues: Vec<_> = (0..2).map(|_| removed.io_queue(8).unwrap()).collect();
    let mut kept = Controller::connect(addr, NQN, OTHER, &Options::default()).unwrap();
    let mut kept_queue = kept.io_queue(8).unwrap();
    target.call("nvmf_subsystem_remove_host", Some(json!({"nqn": NQN, "host": HOSTNQN})));
    let deadline = Instant::now() + WAIT;
    loop {
        let qpairs = target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN})));
        let live = qpairs.as_array().unwrap().iter().filter(|qpair| qpair["state"] == json!("enabled")).count();
        if live == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the removed host's queues stayed: {qpairs}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for queue in &mut removed_queues {
        assert!(queue.write(1, 0, 1, &[1; BLOCK as usize]).is_err(), "a removed host's I/O queue still works");
    }
    let err = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).err().expect("refused at Connect");
    assert_eq!(err.status(), Some(status::CONNECT_INVALID_HOST), "{err}");
    kept_queue.write(1, 0, 1, &[2; BLOCK as usize]).expect("the other host is untouched");
    kept.keep_alive().unwrap();
    let controllers = target.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": NQN})));
    assert_eq!(controllers.as_array().unwrap().len(), 1, "{controllers}");
    assert_eq!(controllers[0]["hostnqn"], json!(OTHER));
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).expect("the target's /proc fd directory")
}

/// The target's open descriptors once the count has held still for a while: the RPC
/// connections a test just made close on the target's side some time after the test's,
/// later still on a loaded machine, and each one counted open would be one more free.
fn settled_open_descriptors(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut count = open_descriptors(pid);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = open_descriptors(pid);
        if now != count {
            (count, still_since) = (now, Instant::now());
        }
    }
    count
}

/// Sets process `pid`'s soft RLIMIT_NOFILE, leaving the hard limit as it is.
fn set_open_files_soft_limit(pid: u32, soft: usize) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --pid={pid} --nofile={soft}: failed: {status}");
}

fn reactor_wakeups(target: &peerless_testkit::Target) -> u64 {
    let reactors = target.call("framework_get_reactors", None);
    reactors["reactors"][0]["wakeups"].as_u64().unwrap_or_else(|| panic!("no wakeups in {reactors}"))
}

/// Out of file descriptors, the listener takes each waiting host with a descriptor held
/// in reserve and closes it at once: the host hears no instead of hanging in the backlog,
/// and the readable listening socket does not wake the sleeping reactor again and again.
/// Once descriptors are free again, hosts are served as before.
#[test]
fn out_of_descriptors_refuses_newcomers_at_once_and_recovers() {
    const HOSTS: usize = 16;
    const FREE_DESCRIPTORS: usize = 4;
    let target = tgt().start("limits-descriptors", &[]);
    // Accepted hosts that say nothing keep their descriptors for the whole test.
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"icreq_timeout_ms": 120_000}));
    let pid = target.pid();
    let wakeups_before = reactor_wakeups(&target);
    let limit_before = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let soft_before: usize = limit_before
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or_else(|| panic!("no open files limit in {limit_before}"));
    set_open_files_soft_limit(pid, settled_open_descriptors(pid) + FREE_DESCRIPTORS);

    let hosts: Vec<TcpStream> =
        (0..HOSTS).map(|_| TcpStream::connect(addr).expect("the kernel completes the handshake")).collect();
    for host in &hosts {
        host.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    }
    // The descriptors counted free are give or take one or two (the RPC connection just
    // closed, the spare's moment of reopening), hence a range.
    let fewest_refused = HOSTS - FREE_DESCRIPTORS - 2;
    let mut refused = vec![false; HOSTS];
    let poll_hosts = |refused: &mut Vec<bool>| {
        for (host, closed) in hosts.iter().zip(refused.iter_mut()).filter(|(_, closed)| !**closed) {
            match (&*host).read(&mut [0u8; 8]) {
                Ok(0) => *closed = true,
                Ok(read) => panic!("a host that sent nothing was sent {read} bytes"),
                Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => *closed = true,
            }
        }
        refused.iter().filter(|closed| **closed).count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while poll_hosts(&mut refused) < fewest_refused && Instant::now() < deadline {}
    std::thread::sleep(Duration::from_millis(300));
    let refused_count = poll_hosts(&mut refused);
    assert!(
        (fewest_refused..=HOSTS - FREE_DESCRIPTORS).contains(&refused_count),
        "{FREE_DESCRIPTORS} descriptors free: {refused_count} of {HOSTS} hosts were closed at once"
    );

    set_open_files_soft_limit(pid, soft_before);
    drop(hosts);
    let mut controller = connect(addr);
    let mut queue = controller.io_queue(8).expect("an I/O queue once descriptors are free");
    let data = vec![0x5a; BLOCK as usize];
    queue.write(1, 0, 1, &data).expect("write");
    let mut back = vec![0; BLOCK as usize];
    queue.read(1, 0, 1, &mut back).expect("read");
    assert_eq!(back, data);
    // The sweep timer and each arrival wake the reactor; a listener left readable would
    // have woken it continuously for the seconds above.
    let wakeups = reactor_wakeups(&target) - wakeups_before;
    assert!(wakeups < 2_000, "the reactor woke {wakeups} times while out of descriptors");
    let log = target.log();
    let warnings = log.matches("cannot accept").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings for {refused_count} refusals:\n{log}");
    assert!(log.contains("the connection was closed at once"), "{log}");
}

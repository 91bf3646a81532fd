//! The initiator against a scripted fake controller (tests/fake), independent of our target.

mod fake;

use std::time::Duration;

use fake::{Config, Fake, AER_NOTICE, BAD_DIGEST_LBA, CNTLID, HOSTNQN, NSID, SUBNQN, TERM_FEI, TERM_FES, TERM_OPCODE};
use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{status, Status};
use peerless_target::tcp::pdu::{fes, pdu_type};
use peerless_tools::initiator::{
    discover, subtype, Completion, Controller, Digests, Error, Options, Xfer, DISCOVERY_NQN,
};

const ALL_DIGESTS: [Digests; 4] = [
    Digests { header: false, data: false },
    Digests { header: true, data: false },
    Digests { header: false, data: true },
    Digests { header: true, data: true },
];

fn options(digests: Digests) -> Options {
    Options { digests, command_timeout: Duration::from_secs(10), ..Options::default() }
}

fn connect(fake: &Fake, digests: Digests) -> Controller {
    Controller::connect(fake.addr, SUBNQN, HOSTNQN, &options(digests)).expect("connect")
}

/// Bytes that differ per block and per call, so a misplaced block shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[test]
fn connect_enable_identify_and_admin_commands() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests::default());
    assert_eq!(ctrl.cntlid(), CNTLID);
    assert_eq!(ctrl.vs(), 0x0001_0300);
    assert_eq!(ctrl.cap().max_queue_entries(), 128);
    let info = ctrl.info().clone();
    assert_eq!(
        (info.serial.as_str(), info.model.as_str(), info.subnqn.as_str()),
        ("FAKE0001", "Fake Controller", SUBNQN)
    );
    assert_eq!(ctrl.max_transfer_bytes(), 1 << 20, "MDTS 8 of 4 KiB pages");
    let ns = ctrl.identify_namespace(NSID).expect("identify namespace");
    assert_eq!(
        (ns.nsze, ns.block_size, ns.nguid, ns.eui64, ns.uuid),
        (16 * 1024, 512, [0x11; 16], [0x22; 8], Some([0x33; 16]))
    );
    assert_eq!(ctrl.active_namespaces().expect("active namespaces"), vec![NSID]);
    assert_eq!(ctrl.set_number_of_queues(4).expect("set features"), (4, 4));
    assert_eq!(ctrl.get_features(0x07).expect("get features"), 0x42);
    ctrl.keep_alive().expect("keep alive");
    assert!(!ctrl.keep_alive_if_due().expect("not due"), "KATO/2 has not passed");
    let state = fake.state.lock().expect("state");
    assert_eq!(state.cc & 0xff_0001, 1 | (6 << 16) | (4 << 20), "CC: EN, IOSQES 6, IOCQES 4");
    assert_eq!(state.connects, vec![(0, 31, 10_000, 0xffff)], "admin Connect: SQSIZE 31, KATO, dynamic cntlid");
    assert_eq!(state.keep_alives, 1);
    assert!(state.errors.is_empty(), "{:?}", state.errors);
}

#[test]
fn reads_and_writes_across_sizes_paths_and_digests() {
    // Sizes around the 8 KiB in-capsule limit and the 8 KiB MAXH2CDATA, up to 1 MiB.
    let sizes = [512usize, 4096, 8192, 8704, 65536, 1 << 20];
    for digests in ALL_DIGESTS {
        let fake = Fake::start(Config { r2t_chunk: 96 * 1024, ..Config::default() });
        let mut ctrl = connect(&fake, digests);
        let mut queue = ctrl.io_queue(32).expect("io queue");
        assert_eq!((queue.qid(), queue.depth(), queue.negotiated().digests), (1, 31, digests));
        assert_eq!(queue.in_capsule_bytes(), 8192);
        let mut slba = 0u64;
        for (n, size) in sizes.iter().enumerate() {
            let data = pattern(*size, n as u8);
            let nlb = (*size / 512) as u32;
            queue.write(NSID, slba, nlb, &data).expect("write");
            let mut back = vec![0u8; *size];
            queue.read(NSID, slba, nlb, &mut back).expect("read");
            assert!(back == data, "{size} bytes with {digests:?}");
            slba += u64::from(nlb);
        }
        queue.flush_namespace(NSID).expect("flush");
        let state = fake.state.lock().expect("state");
        assert!(state.errors.is_empty(), "{digests:?}: {:?}", state.errors);
        assert_eq!(state.in_capsule_writes, 3, "512, 4096 and 8192 fit in the capsule");
        // 8704 -> 2 H2CData; 64 KiB -> 8; 1 MiB -> 11 R2Ts of <= 96 KiB, 128 PDUs of 8 KiB.
        assert_eq!(state.h2c_pdus, 2 + 8 + 128);
        assert_eq!(state.r2ts, 1 + 1 + 11);
        assert_eq!(state.connects[1], (1, 31, 0, CNTLID), "I/O Connect names the admin's controller");
    }
}

#[test]
fn async_submit_and_poll_at_full_queue_depth() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests { header: true, data: true });
    let mut queue = ctrl.io_queue(128).expect("io queue");
    let depth = usize::from(queue.depth());
    assert_eq!(depth, 127);
    let size = 4096;
    for i in 0..depth {
        queue.submit_write(NSID, i as u64 * 8, 8, pattern(size, i as u8)).expect("submit write");
    }
    assert_eq!((queue.free_slots(), queue.outstanding()), (0, depth));
    let extra = queue.submit_write(NSID, 0, 8, vec![0; size]);
    assert_eq!(extra.err(), Some(Error::QueueFull { depth: 127 }));
    assert!(drain(&mut queue, depth).iter().all(Completion::is_ok));
    // Reads at full depth: remember which LBA each CID asked for, check each buffer.
    let mut lba_of_cid = vec![0usize; depth];
    for i in 0..depth {
        let cid = queue.submit_read(NSID, i as u64 * 8, 8, vec![0; size]).expect("submit read");
        lba_of_cid[usize::from(cid)] = i;
    }
    for completion in drain(&mut queue, depth) {
        assert!(completion.is_ok());
        let i = lba_of_cid[usize::from(completion.cid)];
        assert!(completion.buf == pattern(size, i as u8), "block group {i}");
    }
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

fn drain(queue: &mut peerless_tools::initiator::IoQueue, count: usize) -> Vec<Completion> {
    let mut out = Vec::with_capacity(count);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while out.len() < count {
        queue.poll(16, &mut out).expect("poll");
        assert!(std::time::Instant::now() < deadline, "{} of {count} completions", out.len());
    }
    out
}

#[test]
fn c2h_success_flag_and_split_data_pdus() {
    let fake = Fake::start(Config { c2h_success: true, c2h_chunk: 3000, ..Config::default() });
    let mut ctrl = connect(&fake, Digests { header: false, data: true });
    let mut queue = ctrl.io_queue(16).expect("io queue");
    let data = pattern(65536, 9);
    queue.write(NSID, 100, 128, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    queue.read(NSID, 100, 128, &mut back).expect("read ends with a SUCCESS C2HData, no CapsuleResp");
    assert!(back == data);
    // The queue still pairs responses correctly afterwards.
    queue.read(NSID, 0, 1, &mut back[..512]).expect("small read");
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn failed_commands_carry_their_status_and_the_queue_goes_on() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests::default());
    let mut queue = ctrl.io_queue(8).expect("io queue");
    let mut buf = vec![0u8; 512];
    let beyond = queue.read(NSID, 16 * 1024, 1, &mut buf).expect_err("beyond capacity");
    assert_eq!(beyond.status(), Some(Status::LBA_OUT_OF_RANGE));
    assert!(matches!(beyond, Error::Command { opcode: 0x02, dnr: true, .. }), "{beyond}");
    let wrong_ns = queue.write(9, 0, 1, &buf).expect_err("no namespace 9");
    assert_eq!(wrong_ns.status(), Some(Status::INVALID_NAMESPACE));
    let unknown = queue.execute(SqeBuilder::new(0x7e, 0).nsid(NSID), Xfer::None, Vec::new()).expect("completes");
    assert_eq!(unknown.status, Status::INVALID_OPCODE);
    queue.read(NSID, 0, 1, &mut buf).expect("the queue still works");
    let too_big = queue.submit_read(NSID, 0, 4096, vec![0; 2 << 20]).expect_err("beyond MDTS");
    assert!(matches!(too_big, Error::Invalid(_)));
}

#[test]
fn connect_refused_for_an_unknown_host() {
    let fake = Fake::start(Config::default());
    let refused = Controller::connect(fake.addr, SUBNQN, "nqn.2014-08.org.example:intruder", &Options::default());
    assert_eq!(refused.err().and_then(|e| e.status()), Some(status::CONNECT_INVALID_HOST));
    // A queue larger than MQES is refused, and DW0 names SQSIZE (byte 44) as the culprit.
    let mut ctrl = connect(&fake, Digests::default());
    let oversized = ctrl.io_queue_with_qid(1, 256).err().expect("SQSIZE above MQES");
    assert!(matches!(oversized, Error::Command { dw0: 44, .. }), "{oversized:?}");
    let too_long = Controller::connect(fake.addr, &"n".repeat(300), HOSTNQN, &Options::default());
    assert!(matches!(too_long.err(), Some(Error::Invalid(_))));
}

#[test]
fn term_req_from_the_target_ends_the_queue_with_fes_and_fei() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests { header: true, data: false });
    let mut queue = ctrl.io_queue(8).expect("io queue");
    let ended = queue.command(SqeBuilder::new(TERM_OPCODE, 0), Xfer::None, Vec::new()).expect_err("terminated");
    assert_eq!(ended, Error::Terminated { fes: TERM_FES, fei: TERM_FEI });
    let mut buf = vec![0u8; 512];
    assert_eq!(queue.read(NSID, 0, 1, &mut buf).expect_err("still failed"), ended);
    assert_eq!(queue.failure(), Some(&ended));
    ctrl.keep_alive().expect("the admin queue is another connection");
}

#[test]
fn bad_header_digest_is_an_error_and_the_host_terminates() {
    let fake = Fake::start(Config { bad_header_digest_on_keep_alive: true, ..Config::default() });
    let mut ctrl = connect(&fake, Digests { header: true, data: false });
    let error = ctrl.keep_alive().expect_err("corrupt header digest");
    assert_eq!(error, Error::HeaderDigest { pdu_type: pdu_type::CAPSULE_RESP });
    for _ in 0..100 {
        if !fake.state.lock().expect("state").host_term_reqs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fake.state.lock().expect("state").host_term_reqs, vec![(fes::HEADER_DIGEST_ERROR, 0)]);
}

#[test]
fn bad_data_digest_fails_that_command_only() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests { header: false, data: true });
    let mut queue = ctrl.io_queue(8).expect("io queue");
    let mut buf = vec![0u8; 4096];
    let error = queue.read(NSID, BAD_DIGEST_LBA, 8, &mut buf).expect_err("corrupt data digest");
    assert!(matches!(error, Error::DataDigest { .. }), "{error}");
    queue.read(NSID, 0, 8, &mut buf).expect("next read is fine");
}

#[test]
fn raw_malformed_pdu_gets_a_term_req() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests::default());
    let mut queue = ctrl.io_queue(4).expect("io queue");
    // A CapsuleCmd header with HLEN 71 instead of 72.
    let mut bad = vec![pdu_type::CAPSULE_CMD, 0, 71, 0, 72, 0, 0, 0];
    bad.resize(72, 0);
    queue.send_raw(&bad).expect("send raw");
    let reply = queue.recv_pdu(Duration::from_secs(5)).expect("TermReq");
    assert_eq!(reply.header.pdu_type, pdu_type::C2H_TERM_REQ);
    assert_eq!(reply.term_req(), Some((fes::INVALID_HEADER_FIELD, 2)));
    assert_eq!(&reply.bytes[24..32], &bad[..8], "the TermReq quotes the offending header");
}

#[test]
fn discovery_lists_subsystems() {
    let fake = Fake::start(Config::default());
    let log = discover(fake.addr, HOSTNQN, &Options::default()).expect("discover");
    assert_eq!(log.generation, 7);
    assert_eq!(log.entries.len(), 2);
    assert_eq!((log.entries[0].subtype, log.entries[0].subnqn.as_str()), (subtype::CURRENT_DISCOVERY, DISCOVERY_NQN));
    assert_eq!((log.entries[1].subtype, log.entries[1].subnqn.as_str()), (subtype::NVME, SUBNQN));
    assert_eq!((log.entries[1].traddr.as_str(), log.entries[1].trsvcid.as_str()), ("127.0.0.1", "4420"));
    let connects = fake.state.lock().expect("state").connects.clone();
    assert_eq!(connects, vec![(0, 31, 0, 0xffff)], "discovery connects with KATO 0");
}

#[test]
fn aer_completion_waits_for_poll_while_blocking_helpers_run() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests::default());
    let aer = ctrl.submit_async_event_request().expect("submit AER");
    ctrl.keep_alive().expect("a blocking command with an AER outstanding");
    let mut events = Vec::new();
    ctrl.poll_admin(&mut events).expect("poll admin");
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].cid, events[0].result), (aer, AER_NOTICE));
}

#[test]
fn keep_alive_when_half_the_timeout_passed() {
    let fake = Fake::start(Config::default());
    let options = Options { kato_ms: 100, ..options(Digests::default()) };
    let mut ctrl = Controller::connect(fake.addr, SUBNQN, HOSTNQN, &options).expect("connect");
    assert!(!ctrl.keep_alive_if_due().expect("early"));
    std::thread::sleep(Duration::from_millis(60));
    assert!(ctrl.keep_alive_if_due().expect("due"));
    assert!(!ctrl.keep_alive_if_due().expect("just sent"));
    assert_eq!(fake.state.lock().expect("state").keep_alives, 1);
}

#[test]
fn disconnect_and_shutdown() {
    let fake = Fake::start(Config::default());
    let mut ctrl = connect(&fake, Digests::default());
    let mut queue = ctrl.io_queue(4).expect("io queue");
    queue.disconnect().expect("disconnect");
    let mut buf = vec![0u8; 512];
    assert!(matches!(queue.read(NSID, 0, 1, &mut buf), Err(Error::Invalid(_))), "no commands after Disconnect");
    ctrl.shutdown().expect("shutdown");
    assert_eq!(fake.state.lock().expect("state").cc >> 14 & 0x3, 1, "CC.SHN = normal");
}

#[test]
fn large_single_c2h_pdus_behind_small_ones() {
    // Whole 1 MiB reads in one C2HData PDU each, pipelined behind small ones: the receive
    // buffer must make room for a PDU that starts late in it.
    let fake = Fake::start(Config { c2h_chunk: 1 << 20, ..Config::default() });
    let mut ctrl = connect(&fake, Digests { header: true, data: true });
    let mut queue = ctrl.io_queue(16).expect("io queue");
    let big = pattern(1 << 20, 3);
    queue.write(NSID, 0, 2048, &big).expect("write 1 MiB");
    let sizes = [512usize, 1 << 20, 4096, 1 << 20, 512, 1 << 20];
    for size in sizes {
        queue.submit_read(NSID, 0, (size / 512) as u32, vec![0; size]).expect("submit");
    }
    for completion in drain(&mut queue, sizes.len()) {
        assert!(completion.is_ok());
        assert!(completion.buf[..] == big[..completion.buf.len()]);
    }
}

#[test]
fn protocol_violation_sends_an_h2c_term_req() {
    let fake = Fake::start(Config { bad_c2h_offset_lba: Some(17), ..Config::default() });
    let mut ctrl = connect(&fake, Digests::default());
    let mut queue = ctrl.io_queue(4).expect("io queue");
    let mut buf = vec![0u8; 1024];
    let error = queue.read(NSID, 17, 2, &mut buf).expect_err("C2HData at the wrong offset");
    assert!(matches!(&error, Error::Protocol(text) if text.contains("FES 0x4")), "{error}");
    for _ in 0..100 {
        if !fake.state.lock().expect("state").host_term_reqs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fake.state.lock().expect("state").host_term_reqs, vec![(fes::DATA_OUT_OF_RANGE, 12)]);
}

#[test]
fn large_c2h_data_goes_straight_into_the_buffer() {
    for (digests, success) in [(Digests::default(), false), (Digests { header: true, data: true }, true)] {
        let config = Config { slow_c2h: true, c2h_chunk: 256 * 1024, c2h_success: success, ..Config::default() };
        let fake = Fake::start(config);
        let mut ctrl = connect(&fake, digests);
        let mut queue = ctrl.io_queue(8).expect("io queue");
        let data = pattern(512 * 1024, 5);
        queue.write(NSID, 1024, 1024, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        queue.read(NSID, 1024, 1024, &mut back).expect("read");
        assert!(back == data, "{digests:?}");
        assert_eq!(queue.direct_c2h_pdus(), 2, "two 256 KiB PDUs, each seen before its end");
        if digests.data {
            let error = queue.read(NSID, BAD_DIGEST_LBA, 64, &mut back[..32 * 1024]).expect_err("bad digest");
            assert!(matches!(error, Error::DataDigest { .. }), "{error}");
            assert_eq!(queue.direct_c2h_pdus(), 3);
        }
        queue.read(NSID, 0, 1, &mut back[..512]).expect("small reads still take the buffered path");
        assert!(fake.errors().is_empty(), "{:?}", fake.errors());
    }
}

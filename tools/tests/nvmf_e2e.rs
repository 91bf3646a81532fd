//! The NVMe/TCP target end to end: a real `peerless-tgt` process, configured over
//! JSON-RPC, driven by the initiator library over loopback TCP.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, io, status, Status};
use peerless_target::tcp::pdu::{self, fes, pdu_type, Digests};
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{self, Controller, Error, Options, Xfer};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:e2e";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 16384;

fn options(digests: Digests) -> Options {
    Options { digests, ..Options::default() }
}

fn connect(addr: SocketAddr, digests: Digests) -> Controller {
    Controller::connect(addr, NQN, HOSTNQN, &options(digests)).expect("connect to the target")
}

/// Bytes that encode their LBA and a seed, so misplaced blocks are caught.
fn pattern(slba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK as usize)
        .map(|index| ((slba + (index / BLOCK as usize) as u64) as u8).wrapping_mul(7) ^ (index as u8) ^ seed)
        .collect()
}

#[test]
fn identify_controller_and_namespace() {
    let target = tgt().start("identify", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let info = controller.info().clone();
    assert_eq!(info.serial.trim(), "PEERLESS-E2E");
    assert_eq!(info.model.trim(), "Peerless e2e");
    assert_eq!(info.subnqn, NQN);
    assert_eq!(info.mdts, 5, "128 KiB max I/O in 4 KiB pages");
    assert_eq!(info.nn, 32);
    assert_eq!(controller.vs(), 0x0001_0300);
    assert_eq!(controller.active_namespaces().unwrap(), vec![1]);
    let ns = controller.identify_namespace(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (BLOCKS, BLOCK));
    let bdev = target.call("bdev_get_bdevs", Some(json!({"name": "Malloc0"})));
    let uuid = bdev[0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(initiator::uuid_string(&ns.nguid), uuid, "the NGUID comes from the bdev's UUID");
    // An inactive NSID identifies as zeroes; one beyond NN is an error.
    assert_eq!(controller.identify_namespace(2).unwrap().nsze, 0);
    let err = controller.identify_namespace(99).unwrap_err();
    assert_eq!(err.status(), Some(Status::INVALID_NAMESPACE), "{err}");
    // The bdev is claimed for the namespace.
    assert_eq!(bdev[0]["claimed"], json!(true));
}

#[test]
fn data_round_trips_across_sizes_paths_and_digests() {
    let target = tgt().start("data", &[]);
    // 1 MiB transfers need max_io_size raised from SPDK's 128 KiB default.
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_io_size": 1_048_576, "in_capsule_data_size": 8192}));
    for (index, digests) in [
        Digests::default(),
        Digests { header: true, data: false },
        Digests { header: false, data: true },
        Digests { header: true, data: true },
    ]
    .into_iter()
    .enumerate()
    {
        let mut controller = connect(addr, digests);
        let mut queue = controller.io_queue(32).unwrap();
        // 512 B and 4 KiB go in the capsule; 16 KiB and up take R2T/H2CData.
        for (step, blocks) in [1u32, 8, 32, 256, 2048].into_iter().enumerate() {
            let slba = (step as u64) * 2048;
            let data = pattern(slba, blocks, index as u8);
            queue
                .write(1, slba, blocks, &data)
                .unwrap_or_else(|err| panic!("write {blocks} blocks, {digests:?}: {err}"));
            let mut back = vec![0u8; data.len()];
            queue
                .read(1, slba, blocks, &mut back)
                .unwrap_or_else(|err| panic!("read {blocks} blocks, {digests:?}: {err}"));
            assert!(back == data, "{blocks} blocks with {digests:?} came back different");
        }
    }
}

#[test]
fn many_commands_in_flight_complete_with_their_data() {
    let target = tgt().start("depth", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(128).unwrap();
    let mut cids = Vec::new();
    for index in 0..100u64 {
        cids.push(queue.submit_write(1, index * 8, 8, pattern(index * 8, 8, 3)).unwrap());
    }
    let mut done = Vec::new();
    let deadline = Instant::now() + WAIT;
    while done.len() < cids.len() && Instant::now() < deadline {
        queue.poll(128, &mut done).unwrap();
    }
    assert_eq!(done.len(), 100);
    assert!(done.iter().all(|completion| completion.is_ok()), "{done:?}");
    for index in (0..100u64).step_by(13) {
        let mut back = vec![0u8; 8 * BLOCK as usize];
        queue.read(1, index * 8, 8, &mut back).unwrap();
        assert_eq!(back, pattern(index * 8, 8, 3));
    }
}

#[test]
fn bad_commands_get_the_right_status() {
    let target = tgt().start("errors", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(8).unwrap();
    let status_of = |result: Result<(), Error>| result.unwrap_err().status();
    let mut buf = vec![0u8; 4096];
    assert_eq!(status_of(queue.read(7, 0, 8, &mut buf)), Some(Status::INVALID_NAMESPACE));
    assert_eq!(status_of(queue.read(1, BLOCKS - 4, 8, &mut buf)), Some(Status::LBA_OUT_OF_RANGE));
    // Beyond MDTS (128 KiB): the initiator refuses to send it, so send it raw; the target
    // must refuse it before any data moves.
    let big = SqeBuilder::new(io::READ, 0x7777).rw(1, 0, 512).transport_data(512 * BLOCK).build();
    let mut raw = connect(addr, Digests::default());
    let mut raw_queue = raw.io_queue(4).unwrap();
    raw_queue.send_raw(pdu::capsule_cmd(big.bytes(), 0, Digests::default()).as_slice()).unwrap();
    let answer = raw_queue.recv_pdu(Duration::from_secs(5)).unwrap();
    assert_eq!(answer.header.pdu_type, pdu_type::CAPSULE_RESP);
    let cqe = peerless_target::nvme::Cqe::decode(&answer.bytes[8..24]);
    assert_eq!((cqe.cid, cqe.status), (0x7777, Status::INVALID_FIELD));
    let unknown = SqeBuilder::new(0x7e, 0).nsid(1);
    assert_eq!(queue.execute(unknown, Xfer::None, Vec::new()).unwrap().status, Status::INVALID_OPCODE);
    // SGL length that disagrees with the block count.
    let short = SqeBuilder::new(io::READ, 0).rw(1, 0, 8).transport_data(512);
    let completion = queue.execute(short, Xfer::FromController, vec![0u8; 512]).unwrap();
    assert_eq!(completion.status, status::DATA_SGL_LENGTH_INVALID);
    // Write zeroes, flush and deallocate run and leave zeroes behind.
    queue.write(1, 100, 8, &pattern(100, 8, 1)).unwrap();
    let zeroes = SqeBuilder::new(io::WRITE_ZEROES, 0).rw(1, 100, 4);
    assert!(queue.command(zeroes, Xfer::None, Vec::new()).unwrap().is_ok());
    assert!(queue.command(SqeBuilder::new(io::FLUSH, 0).nsid(1), Xfer::None, Vec::new()).unwrap().is_ok());
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&4u32.to_le_bytes());
    range[8..16].copy_from_slice(&104u64.to_le_bytes());
    let dsm = SqeBuilder::new(io::DATASET_MANAGEMENT, 0).nsid(1).cdw(10, 0).cdw(11, 1 << 2);
    assert!(queue.command(dsm, Xfer::ToController, range).unwrap().is_ok());
    let mut back = vec![0xffu8; 8 * BLOCK as usize];
    queue.read(1, 100, 8, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 0), "write zeroes and deallocate left data behind");
    // The queue still works after all of that.
    queue.write(1, 0, 1, &pattern(0, 1, 9)).unwrap();
}

#[test]
fn discovery_lists_the_subsystems_a_host_may_reach() {
    let target = tgt().start("discovery", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": "nqn.2016-06.io.peerless:private"})));
    target.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": "nqn.2016-06.io.peerless:private",
        "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}})),
    );
    let log = initiator::discover(addr, HOSTNQN, &Options::default()).unwrap();
    let nqns: Vec<&str> = log.entries.iter().map(|entry| entry.subnqn.as_str()).collect();
    assert_eq!(nqns, vec![NQN], "a subsystem the host may not reach is not listed");
    let entry = &log.entries[0];
    assert_eq!((entry.traddr.trim(), entry.trsvcid.trim()), ("127.0.0.1", addr.port().to_string().as_str()));
    // Allowing the host changes the log and its generation counter.
    let before = log.generation;
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": "nqn.2016-06.io.peerless:private", "host": HOSTNQN})));
    let log = initiator::discover(addr, HOSTNQN, &Options::default()).unwrap();
    assert_eq!(log.entries.len(), 2);
    assert!(log.generation > before);
}

#[test]
fn hosts_not_on_the_allow_list_are_refused() {
    let target = tgt().start("hosts", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    target.call("nvmf_subsystem_allow_any_host", Some(json!({"nqn": NQN, "allow_any_host": false})));
    let err =
        Controller::connect(addr, NQN, HOSTNQN, &Options::default()).err().expect("an unlisted host must be refused");
    assert_eq!(err.status(), Some(status::CONNECT_INVALID_HOST), "{err}");
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": HOSTNQN})));
    let mut controller = connect(addr, Digests::default());
    // Removing the host tears its controller down.
    target.call("nvmf_subsystem_remove_host", Some(json!({"nqn": NQN, "host": HOSTNQN})));
    let deadline = Instant::now() + WAIT;
    loop {
        if controller.keep_alive().is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the removed host's controller survived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let missing =
        Controller::connect(addr, "nqn.2016-06.io.peerless:nope", HOSTNQN, &Options::default()).err().unwrap();
    assert_eq!(missing.status(), Some(status::CONNECT_INVALID_PARAMETERS), "{missing}");
}

#[test]
fn an_aer_reports_a_namespace_added_later() {
    let target = tgt().start("aer", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    controller.set_features(0x0b, 1 << 8).unwrap();
    let aer =
        controller.admin().submit(SqeBuilder::new(admin::ASYNC_EVENT_REQUEST, 0), Xfer::None, Vec::new()).unwrap();
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc1", "num_blocks": 1024, "block_size": 512})));
    let nsid = target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1"}})));
    assert_eq!(nsid, json!(2));
    let completion = controller.admin().wait(aer).unwrap();
    assert!(completion.is_ok());
    assert_eq!(completion.result as u32, 0x0004_0002, "notice: namespace attribute changed, log page 4");
    let changed = controller.get_log_page(0x04, 0, 0, 4096).unwrap();
    assert_eq!(&changed[..4], &2u32.to_le_bytes());
    assert_eq!(controller.active_namespaces().unwrap(), vec![1, 2]);
}

#[test]
fn a_silent_host_loses_its_controller_to_keep_alive() {
    let target = tgt().start("kato", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let options = Options { kato_ms: 300, ..Options::default() };
    let mut silent = Controller::connect(addr, NQN, HOSTNQN, &options).unwrap();
    let mut chatty = Controller::connect(addr, NQN, HOSTNQN, &options).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        chatty.keep_alive().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let controllers = target.call("nvmf_subsystem_get_controllers", Some(json!({"nqn": NQN})));
    assert_eq!(controllers.as_array().unwrap().len(), 1, "only the host that kept alive remains: {controllers}");
    assert!(silent.keep_alive().is_err(), "the silent host's admin queue is gone");
}

#[test]
fn malformed_pdus_end_only_their_connection() {
    let target = tgt().start("malformed", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut healthy = connect(addr, Digests::default());
    let mut healthy_queue = healthy.io_queue(4).unwrap();
    for (what, expected_fes, build) in [
        (
            "a bad PDU type",
            fes::INVALID_HEADER_FIELD,
            Box::new(|bytes: &mut Vec<u8>| bytes[0] = 0x0f) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        ("a bad header length", fes::INVALID_HEADER_FIELD, Box::new(|bytes: &mut Vec<u8>| bytes[2] = 70)),
        (
            "a bad PDU length",
            fes::INVALID_HEADER_FIELD,
            Box::new(|bytes: &mut Vec<u8>| bytes[4..8].copy_from_slice(&10u32.to_le_bytes())),
        ),
        ("a bad header digest", fes::HEADER_DIGEST_ERROR, Box::new(|bytes: &mut Vec<u8>| bytes[20] ^= 0xff)),
    ] {
        let mut victim = connect(addr, Digests { header: true, data: false });
        let mut queue = victim.io_queue(4).unwrap();
        let sqe = SqeBuilder::new(io::READ, 1).rw(1, 0, 1).transport_data(BLOCK).build();
        let mut bytes = pdu::capsule_cmd(sqe.bytes(), 0, Digests { header: true, data: false }).as_slice().to_vec();
        build(&mut bytes);
        queue.send_raw(&bytes).unwrap();
        let answer = queue.recv_pdu(Duration::from_secs(5)).unwrap_or_else(|err| panic!("{what}: no answer: {err}"));
        assert_eq!(answer.header.pdu_type, pdu_type::C2H_TERM_REQ, "{what}");
        assert_eq!(answer.term_req().map(|(fes, _)| fes), Some(expected_fes), "{what}");
        // Everyone else is still served.
        let data = pattern(0, 1, 5);
        healthy_queue.write(1, 0, 1, &data).unwrap();
    }
}

#[test]
fn four_io_queues_spread_over_two_reactors() {
    let target = tgt().start("spread", &["-m", "0x3"]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let (granted, _) = controller.set_number_of_queues(4).unwrap();
    assert!(granted >= 4);
    let mut queues: Vec<_> = (0..4).map(|_| controller.io_queue(16).unwrap()).collect();
    for (index, queue) in queues.iter_mut().enumerate() {
        let slba = index as u64 * 64;
        queue.write(1, slba, 16, &pattern(slba, 16, 2)).unwrap();
    }
    for (index, queue) in queues.iter_mut().enumerate() {
        let slba = index as u64 * 64;
        let mut back = vec![0u8; 16 * BLOCK as usize];
        queue.read(1, slba, 16, &mut back).unwrap();
        assert_eq!(back, pattern(slba, 16, 2));
    }
    let stats = target.call("nvmf_get_stats", None);
    let groups = stats["poll_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for group in groups {
        assert!(group["current_io_qpairs"].as_u64().unwrap() >= 1, "every poll group serves a queue: {stats}");
    }
    let qpairs = target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN})));
    assert_eq!(qpairs.as_array().unwrap().len(), 5, "admin + 4 I/O queues: {qpairs}");
}

#[test]
fn cap_reports_the_transport_queue_depth() {
    let target = tgt().start("mqes", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_queue_depth": 256}));
    let mut controller = connect(addr, Digests::default());
    // MQES is 0's based: 256 entries. An I/O queue of that size connects and runs.
    assert_eq!(controller.cap().max_queue_entries(), 256);
    assert_eq!(controller.info().maxcmd, 256);
    let mut queue = controller.io_queue(256).unwrap();
    assert_eq!(queue.entries(), 256);
    queue.write(1, 0, 1, &pattern(0, 1, 1)).unwrap();
}

/// Polls `check` until it holds or the shared deadline passes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn removing_namespaces_and_subsystems_releases_what_they_held() {
    let target = tgt().start("teardown", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(8).unwrap();
    queue.write(1, 0, 1, &pattern(0, 1, 1)).unwrap();
    let claimed =
        |target: &Target| target.call("bdev_get_bdevs", Some(json!({"name": "Malloc0"})))[0]["claimed"] == json!(true);

    // Removing the namespace: I/O to it fails cleanly and its bdev is released.
    target.call("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 1})));
    let mut buf = vec![0u8; BLOCK as usize];
    let err = queue.read(1, 0, 1, &mut buf).unwrap_err();
    assert_eq!(err.status(), Some(Status::INVALID_NAMESPACE), "{err}");
    eventually("the bdev's claim is released", || !claimed(&target));

    // Deleting the bdev under a live namespace removes the namespace (hot-remove).
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})));
    queue.write(1, 0, 1, &pattern(0, 1, 2)).unwrap();
    target.call("bdev_malloc_delete", Some(json!({"name": "Malloc0"})));
    eventually("the namespace goes with its bdev", || {
        target.call("nvmf_get_subsystems", Some(json!({"nqn": NQN})))[0]["namespaces"] == json!([])
    });
    assert_eq!(queue.read(1, 0, 1, &mut buf).unwrap_err().status(), Some(Status::INVALID_NAMESPACE));

    // Deleting the subsystem disconnects its host.
    target.call("nvmf_delete_subsystem", Some(json!({"nqn": NQN})));
    eventually("the host's queues end", || queue.read(1, 0, 1, &mut buf).is_err() && controller.keep_alive().is_err());
    let subsystems = target.call("nvmf_get_subsystems", None);
    assert_eq!(subsystems.as_array().unwrap().len(), 1, "only discovery remains: {subsystems}");
    let stats = target.call("nvmf_get_stats", None);
    eventually("no qpair is left", || {
        let stats = target.call("nvmf_get_stats", None);
        stats["poll_groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["current_io_qpairs"] == json!(0) && g["current_admin_qpairs"] == json!(0))
    });
    assert_eq!(stats["poll_groups"][0]["pending_bdev_io"], json!(0));
}

#[test]
fn a_full_receive_buffer_of_pipelined_commands_is_not_mistaken_for_eof() {
    // 127 writes of 1 KiB in the capsule (1096 bytes each, ~139 KB) overfill the target's
    // ~132 KiB receive buffer in one read with more PDUs than it handles per poll.
    let target = tgt().start("fullbuf", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(128).unwrap();
    for round in 0..5u8 {
        let cids: Vec<u16> = (0..127u64)
            .map(|index| queue.submit_write(1, index * 2, 2, pattern(index * 2, 2, round)).unwrap())
            .collect();
        let mut done = Vec::new();
        let deadline = Instant::now() + WAIT;
        while done.len() < cids.len() {
            assert!(Instant::now() < deadline, "round {round}: {} of {} completed", done.len(), cids.len());
            queue.poll(128, &mut done).unwrap_or_else(|err| panic!("round {round}: {err}"));
        }
        assert!(done.iter().all(|completion| completion.is_ok()), "round {round}");
    }
    let mut back = vec![0u8; 2 * BLOCK as usize];
    queue.read(1, 252, 2, &mut back).unwrap();
    assert_eq!(back, pattern(252, 2, 4));
}

/// Identify with CNS 06h (I/O Command Set specific Identify Controller) for `csi`.
fn identify_iocs_controller(controller: &mut Controller, csi: u8) -> initiator::Completion {
    let cmd = SqeBuilder::new(admin::IDENTIFY, 0).cdw(10, 0x06).cdw(11, u32::from(csi) << 24);
    controller.admin().execute(cmd, Xfer::FromController, vec![0; 4096]).unwrap()
}

/// A Dataset Management deallocate of `ranges` (starting LBA, blocks).
fn deallocate(queue: &mut initiator::IoQueue, ranges: &[(u64, u32)]) -> initiator::Completion {
    let mut list = vec![0u8; ranges.len() * 16];
    for (index, (slba, blocks)) in ranges.iter().enumerate() {
        list[index * 16 + 4..index * 16 + 8].copy_from_slice(&blocks.to_le_bytes());
        list[index * 16 + 8..index * 16 + 16].copy_from_slice(&slba.to_le_bytes());
    }
    let nr = ranges.len() as u32 - 1;
    let dsm = SqeBuilder::new(io::DATASET_MANAGEMENT, 0).nsid(1).cdw(10, nr).cdw(11, 1 << 2);
    queue.execute(dsm, Xfer::ToController, list).unwrap()
}

/// `nvmf_create_subsystem`'s `dmrsl` and `wzsl` reach the host in the NVM Command Set's
/// Identify Controller data (CNS 06h, NVM Command Set 1.0, 4.1.5.4) and bind commands on
/// the wire: ONCS bit 3 is clear, so a Write Zeroes beyond WZSL is refused with Invalid
/// Field (3.2.8); Dataset Management stays advertised, so a range beyond DMRSL is
/// deallocated only up to it (3.2.3.1).
#[test]
fn command_limits_are_reported_by_identify_and_enforced_on_the_wire() {
    let target = tgt().start("cmdlimits", &[]);
    target.create_tcp_transport(json!({}));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true, "dmrsl": 16, "wzsl": 1})));
    target.add_malloc_namespace(NQN, "Malloc0", BLOCKS, BLOCK);
    let addr = target.listen(NQN);
    let mut controller = connect(addr, Digests::default());
    assert_eq!(controller.info().oncs, 0b0101, "Compare and Dataset Management; Write Zeroes only within WZSL");
    let nvm = identify_iocs_controller(&mut controller, 0x00);
    assert_eq!(nvm.status, Status::SUCCESS);
    let data = &nvm.buf;
    assert_eq!((data[0], data[1], data[2], data[3]), (0, 1, 0, 255), "VSL, WZSL, WUSL, DMRL");
    assert_eq!(&data[4..8], &16u32.to_le_bytes(), "DMRSL");
    assert_eq!(&data[8..16], &u64::MAX.to_le_bytes(), "DMSL");
    assert_eq!(identify_iocs_controller(&mut controller, 0x02).status, Status::INVALID_FIELD, "no Zoned Namespaces");
    let ns_nvm = SqeBuilder::new(admin::IDENTIFY, 0).nsid(1).cdw(10, 0x05);
    let ns_nvm = controller.admin().execute(ns_nvm, Xfer::FromController, vec![0xff; 4096]).unwrap();
    assert_eq!(ns_nvm.status, Status::SUCCESS);
    assert!(ns_nvm.buf.iter().all(|b| *b == 0), "no protection information, no extended LBA formats");

    let mut queue = controller.io_queue(8).unwrap();
    // WZSL 1: 2^1 pages of 4 KiB, 16 blocks of 512 bytes.
    queue.write(1, 0, 64, &pattern(0, 64, 1)).unwrap();
    let zeroes = |slba: u64, blocks: u32| SqeBuilder::new(io::WRITE_ZEROES, 0).rw(1, slba, blocks);
    assert_eq!(queue.execute(zeroes(0, 16), Xfer::None, Vec::new()).unwrap().status, Status::SUCCESS);
    assert_eq!(queue.execute(zeroes(16, 17), Xfer::None, Vec::new()).unwrap().status, Status::INVALID_FIELD);
    let mut back = vec![0u8; 64 * BLOCK as usize];
    queue.read(1, 0, 64, &mut back).unwrap();
    let block = BLOCK as usize;
    assert!(back[..16 * block].iter().all(|b| *b == 0), "the Write Zeroes within WZSL ran");
    assert_eq!(&back[16 * block..], &pattern(0, 64, 1)[16 * block..], "the refused one touched nothing");

    // DMRSL 16: of a 24-block range, the first 16 blocks are deallocated; a short range whole.
    queue.write(1, 100, 40, &pattern(100, 40, 2)).unwrap();
    assert_eq!(deallocate(&mut queue, &[(100, 24), (130, 4)]).status, Status::SUCCESS);
    let mut back = vec![0u8; 40 * block];
    queue.read(1, 100, 40, &mut back).unwrap();
    let original = pattern(100, 40, 2);
    assert!(back[..16 * block].iter().all(|b| *b == 0), "blocks 100-115 deallocated");
    assert_eq!(&back[16 * block..24 * block], &original[16 * block..24 * block], "blocks 116-123 past DMRSL kept");
    assert_eq!(&back[24 * block..30 * block], &original[24 * block..30 * block], "blocks 124-129 named by no range");
    assert!(back[30 * block..34 * block].iter().all(|b| *b == 0), "blocks 130-133 deallocated");

    // A subsystem without limits reports none, and advertises Write Zeroes.
    let plain = "nqn.2016-06.io.peerless:plain";
    target.create_subsystem(plain);
    target.add_malloc_namespace(plain, "Malloc1", BLOCKS, BLOCK);
    target.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": plain, "listen_address":
            {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}})),
    );
    let mut controller = Controller::connect(addr, plain, HOSTNQN, &Options::default()).unwrap();
    assert_eq!(controller.info().oncs, 0b1101);
    let nvm = identify_iocs_controller(&mut controller, 0x00);
    assert_eq!(nvm.status, Status::SUCCESS);
    assert!(nvm.buf.iter().all(|b| *b == 0), "no limits: every field 0");
    let mut queue = controller.io_queue(8).unwrap();
    assert_eq!(queue.execute(zeroes(0, 4096), Xfer::None, Vec::new()).unwrap().status, Status::SUCCESS);
}

/// `nvmf_get_stats` gives each poll group the time its thread's passes with work took (`busy_ns`)
/// and that time per completed I/O (`cpu_ns_per_io`), so a data-path regression shows in
/// a counter: both grow with I/O, and the ratio is the one the counters give.
#[test]
fn poll_group_stats_give_cpu_time_per_io() {
    let target = tgt().start("cpu-per-io", &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let groups = |target: &Target| target.call("nvmf_get_stats", None)["poll_groups"].as_array().unwrap().clone();
    let sum = |groups: &[serde_json::Value], key: &str| -> u64 {
        groups.iter().map(|group| group[key].as_u64().unwrap_or_else(|| panic!("{key} in {group}"))).sum()
    };
    let before = groups(&target);
    let mut controller = connect(addr, Digests::default());
    let mut queue = controller.io_queue(32).unwrap();
    const IOS: u64 = 300;
    for index in 0..IOS {
        let slba = (index * 8) % BLOCKS;
        let data = pattern(slba, 8, 5);
        queue.write(1, slba, 8, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        queue.read(1, slba, 8, &mut back).unwrap();
    }
    let after = groups(&target);
    assert!(sum(&after, "completed_nvme_io") >= sum(&before, "completed_nvme_io") + 2 * IOS, "{after:?}");
    assert!(sum(&after, "busy_ns") > sum(&before, "busy_ns"), "{before:?} then {after:?}");
    for group in &after {
        let (busy, completed) = (group["busy_ns"].as_u64().unwrap(), group["completed_nvme_io"].as_u64().unwrap());
        let per_io = group["cpu_ns_per_io"].as_u64().unwrap();
        assert_eq!(per_io, busy.checked_div(completed).unwrap_or(0), "{group}");
        if completed > 0 {
            assert!(per_io > 0, "I/O took no time: {group}");
        }
    }
}

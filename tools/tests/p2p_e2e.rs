//! The peer-to-peer data path end to end: NVMe/TCP payload placed in an emulated SSD's
//! strict CMB (its CPU mapping is PROT_NONE, so a stray dereference kills the target),
//! moved by the device's DMA engine, verified byte for byte by the host, with the
//! counters proving no payload byte went through a host buffer.

mod support;

use std::net::SocketAddr;

use peerless_target::tcp::pdu::Digests;
use peerless_testkit::Target;
use peerless_tools::initiator::{Controller, Options};
use serde_json::{json, Value};
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:p2p";
const BLOCK: u32 = 512;

fn pattern(slba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK as usize)
        .map(|index| ((slba + (index / BLOCK as usize) as u64) as u8).wrapping_mul(13) ^ (index as u8) ^ seed)
        .collect()
}

/// An nvmesim SSD (optionally behind a passthru) exported with p2pmem "auto".
fn serve(target: &Target, cmb_size_mb: u64, through_passthru: bool) -> SocketAddr {
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP", "max_io_size": 1_048_576})));
    target.call(
        "bdev_nvmesim_create",
        Some(json!({"name": "Sim0", "num_blocks": 65536, "block_size": BLOCK, "cmb_size_mb": cmb_size_mb})),
    );
    let bdev = if through_passthru {
        target.call("bdev_passthru_create", Some(json!({"name": "PT0", "base_bdev_name": "Sim0"})));
        "PT0"
    } else {
        "Sim0"
    };
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": bdev, "p2pmem": "auto"}})));
    target.listen(NQN)
}

fn run_sizes(addr: SocketAddr, digests: Digests, seed: u8) {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options { digests, ..Options::default() }).unwrap();
    let mut queue = controller.io_queue(16).unwrap();
    // 4 KiB to 1 MiB: in-capsule and R2T writes, single and large C2H reads.
    for (step, blocks) in [8u32, 64, 256, 2048].into_iter().enumerate() {
        let slba = step as u64 * 4096;
        let data = pattern(slba, blocks, seed);
        queue.write(1, slba, blocks, &data).unwrap_or_else(|err| panic!("write {blocks} blocks {digests:?}: {err}"));
        let mut back = vec![0u8; data.len()];
        queue.read(1, slba, blocks, &mut back).unwrap_or_else(|err| panic!("read {blocks} blocks {digests:?}: {err}"));
        assert!(back == data, "{blocks} blocks {digests:?} came back different");
    }
}

fn bounced(target: &Target, bdev: &str) -> u64 {
    let stats = target.call("bdev_get_iostat", Some(json!({"name": bdev})));
    stats["bdevs"][0]["driver_specific"]["bounced_ios"].as_u64().unwrap()
}

fn check_all_payload_in_device_memory(target: &Target) -> Value {
    let stats = target.call("mem_get_stats", None);
    assert_eq!(stats["payload_bytes"]["host"], json!(0), "payload reached a host buffer: {stats}");
    assert!(stats["payload_bytes"]["iomem"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["p2p_fallbacks"], json!(0), "{stats}");
    stats
}

#[test]
fn payload_lives_in_the_cmb_from_network_to_media() {
    let target = tgt().start("p2p", &[]);
    let addr = serve(&target, 64, false);
    for (seed, digests) in [Digests::default(), Digests { header: true, data: true }].into_iter().enumerate() {
        run_sizes(addr, digests, seed as u8);
    }
    let stats = check_all_payload_in_device_memory(&target);
    // The CPU touched payload only through I/O accessors (into and out of the CMB).
    assert!(stats["cpu_bytes"]["io_accessor"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(bounced(&target, "Sim0"), 0, "the SSD DMAs from its own CMB: nothing bounces");
    let provider = &stats["providers"][0];
    assert_eq!(provider["name"], json!("Sim0_cmb"));
    assert_eq!(provider["free"], provider["size"], "every CMB buffer went back to the provider");
}

#[test]
fn a_passthru_in_between_passes_cmb_buffers_on() {
    let target = tgt().start("p2p-pt", &[]);
    let addr = serve(&target, 64, true);
    run_sizes(addr, Digests { header: false, data: true }, 7);
    check_all_payload_in_device_memory(&target);
    assert_eq!(bounced(&target, "PT0"), 0);
    assert_eq!(bounced(&target, "Sim0"), 0);
    let subsystems = target.call("nvmf_get_subsystems", Some(json!({"nqn": NQN})));
    assert_eq!(subsystems[0]["namespaces"][0]["p2pmem"], json!("auto"));
}

#[test]
fn namespaces_that_cannot_use_p2p_memory_are_refused_at_rpc_time() {
    let target = tgt().start("p2p-refuse", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 1024, "block_size": 512})));
    target.call("bdev_nvmesim_create", Some(json!({"name": "Sim0", "num_blocks": 1024, "block_size": 512})));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    let (_, auto) = target.call_err(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "p2pmem": "auto"}})),
    );
    assert!(auto.contains("no P2P memory"), "{auto}");
    let (_, named) = target.call_err(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "p2pmem": "Sim0_cmb"}})),
    );
    assert!(named.contains("cannot DMA from P2P provider 'Sim0_cmb'"), "{named}");
    let (_, unknown) = target.call_err(
        "nvmf_subsystem_add_ns",
        Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Sim0", "p2pmem": "Sim9_cmb"}})),
    );
    assert!(unknown.contains("'Sim9_cmb': no provider has that name"), "{unknown}");
    // The refusals left no claim behind.
    let bdevs = target.call("bdev_get_bdevs", Some(json!({"name": "Malloc0"})));
    assert_eq!(bdevs[0]["claimed"], json!(false));
    assert_eq!(
        target.call(
            "nvmf_subsystem_add_ns",
            Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Sim0", "p2pmem": "Sim0_cmb"}}))
        ),
        json!(1)
    );
}

#[test]
fn a_full_provider_falls_back_to_host_memory_and_counts_it() {
    let target = tgt().start("p2p-full", &[]);
    // A 1 MiB CMB cannot hold 32 writes of 128 KiB in flight at once.
    let addr = serve(&target, 1, false);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).unwrap();
    let mut queue = controller.io_queue(64).unwrap();
    let mut cids = Vec::new();
    for index in 0..32u64 {
        cids.push(queue.submit_write(1, index * 256, 256, pattern(index * 256, 256, 4)).unwrap());
    }
    for cid in cids {
        assert!(queue.wait(cid).unwrap().is_ok());
    }
    for index in (0..32u64).step_by(5) {
        let mut back = vec![0u8; 256 * BLOCK as usize];
        queue.read(1, index * 256, 256, &mut back).unwrap();
        assert_eq!(back, pattern(index * 256, 256, 4));
    }
    let stats = target.call("mem_get_stats", None);
    assert!(stats["p2p_fallbacks"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["payload_bytes"]["host"].as_u64().unwrap() > 0, "fallbacks place payload in host memory: {stats}");
    assert!(stats["payload_bytes"]["iomem"].as_u64().unwrap() > 0, "{stats}");
}

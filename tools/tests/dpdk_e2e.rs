//! NVMe/TCP on DPDK memory: a real `peerless-tgt --env dpdk --no-huge` whose malloc
//! namespace lives on the EAL heap, driven by the initiator over loopback TCP. The
//! binary must come from `cargo build -p peerless-target --features dpdk`.
#![cfg(feature = "dpdk")]

mod support;

use peerless_target::tcp::pdu::Digests;
use peerless_testkit::Binary;
use peerless_tools::initiator::{Controller, Options};
use serde_json::json;
use support::HOSTNQN;

/// The target built with DPDK, which the default build is not.
fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target --features dpdk --bin peerless-tgt")
}

const NQN: &str = "nqn.2016-06.io.peerless:dpdk";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 16384;

fn pattern(slba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK as usize)
        .map(|index| ((slba + (index / BLOCK as usize) as u64) as u8).wrapping_mul(13) ^ (index as u8) ^ seed)
        .collect()
}

/// The EAL's interrupt thread exists only in a process whose EAL started.
fn eal_threads(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the target's threads");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("eal-") || name.starts_with("rte_"))
        .collect()
}

#[test]
fn nvme_tcp_round_trip_on_dpdk_memory() {
    let target = tgt().start("dpdk", &["--env", "dpdk", "--no-huge", "-s", "256"]);
    let threads = eal_threads(target.pid());
    assert!(!threads.is_empty(), "peerless-tgt --env dpdk runs no EAL thread: was it built with --features dpdk?");
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({"max_io_size": 1_048_576, "in_capsule_data_size": 8192}));
    for (seed, digests) in [Digests::default(), Digests { header: true, data: true }].into_iter().enumerate() {
        let options = Options { digests, ..Options::default() };
        let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options).expect("connect");
        let mut queue = controller.io_queue(32).expect("I/O queue");
        // In-capsule (512 B, 4 KiB) and R2T/H2CData (16 KiB and up) paths.
        for (step, blocks) in [1u32, 8, 32, 256, 2048].into_iter().enumerate() {
            let slba = step as u64 * 2048;
            let data = pattern(slba, blocks, seed as u8);
            queue.write(1, slba, blocks, &data).unwrap_or_else(|err| panic!("write {blocks} blocks: {err}"));
            let mut back = vec![0u8; data.len()];
            queue.read(1, slba, blocks, &mut back).unwrap_or_else(|err| panic!("read {blocks} blocks: {err}"));
            assert!(back == data, "{blocks} blocks with {digests:?} came back different");
        }
    }
}

#[test]
fn contradictory_memory_flags_are_usage_errors() {
    let output = tgt().run(["--env", "dpdk", "--no-huge", "--iova-mode", "pa"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--iova-mode va"), "{output:?}");
}

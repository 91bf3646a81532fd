//! peerless-perf's in-process engine (what trtype PCIe runs on) against real bdevs of the
//! bdev layer: malloc disks of two block sizes, and an error bdev that fails or corrupts
//! I/O on demand. No PCI NVMe device is needed; the PCIe attach itself runs in the guest
//! lab (ci/guest/jobs/nvme-perf.sh).

use std::time::Duration;

use peerless_tools::perf::inproc::{run_on_bdevs, Session, Target};
use peerless_tools::perf::{Endpoint, PerfConfig, Workload};
use serde_json::json;

const CALL: Duration = Duration::from_secs(10);

fn config(workload: &str, io_bytes: usize, depth: u16, verify: bool) -> PerfConfig {
    PerfConfig {
        trid: Endpoint::parse("trtype:PCIe traddr:0000:00:04.0").expect("trid"),
        hostnqn: String::new(),
        queue_depth: depth,
        io_bytes,
        workload: Workload::parse(workload, Some(70)).expect("workload"),
        duration: Duration::from_secs(1),
        cores: vec![0],
        queues_per_ns: 1,
        digests: Default::default(),
        latency_detail: 1,
        verify,
        json: false,
        plot: None,
        seed: 7,
        kato_ms: 0,
        rate_iops: None,
        auth: None,
        tls: None,
    }
}

fn malloc(session: &Session, name: &str, block_size: u32, num_blocks: u64) {
    let params = json!({"name": name, "block_size": block_size, "num_blocks": num_blocks});
    session.call("bdev_malloc_create", params, CALL).expect("bdev_malloc_create");
}

fn targets() -> Vec<Target> {
    vec![Target { bdev: "m512".into(), nsid: 1 }, Target { bdev: "m4k".into(), nsid: 2 }]
}

#[test]
fn every_workload_and_size_runs_on_two_namespaces_and_verifies() {
    let session = Session::start("perf-inproc", &[0]).expect("framework");
    malloc(&session, "m512", 512, 64 * 1024);
    malloc(&session, "m4k", 4096, 8 * 1024);
    for (workload, io_bytes, depth, verify) in [
        ("randread", 4096, 32, false),
        ("write", 4096, 1, false),
        ("rw", 8192, 4, false),
        ("randwrite", 4096, 32, true),
        ("write", 128 * 1024, 8, true),
        ("randrw", 12 * 1024, 3, true),
    ] {
        let config = config(workload, io_bytes, depth, verify);
        let mut out = Vec::new();
        let summary = run_on_bdevs(&session, &config, &targets(), "PCIE (test)", &mut out).expect(workload);
        let text = String::from_utf8(out).expect("utf8");
        assert!(summary.ios > 0 && summary.iops > 0.0, "{workload} {io_bytes}: {summary:?}\n{text}");
        assert_eq!((summary.errors, summary.mismatches), (0, 0), "{workload} {io_bytes}:\n{text}");
        let lat = summary.latency_us;
        assert!(lat.avg > 0.0 && lat.p50 <= lat.p99 && lat.p99 <= lat.max, "{lat:?}");
        for row in ["PCIE (test) NSID 1 from core 0", "PCIE (test) NSID 2 from core 0", "Total", "Summary latency data"]
        {
            assert!(text.contains(row), "{workload}: no {row:?} in\n{text}");
        }
        let mib = summary.mibps * 1024.0 * 1024.0 / io_bytes as f64;
        assert!((mib - summary.iops).abs() < summary.iops * 1e-6, "MiB/s and IOPS disagree: {summary:?}");
    }
    session.stop();
}

#[test]
fn failed_and_corrupted_io_is_counted_not_hidden() {
    let session = Session::start("perf-inproc", &[0]).expect("framework");
    malloc(&session, "base", 512, 16 * 1024);
    session.call("bdev_error_create", json!({"base_name": "base"}), CALL).expect("bdev_error_create");
    let target = [Target { bdev: "EE_base".into(), nsid: 1 }];
    let inject = |error_type: &str, num: u32| {
        let params = json!({"name": "EE_base", "io_type": "read", "error_type": error_type, "num": num, "corrupt_offset": 700, "corrupt_value": 0x5a});
        session.call("bdev_error_inject_error", params, CALL).expect("inject");
    };
    inject("corrupt_data", 3);
    let mut out = Vec::new();
    let summary =
        run_on_bdevs(&session, &config("randwrite", 4096, 4, true), &target, "PCIE (test)", &mut out).expect("run");
    let text = String::from_utf8(out).expect("utf8");
    // Offset 700 lands in the second 512-byte block of a 4 KiB read: one block each.
    assert_eq!((summary.errors, summary.mismatches), (0, 3), "{text}");
    assert!(text.contains("verify mismatches (blocks): 3"), "{text}");
    inject("failure", 5);
    let summary = run_on_bdevs(&session, &config("randread", 4096, 4, false), &target, "PCIE (test)", &mut Vec::new())
        .expect("run");
    assert_eq!((summary.errors, summary.mismatches), (5, 0));
    session.stop();
}

#[test]
fn bad_runs_are_refused_with_a_reason() {
    let session = Session::start("perf-inproc", &[0]).expect("framework");
    malloc(&session, "m4k", 4096, 64);
    let run = |config: &PerfConfig, bdev: &str| {
        let target = [Target { bdev: bdev.into(), nsid: 1 }];
        run_on_bdevs(&session, config, &target, "PCIE (test)", &mut Vec::new()).expect_err("refused").to_string()
    };
    let err = run(&config("randread", 512, 4, false), "m4k");
    assert!(err.contains("not a multiple of m4k's 4096-byte blocks"), "{err}");
    // 64 blocks cannot give 32 verify lanes a 4-block region each.
    let err = run(&config("randwrite", 16384, 32, true), "m4k");
    assert!(err.contains("too small"), "{err}");
    let err = run(&config("randread", 4096, 4, false), "nope");
    assert!(err.contains("nope"), "{err}");
    session.stop();
}

#[test]
fn a_rate_limit_is_shared_over_the_jobs_whatever_the_queue_depth() {
    let session = Session::start("perf-inproc", &[0]).expect("framework");
    malloc(&session, "m512", 512, 4096);
    malloc(&session, "m4k", 4096, 512);
    // 32 I/Os may be in flight per job, but 200 a second in all start: 100 for each of the
    // two jobs, one every 10 ms (a pacer grants at most one extra slot after a stall).
    let mut paced = config("randread", 4096, 32, false);
    paced.rate_iops = Some(200);
    let summary = run_on_bdevs(&session, &paced, &targets(), "PCIE (test)", &mut Vec::new()).expect("run");
    assert_eq!((summary.errors, summary.mismatches), (0, 0));
    assert!(summary.ios > 0 && summary.ios <= 202, "{} I/Os started in 1 s at --rate-iops 200", summary.ios);
    paced.rate_iops = Some(1);
    let err = run_on_bdevs(&session, &paced, &targets(), "PCIE (test)", &mut Vec::new()).expect_err("too low");
    assert!(err.to_string().contains("--rate-iops 1"), "{err}");
    session.stop();
}

//! peerless-perf's engine and identify output against the scripted fake controller.

mod fake;

use std::time::Duration;

use fake::{Config, Fake, HOSTNQN, SUBNQN};
use peerless_tools::initiator::{Controller, Digests, Options};
use peerless_tools::perf::{self, identify, Endpoint, PerfConfig, Workload};

fn config(fake: &Fake, workload: &str, verify: bool) -> PerfConfig {
    let trid = format!("trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:{}", fake.addr.port());
    PerfConfig {
        trid: Endpoint::parse(&trid).expect("trid"),
        hostnqn: HOSTNQN.into(),
        queue_depth: 16,
        io_bytes: 4096,
        workload: Workload::parse(workload, Some(70)).expect("workload"),
        duration: Duration::from_secs(1),
        cores: vec![0],
        queues_per_ns: 2,
        digests: Digests { header: true, data: true },
        latency_detail: 2,
        verify,
        json: false,
        plot: None,
        seed: 42,
        kato_ms: 10_000,
        rate_iops: None,
        auth: None,
        tls: None,
    }
}

fn run(config: &PerfConfig) -> (perf::Summary, String) {
    let mut out = Vec::new();
    let summary = perf::run(config, &mut out).expect("perf run");
    (summary, String::from_utf8(out).expect("utf8"))
}

#[test]
fn every_workload_runs_and_reports() {
    let fake = Fake::start(Config::default());
    for workload in ["read", "write", "randread", "randwrite", "rw", "randrw"] {
        let (summary, text) = run(&config(&fake, workload, false));
        assert!(summary.ios > 0 && summary.iops > 0.0, "{workload}: {summary:?}");
        assert_eq!((summary.errors, summary.mismatches), (0, 0), "{workload}");
        let lat = summary.latency_us;
        assert!(lat.avg > 0.0 && lat.p50 <= lat.p99 && lat.p99 <= lat.p999 && lat.p999 <= lat.max, "{lat:?}");
        assert!(text.contains("Attached to NVMe over Fabrics controller"), "{text}");
        assert!(text.contains(&format!("subnqn:{SUBNQN}")), "discovery picked the NVM subsystem: {text}");
        assert!(text.contains("NSID 1 from core 0") && text.contains("Summary latency data"), "{text}");
    }
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[test]
fn verify_finds_no_mismatch_on_a_good_target_and_finds_corruption() {
    let fake = Fake::start(Config::default());
    let mut good = config(&fake, "randwrite", true);
    let plot = std::env::temp_dir().join(format!("peerless-perf-{}.svg", std::process::id()));
    good.plot = Some(plot.clone());
    let (summary, _) = run(&good);
    assert!(summary.ios > 0);
    assert_eq!((summary.errors, summary.mismatches), (0, 0));
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let _ = std::fs::remove_file(plot);

    let bad = Fake::start(Config { corrupt_read_data: true, ..Config::default() });
    let (summary, text) = run(&config(&bad, "write", true));
    assert!(summary.mismatches > 0, "{summary:?}");
    assert!(text.contains("verify mismatches"), "{text}");
}

#[test]
fn identify_prints_controller_and_namespace_fields() {
    let fake = Fake::start(Config::default());
    let mut ctrl = Controller::connect(fake.addr, SUBNQN, HOSTNQN, &Options::default()).expect("connect");
    let mut out = Vec::new();
    identify::identify(&mut ctrl, None, &mut out).expect("identify");
    let text = String::from_utf8(out).expect("utf8");
    for expected in [
        "Serial Number:                          FAKE0001",
        "Model Number:                           Fake Controller",
        "Firmware Version:                       1.0",
        "Controller ID:                          0x0005",
        "Max Data Transfer Size:                 1048576",
        "Max Number of Namespaces:               1",
        &format!("NVM Subsystem NQN:                      {SUBNQN}"),
        "Namespace ID:1",
        "Size (in LBAs):                         16384 (8MiB)",
        "NGUID:                                  11111111111111111111111111111111",
        "EUI64:                                  2222222222222222",
        "UUID:                                   33333333-3333-3333-3333-333333333333",
        "LBA Format #00: Data Size:   512",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn bad_configurations_are_refused_before_io() {
    let fake = Fake::start(Config::default());
    let mut odd = config(&fake, "read", false);
    odd.io_bytes = 1000;
    let mut out = Vec::new();
    let error = perf::run(&odd, &mut out).expect_err("not a block multiple");
    assert!(error.to_string().contains("not a multiple"), "{error}");
    let mut huge = config(&fake, "read", false);
    huge.io_bytes = 4 << 20;
    assert!(perf::run(&huge, &mut out).expect_err("beyond MDTS").to_string().contains("transfer limit"));
    let mut many = config(&fake, "read", false);
    many.queues_per_ns = 32;
    assert!(perf::run(&many, &mut out).is_err(), "-P above -q");
    let mut starved = config(&fake, "read", false);
    starved.cores = vec![0, 0];
    starved.rate_iops = Some(1);
    let error = perf::run(&starved, &mut out).expect_err("a rate below one I/O per core per second");
    assert!(error.to_string().contains("--rate-iops 1"), "{error}");
}

#[test]
fn a_rate_limit_holds_whatever_the_queue_depth() {
    let fake = Fake::start(Config::default());
    let mut paced = config(&fake, "randread", false);
    // 16 I/Os may be in flight, but only 200 start in the run's one second: one every
    // 5 ms (the pacer grants at most one extra slot after a stall of the worker).
    paced.rate_iops = Some(200);
    let (summary, _) = run(&paced);
    assert_eq!((summary.errors, summary.mismatches), (0, 0));
    assert!(summary.ios > 0 && summary.ios <= 201, "{} I/Os started in 1 s at --rate-iops 200", summary.ios);
}

#[test]
fn two_workers_share_a_namespace_with_verify_and_json_figures() {
    // Two threads on the first and last allowed CPUs (the same one on a 1-CPU machine).
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|c| allowed.is_set(*c).unwrap_or(false)).collect();
    let fake = Fake::start(Config::default());
    let mut two = config(&fake, "randrw", true);
    two.cores = vec![cpus[0], cpus[cpus.len() - 1]];
    two.queue_depth = 8;
    two.digests = Digests::default();
    let (summary, text) = run(&two);
    assert_eq!((summary.errors, summary.mismatches), (0, 0));
    assert_eq!(text.matches(" from core ").count(), 2, "a row per worker: {text}");
    assert_eq!(fake.state.lock().expect("state").connects.len(), 2 + 2 * 2, "discovery, admin, 2 workers x -P 2");
    let json = serde_json::to_value(&summary).expect("json");
    assert!(json["iops"].as_f64().expect("iops") > 0.0);
    assert!(json["latency_us"]["p999"].as_f64().expect("p999") >= json["latency_us"]["p50"].as_f64().expect("p50"));
}

//! RBD namespaces over NVMe/TCP against a real one-node Ceph cluster (`ci/ceph.sh`):
//! the RPC methods and their refusals, data through the initiator at 4 KiB to 1 MiB on
//! 512- and 4096-byte blocks, peerless-perf --verify, the OSD stopped and restarted, and
//! frozen and thawed, under verified I/O, and save_config replayed by a second target that reads back the first
//! one's data from Ceph, and the image grown by RPC on one target and by `rbd resize`
//! outside both, each target and its hosts seeing the new size. One test, because the cluster takes seconds to start and the
//! OSD restart would disturb any test sharing it. The binary must come from
//! `cargo build -p peerless-target --features rbd`.
#![cfg(feature = "rbd")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerless_testkit::{Binary, CephCluster, Target};
use peerless_tools::initiator::{Controller, Options};
use serde_json::{json, Value};
use support::HOSTNQN;

fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target --features rbd --bin peerless-tgt")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tools/ sits in the repository").to_path_buf()
}

const NQN: &str = "nqn.2016-06.io.peerless:rbd";
const IMAGE_MIB: u64 = 64;
/// I/O sizes from 4 KiB to 1 MiB, the range hosts use.
const SIZES: [usize; 5] = [4096, 16384, 131072, 524288, 1048576];

fn pattern(offset: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|index| ((offset as usize + index) / 512) as u8 ^ (index as u8).wrapping_mul(7) ^ seed).collect()
}

fn register(target: &Target, cluster: &CephCluster) {
    let name = target.call(
        "bdev_rbd_register_cluster",
        Some(json!({"name": "ceph", "config_file": cluster.conf().display().to_string()})),
    );
    assert_eq!(name, json!("ceph"));
}

fn create(target: &Target, name: &str, image: &str, block_size: u32) {
    let created = target.call(
        "bdev_rbd_create",
        Some(json!({"name": name, "pool_name": "rbd", "rbd_name": image, "block_size": block_size, "cluster_name": "ceph"})),
    );
    assert_eq!(created, json!(name));
}

/// Every refusal names what it refuses.
fn check_refusals(target: &Target) {
    let refused = |method: &str, params: Value, expect: &str| {
        let (code, message) = target.call_err(method, Some(params.clone()));
        assert!(code != 0 && message.contains(expect), "{method} {params}: ({code}) {message}, expected '{expect}'");
    };
    let base =
        json!({"name": "X", "pool_name": "rbd", "rbd_name": "data512", "block_size": 512, "cluster_name": "ceph"});
    let with = |key: &str, value: Value| {
        let mut params = base.clone();
        params[key] = value;
        params
    };
    refused("bdev_rbd_create", with("bogus", json!(1)), "bogus");
    refused("bdev_rbd_create", with("user_id", json!("admin")), "user_id");
    refused("bdev_rbd_create", with("config", json!({"mon_host": "127.0.0.1"})), "config");
    refused("bdev_rbd_create", with("cluster_name", json!("nowhere")), "nowhere");
    refused("bdev_rbd_create", with("rbd_name", json!("no-such-image")), "rbd/no-such-image");
    refused("bdev_rbd_create", with("block_size", json!(1000)), "block_size");
    refused("bdev_rbd_create", with("name", json!("Rbd512")), "Rbd512");
    refused("bdev_rbd_register_cluster", json!({"name": "ceph", "config_file": "/nonexistent"}), "ceph");
    refused(
        "bdev_rbd_register_cluster",
        json!({"name": "c2", "config_param": {"mon_host": 7}}),
        "config_param.mon_host",
    );
    refused("bdev_rbd_register_cluster", json!({"name": "c3", "key": "x"}), "key");
    for connections in [json!(0), json!(17), json!("2")] {
        refused("bdev_rbd_register_cluster", json!({"name": "c4", "connections": connections}), "connections");
    }
    refused("bdev_rbd_unregister_cluster", json!({"name": "ceph"}), "Rbd512");
    refused("bdev_rbd_delete", json!({"name": "nothing"}), "nothing");
    let info = target.call("bdev_rbd_get_clusters_info", Some(json!({"name": "ceph"})));
    assert_eq!(info["cluster_name"], json!("ceph"), "{info}");
    assert_eq!(info["bdevs"], json!(["Rbd4k", "Rbd512"]), "{info}");
}

/// Writes a pattern at each size on each namespace and reads it back.
fn round_trips(addr: std::net::SocketAddr, namespaces: &[(u32, u32)], seed: u8) {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    let mut queue = controller.io_queue(32).expect("I/O queue");
    for &(nsid, block_size) in namespaces {
        let mut offset = 0u64;
        for len in SIZES {
            let blocks = (len / block_size as usize) as u32;
            let slba = offset / u64::from(block_size);
            let data = pattern(offset, len, seed);
            queue.write(nsid, slba, blocks, &data).unwrap_or_else(|err| panic!("ns {nsid} write {len}: {err}"));
            let mut back = vec![0u8; len];
            queue.read(nsid, slba, blocks, &mut back).unwrap_or_else(|err| panic!("ns {nsid} read {len}: {err}"));
            assert!(back == data, "ns {nsid}: {len} bytes at {offset} came back different");
            offset += len as u64;
        }
        queue.flush_namespace(nsid).expect("flush");
    }
}

/// Reads back what `round_trips` wrote with `seed`.
fn read_back(addr: std::net::SocketAddr, nsid: u32, block_size: u32, seed: u8) {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    let mut queue = controller.io_queue(32).expect("I/O queue");
    let mut offset = 0u64;
    for len in SIZES {
        let mut back = vec![0u8; len];
        let slba = offset / u64::from(block_size);
        queue.read(nsid, slba, (len / block_size as usize) as u32, &mut back).expect("read back");
        assert!(back == pattern(offset, len, seed), "ns {nsid}: {len} bytes at {offset} are not what was written");
        offset += len as u64;
    }
}

fn perf(addr: std::net::SocketAddr, size: usize, depth: u32, seconds: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_peerless-perf"));
    let trid = format!("trtype:tcp adrfam:IPv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:1", addr.ip(), addr.port());
    command.args(["-r", &trid, "-q", &depth.to_string(), "-o", &size.to_string(), "-w", "randwrite"]);
    command.args(["-t", &seconds.to_string(), "--verify", "--json"]);
    command
}

/// A verified run's summary; panics unless it verified every I/O.
#[track_caller]
fn check_verified(output: &std::process::Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{what}: no JSON summary ({err}): {output:?}"));
    assert!(output.status.success(), "{what}: {output:?}");
    assert_eq!(summary["mismatches"], json!(0), "{what}: {summary}");
    assert_eq!(summary["errors"], json!(0), "{what}: {summary}");
    assert!(summary["ios"].as_u64().unwrap_or(0) > 0, "{what}: no I/O done: {summary}");
    println!("{what}: {summary}");
    summary
}

/// fio's own libraries write a pattern and check it: the plugin's `peerless_nvmf`
/// engine over NVMe/TCP to the RBD namespace, I/O sizes 4 KiB to 1 MiB mixed, crc32c
/// verify. The plugin is the release build `tools/fio/build.sh` makes (CI runs it first).
fn fio_verify(addr: std::net::SocketAddr) {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let target_dir = exe.ancestors().nth(3).expect("tests run from <target dir>/<profile>/deps/");
    let so = target_dir.join("release/libpeerless_fio.so");
    assert!(so.is_file(), "{} is missing: run tools/fio/build.sh first", so.display());
    // fio splits file names at ':', so the NQN's colon is escaped, as with SPDK's plugin.
    let subnqn = NQN.replace(':', "\\:");
    let filename = format!("trtype=tcp adrfam=IPv4 traddr={} trsvcid={} subnqn={subnqn} ns=1", addr.ip(), addr.port());
    let dir = peerless_testkit::Scratch::new("rbd-fio");
    let args = [
        "--name=rbd".to_string(),
        "--ioengine=peerless_nvmf".into(),
        "--thread=1".into(),
        format!("--filename={filename}"),
        "--rw=randwrite".into(),
        "--bssplit=4k/40:64k/30:256k/20:1m/10".into(),
        "--size=32m".into(),
        "--iodepth=8".into(),
        "--verify=crc32c".into(),
        "--do_verify=1".into(),
        "--output-format=json".into(),
    ];
    let output = peerless_testkit::run(
        Command::new("fio").current_dir(dir.path()).env("LD_PRELOAD", &so).args(&args),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "fio: {output:?}");
    let json_start = stdout.find("\n{").map(|at| at + 1).unwrap_or(0);
    let report: Value = serde_json::from_str(&stdout[json_start..]).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    let job = &report["jobs"][0];
    assert_eq!(job["error"], json!(0), "{job}");
    let written = job["write"]["io_bytes"].as_u64().expect("write bytes");
    let verified = job["read"]["io_bytes"].as_u64().expect("read bytes");
    assert_eq!(written, 32 << 20, "{job}");
    assert_eq!(verified, written, "fio's verify pass read back less than was written: {job}");
    println!("fio peerless_nvmf -> rbd: wrote and verified {written} bytes");
}

/// The monitor address from the cluster's ceph.conf (`mon host = v1:127.0.0.1:PORT`).
fn mon_host(cluster: &CephCluster) -> String {
    let conf = std::fs::read_to_string(cluster.conf()).expect("ceph.conf");
    let line = conf.lines().find(|line| line.trim_start().starts_with("mon host")).expect("a mon host line");
    line.split_once('=').expect("key = value").1.trim().to_string()
}

fn check_fail_policy(target: &Target, cluster: &CephCluster, addr: std::net::SocketAddr) {
    cluster.rbd(&["create", "--size", "16M", "rbd/failfast"]);
    let config = json!({"mon_host": mon_host(cluster), "auth_client_required": "none", "rados_osd_op_timeout": "3"});
    let params =
        json!({"name": "RbdFail", "pool_name": "rbd", "rbd_name": "failfast", "block_size": 4096, "config": config});
    assert_eq!(target.call("bdev_rbd_create", Some(params)), json!("RbdFail"));
    let nsid = target.add_namespace(NQN, "RbdFail");
    // Keep-alive long enough for the OSD's stop and restart: the admin queue sends none
    // while the test waits on them.
    let options = Options { kato_ms: 120_000, ..Options::default() };
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options).expect("connect");
    let mut queue = controller.io_queue(8).expect("I/O queue");
    let data = pattern(0, 8192, 0x33);
    queue.write(nsid, 0, 2, &data).expect("write with the OSD up");
    cluster.osd_pause();
    let refused = queue.write(nsid, 2, 2, &data).expect_err("a write with the OSD down and a 3 s op timeout");
    let status = refused.status().unwrap_or_else(|| panic!("an NVMe status, not {refused}"));
    assert_eq!((status.sct, status.sc), (0, 0x82), "Namespace Not Ready: {refused}");
    assert!(!format!("{refused:?}").contains("dnr: true"), "retryable (no DNR): {refused:?}");
    cluster.osd_resume();
    let mut back = vec![0u8; data.len()];
    queue.read(nsid, 0, 2, &mut back).expect("read once the OSD is back");
    assert!(back == data, "the write made before the OSD stopped is there");
}

/// A cluster registered with two librados connections: three bdevs spread over them, the
/// least used first, each serving verified data; save_config keeps the count.
fn check_connections(target: &Target, cluster: &CephCluster, addr: std::net::SocketAddr) {
    let conf = cluster.conf().display().to_string();
    let registered =
        target.call("bdev_rbd_register_cluster", Some(json!({"name": "pair", "config_file": conf, "connections": 2})));
    assert_eq!(registered, json!("pair"));
    let mut namespaces = Vec::new();
    for (index, block_size) in [(0, 512u32), (1, 4096), (2, 512)] {
        let image = format!("pair{index}");
        cluster.rbd(&["create", "--size", "16M", &format!("rbd/{image}")]);
        let name = format!("Pair{index}");
        let params = json!({"name": name, "pool_name": "rbd", "rbd_name": image, "block_size": block_size,
            "cluster_name": "pair"});
        assert_eq!(target.call("bdev_rbd_create", Some(params)), json!(name));
        namespaces.push((target.add_namespace(NQN, &name), block_size));
    }
    let info = target.call("bdev_rbd_get_clusters_info", Some(json!({"name": "pair"})));
    assert_eq!(info["connections"], json!([["Pair0", "Pair2"], ["Pair1"]]), "{info}");
    round_trips(addr, &namespaces, 0x77);
    let config = target.call("framework_get_config", Some(json!({"name": "bdev"})));
    let saved = config.as_array().expect("entries").iter().find(|e| e["method"] == json!("bdev_rbd_register_cluster"));
    assert_eq!(saved.expect("the cluster is saved")["params"]["connections"], json!(2), "{config}");
    // The freed connection takes the next bdev.
    assert_eq!(target.call("bdev_rbd_delete", Some(json!({"name": "Pair1"}))), json!(true));
    let params =
        json!({"name": "Pair3", "pool_name": "rbd", "rbd_name": "pair1", "block_size": 4096, "cluster_name": "pair"});
    assert_eq!(target.call("bdev_rbd_create", Some(params)), json!("Pair3"));
    let info = target.call("bdev_rbd_get_clusters_info", Some(json!({"name": "pair"})));
    assert_eq!(info["connections"], json!([["Pair0", "Pair2"], ["Pair3"]]), "{info}");
    for name in ["Pair0", "Pair2", "Pair3"] {
        assert_eq!(target.call("bdev_rbd_delete", Some(json!({"name": name}))), json!(true));
    }
    assert_eq!(target.call("bdev_rbd_unregister_cluster", Some(json!({"name": "pair"}))), json!(true));
}

/// Set Features Asynchronous Event Configuration: Namespace Attribute notices (bit 8).
const FID_ASYNC_EVENT_CONFIG: u8 = 0x0b;
const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// The completion of an AER for a Namespace Attribute Changed notice: type Notice (2),
/// information 00h, log page 04h (Changed Namespace List).
const NAMESPACE_CHANGED_EVENT: u64 = 0x0004_0002;
const WAIT: Duration = Duration::from_secs(30);

fn num_blocks(target: &Target, bdev: &str) -> u64 {
    let bdevs = target.call("bdev_get_bdevs", Some(json!({"name": bdev})));
    bdevs[0]["num_blocks"].as_u64().unwrap_or_else(|| panic!("num_blocks of {bdev}: {bdevs}"))
}

#[track_caller]
fn wait_for_blocks(target: &Target, bdev: &str, expected: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while num_blocks(target, bdev) != expected {
        assert!(
            Instant::now() < deadline,
            "{what}: {bdev} still has {} blocks, not {expected}",
            num_blocks(target, bdev)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn expect_namespace_changed(controller: &mut Controller, nsid: u32) {
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.is_empty() && Instant::now() < deadline {
        controller.poll_admin(&mut events).expect("poll admin");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(events.len(), 1, "one Namespace Attribute Changed notice: {events:?}");
    assert!(events[0].is_ok() && events[0].result == NAMESPACE_CHANGED_EVENT, "{:?}", events[0]);
    let list = controller.get_log_page(0x04, 0xffff_ffff, 0, 4096).expect("Changed Namespace List");
    assert_eq!(&list[..8], [nsid.to_le_bytes(), [0; 4]].concat(), "the list names namespace {nsid} alone");
}

/// The image under Rbd4k (namespace 2 on both targets, 4096-byte blocks) grows twice: by
/// `bdev_rbd_resize` on the first target, which the second sees through its watch on the
/// image, and by `rbd resize` from outside, which both see. A host on the second target
/// hears each change, reads the new size and writes past the old end.
fn check_resize(first: &Target, second: &Target, cluster: &CephCluster, addr: std::net::SocketAddr) {
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
    controller.set_features(FID_ASYNC_EVENT_CONFIG, AEC_NAMESPACE_ATTRIBUTE).expect("enable notices");
    controller.submit_async_event_request().expect("AER");
    let mut queue = controller.io_queue(8).expect("I/O queue");
    let old_blocks = IMAGE_MIB * 256;
    assert_eq!(controller.identify_namespace(2).expect("identify").nsze, old_blocks);
    let mut block = vec![0u8; 4096];
    let past_end = queue.read(2, old_blocks, 1, &mut block);
    assert!(past_end.is_err(), "a read past the end succeeded before the resize");

    let refused = |params: Value, expect: &str| {
        let (code, message) = first.call_err("bdev_rbd_resize", Some(params.clone()));
        assert!(code != 0 && message.contains(expect), "bdev_rbd_resize {params}: ({code}) {message}");
    };
    refused(json!({"name": "Rbd4k", "new_size": IMAGE_MIB - 1}), "smaller");
    refused(json!({"name": "Nothing", "new_size": 128}), "Nothing");
    refused(json!({"name": "Rbd4k", "new_size": 128, "bogus": 1}), "bogus");
    refused(json!({"name": "Rbd4k"}), "new_size");
    assert_eq!(num_blocks(first, "Rbd4k"), old_blocks, "a refused resize changed the size");

    // Grown by RPC on the first target: it answers once its bdev has the new size.
    assert_eq!(first.call("bdev_rbd_resize", Some(json!({"name": "Rbd4k", "new_size": 96}))), json!(true));
    assert_eq!(num_blocks(first, "Rbd4k"), 96 * 256);
    wait_for_blocks(second, "Rbd4k", 96 * 256, "the second target after the first one's resize");
    expect_namespace_changed(&mut controller, 2);
    assert_eq!(controller.identify_namespace(2).expect("identify").nsze, 96 * 256);
    let data = pattern(old_blocks * 4096, 65536, 0x3c);
    queue.write(2, old_blocks, 16, &data).expect("write past the old end");
    let mut back = vec![0u8; 65536];
    queue.read(2, old_blocks, 16, &mut back).expect("read past the old end");
    assert!(back == data, "data past the old end came back different");

    // Grown from outside both targets.
    controller.submit_async_event_request().expect("AER");
    cluster.rbd(&["resize", "--size", "128M", "rbd/data4k"]);
    wait_for_blocks(first, "Rbd4k", 128 * 256, "the first target after rbd resize");
    wait_for_blocks(second, "Rbd4k", 128 * 256, "the second target after rbd resize");
    expect_namespace_changed(&mut controller, 2);
    assert_eq!(controller.identify_namespace(2).expect("identify").nsze, 128 * 256);
    queue.read(2, 128 * 256 - 1, 1, &mut block).expect("read the new last block");
    // The other namespace kept its size and heard nothing of this.
    assert_eq!(controller.identify_namespace(1).expect("identify").nsze, IMAGE_MIB * 2048);
}

fn serve(target: &Target, namespaces: &[&str]) -> std::net::SocketAddr {
    target.create_tcp_transport(json!({"max_io_size": 1_048_576, "io_unit_size": 131_072}));
    target.create_subsystem(NQN);
    for bdev in namespaces {
        target.add_namespace(NQN, bdev);
    }
    target.listen(NQN)
}

#[test]
fn rbd_namespaces_verify_survive_an_osd_outage_and_round_trip_their_config() {
    // Bluestore, in a file: the OSD is stopped and started again below, with its objects.
    let cluster = CephCluster::start_bluestore(&repo(), "rbd-e2e");
    cluster.rbd(&["create", "--size", &format!("{IMAGE_MIB}M"), "rbd/data512"]);
    cluster.rbd(&["create", "--size", &format!("{IMAGE_MIB}M"), "rbd/data4k"]);

    let mut target = tgt().start("rbd-a", &[]);
    register(&target, &cluster);
    create(&target, "Rbd512", "data512", 512);
    create(&target, "Rbd4k", "data4k", 4096);
    check_refusals(&target);
    let bdevs = target.call("bdev_get_bdevs", Some(json!({"name": "Rbd4k"})));
    assert_eq!(bdevs[0]["num_blocks"], json!(IMAGE_MIB * 256), "{bdevs}");
    assert_eq!(bdevs[0]["driver_specific"]["rbd"]["cluster_name"], json!("ceph"), "{bdevs}");

    let addr = serve(&target, &["Rbd512", "Rbd4k"]);
    round_trips(addr, &[(1, 512), (2, 4096)], 0x5a);

    for size in [4096usize, 131072, 1048576] {
        let output = peerless_testkit::run(&mut perf(addr, size, 8, 2), Duration::from_secs(60));
        check_verified(&output, &format!("perf --verify -o {size}"));
    }

    fio_verify(addr);

    // Under verified I/O the OSD goes away and comes back, twice: stopped (SIGTERM) and
    // started again, then frozen and marked down by the monitor, as when its host stops
    // answering, and thawed. librbd holds the operations and resends them, nothing is
    // lost, and the target stays up. Each run lasts long enough for Ceph to come back: a
    // thawed OSD boots again and peers, and librbd re-establishes its watch, in 5 to 15 s.
    for (outage, away, back) in [
        ("an OSD restart", CephCluster::osd_stop as fn(&CephCluster), CephCluster::osd_start as fn(&CephCluster)),
        ("a frozen OSD", CephCluster::osd_pause, CephCluster::osd_resume),
    ] {
        let started = Instant::now();
        let run = perf(addr, 65536, 8, 30).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("perf");
        std::thread::sleep(Duration::from_secs(3));
        away(&cluster);
        std::thread::sleep(Duration::from_secs(2));
        back(&cluster);
        let output = run.wait_with_output().expect("perf ran");
        // Each second's figures show how long Ceph took to serve again.
        eprintln!("{outage}:\n{}", String::from_utf8_lossy(&output.stderr));
        check_verified(&output, &format!("perf --verify across {outage}"));
        assert!(started.elapsed() < Duration::from_secs(90), "{outage}: the run took {:?}", started.elapsed());
    }
    assert_eq!(target.call("bdev_get_bdevs", Some(json!({"name": "Rbd512"})))[0]["name"], json!("Rbd512"));
    // perf wrote over namespace 1; namespace 2 still holds the round trips' data.
    read_back(addr, 2, 4096, 0x5a);

    // The "fail" policy: a bdev with its own connection whose operations time out
    // (`rados_osd_op_timeout`) answers Namespace Not Ready, retryable, while the OSD is
    // away, and serves again once it is back.
    check_fail_policy(&target, &cluster, addr);

    // save_config's bdev part, replayed by a second target: the cluster first, then
    // the bdevs, with their UUIDs; it reads what the first target wrote.
    let config = target.call("framework_get_config", Some(json!({"name": "bdev"})));
    let methods: Vec<&str> = config.as_array().expect("entries").iter().filter_map(|e| e["method"].as_str()).collect();
    assert_eq!(&methods[..4], ["bdev_rbd_register_cluster", "bdev_rbd_create", "bdev_rbd_create", "bdev_rbd_create"]);
    let own = config.as_array().expect("entries").iter().find(|e| e["params"]["name"] == json!("RbdFail"));
    assert_eq!(own.expect("RbdFail saved")["params"]["config"]["rados_osd_op_timeout"], json!("3"), "{config}");
    let uuid = bdevs[0]["uuid"].clone();
    let file = std::env::temp_dir().join(format!("peerless-rbd-config-{}.json", std::process::id()));
    std::fs::write(&file, json!({"subsystems": [{"subsystem": "bdev", "config": config}]}).to_string())
        .expect("config file");
    let second = tgt().start("rbd-b", &["-c", file.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_file(&file);
    let again = second.call("bdev_get_bdevs", Some(json!({"name": "Rbd4k"})));
    assert_eq!(again[0]["uuid"], uuid, "{again}");
    assert_eq!(second.call("framework_get_config", Some(json!({"name": "bdev"}))), config);
    let addr_b = serve(&second, &["Rbd512", "Rbd4k"]);
    read_back(addr_b, 2, 4096, 0x5a);

    check_resize(&target, &second, &cluster, addr_b);

    // Delete, then the cluster is free to go.
    assert_eq!(second.call("bdev_rbd_delete", Some(json!({"name": "Rbd512"}))), json!(true));
    assert_eq!(second.call("bdev_rbd_delete", Some(json!({"name": "Rbd4k"}))), json!(true));
    assert_eq!(second.call("bdev_rbd_delete", Some(json!({"name": "RbdFail"}))), json!(true));
    assert_eq!(second.call("bdev_rbd_unregister_cluster", Some(json!({"name": "ceph"}))), json!(true));
    assert_eq!(second.call("bdev_rbd_get_clusters_info", None), json!([]));

    check_connections(&second, &cluster, addr_b);

    // A target stopped with SIGTERM closes its images before it exits: no watch of its
    // is left for the OSD to time out (30 s), which another client of the image, such as
    // the surviving target of a multipath pair, would otherwise wait for.
    let watchers = cluster.rbd(&["status", "rbd/data4k"]);
    assert!(!watchers.contains("Watchers: none"), "the first target watches its image: {watchers}");
    assert!(target.stop().success(), "the first target's exit");
    let watchers = cluster.rbd(&["status", "rbd/data4k"]);
    assert!(watchers.contains("Watchers: none"), "the stopped target left a watch behind: {watchers}");
}

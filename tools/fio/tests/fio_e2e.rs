//! fio with both engines against real Peerless code: `peerless_nvmf` against a
//! `peerless-tgt` process serving a malloc namespace over NVMe/TCP, `peerless_bdev` with
//! the framework in fio's process. Each writes 8 MiB with crc32c verify data and reads it
//! back (fio's verify phase).
//!
//! Skips, saying why, when `fio` is not installed or the plugin was not built with its
//! shim (`tools/fio/build.sh`); a missing `peerless-tgt` is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use peerless_testkit::{Binary, Scratch};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.peerless:fio";
/// One fio run: an 8 MiB verify job takes seconds; this is the bound if one hangs.
const FIO_WAIT: Duration = Duration::from_secs(120);
/// Text only shim.c has (its thread-mode message): a cdylib built without FIO_SRC has
/// no engines.
const SHIM_MARKER: &[u8] = b"requires thread=1 (fio --thread=1)";

/// <target dir>, from the test binary's <target dir>/<profile>/deps/.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.ancestors().nth(3).expect("tests run from <target dir>/<profile>/deps/").to_path_buf()
}

/// The plugin and fio, or why this test cannot run here.
fn plugin() -> Result<PathBuf, String> {
    if Command::new("fio").arg("--version").output().map(|out| !out.status.success()).unwrap_or(true) {
        return Err("fio is not installed (apt-get install fio, or run tools/fio/build.sh)".into());
    }
    let so = target_dir().join("release/libpeerless_fio.so");
    let bytes = std::fs::read(&so).map_err(|_| format!("{} is missing: run tools/fio/build.sh", so.display()))?;
    if !bytes.windows(SHIM_MARKER.len()).any(|window| window == SHIM_MARKER) {
        return Err(format!("{} was built without FIO_SRC (no engines): run tools/fio/build.sh", so.display()));
    }
    Ok(so)
}

macro_rules! plugin_or_skip {
    () => {
        match plugin() {
            Ok(so) => so,
            Err(why) => {
                println!("SKIPPED: {why}");
                return;
            }
        }
    };
}

/// peerless-tgt from this build, beside the test (the plugin is a release build; the
/// target need not be).
fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target")
}

/// Runs fio in `dir`, where it may leave files (verify state) without touching the tree.
fn fio(so: &Path, dir: &Path, args: &[String]) -> Output {
    peerless_testkit::run(Command::new("fio").current_dir(dir).env("LD_PRELOAD", so).args(args), FIO_WAIT)
}

/// The common job: 8 MiB of 4 KiB random writes at depth 16, then fio's verify pass.
fn verify_job(engine: &str, filename: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--name=t",
        &format!("--ioengine={engine}"),
        "--thread=1",
        &format!("--filename={filename}"),
        "--rw=randwrite",
        "--bs=4k",
        "--size=8m",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=json",
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    args
}

/// Asserts a clean run whose verify pass read back every written byte; returns the
/// write IOPS fio measured.
fn check_verified(output: &Output) -> f64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fio exited {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    // fio prints notes before the JSON document; it starts at the first '{' line.
    let json_start = stdout.find("\n{").map(|at| at + 1).unwrap_or(0);
    let report: Value = serde_json::from_str(&stdout[json_start..]).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let written = job["write"]["io_bytes"].as_u64().expect("write bytes");
    let verified = job["read"]["io_bytes"].as_u64().expect("read bytes");
    assert_eq!(written, 8 << 20, "{job}");
    assert_eq!(verified, written, "the verify pass read back less than was written: {job}");
    let iops = job["write"]["iops"].as_f64().expect("write iops");
    println!("{} write IOPS {iops:.0}, verify read {verified} bytes: ok", job["job options"]["ioengine"]);
    iops
}

#[test]
fn nvmf_engine_writes_and_verifies() {
    let so = plugin_or_skip!();
    let dir = Scratch::new("fio-nvmf");
    let target = tgt().start("fio-nvmf", &[]);
    let addr = target.serve_malloc(NQN, 32768, 512, json!({}));
    let filename = format!("trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid={} ns=1", addr.port());
    check_verified(&fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &[])));

    // A named subsystem (fio splits filenames on ':', so the NQN's colon is escaped as
    // fio's documentation says) and both digests.
    let named = format!("{filename} subnqn={}", NQN.replace(':', "\\:"));
    check_verified(&fio(&so, &dir, &verify_job("peerless_nvmf", &named, &["--digest_enable=BOTH".to_string()])));

    // 1 MiB io_us: more than one command carries, so each is split (and pieces queue
    // while the NVMe queue is full).
    let large = ["--bs=1m".to_string(), "--iodepth=64".to_string()];
    check_verified(&fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &large)));
}

/// With `dhchap_key` (and `dhchap_ctrlr_key`) key files the engine authenticates every
/// queue to a target that asks; without them it fails to open the file, saying why.
#[test]
fn nvmf_engine_authenticates_with_key_files() {
    use std::os::unix::fs::PermissionsExt;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:f10f10f1-0000-4000-8000-000000000001";
    // Key bytes 00..1f and 20..4f in the DHHC-1 representation (with their CRC-32).
    const HOST_SECRET: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const CTRLR_SECRET: &str = "DHHC-1:00:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9AQUJDREVGR0hJSktMTU5PhcdKRQ==:";
    let so = plugin_or_skip!();
    let dir = Scratch::new("fio-nvmf-auth");
    let target = tgt().start("fio-nvmf-auth", &[]);
    let addr = target.serve_malloc(NQN, 32768, 512, json!({}));
    let write_key = |name: &str, secret: &str| {
        let path = dir.join(name);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let (host_key, ctrlr_key) = (write_key("host.key", HOST_SECRET), write_key("ctrlr.key", CTRLR_SECRET));
    for (name, path) in [("key0", &host_key), ("ckey0", &ctrlr_key)] {
        target.call("keyring_file_add_key", Some(json!({"name": name, "path": path})));
    }
    target.call(
        "nvmf_subsystem_add_host",
        Some(json!({"nqn": NQN, "host": HOST, "dhchap_key": "key0", "dhchap_ctrlr_key": "ckey0"})),
    );
    let filename = format!("trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid={} ns=1", addr.port());
    let auth = [
        format!("--hostnqn={HOST}"),
        format!("--dhchap_key={}", host_key.display()),
        format!("--dhchap_ctrlr_key={}", ctrlr_key.display()),
    ];
    check_verified(&fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &auth)));
    let output = fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &auth[..1]));
    assert!(!output.status.success(), "no key, no I/O");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("DH-HMAC-CHAP"), "the reason is shown: {text}");
}

/// With `psk` the engine connects every queue over TLS 1.3 to a secure_channel listener;
/// without it the listener takes nothing.
#[test]
fn nvmf_engine_connects_over_tls_with_a_psk_file() {
    use std::os::unix::fs::PermissionsExt;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:f10f10f1-0000-4000-8000-000000000002";
    const TLS_NQN: &str = "nqn.2016-06.io.peerless:fio-tls";
    // libnvme's PSK test key (a SHA-256 retained hash) in the interchange format.
    const PSK: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
    let so = plugin_or_skip!();
    let dir = Scratch::new("fio-nvmf-tls");
    let target = tgt().start("fio-nvmf-tls", &[]);
    target.create_tcp_transport(json!({}));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": TLS_NQN, "allow_any_host": false})));
    target.add_malloc_namespace(TLS_NQN, "Malloc0", 32768, 512);
    let key = dir.join("host.psk");
    std::fs::write(&key, PSK).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    target.call("keyring_file_add_key", Some(json!({"name": "psk0", "path": key})));
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": TLS_NQN, "host": HOST, "psk": "psk0"})));
    let addr = target.listen_with(TLS_NQN, json!({"secure_channel": true}));
    let filename = format!(
        "trtype=tcp adrfam=IPv4 traddr=127.0.0.1 trsvcid={} subnqn={} ns=1",
        addr.port(),
        TLS_NQN.replace(':', "\\:")
    );
    let tls = [format!("--hostnqn={HOST}"), format!("--psk={}", key.display())];
    check_verified(&fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &tls)));
    let output = fio(&so, &dir, &verify_job("peerless_nvmf", &filename, &tls[..1]));
    assert!(!output.status.success(), "no PSK, no I/O");
}

#[test]
fn bdev_engine_writes_and_verifies() {
    let so = plugin_or_skip!();
    let dir = Scratch::new("fio-bdev");
    let conf = dir.join("bdev.json");
    let config = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 32768, "block_size": 512}},
        {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 262144, "block_size": 512}}
    ]}]});
    std::fs::write(&conf, config.to_string()).expect("write the config");
    check_verified(&fio(
        &so,
        &dir,
        &verify_job("peerless_bdev", "Malloc0", &[format!("--json_conf={}", conf.display())]),
    ));

    // SPDK's option name, and the null bdev under a short random read load.
    let args: Vec<String> = [
        "--name=n",
        "--ioengine=peerless_bdev",
        "--thread=1",
        &format!("--spdk_json_conf={}", conf.display()),
        "--filename=Null0",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=32",
        "--time_based=1",
        "--runtime=1",
        "--output-format=json",
    ]
    .map(String::from)
    .to_vec();
    let output = fio(&so, &dir, &args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn thread_mode_is_required() {
    let so = plugin_or_skip!();
    let dir = Scratch::new("fio-thread");
    let args = ["--name=t", "--ioengine=peerless_nvmf", "--filename=trtype=tcp traddr=127.0.0.1 ns=1", "--size=1m"]
        .map(String::from);
    let output = fio(&so, &dir, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "fio ran without thread=1: {stderr}");
    assert!(stderr.contains("peerless_nvmf requires thread=1 (fio --thread=1)"), "{stderr}");
}

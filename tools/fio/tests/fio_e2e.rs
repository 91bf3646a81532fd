//! fio with both engines against real Peerless code: `peerless_nvmf` against a
//! `peerless-tgt` process serving a malloc namespace over NVMe/TCP, `peerless_bdev` with
//! the framework in fio's process. Each writes 8 MiB with crc32c verify data and reads it
//! back (fio's verify phase).
//!
//! Skips, saying why, when `fio` is not installed or the plugin was not built with its
//! shim (`tools/fio/build.sh`); a missing `peerless-tgt` is a failure.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use peerless_tools::rpc_client::{Address, ClientOptions, RpcClient};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.peerless:fio";
const WAIT: Duration = Duration::from_secs(20);
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

/// A scratch directory, removed when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(test: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("peerless-fio-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    Scratch(dir)
}

/// peerless-tgt from this build: the test's own profile first, then the others.
fn target_binary() -> PathBuf {
    let profile = std::env::current_exe().ok().and_then(|exe| exe.ancestors().nth(2).map(Path::to_path_buf));
    let candidates: Vec<PathBuf> = profile
        .into_iter()
        .chain(["debug", "release"].map(|name| target_dir().join(name)))
        .map(|dir| dir.join("peerless-tgt"))
        .collect();
    candidates.iter().find(|path| path.is_file()).cloned().unwrap_or_else(|| {
        panic!("peerless-tgt is missing (looked at {candidates:?}): run `cargo build -p peerless-target` first")
    })
}

struct Target {
    child: Child,
    socket: PathBuf,
}

impl Target {
    fn start(dir: &Path) -> Target {
        let socket = dir.join("rpc.sock");
        let child = Command::new(target_binary())
            .arg("-r")
            .arg(&socket)
            .arg("--interrupt-mode")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn peerless-tgt");
        let mut target = Target { child, socket };
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&target.socket).is_err() {
            if let Ok(Some(status)) = target.child.try_wait() {
                panic!("peerless-tgt exited early with {status}");
            }
            assert!(Instant::now() < deadline, "peerless-tgt did not open {}", target.socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        target.call("framework_wait_init", None);
        target
    }

    fn call(&self, method: &str, params: Option<Value>) -> Value {
        let address = Address::parse(&self.socket.to_string_lossy(), 0);
        let mut client = RpcClient::connect(&address, ClientOptions::default()).expect("connect to the RPC socket");
        client.call(method, params.clone()).unwrap_or_else(|err| panic!("{method} {params:?}: {err}"))
    }

    /// The RPC sequence of tools/tests/support `serve_malloc`: a TCP transport, a
    /// subsystem open to any host, a malloc namespace, a listener on a free port.
    fn serve_malloc(&self, blocks: u64, block_size: u32) -> SocketAddr {
        self.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
        self.call(
            "bdev_malloc_create",
            Some(json!({"name": "Malloc0", "num_blocks": blocks, "block_size": block_size})),
        );
        self.call(
            "nvmf_create_subsystem",
            Some(json!({"nqn": NQN, "allow_any_host": true, "serial_number": "PEERLESS-FIO", "model_number": "Peerless fio"})),
        );
        self.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})));
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        self.call(
            "nvmf_subsystem_add_listener",
            Some(json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})),
        );
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs fio in `dir`, where it may leave files (verify state) without touching the tree.
fn fio(so: &Path, dir: &Path, args: &[String]) -> Output {
    Command::new("fio").current_dir(dir).env("LD_PRELOAD", so).args(args).output().expect("run fio")
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
    let dir = scratch("nvmf");
    let target = Target::start(&dir);
    let addr = target.serve_malloc(32768, 512);
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

#[test]
fn bdev_engine_writes_and_verifies() {
    let so = plugin_or_skip!();
    let dir = scratch("bdev");
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
    let dir = scratch("thread");
    let args = ["--name=t", "--ioengine=peerless_nvmf", "--filename=trtype=tcp traddr=127.0.0.1 ns=1", "--size=1m"]
        .map(String::from);
    let output = fio(&so, &dir, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "fio ran without thread=1: {stderr}");
    assert!(stderr.contains("peerless_nvmf requires thread=1 (fio --thread=1)"), "{stderr}");
}

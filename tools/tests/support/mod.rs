//! A real `peerless-tgt` process for end-to-end tests, driven over its JSON-RPC socket,
//! and the NVMe/TCP set-up most tests share.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use peerless_tools::rpc_client::{Address, ClientOptions, RpcClient};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(20);
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000001";
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The target binary. Cargo sets CARGO_BIN_EXE_* only for this package's binaries, so
/// it is found next to the test, which runs from <target dir>/debug/deps/. Building it
/// from a test would race other builds; CI builds the workspace before testing.
pub fn target_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("tests run from <target dir>/<profile>/deps/");
    let binary = profile_dir.join("peerless-tgt");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build -p peerless-target` before these tests",
        binary.display()
    );
    binary
}

/// A free TCP port on loopback (the kernel picks; the listener is closed at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

pub struct Target {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Target {
    /// Starts the target in interrupt mode (kind to a 2-core test machine) with `extra`
    /// flags, and waits until it answers framework_wait_init.
    pub fn start(test: &str, extra: &[&str]) -> Target {
        let unique = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("peerless-e2e-{test}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let socket = dir.join("rpc.sock");
        let child = Command::new(target_binary())
            .arg("-r")
            .arg(&socket)
            .arg("--interrupt-mode")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn peerless-tgt");
        let mut target = Target { child, dir, socket };
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&target.socket).is_err() {
            if let Ok(Some(status)) = target.child.try_wait() {
                panic!("peerless-tgt exited early with {status}");
            }
            assert!(Instant::now() < deadline, "peerless-tgt did not open {}", target.socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        if !extra.contains(&"--wait-for-rpc") {
            target.call("framework_wait_init", None);
        }
        target
    }

    pub fn client(&self) -> RpcClient {
        let address = Address::parse(&self.socket.to_string_lossy(), 0);
        RpcClient::connect(&address, ClientOptions::default()).expect("connect to the RPC socket")
    }

    /// Calls a method that must succeed.
    pub fn call(&self, method: &str, params: Option<Value>) -> Value {
        self.client().call(method, params.clone()).unwrap_or_else(|err| panic!("{method} {params:?}: {err}"))
    }

    /// Calls a method that must fail; returns the error text.
    pub fn call_err(&self, method: &str, params: Option<Value>) -> String {
        match self.client().call(method, params) {
            Ok(value) => panic!("{method} should have failed, returned {value}"),
            Err(err) => err.to_string(),
        }
    }

    /// Runs the peerless-rpc CLI against this target.
    pub fn rpc(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_peerless-rpc"))
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run peerless-rpc")
    }

    /// A CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.rpc(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?} exited {}: {stderr}", output.status);
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?} printed non-JSON ({err}): {stdout}"))
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll peerless-tgt") {
                return status;
            }
            assert!(Instant::now() < deadline, "peerless-tgt did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A TCP transport (with `transport` options merged in), one subsystem that allows
    /// any host, a malloc namespace and a listener on a free port. Returns the address.
    pub fn serve_malloc(&self, nqn: &str, blocks: u64, block_size: u32, transport: Value) -> SocketAddr {
        let mut options = json!({"trtype": "TCP", "min_kato": 100});
        if let (Some(into), Some(extra)) = (options.as_object_mut(), transport.as_object()) {
            into.extend(extra.clone());
        }
        self.call("nvmf_create_transport", Some(options));
        self.call(
            "bdev_malloc_create",
            Some(json!({"name": "Malloc0", "num_blocks": blocks, "block_size": block_size})),
        );
        self.call("nvmf_create_subsystem", Some(json!({"nqn": nqn, "allow_any_host": true, "serial_number": "PEERLESS-E2E", "model_number": "Peerless e2e"})));
        self.call("nvmf_subsystem_add_ns", Some(json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}})));
        self.listen(nqn)
    }

    pub fn listen(&self, nqn: &str) -> SocketAddr {
        let port = free_port();
        self.call(
            "nvmf_subsystem_add_listener",
            Some(json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})),
        );
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The harness against the real `peerless-tgt` (built beside these tests) and against
//! stand-ins that misbehave in ways the real one should not: dying at start-up,
//! ignoring SIGTERM.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use peerless_testkit::{Binary, Scratch, Signal};
use serde_json::json;

fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target")
}

/// An executable script at `dir/name`.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in target that opens its RPC socket, answers every request with `true` and
/// ignores SIGTERM, as a hung target would.
const DEAF_TO_SIGTERM: &str = r#"#!/usr/bin/env python3
import json, signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[sys.argv.index("-r") + 1])
server.listen()
print("stand-in up", file=sys.stderr, flush=True)
while True:
    conn, _ = server.accept()
    text = ""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        text += chunk.decode()
        try:
            request, _ = json.JSONDecoder().raw_decode(text.lstrip())
        except ValueError:
            continue
        text = ""
        conn.sendall(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": True}).encode())
    conn.close()
"#;

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast::<&str>().map(|text| text.to_string()).unwrap_or_default(),
    }
}

#[test]
fn a_target_starts_serves_logs_and_stops_cleanly() {
    let mut target = tgt().start("harness-clean", &["-m", "0x1"]);
    assert!(target.call("spdk_get_version", None)["version"].is_string());
    let reactors = target.call("framework_get_reactors", None);
    assert_eq!(reactors["reactors"][0]["in_interrupt"], json!(true), "interrupt mode is the default: {reactors}");
    let (code, _) = target.call_err("no_such_method", None);
    assert_eq!(code, -32601);

    let nqn = "nqn.2016-06.io.peerless:harness";
    let addr = target.serve_null(nqn, 1024, 512, json!({}));
    TcpStream::connect(addr).expect("the listener accepts");
    let namespaces = &target.call("nvmf_get_subsystems", Some(json!({"nqn": nqn})))[0]["namespaces"];
    assert_eq!(namespaces[0]["bdev_name"], json!("Null0"), "{namespaces}");
    assert_eq!(target.add_malloc_namespace(nqn, "Malloc0", 64, 512), 2);
    assert_ne!(target.listen(nqn), addr, "a second listener gets a port of its own");

    let socket = target.socket().to_path_buf();
    let status = target.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the target removes its socket at exit");
    let log = target.log();
    assert!(log.contains("ready; RPC on") && log.contains("received signal 15"), "{log}");
    assert_eq!(target.stop(), status, "stopping a stopped target returns the same status");
}

#[test]
fn wait_for_rpc_returns_before_init() {
    let mut target = tgt().launch("harness-wait").arg("--wait-for-rpc").start();
    let (code, _) = target.call_err("framework_get_reactors", None);
    assert_eq!(code, -1, "init has not happened");
    assert_eq!(target.call("framework_start_init", None), json!(true));
    target.signal(Signal::SIGINT);
    assert!(target.wait_exit().success());
    assert!(target.exit_status().is_some());
}

#[test]
fn a_target_that_dies_at_start_up_fails_with_its_status() {
    let dir = Scratch::new("harness-dies");
    let dies = script(&dir, "dies", "#!/bin/sh\necho 'cannot start: no luck' >&2\nexit 3\n");
    let result = std::panic::catch_unwind(|| Binary::at(&dies).start("harness-dies", &[]));
    let message = panic_text(result.err().expect("start fails"));
    assert!(message.contains("exited with exit status: 3 before opening"), "{message}");
}

#[test]
fn a_target_deaf_to_sigterm_is_killed_after_its_grace() {
    let dir = Scratch::new("harness-deaf");
    let deaf = Binary::at(script(&dir, "deaf", DEAF_TO_SIGTERM));
    let grace = Duration::from_millis(300);

    // On drop: SIGTERM, the grace, then SIGKILL.
    let target = deaf.launch("harness-deaf").stop_grace(grace).start();
    assert_eq!(target.log(), "stand-in up\n");
    let pid = target.pid();
    let dropped = Instant::now();
    drop(target);
    assert!(dropped.elapsed() >= grace, "dropped without waiting for the grace");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the stand-in outlived its Target");

    // stop() fails the test instead.
    let mut target = deaf.launch("harness-deaf").stop_grace(grace).start();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| target.stop()));
    let message = panic_text(result.expect_err("stop fails"));
    assert!(message.contains("was still running 300ms after SIGTERM and was killed"), "{message}");
    assert!(target.exit_status().is_some_and(|status| !status.success()));
}

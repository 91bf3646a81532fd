//! `peerless-rpc` against a real `peerless-tgt` process: framework and log methods,
//! save_config and load_config, errors, and a clean stop through spdk_kill_instance.

mod support;

use std::process::{Command, Output};

use peerless_testkit::{Target, WAIT};
use serde_json::{json, Value};
use support::tgt;

/// The peerless-rpc CLI against a running target, as a user types it.
trait Cli {
    /// Runs `peerless-rpc -s <socket> args...`.
    fn rpc(&self, args: &[&str]) -> Output;

    /// A command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.rpc(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?} exited {}: {stderr}", output.status);
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    /// A command that must succeed and print JSON; returns the value.
    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{args:?} printed non-JSON ({err}): {stdout}"))
    }
}

impl Cli for Target {
    fn rpc(&self, args: &[&str]) -> Output {
        peerless_testkit::run(
            Command::new(env!("CARGO_BIN_EXE_peerless-rpc")).arg("-s").arg(self.socket()).args(args),
            WAIT,
        )
    }
}

#[test]
fn framework_and_log_methods_then_a_clean_stop() {
    let mut target = tgt().start("framework", &[]);
    assert_eq!(target.ok(&["framework_wait_init"]), "", "rpc.py prints nothing for true");

    let version = target.json(&["spdk_get_version"]);
    assert!(version["version"].as_str().is_some_and(|text| text.starts_with("SPDK v")), "{version}");
    let methods = target.json(&["rpc_get_methods"]);
    let all: Vec<&str> = methods.as_array().expect("an array").iter().filter_map(Value::as_str).collect();
    assert!(all.contains(&"spdk_get_version") && all.contains(&"framework_start_init"), "{all:?}");
    let current = target.json(&["rpc_get_methods", "--current"]);
    assert!(!current.as_array().expect("an array").contains(&json!("framework_start_init")), "{current}");

    assert_eq!(target.ok(&["log_set_flag", "nvmf_tcp"]), "");
    assert_eq!(target.json(&["log_get_flags"])["nvmf_tcp"], json!(true));
    assert_eq!(target.ok(&["log_clear_flag", "nvmf_tcp"]), "");
    assert_eq!(target.json(&["log_get_flags"])["nvmf_tcp"], json!(false));
    assert_eq!(target.ok(&["log_set_level", "DEBUG"]), "");
    assert_eq!(target.ok(&["log_get_level"]), "DEBUG\n", "a string result prints bare");
    assert_eq!(target.ok(&["log_set_print_level", "WARNING"]), "");
    assert_eq!(target.ok(&["log_get_print_level"]), "WARNING\n");

    let reactors = target.json(&["framework_get_reactors"]);
    assert_eq!(reactors["reactors"][0]["lw_threads"][0]["name"], json!("app_thread"), "{reactors}");
    let threads = target.json(&["thread_get_stats"]);
    assert_eq!(threads["threads"][0]["name"], json!("app_thread"), "{threads}");
    assert!(target.json(&["thread_get_pollers"])["threads"].is_array());

    let saved = target.json(&["save_config"]);
    assert!(saved["subsystems"].is_array(), "{saved}");

    // An unknown method: exit 1, rpc.py's error report on stderr, nothing on stdout.
    let failed = target.rpc(&["call", "no_such_method"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(failed.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("Got JSON-RPC error response"), "{stderr}");
    assert!(stderr.contains("\"code\": -32601") && stderr.contains("\"message\": \"Method not found\""), "{stderr}");
    assert!(stderr.contains("\"method\": \"no_such_method\""), "{stderr}");

    // A bad parameter is the server's -32602, reported the same way.
    let refused = target.rpc(&["log_set_level", "LOUD"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"code\": -32602"));

    assert_eq!(target.ok(&["spdk_kill_instance", "SIGTERM"]), "");
    let status = target.wait_exit();
    assert!(status.success(), "peerless-tgt exited {status}");
    assert!(!target.socket().exists(), "the socket is removed at exit");
}

#[test]
fn load_config_starts_a_target_waiting_for_rpc() {
    let target = tgt().start("load", &["--wait-for-rpc"]);
    let config = json!({"subsystems": [{"subsystem": "log", "config": [
        {"method": "log_set_flag", "params": {"flag": "bdev"}},
        {"method": "log_set_print_level", "params": {"level": "ERROR"}}]}]});
    let file = target.dir().join("config.json");
    std::fs::write(&file, config.to_string()).expect("write the config");
    let failed = target.rpc(&["framework_get_reactors"]);
    assert_eq!(failed.status.code(), Some(1), "a RUNTIME method before init is refused");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("\"code\": -1"));

    target.ok(&["load_config", "-j", file.to_str().expect("a UTF-8 path")]);
    assert_eq!(target.json(&["log_get_flags"])["bdev"], json!(true));
    assert_eq!(target.ok(&["log_get_print_level"]), "ERROR\n");
    assert!(target.json(&["framework_get_reactors"])["reactors"].is_array(), "load_config started init");
}

#[test]
fn a_missing_socket_is_explained_and_a_dry_run_needs_none() {
    let missing = std::env::temp_dir().join(format!("peerless-rpc-e2e-missing-{}.sock", std::process::id()));
    let output = peerless_testkit::run(
        Command::new(env!("CARGO_BIN_EXE_peerless-rpc")).arg("-s").arg(&missing).arg("spdk_get_version"),
        WAIT,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No such file or directory; is peerless-tgt running? (-s sets the socket)"), "{stderr}");

    let dry = peerless_testkit::run(
        Command::new(env!("CARGO_BIN_EXE_peerless-rpc")).args([
            "-s",
            "/nonexistent.sock",
            "--dry-run",
            "bdev_malloc_create",
            "-b",
            "Malloc0",
            "64",
            "512",
        ]),
        WAIT,
    );
    assert!(dry.status.success(), "--dry-run does not connect");
    let request: Value = serde_json::from_slice(&dry.stdout).expect("the dry run prints the request");
    assert_eq!(request["params"], json!({"num_blocks": 131072, "block_size": 512, "name": "Malloc0"}));
}

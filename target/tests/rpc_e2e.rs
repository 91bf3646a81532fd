//! JSON-RPC against a real `peerless-tgt` process over its Unix socket.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;

use peerless_testkit::{Binary, Client, Scratch, Signal};
use serde_json::{json, Value};

/// This package defines the binary, so cargo names its path (and builds it for these tests).
fn tgt() -> Binary {
    Binary::at(env!("CARGO_BIN_EXE_peerless-tgt"))
}

#[test]
fn requests_as_rpc_py_sends_them() {
    let target = tgt().start("rpcpy", &[]);
    let mut client = target.client();
    // Several pretty-printed, unterminated requests in one write.
    let (id1, first) = client.request_bytes("spdk_get_version", None);
    let (id2, second) = client.request_bytes("rpc_get_methods", Some(json!({"current": true})));
    let (id3, third) = client.request_bytes("log_get_level", None);
    client.send_raw(&[first, second, third].concat());
    let mut answers: Vec<Value> = (0..3).map(|_| client.read_value().unwrap()).collect();
    answers.sort_by_key(|answer| answer["id"].as_u64());
    assert_eq!(answers.iter().map(|a| a["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![id1, id2, id3]);
    assert!(answers[0]["result"]["version"].as_str().unwrap().starts_with("SPDK v"));
    assert_eq!(answers[0]["result"]["fields"]["major"], json!(25));
    let methods: Vec<&str> = answers[1]["result"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    for expected in ["spdk_get_version", "framework_get_reactors", "thread_get_stats", "log_set_flag"] {
        assert!(methods.contains(&expected), "{expected} missing from {methods:?}");
    }
    assert!(!methods.contains(&"framework_start_init"), "a STARTUP-only method listed at RUNTIME");
    assert_eq!(answers[2]["result"], json!("NOTICE"));

    // A request split across writes, byte by byte at the start.
    let (id, bytes) = client.request_bytes("spdk_get_version", None);
    for byte in &bytes[..10] {
        client.send_raw(std::slice::from_ref(byte));
    }
    client.send_raw(&bytes[10..]);
    assert_eq!(client.read_value().unwrap()["id"], json!(id));

    // The socket and its lock are private to the owner.
    for path in [target.socket().to_path_buf(), target.socket().with_extension("sock.lock")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
}

#[test]
fn errors_carry_spdk_codes_and_actionable_messages() {
    let target = tgt().start("errors", &[]);
    let mut client = target.client();
    assert_eq!(client.call_err("no_such_method", None), (-32601, "Method not found".into()));

    let (code, message) = client.call_err("log_set_flag", Some(json!({"flag": "bdev", "colour": 1})));
    assert_eq!(code, -32602);
    assert!(message.contains("unknown field `colour`"), "{message}");

    let (code, message) = client.call_err("log_set_flag", Some(json!({"flag": 7})));
    assert_eq!(code, -32602);
    assert!(message.contains("field 'flag'"), "{message}");

    let (code, message) = client.call_err("log_set_flag", Some(json!({"flag": "bdevv"})));
    assert_eq!(code, -32602);
    assert!(message.contains("known flags"), "{message}");

    let (code, message) = client.call_err("spdk_get_version", Some(json!({"x": 1})));
    assert_eq!(code, -32602);
    assert!(message.contains("requires no parameters"), "{message}");

    let (code, message) = client.call_err("framework_start_init", None);
    assert_eq!(code, -1, "a STARTUP method at RUNTIME is a state error");
    assert!(message.contains("before framework_start_init"), "{message}");

    let (code, message) = client.call_err("framework_get_config", Some(json!({"name": "nope"})));
    assert_eq!(code, -32602);
    assert!(message.contains("Subsystem 'nope' not found"), "{message}");

    let (code, _) = client.call_err("spdk_kill_instance", Some(json!({"sig_name": "SIGWINCH"})));
    assert_eq!(code, -32602);

    // Invalid envelopes answer -32600 and keep the connection.
    client.send_raw(br#"{"jsonrpc":"1.0","method":"spdk_get_version","id":9}"#);
    let answer = client.read_value().unwrap();
    assert_eq!(answer["error"]["code"], json!(-32600));
    assert_eq!(answer["id"], json!(9));
    client.send_raw(format!(r#"{{"method":"spdk_get_version","id":"{}"}}"#, "x".repeat(129)).as_bytes());
    assert_eq!(client.read_value().unwrap()["error"]["code"], json!(-32600));
    assert!(client.call("spdk_get_version", None).is_object());
}

#[test]
fn log_settings_round_trip() {
    let target = tgt().start("log", &[]);
    let mut client = target.client();
    assert_eq!(client.call("log_set_flag", Some(json!({"flag": "nvmf_tcp"}))), json!(true));
    assert_eq!(client.call("log_get_flags", None)["nvmf_tcp"], json!(true));
    assert_eq!(client.call("log_clear_flag", Some(json!({"flag": "nvmf_tcp"}))), json!(true));
    assert_eq!(client.call("log_get_flags", None)["nvmf_tcp"], json!(false));
    assert_eq!(client.call("log_set_level", Some(json!({"level": "DEBUG"}))), json!(true));
    assert_eq!(client.call("log_get_level", None), json!("DEBUG"));
    assert_eq!(client.call("log_set_print_level", Some(json!({"level": "ERROR"}))), json!(true));
    assert_eq!(client.call("log_get_print_level", None), json!("ERROR"));
    let (code, message) = client.call_err("log_set_level", Some(json!({"level": "LOUD"})));
    assert_eq!(code, -32602);
    assert!(message.contains("Unknown log level 'LOUD'"), "{message}");
}

#[test]
fn batches_and_notifications() {
    let target = tgt().start("batch", &[]);
    let mut client = target.client();
    client.send_raw(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":1},
            {"jsonrpc":"2.0","method":"log_set_flag","params":{"flag":"rpc"}},
            {"jsonrpc":"2.0","method":"nope","id":"b"},
            {"jsonrpc":"2.0","method":"thread_get_stats","id":3}]"#,
    );
    let answer = client.read_value().unwrap();
    let answers = answer.as_array().expect("a batch answers with an array");
    assert_eq!(answers.len(), 3, "the notification has no answer: {answer}");
    assert_eq!(answers[0]["id"], json!(1));
    assert_eq!(answers[1]["error"]["code"], json!(-32601));
    assert_eq!(answers[2]["result"]["threads"][0]["name"], json!("app_thread"), "{answer}");

    client.send_raw(b"[]");
    assert_eq!(client.read_value().unwrap()["error"]["code"], json!(-32600));

    // A notification alone gets no answer; the next request's answer comes first.
    client.send_raw(br#"{"jsonrpc":"2.0","method":"log_clear_flag","params":{"flag":"rpc"}}"#);
    assert_eq!(client.call("log_get_flags", None)["rpc"], json!(false));
}

#[test]
fn a_parse_error_ends_only_that_connection() {
    let target = tgt().start("parse", &[]);
    let mut healthy = target.client();
    let mut broken = target.client();
    broken.send_raw(b"{\"method\": oops}");
    let answer = broken.read_value().unwrap();
    assert_eq!(answer["error"]["code"], json!(-32700));
    assert_eq!(answer["id"], Value::Null);
    assert!(broken.read_value().is_none(), "the server closes after a parse error");
    assert!(healthy.call("spdk_get_version", None).is_object());
}

#[test]
fn an_oversized_request_is_refused_with_an_answer() {
    let target = tgt().start("limits", &[]);
    // An oversized request: more than 256 KiB without a complete value.
    let mut big = target.client();
    let mut payload = br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1,"params":{"pad":""#.to_vec();
    payload.extend(std::iter::repeat_n(b'a', 300 * 1024));
    let _ = big.try_send_raw(&payload);
    let answer = big.read_value().unwrap();
    assert_eq!(answer["error"]["code"], json!(-32700));
    assert!(answer["error"]["message"].as_str().unwrap().contains("256 KiB"), "{answer}");
    assert!(big.read_value().is_none(), "the server closes after the error");
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let target = tgt().start("connlimit", &[]);
    // 64 connections are served; the 65th is closed at once. A connection closed just
    // before may still count until the server reads its EOF, so each of the 64 is
    // proven live with a call, retried while the count settles.
    let mut clients: Vec<Client> = Vec::new();
    while clients.len() < 64 {
        let mut attempts = 0;
        let client = loop {
            let mut client = target.client();
            let (_, bytes) = client.request_bytes("spdk_get_version", None);
            let _ = client.try_send_raw(&bytes);
            if client.read_value().is_some() {
                break client;
            }
            attempts += 1;
            assert!(attempts < 100, "connection {} never served", clients.len() + 1);
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        clients.push(client);
    }
    let mut extra = target.client();
    let (_, bytes) = extra.request_bytes("spdk_get_version", None);
    let _ = extra.try_send_raw(&bytes);
    assert!(extra.read_value().is_none(), "connection 65 must be refused");
    for client in clients.iter_mut().step_by(9) {
        assert!(client.call("spdk_get_version", None).is_object());
    }
    drop(clients);
    // Their places come back as the server reads their EOFs, so the next connection may
    // still be refused for a moment: it must be served once they have.
    let deadline = std::time::Instant::now() + peerless_testkit::WAIT;
    loop {
        let mut after = target.client();
        let (_, bytes) = after.request_bytes("spdk_get_version", None);
        let _ = after.try_send_raw(&bytes);
        if let Some(answer) = after.read_value() {
            assert!(answer["result"].is_object(), "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no connection served after the 64 closed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn framework_reports_reactors_threads_and_pollers() {
    let target = tgt().start("framework", &["-m", "0x3"]);
    let mut client = target.client();
    assert_eq!(client.call("framework_wait_init", None), json!(true));
    let reactors = client.call("framework_get_reactors", None);
    assert_eq!(reactors["tick_rate"], json!(1_000_000_000u64));
    let lcores: Vec<u64> =
        reactors["reactors"].as_array().unwrap().iter().map(|r| r["lcore"].as_u64().unwrap()).collect();
    assert_eq!(lcores, vec![0, 1]);
    assert_eq!(reactors["reactors"][0]["lw_threads"][0]["name"], json!("app_thread"));
    assert_eq!(reactors["reactors"][0]["in_interrupt"], json!(true));
    assert_eq!(reactors["reactors"][0]["mode"], json!("interrupt"));

    // The signal poller is timed (10 ms while the reactor spins); its fd wakes a
    // sleeping reactor, so no timer is armed for it.
    let pollers = client.call("thread_get_pollers", None);
    let timed = pollers["threads"][0]["timed_pollers"].as_array().unwrap();
    let signals = timed.iter().find(|p| p["name"] == json!("signals")).unwrap_or_else(|| panic!("{pollers}"));
    assert_eq!(signals["period_ticks"], json!(10_000_000));
    let stats = client.call("thread_get_stats", None);
    assert_eq!(stats["threads"][0]["active_pollers_count"], json!(0));
    assert_eq!(stats["threads"][0]["timed_pollers_count"], json!(1));
    assert_eq!(
        client.call("framework_get_subsystems", None),
        json!([
            {"subsystem": "sock", "depends_on": []},
            {"subsystem": "keyring", "depends_on": []},
            {"subsystem": "bdev", "depends_on": []},
            {"subsystem": "nvmf", "depends_on": ["bdev"]}
        ])
    );
    // One NVMe-oF poll group per reactor, named as SPDK names them.
    let names: Vec<String> =
        stats["threads"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    assert!(
        names.contains(&"nvmf_tgt_poll_group_000".to_string())
            && names.contains(&"nvmf_tgt_poll_group_001".to_string()),
        "{names:?}"
    );
}

#[test]
fn wait_for_rpc_holds_init_until_framework_start_init() {
    let target = tgt().start("waitrpc", &["--wait-for-rpc"]);
    let mut client = target.client();
    let (code, message) = client.call_err("framework_get_reactors", None);
    assert_eq!(code, -1);
    assert!(message.contains("framework_start_init"), "{message}");
    let methods = client.call("rpc_get_methods", Some(json!({"current": true})));
    assert!(methods.as_array().unwrap().contains(&json!("framework_start_init")));

    // framework_wait_init answers only once init has happened.
    let mut waiter = target.client();
    let (wait_id, wait_bytes) = waiter.request_bytes("framework_wait_init", None);
    waiter.send_raw(&wait_bytes);
    assert_eq!(client.call("framework_start_init", None), json!(true));
    let answer = waiter.read_value().unwrap();
    assert_eq!((answer["id"].clone(), answer["result"].clone()), (json!(wait_id), json!(true)));
    assert!(client.call("framework_get_reactors", None).is_object());
}

#[test]
fn sigterm_and_kill_instance_stop_cleanly() {
    for how in ["SIGTERM", "SIGINT", "SIGHUP", "rpc SIGTERM", "rpc SIGQUIT", "rpc SIGHUP"] {
        let mut target = tgt().start("stop", &[]);
        match how.split_once(' ') {
            Some((_, sig_name)) => {
                // SIGUSR1 first: it must log the target's state and keep serving.
                let usr1 = target.client().call("spdk_kill_instance", Some(json!({"sig_name": "SIGUSR1"})));
                assert_eq!(usr1, json!(true));
                assert!(target.client().call("spdk_get_version", None).is_object(), "SIGUSR1 stopped the target");
                // A signal is handled when the app thread next reads its signalfd, after
                // the RPC that sent it has answered: wait for the report before stopping.
                let deadline = std::time::Instant::now() + peerless_testkit::WAIT;
                while !target.log().contains("lightweight thread(s)") && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let answer = target.client().call("spdk_kill_instance", Some(json!({"sig_name": sig_name})));
                assert_eq!(answer, json!(true));
            }
            None if how == "SIGHUP" => target.signal(Signal::SIGHUP),
            None if how == "SIGINT" => target.signal(Signal::SIGINT),
            None => target.signal(Signal::SIGTERM),
        }
        let status = target.wait_exit();
        assert!(status.success(), "{how}: exit {status}");
        if how.starts_with("rpc") {
            let stderr = target.log();
            assert!(stderr.contains("lightweight thread(s)"), "{how}: SIGUSR1 logged no state: {stderr}");
        }
        assert!(!target.socket().exists(), "{how}: socket left behind");
        assert!(!target.socket().with_extension("sock.lock").exists(), "{how}: lock left behind");
    }
}

#[test]
fn a_second_target_on_the_same_socket_is_refused() {
    let target = tgt().start("inuse", &[]);
    let output = tgt().run([OsStr::new("-r"), target.socket().as_os_str()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    // The first one still serves.
    assert!(target.client().call("spdk_get_version", None).is_object());
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for (args, needle) in [
        (vec!["--bogus"], "unexpected argument"),
        (vec!["-m", "0xg"], "-m: core mask"),
        (vec!["-m", "0x0"], "is empty"),
        (vec!["-L", "nvmf_tpc"], "unknown log flag 'nvmf_tpc'"),
        (vec!["--poll-mode", "--interrupt-mode"], "cannot be used with"),
        (vec!["--poll-mode", "--poll-window-us", "20"], "--poll-window-us sets adaptive mode's poll window"),
        (vec!["--interrupt-mode", "--poll-window-min-us", "2"], "it has none with --interrupt-mode"),
        (vec!["--poll-window-us", "50", "--poll-window-min-us", "60"], "floor 60 us exceeds its cap 50 us"),
        (vec!["--poll-window-us", "2000000"], "exceeds 1000000 us"),
    ] {
        let output = tgt().run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let help = tgt().run(["-h"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--cpumask",
        "--json",
        "--rpc-socket",
        "--wait-for-rpc",
        "--logflag",
        "--interrupt-mode",
        "--poll-mode",
        "--poll-window-us",
        "--poll-window-min-us",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn a_bad_config_names_the_line_and_field_and_exits_nonzero() {
    let dir = Scratch::new("badconfig");
    let cases = [
        ("{\n  \"subsystems\": [\n    {\"subsystem\": \"bdev\",, }\n  ]\n}", "config.json:3:"),
        (
            "{\"subsystems\": [{\"subsystem\": \"vhost\", \"config\": [{\"method\": \"x\"}]}]}",
            "subsystem 'vhost' is not part of this target",
        ),
    ];
    for (text, needle) in cases {
        let path = dir.join("config.json");
        std::fs::write(&path, text).unwrap();
        let socket = dir.join("rpc.sock");
        let output = tgt().run([
            OsStr::new("--interrupt-mode"),
            OsStr::new("-c"),
            path.as_os_str(),
            OsStr::new("-r"),
            socket.as_os_str(),
        ]);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
        assert!(!socket.exists(), "a failed start leaves no socket");
    }
}

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

/// Every nvmf and bdev parameter SPDK defines either works or is refused with -32602
/// naming it: nothing is accepted and then ignored. Each row is a call the target must
/// refuse, and the words its message must hold.
#[test]
fn parameters_the_target_cannot_honour_are_refused_by_name() {
    let target = tgt().start("params", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    target.call("bdev_malloc_create", Some(json!({"name": "Malloc0", "num_blocks": 64, "block_size": 512})));
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": true})));
    let address = json!({"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"});
    let ns = |extra: Value| {
        let mut namespace = json!({"bdev_name": "Malloc0"});
        namespace.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"nqn": NQN, "namespace": namespace})
    };
    let other = "nqn.2016-06.io.spdk:other";
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";
    let refusals: Vec<(&str, Value, i64, &[&str])> = vec![
        // One target, named as SPDK names its default one.
        ("nvmf_create_subsystem", json!({"nqn": other, "tgt_name": "tgt2"}), -32602, &["'tgt2' not found", "nvmf_tgt"]),
        ("nvmf_get_subsystems", json!({"tgt_name": "tgt2"}), -32602, &["tgt2"]),
        ("nvmf_subsystem_get_qpairs", json!({"nqn": NQN, "tgt_name": "tgt2"}), -32602, &["tgt2"]),
        ("nvmf_create_transport", json!({"trtype": "TCP", "tgt_name": "tgt2"}), -32602, &["tgt2"]),
        // nvmf_create_subsystem
        (
            "nvmf_create_subsystem",
            json!({"nqn": other, "ana_reporting": true, "max_namespaces": 5000}),
            -32602,
            &["max_namespaces 5000 with ana_reporting", "at most 1024"],
        ),
        ("nvmf_create_subsystem", json!({"nqn": other, "passthrough": true}), -32602, &["passthrough"]),
        ("nvmf_create_subsystem", json!({"nqn": other, "enable_nssr": true}), -32602, &["enable_nssr"]),
        ("nvmf_create_subsystem", json!({"nqn": other, "admin_label": "ab"}), -32602, &["admin_label", "4 to 256"]),
        (
            "nvmf_create_subsystem",
            json!({"nqn": other, "max_write_zeroes_size_kib": 12}),
            -32602,
            &["max_write_zeroes_size_kib 12", "power of two"],
        ),
        (
            "nvmf_create_subsystem",
            json!({"nqn": other, "dmrsl": 8, "max_discard_size_kib": 4}),
            -32602,
            &["dmrsl or max_discard_size_kib"],
        ),
        ("nvmf_create_subsystem", json!({"nqn": other, "wzsl": 300}), -32602, &["wzsl"]),
        // nvmf_subsystem_add_ns
        ("nvmf_subsystem_add_ns", ns(json!({"ptpl_file": "/var/tmp/ptpl"})), -32602, &["ptpl_file", "reservations"]),
        ("nvmf_subsystem_add_ns", ns(json!({"anagrpid": 2})), -32602, &["anagrpid", "ANA"]),
        ("nvmf_subsystem_add_ns", ns(json!({"no_auto_visible": true})), -32602, &["no_auto_visible", "masking"]),
        ("nvmf_subsystem_add_ns", ns(json!({"hide_metadata": true})), -32602, &["hide_metadata"]),
        // nvmf_subsystem_add_listener
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address, "ana_state": "inaccessible"}),
            -32602,
            &["ana_state", "does not report ANA"],
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address, "ana_state": "asleep"}),
            -32602,
            &["'asleep' is not an ANA state"],
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address, "sock_impl": "ssl"}),
            -32602,
            &["sock_impl", "'ssl'", "posix", "uring"],
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address, "numa_id": 0}),
            -32602,
            &["numa_id", "-1"],
        ),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": address, "secure_channel": true}),
            -32602,
            &["secure_channel"],
        ),
        // Parameters of another method are unknown here, as in SPDK.
        (
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": address, "secure_channel": false}),
            -32602,
            &["unknown field `secure_channel`"],
        ),
        ("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": host, "timeout_ms": 5}), -32602, &["timeout_ms"]),
        ("nvmf_subsystem_remove_host", json!({"nqn": NQN, "host": host, "psk": "key0"}), -32602, &["psk"]),
        ("nvmf_get_stats", json!({"trtype": "TCP"}), -32602, &["unknown field `trtype`"]),
        ("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": host, "psk": "key0"}), -32602, &["psk", "no key named"]),
        ("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": host, "dhchap_key": "k"}), -32602, &["dhchap_key"]),
        (
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": host, "dhchap_ctrlr_key": "k"}),
            -32602,
            &["dhchap_ctrlr_key"],
        ),
        // A transport filter names one the target has.
        ("nvmf_get_transports", json!({"trtype": "RDMA"}), -19, &["'RDMA' does not exist", "TCP"]),
        // bdev modules
        ("bdev_malloc_create", json!({"num_blocks": 8, "block_size": 512, "numa_id": 0}), -32602, &["numa_id 0", "-1"]),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "optimal_io_boundary": 8}),
            -32602,
            &["optimal_io_boundary 8"],
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "physical_block_size": 4096}),
            -32602,
            &["physical_block_size 4096"],
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "md_interleave": true}),
            -32602,
            &["md_interleave"],
        ),
        (
            "bdev_malloc_create",
            json!({"num_blocks": 8, "block_size": 512, "dif_pi_format": 1}),
            -32602,
            &["dif_pi_format"],
        ),
        (
            "bdev_null_create",
            json!({"name": "N", "num_blocks": 8, "block_size": 512, "preferred_unmap_granularity": 8}),
            -32602,
            &["preferred_unmap_granularity 8"],
        ),
        (
            "bdev_null_create",
            json!({"name": "N", "num_blocks": 8, "block_size": 512, "dif_is_head_of_md": true}),
            -32602,
            &["dif_is_head_of_md"],
        ),
        ("bdev_aio_create", json!({"name": "A", "filename": "/dev/null", "nowait": true}), -32602, &["nowait"]),
    ];
    for (method, params, code, needles) in refusals {
        let (got, message) = target.call_err(method, Some(params.clone()));
        assert_eq!(got, code, "{method} {params}: {message}");
        for needle in needles {
            assert!(message.contains(needle), "{method} {params}: '{needle}' not in: {message}");
        }
    }
    // None of the refusals left anything behind.
    let subsystems = target.call("nvmf_get_subsystems", None);
    assert_eq!(subsystems.as_array().unwrap().len(), 2, "discovery and {NQN} only: {subsystems}");
    assert_eq!(subsystems[1]["namespaces"], json!([]));
    assert_eq!(subsystems[1]["listen_addresses"], json!([]));
    let bdevs = target.call("bdev_get_bdevs", None);
    assert_eq!(bdevs.as_array().unwrap().len(), 1, "only Malloc0: {bdevs}");
}

/// The values that say "what the target does anyway" are accepted, and what is stored
/// shows in `nvmf_get_subsystems` and in the saved configuration.
#[test]
fn parameters_the_target_honours_are_kept_and_reported() {
    let target = tgt().start("params-kept", &[]);
    target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"})));
    for (name, extra) in [
        ("Malloc0", json!({"numa_id": -1, "physical_block_size": 512, "optimal_io_boundary": 0})),
        ("Malloc1", json!({"physical_block_size": 0, "md_interleave": false, "dif_is_head_of_md": false})),
    ] {
        let mut params = json!({"name": name, "num_blocks": 64, "block_size": 512});
        params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        assert_eq!(target.call("bdev_malloc_create", Some(params)), json!(name));
    }
    assert_eq!(
        target.call("bdev_get_iostat", Some(json!({"reset_mode": "none"})))["bdevs"].as_array().unwrap().len(),
        2
    );
    target.call(
        "nvmf_create_subsystem",
        Some(json!({"nqn": NQN, "tgt_name": "nvmf_tgt", "admin_label": "rack-7/shelf-2", "dmrsl": 2048, "wzsl": 4})),
    );
    // SPDK's older forms: KiB of 512-byte blocks, and KiB as a power of two of 4 KiB pages.
    let older = "nqn.2016-06.io.spdk:older";
    target.call(
        "nvmf_create_subsystem",
        Some(json!({"nqn": older, "max_discard_size_kib": 1024, "max_write_zeroes_size_kib": 64, "admin_label": ""})),
    );
    let namespace = json!({"bdev_name": "Malloc0", "ptpl_file": "", "anagrpid": 0, "no_auto_visible": false,
        "hide_metadata": false, "eui64": "0102030405060708"});
    assert_eq!(target.call("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": namespace}))), json!(1));
    let address = json!({"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
        "trsvcid": peerless_testkit::free_port().to_string()});
    target.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": NQN, "listen_address": address, "secure_channel": false, "sock_impl": "posix",
            "numa_id": -1})),
    );
    let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555";
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": host})));
    // With no controller to wait for, removal answers at once whatever the timeout.
    assert_eq!(
        target.call("nvmf_subsystem_remove_host", Some(json!({"nqn": NQN, "host": host, "timeout_ms": 1}))),
        json!(true)
    );
    assert_eq!(target.call("nvmf_get_transports", Some(json!({"trtype": "tcp"}))).as_array().unwrap().len(), 1);
    assert!(target.call("nvmf_get_stats", Some(json!({"tgt_name": "nvmf_tgt"})))["poll_groups"].is_array());

    let subsystems = target.call("nvmf_get_subsystems", None);
    let cnode = &subsystems[1];
    assert_eq!(cnode["nqn"], json!(NQN));
    assert_eq!(
        (cnode["admin_label"].clone(), cnode["dmrsl"].clone(), cnode["wzsl"].clone()),
        (json!("rack-7/shelf-2"), json!(2048), json!(4))
    );
    assert_eq!(cnode["namespaces"][0]["eui64"], json!("0102030405060708"));
    assert_eq!(cnode["passthrough"], json!(false), "shown as SPDK shows it; true is refused");
    let older_json = &subsystems[2];
    assert_eq!((older_json["dmrsl"].clone(), older_json["wzsl"].clone()), (json!(2048), json!(4)), "{older_json}");
    assert!(older_json.get("admin_label").is_none(), "an empty label is none, as in SPDK: {older_json}");

    let config = target.call("framework_get_config", Some(json!({"name": "nvmf"})));
    let created: Vec<&Value> =
        config.as_array().unwrap().iter().filter(|entry| entry["method"] == "nvmf_create_subsystem").collect();
    assert_eq!(created[0]["params"]["admin_label"], json!("rack-7/shelf-2"), "{config}");
    assert_eq!((created[0]["params"]["dmrsl"].clone(), created[0]["params"]["wzsl"].clone()), (json!(2048), json!(4)));
}

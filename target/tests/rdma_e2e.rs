//! The NVMe/RDMA transport type against a real `peerless-tgt` built with `rdma`: created
//! with SPDK's options and defaults, shown, refused where it cannot honour an option,
//! and replayed from `save_config`. Queue pairs need an RDMA device: the guest job
//! `ci/guest/jobs/rdma.sh` runs those.
#![cfg(feature = "rdma")]

use std::fs;

use peerless_testkit::Binary;
use serde_json::{json, Value};

fn tgt() -> Binary {
    Binary::at(env!("CARGO_BIN_EXE_peerless-tgt"))
}

fn rdma_of(transports: &Value) -> Value {
    transports.as_array().unwrap().iter().find(|t| t["trtype"] == "RDMA").cloned().expect("an RDMA transport")
}

#[test]
fn rdma_transport_with_spdk_defaults_is_shown_and_replayed() {
    let mut target = tgt().start("rdma-transport", &[]);
    // Refusals first: nothing is created by a refused request.
    for (params, named) in [
        (json!({"trtype": "RDMA", "io_unit_size": 4096}), "io_unit_size 4096"),
        (json!({"trtype": "RDMA", "max_srq_depth": 1}), "max_srq_depth 1"),
        (json!({"trtype": "RDMA", "acceptor_backlog": 0}), "acceptor_backlog 0"),
        (json!({"trtype": "RDMA", "c2h_success": false}), "c2h_success"),
        (json!({"trtype": "RDMA", "zcopy": true}), "zcopy"),
        (json!({"trtype": "RDMA", "dif_insert_or_strip": true}), "dif_insert_or_strip"),
        (json!({"trtype": "RDMA", "no_srq": "yes"}), "no_srq"),
    ] {
        let (code, message) = target.call_err("nvmf_create_transport", Some(params.clone()));
        assert!(code == -32602 && message.contains(named), "{params}: {code} {message}");
    }
    assert_eq!(target.call("nvmf_get_transports", None), json!([]));

    // As rpc.py sends `nvmf_create_transport -t RDMA -u 16384 -n 256 -s 512 -r`.
    let sent = json!({"trtype": "RDMA", "io_unit_size": 16384, "max_srq_depth": 512, "no_srq": false,
        "num_shared_buffers": 256, "c2h_success": true, "zcopy": false, "dif_insert_or_strip": false,
        "no_wr_batching": true, "disable_mappable_bar0": false, "disable_adaptive_irq": false,
        "disable_shadow_doorbells": false, "disable_command_passthru": false});
    assert_eq!(target.call("nvmf_create_transport", Some(sent)), json!(true));
    let (code, message) = target.call_err("nvmf_create_transport", Some(json!({"trtype": "rdma"})));
    assert_eq!((code, message.as_str()), (-17, "Transport type 'RDMA' already exists"));
    // TCP is a transport of its own beside it.
    assert_eq!(target.call("nvmf_create_transport", Some(json!({"trtype": "TCP"}))), json!(true));

    // nvmf_get_stats: each poll group lists its part of both transports, RDMA's with SPDK's
    // fields (no device is open yet: no devices, no buffer waits).
    let stats = target.call("nvmf_get_stats", None);
    let groups = stats["poll_groups"].as_array().expect("poll groups");
    assert!(!groups.is_empty(), "{stats}");
    for group in groups {
        let rdma = rdma_of(&group["transports"]);
        assert_eq!(rdma, json!({"trtype": "RDMA", "pending_data_buffer": 0, "devices": []}), "{group}");
        let tcp = group["transports"].as_array().unwrap().iter().find(|t| t["trtype"] == "TCP").cloned();
        assert_eq!(tcp, Some(json!({"trtype": "TCP"})), "{group}");
    }

    let shown = rdma_of(&target.call("nvmf_get_transports", Some(json!({"trtype": "rdma"}))));
    for (key, value) in [
        ("max_queue_depth", json!(128)),
        ("max_io_qpairs_per_ctrlr", json!(127)),
        ("in_capsule_data_size", json!(4096)),
        ("max_io_size", json!(131_072)),
        ("io_unit_size", json!(16384)),
        ("max_aq_depth", json!(128)),
        ("num_shared_buffers", json!(256)),
        ("max_srq_depth", json!(512)),
        ("no_srq", json!(false)),
        ("acceptor_backlog", json!(100)),
        ("no_wr_batching", json!(true)),
        ("abort_timeout_sec", json!(1)),
    ] {
        assert_eq!(shown[key], value, "{key} in {shown}");
    }
    assert!(shown.get("num_cqe").is_none(), "num_cqe is shown only with no_srq, as SPDK does: {shown}");
    assert!(shown.get("c2h_success").is_none(), "a TCP option is not an RDMA one: {shown}");

    // This machine has no RDMA device (tests run without one): a listener is refused with
    // the reason, and the target goes on.
    let nqn = "nqn.2016-06.io.peerless:rdma";
    target.call("nvmf_create_subsystem", Some(json!({"nqn": nqn, "allow_any_host": true})));
    let address = json!({"trtype": "rdma", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"});
    let (code, message) =
        target.call_err("nvmf_subsystem_add_listener", Some(json!({"nqn": nqn, "listen_address": address})));
    assert!(message.contains("cannot listen on 127.0.0.1:4420"), "{code} {message}");
    let secure = json!({"nqn": nqn, "listen_address": address, "secure_channel": true});
    let (_, message) = target.call_err("nvmf_subsystem_add_listener", Some(secure));
    assert!(message.contains("secure_channel"), "{message}");
    assert_eq!(target.call("nvmf_get_subsystems", None)[1]["listen_addresses"], json!([]));

    // One address carries a listener of each transport (a listener is its whole transport
    // ID): with a TCP listener at an address, RDMA at the same one is not "already
    // listening" but tried, and refused here only for want of a device. The TCP one stays,
    // is found by its transport, and takes hosts.
    let port = peerless_testkit::free_port().to_string();
    let tcp = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port});
    let rdma = json!({"trtype": "RDMA", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port});
    target.call("nvmf_subsystem_add_listener", Some(json!({"nqn": nqn, "listen_address": tcp})));
    let (code, message) =
        target.call_err("nvmf_subsystem_add_listener", Some(json!({"nqn": nqn, "listen_address": rdma})));
    assert!(message.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{code} {message}");
    let (code, message) =
        target.call_err("nvmf_subsystem_add_listener", Some(json!({"nqn": nqn, "listen_address": tcp})));
    assert_eq!((code, message), (-17, format!("{nqn} already listens on 127.0.0.1:{port} over TCP")));
    let (code, message) =
        target.call_err("nvmf_subsystem_remove_listener", Some(json!({"nqn": nqn, "listen_address": rdma})));
    assert_eq!((code, message), (-19, format!("{nqn} does not listen on 127.0.0.1:{port} over RDMA")));
    assert_eq!(target.call("nvmf_get_subsystems", None)[1]["listen_addresses"], json!([tcp]));
    let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}"));
    assert!(stream.is_ok(), "the TCP listener takes connections: {stream:?}");
    drop(stream);
    target.call("nvmf_subsystem_remove_listener", Some(json!({"nqn": nqn, "listen_address": tcp})));
    assert_eq!(target.call("nvmf_get_subsystems", None)[1]["listen_addresses"], json!([]));

    // save_config -> a new target started from it has the same transport.
    let saved = target.call("framework_get_config", Some(json!({"name": "nvmf"})));
    let config = json!({"subsystems": [{"subsystem": "nvmf", "config": saved}]});
    let path = target.dir().join("saved.json");
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut restored = tgt().launch("rdma-restored").arg("-c").arg(&path).start();
    assert_eq!(rdma_of(&restored.call("nvmf_get_transports", None)), shown);
    restored.stop();
    target.stop();
}

#[test]
fn no_srq_shows_num_cqe_and_defaults_are_spdks() {
    let mut target = tgt().start("rdma-no-srq", &[]);
    let params = json!({"trtype": "RDMA", "no_srq": true, "num_cqe": 1024});
    assert_eq!(target.call("nvmf_create_transport", Some(params)), json!(true));
    let shown = rdma_of(&target.call("nvmf_get_transports", None));
    assert_eq!((shown["no_srq"].clone(), shown["num_cqe"].clone()), (json!(true), json!(1024)), "{shown}");
    assert_eq!((shown["io_unit_size"].clone(), shown["num_shared_buffers"].clone()), (json!(8192), json!(4095)));
    assert_eq!(shown["max_srq_depth"], json!(4096));
    target.stop();
}

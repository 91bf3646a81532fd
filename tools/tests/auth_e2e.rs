//! DH-HMAC-CHAP in-band authentication end to end (NVMe Base 2.0, 8.13): a real
//! `peerless-tgt` with keys in its keyring, and the initiator library over loopback TCP.
//! Every hash, null and two DH groups, one way and both ways, on admin and I/O queues;
//! wrong, missing and replayed answers refused with the spec's messages and the queue
//! ended; re-authentication; the limit on failed attempts; and no key material in the
//! target's log, RPC answers or saved configuration.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{fctype, status};
use peerless_target::nvmf::auth::crypto::random;
use peerless_target::nvmf::auth::msg::Message;
use peerless_target::nvmf::auth::secret::DhchapSecret;
use peerless_target::nvmf::auth::{DhGroup, Digest};
use peerless_testkit::Target;
use peerless_tools::initiator::auth::{self as host_auth};
use peerless_tools::initiator::{connect_admin_queue, Controller, Error, HostAuth, Options, QueuePair, Xfer};
use serde_json::{json, Value};
use support::{add_key, saved_config, secret_parts, tgt, write_key, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:auth";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 1024;

/// A fresh random secret in the `DHHC-1` representation.
fn new_secret(transform: Option<Digest>, len: usize) -> String {
    let mut key = vec![0u8; len];
    random(&mut key).unwrap();
    DhchapSecret::format(transform, &key)
}

struct Keys {
    host: String,
    ctrlr: String,
}

/// A target serving `NQN` whose host `HOSTNQN` has key0 (and, bidirectional, ckey0).
fn serve(test: &str) -> (Target, SocketAddr, Keys) {
    serve_with(test, json!({}))
}

fn serve_with(test: &str, transport: Value) -> (Target, SocketAddr, Keys) {
    let target = tgt().start(test, &[]);
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, transport);
    let keys = Keys { host: new_secret(Some(Digest::Sha256), 32), ctrlr: new_secret(None, 48) };
    add_key(&target, "key0", &keys.host);
    add_key(&target, "ckey0", &keys.ctrlr);
    target.call(
        "nvmf_subsystem_add_host",
        Some(json!({"nqn": NQN, "host": HOSTNQN, "dhchap_key": "key0", "dhchap_ctrlr_key": "ckey0"})),
    );
    (target, addr, keys)
}

fn options(auth: Option<HostAuth>) -> Options {
    Options { auth, command_timeout: Duration::from_secs(5), ..Options::default() }
}

fn host_auth(secret: &str, ctrlr: Option<&str>, digest: Digest, group: DhGroup) -> HostAuth {
    let mut auth = HostAuth::new(secret, ctrlr).unwrap();
    auth.digests = vec![digest];
    auth.dhgroups = vec![group];
    auth
}

fn qpairs(target: &Target) -> Vec<Value> {
    target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN}))).as_array().unwrap().clone()
}

/// Writes and reads back a block through a new I/O queue (which authenticates too).
fn io_round_trip(controller: &mut Controller, seed: u8) {
    let mut queue = controller.io_queue(16).expect("an authenticated I/O queue");
    let data: Vec<u8> = (0..BLOCK as usize).map(|i| (i as u8) ^ seed).collect();
    queue.write(1, 3, 1, &data).unwrap();
    let mut back = vec![0u8; BLOCK as usize];
    queue.read(1, 3, 1, &mut back).unwrap();
    assert_eq!(back, data);
}

fn is_auth_failure(err: &Error) -> bool {
    matches!(err, Error::Authentication(_))
}

/// After a failed transaction the target ends the queue: the next command finds the
/// connection closed rather than an answer.
fn assert_queue_ended(queue: &mut QueuePair) {
    let cmd = SqeBuilder::fabrics(fctype::PROPERTY_GET, 0).u32_at(44, 0);
    let err = queue.execute(cmd, Xfer::None, Vec::new()).expect_err("the queue is over");
    assert!(matches!(err, Error::Closed | Error::Io { .. } | Error::Terminated { .. }), "{err:?}");
}

#[test]
fn every_hash_with_null_and_two_dh_groups_one_way_and_both_ways() {
    let (target, addr, keys) = serve("auth-matrix");
    let mut seed = 0u8;
    for digest in [Digest::Sha256, Digest::Sha384, Digest::Sha512] {
        for group in [DhGroup::Null, DhGroup::Ffdhe2048, DhGroup::Ffdhe3072] {
            for ctrlr in [None, Some(keys.ctrlr.as_str())] {
                let auth = host_auth(&keys.host, ctrlr, digest, group);
                let what = format!("{} {} bidirectional={}", digest.name(), group.name(), ctrlr.is_some());
                let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(auth)))
                    .unwrap_or_else(|err| panic!("{what}: {err}"));
                seed = seed.wrapping_add(1);
                io_round_trip(&mut controller, seed);
                let shown = qpairs(&target);
                let admin = shown.iter().find(|q| q["qid"] == 0 && q["cntlid"] == controller.cntlid()).unwrap();
                assert_eq!(admin["state"], "enabled", "{what}");
                assert_eq!(
                    admin["auth"],
                    json!({"state": "completed", "digest": digest.name(), "dhgroup": group.name()}),
                    "{what}"
                );
                controller.shutdown().unwrap();
            }
        }
    }
    let stats = target.call("nvmf_get_stats", None);
    assert_eq!(stats["auth_failures"], json!([]), "nothing failed");
}

#[test]
fn wrong_missing_and_skipped_authentication_are_refused() {
    let (target, addr, keys) = serve("auth-refusals");
    // A wrong host key: AUTH_Failure1, and the queue ends.
    let wrong = host_auth(&new_secret(None, 32), None, Digest::Sha256, DhGroup::Ffdhe2048);
    let (mut queue, _, atr) = connect_admin_queue(addr, NQN, HOSTNQN, &options(None)).unwrap();
    assert!(atr, "Connect's AUTHREQ.ATR asks for authentication");
    let err = wrong.authenticate(&mut queue, HOSTNQN, NQN, 1).unwrap_err();
    assert!(is_auth_failure(&err) && err.to_string().contains("AUTH_Failure1, explanation 0x01"), "{err}");
    assert_queue_ended(&mut queue);

    // No key at all: the library refuses to go on; a host that goes on anyway gets
    // Authentication Required for anything but authentication, on a queue still open.
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(None)).err().unwrap();
    assert!(is_auth_failure(&err) && err.to_string().contains("--dhchap-key"), "{err}");
    let (mut queue, _, _) = connect_admin_queue(addr, NQN, HOSTNQN, &options(None)).unwrap();
    for _ in 0..2 {
        let cmd = SqeBuilder::fabrics(fctype::PROPERTY_GET, 0).u32_at(44, 0);
        let done = queue.execute(cmd, Xfer::None, Vec::new()).unwrap();
        assert_eq!(done.status, status::AUTH_REQUIRED);
    }
    let identify = SqeBuilder::new(0x06, 0).u32_at(40, 1);
    let done = queue.execute(identify, Xfer::FromController, vec![0u8; 4096]).unwrap();
    assert_eq!(done.status, status::AUTH_REQUIRED, "admin commands too");
    // A receive before any negotiation is out of order: Failure1, and the queue ends.
    let err = host_auth::receive(&mut queue).unwrap_err();
    assert!(err.to_string().contains("explanation 0x07"), "incorrect protocol message: {err}");
    assert_queue_ended(&mut queue);

    // The controller's answer checked against the wrong controller key: the host sends
    // AUTH_Failure2 and the target ends the queue.
    let mistrusting = host_auth(&keys.host, Some(&new_secret(None, 48)), Digest::Sha384, DhGroup::Null);
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(mistrusting))).err().unwrap();
    assert!(is_auth_failure(&err) && err.to_string().contains("controller's response"), "{err}");

    // A host the target has no controller key for asks for one: Failure1.
    target.call("nvmf_subsystem_set_keys", Some(json!({"nqn": NQN, "host": HOSTNQN, "dhchap_key": "key0"})));
    let both_ways = host_auth(&keys.host, Some(&keys.ctrlr), Digest::Sha256, DhGroup::Null);
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(both_ways))).err().unwrap();
    assert!(is_auth_failure(&err), "{err}");
    let one_way = host_auth(&keys.host, None, Digest::Sha256, DhGroup::Null);
    Controller::connect(addr, NQN, HOSTNQN, &options(Some(one_way))).expect("one way still works");
    let stats = target.call("nvmf_get_stats", None);
    let failures = &stats["auth_failures"][0];
    assert_eq!((failures["hostnqn"].as_str(), failures["address"].as_str()), (Some(HOSTNQN), Some("127.0.0.1")));
    assert_eq!(failures["failures"], 3, "the wrong key, the early receive, the missing controller key: {stats}");
}

#[test]
fn a_reply_replayed_from_an_earlier_transaction_is_refused() {
    let (_target, addr, keys) = serve("auth-replay");
    let auth = host_auth(&keys.host, None, Digest::Sha512, DhGroup::Ffdhe2048);
    let (mut first, _, _) = connect_admin_queue(addr, NQN, HOSTNQN, &options(None)).unwrap();
    let sent = auth.authenticate(&mut first, HOSTNQN, NQN, 9).unwrap();
    assert!(matches!(Message::decode(&sent[1]), Ok(Message::Reply { tid: 9, .. })));
    // Same transaction ID, same negotiation; the target's new challenge makes the old
    // reply wrong.
    let (mut second, _, _) = connect_admin_queue(addr, NQN, HOSTNQN, &options(None)).unwrap();
    host_auth::send_bytes(&mut second, sent[0].clone()).unwrap();
    assert!(matches!(host_auth::receive(&mut second).unwrap(), Message::Challenge { tid: 9, .. }));
    host_auth::send_bytes(&mut second, sent[1].clone()).unwrap();
    let err = host_auth::receive(&mut second).unwrap_err();
    assert!(err.to_string().contains("AUTH_Failure1, explanation 0x01"), "{err}");
    assert_queue_ended(&mut second);
    // A reply carrying another transaction's ID is refused as an incorrect payload.
    let (mut third, _, _) = connect_admin_queue(addr, NQN, HOSTNQN, &options(None)).unwrap();
    host_auth::send_bytes(
        &mut third,
        Message::decode(&sent[0])
            .map(|m| match m {
                Message::Negotiate { scc, dhchap, hash_ids, dhgroup_ids, .. } => {
                    Message::Negotiate { tid: 10, scc, dhchap, hash_ids, dhgroup_ids }.encode()
                }
                other => panic!("{other:?}"),
            })
            .unwrap(),
    )
    .unwrap();
    host_auth::receive(&mut third).unwrap();
    host_auth::send_bytes(&mut third, sent[1].clone()).unwrap();
    let err = host_auth::receive(&mut third).unwrap_err();
    assert!(err.to_string().contains("explanation 0x06"), "{err}");
}

#[test]
fn the_admin_queue_authenticates_again_and_new_keys_apply_to_the_next_transaction() {
    let (target, addr, keys) = serve("auth-reauth");
    let auth = host_auth(&keys.host, Some(&keys.ctrlr), Digest::Sha256, DhGroup::Ffdhe2048);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(auth))).unwrap();
    controller.reauthenticate(77).expect("a second transaction on the admin queue");
    io_round_trip(&mut controller, 5);
    // Rotate: a new host key under a new name; the host with the old key fails its next
    // transaction (and its queue ends), with the new key it passes.
    let rotated = new_secret(Some(Digest::Sha512), 64);
    add_key(&target, "key1", &rotated);
    target.call(
        "nvmf_subsystem_set_keys",
        Some(json!({"nqn": NQN, "host": HOSTNQN, "dhchap_key": "key1", "dhchap_ctrlr_key": "ckey0"})),
    );
    let err = controller.reauthenticate(78).unwrap_err();
    assert!(is_auth_failure(&err), "{err}");
    let fresh = host_auth(&rotated, Some(&keys.ctrlr), Digest::Sha384, DhGroup::Ffdhe3072);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(fresh))).unwrap();
    io_round_trip(&mut controller, 6);
    let hosts = target.call("nvmf_get_subsystems", Some(json!({"nqn": NQN})))[0]["hosts"].clone();
    assert_eq!(hosts, json!([{"nqn": HOSTNQN, "dhchap_key": "key1", "dhchap_ctrlr_key": "ckey0"}]));
}

#[test]
fn repeated_failures_are_counted_and_then_refused_outright() {
    let (target, addr, keys) = serve("auth-limit");
    let wrong = host_auth(&new_secret(None, 32), None, Digest::Sha256, DhGroup::Null);
    for attempt in 0..5 {
        let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(wrong.clone()))).err().unwrap();
        assert!(is_auth_failure(&err), "attempt {attempt}: {err}");
    }
    // The right key now is refused too, for the rest of the minute.
    let right = host_auth(&keys.host, None, Digest::Sha256, DhGroup::Null);
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(right))).err().unwrap();
    assert!(is_auth_failure(&err), "{err}");
    let stats = target.call("nvmf_get_stats", None);
    assert_eq!(
        stats["auth_failures"],
        json!([{"hostnqn": HOSTNQN, "address": "127.0.0.1", "failures": 6, "throttled": 1}])
    );
    // Another host is not held back by this one's failures.
    let other = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000002";
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": other, "dhchap_key": "key0"})));
    let mut auth = HostAuth::new(&keys.host, None).unwrap();
    auth.dhgroups = vec![DhGroup::Null];
    // key0 was transformed for HOSTNQN's use; a key is only bound to an NQN when used.
    Controller::connect(addr, NQN, other, &options(Some(auth))).expect("another host authenticates");
}

#[test]
fn the_target_narrows_digests_and_groups_and_refuses_bad_key_names() {
    let (target, addr, keys) = serve("auth-config");
    target.call("nvmf_set_config", Some(json!({"dhchap_digests": ["sha384"], "dhchap_dhgroups": ["ffdhe2048"]})));
    let sha256 = host_auth(&keys.host, None, Digest::Sha256, DhGroup::Ffdhe2048);
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(sha256))).err().unwrap();
    assert!(err.to_string().contains("explanation 0x04"), "hash unusable: {err}");
    let null = host_auth(&keys.host, None, Digest::Sha384, DhGroup::Null);
    let err = Controller::connect(addr, NQN, HOSTNQN, &options(Some(null))).err().unwrap();
    assert!(err.to_string().contains("explanation 0x05"), "group unusable: {err}");
    let mut everything = HostAuth::new(&keys.host, None).unwrap();
    everything.dhgroups = DhGroup::ALL.to_vec();
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(everything))).unwrap();
    io_round_trip(&mut controller, 9);
    let admin = qpairs(&target).into_iter().find(|q| q["qid"] == 0 && q["auth"]["state"] == "completed").unwrap();
    assert_eq!(
        (admin["auth"]["digest"].as_str(), admin["auth"]["dhgroup"].as_str()),
        (Some("sha384"), Some("ffdhe2048"))
    );

    let refused = |method: &str, params: Value, words: &[&str]| {
        let (code, message) = target.call_err(method, Some(params.clone()));
        assert_eq!(code, -32602, "{method} {params}: {message}");
        for word in words {
            assert!(message.contains(word), "{method} {params}: {message}");
        }
    };
    let other = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-00000000000f";
    refused(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": other, "dhchap_key": "nokey"}),
        &["dhchap_key", "nokey"],
    );
    refused(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": other, "dhchap_key": "key0", "dhchap_ctrlr_key": "nokey"}),
        &["dhchap_ctrlr_key", "nokey"],
    );
    refused(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": other, "dhchap_ctrlr_key": "ckey0"}),
        &["requires dhchap_key"],
    );
    refused("nvmf_subsystem_set_keys", json!({"nqn": NQN, "host": HOSTNQN, "dhchap_key": "nokey"}), &["nokey"]);
    refused("nvmf_set_config", json!({"dhchap_digests": ["md5"]}), &["dhchap_digests", "md5"]);
    refused("nvmf_set_config", json!({"dhchap_dhgroups": []}), &["dhchap_dhgroups"]);
    refused("nvmf_set_config", json!({"poll_groups_mask": "0x1"}), &["poll_groups_mask"]);
    let (code, _) = target.call_err("nvmf_subsystem_set_keys", Some(json!({"nqn": NQN, "host": other})));
    assert_eq!(code, -19, "an unlisted host");
}

#[test]
fn no_key_material_in_the_log_rpc_answers_or_saved_config_and_the_config_round_trips() {
    let (target, addr, keys) = serve("auth-secrets");
    let auth = host_auth(&keys.host, Some(&keys.ctrlr), Digest::Sha256, DhGroup::Ffdhe2048);
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(auth.clone()))).unwrap();
    io_round_trip(&mut controller, 1);
    let wrong = host_auth(&new_secret(None, 32), None, Digest::Sha256, DhGroup::Null);
    Controller::connect(addr, NQN, HOSTNQN, &options(Some(wrong))).err().unwrap();
    target.call("nvmf_set_config", Some(json!({"dhchap_digests": ["sha256", "sha512"]})));
    let config = saved_config(&target);
    let answers = [
        config.to_string(),
        target.call("nvmf_get_subsystems", None).to_string(),
        target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN}))).to_string(),
        target.call("keyring_get_keys", None).to_string(),
        target.call("nvmf_get_stats", None).to_string(),
        target.log(),
    ];
    assert!(answers[5].contains("DH-HMAC-CHAP authentication failed"), "the failure is logged (without the key)");
    for part in secret_parts(&keys.host).iter().chain(secret_parts(&keys.ctrlr).iter()) {
        for (index, answer) in answers.iter().enumerate() {
            assert!(!answer.contains(part.as_str()), "answer {index} shows key material");
        }
    }
    let nvmf = config["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap();
    let calls = nvmf["config"].as_array().unwrap();
    let add_host = calls.iter().find(|c| c["method"] == "nvmf_subsystem_add_host").unwrap();
    assert_eq!(
        add_host["params"],
        json!({"nqn": NQN, "host": HOSTNQN, "dhchap_key": "key0", "dhchap_ctrlr_key": "ckey0"})
    );
    let set_config = calls.iter().find(|c| c["method"] == "nvmf_set_config").unwrap();
    assert_eq!(set_config["params"]["dhchap_digests"], json!(["sha256", "sha512"]));
    controller.shutdown().unwrap();
    drop(controller);

    // A second target loading that configuration authenticates the same host: the key
    // files are named in the keyring part of the config, and still there.
    let path = target.dir().join("saved.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let listen = add_host_port(&config);
    let mut first = target;
    first.stop();
    let second = tgt().start("auth-secrets-reload", &["-c", path.to_str().unwrap()]);
    let mut controller = Controller::connect(listen, NQN, HOSTNQN, &options(Some(auth))).unwrap();
    io_round_trip(&mut controller, 2);
    drop(second);
}

/// The listener the saved configuration restores.
fn add_host_port(config: &Value) -> SocketAddr {
    let nvmf = config["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap();
    let listener = nvmf["config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "nvmf_subsystem_add_listener" && c["params"]["nqn"] == NQN)
        .unwrap();
    let address = &listener["params"]["listen_address"];
    format!("{}:{}", address["traddr"].as_str().unwrap(), address["trsvcid"].as_str().unwrap()).parse().unwrap()
}

/// `peerless-perf --dhchap-key FILE [--dhchap-ctrlr-key FILE]`, as SPDK's perf takes key
/// files: a verified run on authenticated queues; without a key it stops with the reason.
#[test]
fn perf_authenticates_with_key_files() {
    let (_target, addr, keys) = serve("auth-perf");
    let dir = _target.dir().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    let host_key = write_key(&dir, "host.key", &keys.host);
    let ctrlr_key = write_key(&dir, "ctrlr.key", &keys.ctrlr);
    let trid = format!("trtype:tcp adrfam:IPv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:1", addr.ip(), addr.port());
    let perf = |auth: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_peerless-perf"));
        command.args(["-r", &trid, "-q", "4", "-o", "4096", "-w", "randwrite", "-t", "1", "--verify", "--json"]);
        command.args(["--hostnqn", HOSTNQN]).args(auth);
        command.output().unwrap()
    };
    let output = perf(&["--dhchap-key", host_key.to_str().unwrap(), "--dhchap-ctrlr-key", ctrlr_key.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((summary["errors"].as_u64(), summary["mismatches"].as_u64()), (Some(0), Some(0)), "{summary}");
    assert!(summary["ios"].as_u64().unwrap() > 0, "{summary}");
    let output = perf(&[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dhchap-key"), "{output:?}");
}

#[test]
fn an_io_queue_that_skips_authentication_gets_nothing_done_and_is_ended_in_time() {
    let (target, addr, keys) = serve("auth-io-skip");
    let auth = host_auth(&keys.host, None, Digest::Sha256, DhGroup::Null);
    let kato_ms = 400;
    let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options { kato_ms, ..options(Some(auth)) }).unwrap();
    let (mut queue, atr) = controller.connect_io_queue_unauthenticated(1, 16).unwrap();
    assert!(atr, "I/O queues authenticate too");
    let read = SqeBuilder::new(0x02, 1).rw(1, 0, 1);
    let done = queue.execute(read, Xfer::FromController, vec![0u8; BLOCK as usize]).unwrap();
    assert_eq!(done.status, status::AUTH_REQUIRED);
    let shown = qpairs(&target);
    let io = shown.iter().find(|q| q["qid"] == 1).unwrap();
    assert_eq!(io["state"], "authenticating");
    // The admin queue keeps the association alive; the silent I/O queue runs out of time
    // (the controller's Keep Alive Timeout, as SPDK) and is ended.
    let deadline = std::time::Instant::now() + Duration::from_millis(u64::from(kato_ms) * 5);
    while qpairs(&target).iter().any(|q| q["qid"] == 1) {
        assert!(std::time::Instant::now() < deadline, "the unauthenticated I/O queue is still there");
        controller.keep_alive().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_queue_ended(&mut queue);
    controller.keep_alive().expect("the admin queue lives on");
    assert!(target.log().contains("DH-HMAC-CHAP authentication timed out"));
}

/// Messages longer than an I/O queue's in-capsule data come by R2T and H2CData: the
/// reply with an ffdhe4096 value (592 bytes) to a target taking 256 in the capsule.
#[test]
fn authentication_messages_too_long_for_the_capsule_come_by_r2t() {
    let (target, addr, keys) = serve_with("auth-r2t", json!({"in_capsule_data_size": 256}));
    for group in [DhGroup::Ffdhe4096, DhGroup::Ffdhe2048] {
        let auth = host_auth(&keys.host, Some(&keys.ctrlr), Digest::Sha512, group);
        let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options(Some(auth))).unwrap();
        let mut queue = controller.io_queue(16).expect("authenticated through R2T");
        assert!(queue.in_capsule_bytes() < 592, "the reply cannot travel in the capsule");
        let data = vec![0xa5u8; BLOCK as usize];
        queue.write(1, 7, 1, &data).unwrap();
        let mut back = vec![0u8; BLOCK as usize];
        queue.read(1, 7, 1, &mut back).unwrap();
        assert_eq!(back, data);
        let io = qpairs(&target).into_iter().find(|q| q["qid"] == 1 && q["cntlid"] == controller.cntlid()).unwrap();
        assert_eq!(io["auth"]["dhgroup"], group.name());
        controller.shutdown().unwrap();
    }
}

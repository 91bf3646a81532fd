//! The NVMe/TCP secure channel end to end (NVMe/TCP 1.0, 3.6.1): a real `peerless-tgt`
//! with a `secure_channel` listener and a host PSK in its keyring, and the initiator
//! library (and `peerless-perf`) over loopback TLS 1.3. I/O from 512 bytes to the
//! largest transfer with and without digests; every refusal (wrong PSK, plaintext,
//! TLS 1.2, an unlisted host, a listed host without a PSK, a PSK host on a plain
//! listener, a version-1 identity whose digest names another key, RPCs that would
//! weaken the channel); both PSK identity versions; a host that stalls mid-handshake is
//! evicted while another works; and no key material in the log, RPC answers or saved
//! configuration, which restores the same channel.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{Ssl, SslContext, SslMethod, SslVersion};
use peerless_target::nvmf::auth::crypto::random;
use peerless_target::tcp::tls::psk::{ConfiguredPsk, PskHash};
use peerless_testkit::Target;
use peerless_tools::initiator::{discover, subtype, Controller, Digests, HostTls, Options};
use serde_json::{json, Value};
use support::{add_key, saved_config, secret_parts, tgt, write_key, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:tls";
/// A host on the list without a PSK.
const PLAIN_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000002";
/// A host on no list.
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000003";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 4096;
const MAX_IO_BYTES: usize = 1 << 20;

/// A fresh random 32-byte PSK in the interchange format, SHA-256 retained hash.
fn new_psk() -> String {
    let mut key = [0u8; 32];
    random(&mut key).unwrap();
    ConfiguredPsk::format(Some(PskHash::Sha256), &key).to_string()
}

struct Served {
    target: Target,
    secure: SocketAddr,
    /// A plain listener of the same subsystem.
    plain: SocketAddr,
    psk: String,
}

/// `NQN` with a malloc namespace, closed to unlisted hosts: `HOSTNQN` with PSK `psk0`,
/// `PLAIN_HOST` without; a secure listener and a plain one.
fn serve(test: &str, transport: Value) -> Served {
    let target = tgt().start(test, &[]);
    let mut options = json!({"max_io_size": MAX_IO_BYTES, "in_capsule_data_size": 8192});
    options.as_object_mut().unwrap().extend(transport.as_object().unwrap().clone());
    target.create_tcp_transport(options);
    target.call("nvmf_create_subsystem", Some(json!({"nqn": NQN, "allow_any_host": false})));
    target.add_malloc_namespace(NQN, "Malloc0", BLOCKS, BLOCK);
    let psk = new_psk();
    add_key(&target, "psk0", &psk);
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": HOSTNQN, "psk": "psk0"})));
    target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": PLAIN_HOST})));
    let secure = target.listen_with(NQN, json!({"secure_channel": true}));
    let plain = target.listen(NQN);
    Served { target, secure, plain, psk }
}

fn options(tls: Option<&str>, digests: Digests) -> Options {
    Options {
        tls: tls.map(|psk| HostTls::new(psk).unwrap()),
        digests,
        command_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

/// A pattern unique to `seed` and each byte's place.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed).to_le_bytes()[1]).collect()
}

#[test]
fn io_from_512_bytes_to_the_largest_transfer_with_and_without_digests() {
    let served = serve("tls-io", json!({}));
    for digests in [Digests::default(), Digests { header: true, data: true }] {
        let mut controller =
            Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), digests)).unwrap();
        let largest = controller.max_transfer_bytes().min(MAX_IO_BYTES);
        assert_eq!(largest, MAX_IO_BYTES, "the target's max_io_size is the limit");
        let mut queue = controller.io_queue(32).unwrap();
        let mut seed = 0;
        for bytes in [512, 4096, 8192, 8704, 65536, 131072, 524288, largest] {
            seed += 1;
            let blocks = (bytes / BLOCK as usize) as u32;
            let lba = u64::from(seed) * 8;
            let data = pattern(bytes, seed);
            queue.write(1, lba, blocks, &data).unwrap_or_else(|err| panic!("write {bytes} B, {digests:?}: {err}"));
            let mut back = vec![0u8; bytes];
            queue.read(1, lba, blocks, &mut back).unwrap_or_else(|err| panic!("read {bytes} B, {digests:?}: {err}"));
            assert!(back == data, "{bytes} B read back differs ({digests:?})");
        }
        let qpairs = served.target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN})));
        assert!(qpairs.as_array().unwrap().iter().any(|q| q["qid"] == 1 && q["cntlid"] == controller.cntlid()));
        controller.shutdown().unwrap();
    }
}

#[test]
fn perf_verifies_over_tls_with_a_psk_file() {
    let served = serve("tls-perf", json!({}));
    let dir = served.target.dir().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    let key = write_key(&dir, "host.psk", &served.psk);
    let trid = |addr: SocketAddr| {
        format!("trtype:tcp adrfam:IPv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:1", addr.ip(), addr.port())
    };
    let perf = |addr: SocketAddr, extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_peerless-perf"));
        command.args(["-r", &trid(addr), "-q", "16", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "1"]);
        command.args(["--verify", "--json", "--hostnqn", HOSTNQN]).args(extra);
        command.output().unwrap()
    };
    for digests in [&[][..], &["-H", "-I"][..]] {
        let mut args = vec!["--psk", key.to_str().unwrap()];
        args.extend_from_slice(digests);
        let output = perf(served.secure, &args);
        assert!(output.status.success(), "{output:?}");
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!((summary["errors"].as_u64(), summary["mismatches"].as_u64()), (Some(0), Some(0)), "{summary}");
        assert!(summary["ios"].as_u64().unwrap() > 0, "{summary}");
    }
    // A version-1 identity (with its digest) carries the same run.
    let output = perf(served.secure, &["--psk", key.to_str().unwrap(), "--psk-identity-version", "1"]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((summary["errors"].as_u64(), summary["mismatches"].as_u64()), (Some(0), Some(0)), "{summary}");
    let output = perf(served.secure, &["--psk", key.to_str().unwrap(), "--psk-identity-version", "2"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("0 or 1"), "{output:?}");
    // Without the key the secure listener takes nothing.
    assert!(!perf(served.secure, &[]).status.success());
}

#[test]
fn version_one_identities_connect_on_both_suites_and_a_digest_of_another_key_is_named() {
    let served = serve("tls-identity-v1", json!({}));
    let v1 = |psk: &str| Options {
        tls: Some(HostTls::new(psk).unwrap().with_identity_version(1).unwrap()),
        command_timeout: Duration::from_secs(10),
        ..Options::default()
    };
    // First, so its reason is the one logged: the host's NQN with a key the target does
    // not hold for it.
    assert!(Controller::connect(served.secure, NQN, HOSTNQN, &v1(&new_psk())).is_err());
    let log = served.target.log();
    assert!(log.contains("PSK identity's digest does not match key 'psk0'"), "{log}");
    let mut key48 = [0u8; 48];
    random(&mut key48).unwrap();
    let psk48 = ConfiguredPsk::format(Some(PskHash::Sha384), &key48).to_string();
    add_key(&served.target, "psk48", &psk48);
    served.target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": STRANGER, "psk": "psk48"})));
    for (host, psk, lba) in [(HOSTNQN, served.psk.as_str(), 0u64), (STRANGER, psk48.as_str(), 64)] {
        let mut controller =
            Controller::connect(served.secure, NQN, host, &v1(psk)).unwrap_or_else(|err| panic!("{host}: {err}"));
        let mut queue = controller.io_queue(8).unwrap();
        let data = pattern(65536, lba as u32);
        queue.write(1, lba, 128, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        queue.read(1, lba, 128, &mut back).unwrap();
        assert!(back == data, "{host}: read back differs");
        controller.shutdown().unwrap();
    }
}

/// A TLS 1.2 PSK client: the target speaks TLS 1.3 only.
fn tls12_handshake(addr: SocketAddr, psk: &str) -> Result<(), String> {
    let configured = ConfiguredPsk::parse(psk.as_bytes()).unwrap();
    let identity = configured.identity(0, HOSTNQN, NQN).unwrap();
    let tls_psk = configured.tls_psk(&identity).unwrap();
    let identity = identity.to_string();
    let mut builder = SslContext::builder(SslMethod::tls_client()).unwrap();
    builder.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    builder.set_cipher_list("PSK-AES128-GCM-SHA256").unwrap();
    builder.set_psk_client_callback(move |_, _, identity_out, psk_out| {
        identity_out[..identity.len()].copy_from_slice(identity.as_bytes());
        identity_out[identity.len()] = 0;
        psk_out[..tls_psk.len()].copy_from_slice(&tls_psk);
        Ok(tls_psk.len())
    });
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ssl = Ssl::new(&builder.build()).unwrap();
    ssl.connect(tcp).map(drop).map_err(|err| err.to_string())
}

/// What a refusal is, and a try that says whether it was refused.
type Refusal<'a> = (&'a str, Box<dyn Fn() -> bool + 'a>);

#[test]
fn every_refusal_closes_the_connection_and_a_good_host_still_connects() {
    let served = serve("tls-refusals", json!({}));
    let none = Digests::default();
    let refusals: Vec<Refusal<'_>> = vec![
        (
            "an unlisted host",
            Box::new(|| Controller::connect(served.secure, NQN, STRANGER, &options(Some(&served.psk), none)).is_err()),
        ),
        (
            "a wrong PSK",
            Box::new(|| Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&new_psk()), none)).is_err()),
        ),
        (
            "plaintext ICReq",
            Box::new(|| Controller::connect(served.secure, NQN, HOSTNQN, &options(None, none)).is_err()),
        ),
        (
            "a listed host without a PSK",
            Box::new(|| {
                Controller::connect(served.secure, NQN, PLAIN_HOST, &options(Some(&served.psk), none)).is_err()
            }),
        ),
        ("TLS 1.2", Box::new(|| tls12_handshake(served.secure, &served.psk).is_err())),
        (
            "a PSK host on a plain listener",
            Box::new(|| Controller::connect(served.plain, NQN, HOSTNQN, &options(None, none)).is_err()),
        ),
    ];
    for (what, refused) in &refusals {
        assert!(refused(), "{what} was let in");
    }
    // The first refusal's reason is logged (later ones are throttled into its count).
    let log = served.target.log();
    assert!(log.contains("TLS connection from") && log.contains(&format!("host '{STRANGER}' is not allowed")), "{log}");
    assert!(log.contains("has a PSK and must use a secure_channel listener"), "{log}");
    // A listed host without a PSK still reaches the plain listener.
    let mut plain = Controller::connect(served.plain, NQN, PLAIN_HOST, &options(None, none)).unwrap();
    plain.io_queue(4).unwrap();
    let mut good = Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), none)).unwrap();
    let mut queue = good.io_queue(4).unwrap();
    queue.write(1, 0, 1, &pattern(512, 9)).unwrap();
    good.shutdown().unwrap();
    plain.shutdown().unwrap();
}

#[test]
fn rpcs_that_would_weaken_the_channel_are_refused() {
    let served = serve("tls-rpc", json!({}));
    let target = &served.target;
    let err = |method: &str, params: Value| target.call_err(method, Some(params)).1;
    assert!(
        err("nvmf_subsystem_allow_any_host", json!({"nqn": NQN, "allow_any_host": true})).contains("secure_channel")
    );
    let open = "nqn.2016-06.io.peerless:open";
    target.call("nvmf_create_subsystem", Some(json!({"nqn": open, "allow_any_host": true})));
    let listen = |nqn: &str, port: u16, secure: bool| {
        json!({"nqn": nqn, "secure_channel": secure, "listen_address":
            {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}})
    };
    let port = peerless_testkit::free_port();
    assert!(err("nvmf_subsystem_add_listener", listen(open, port, true)).contains("allows any host"));
    assert!(err("nvmf_subsystem_add_listener", listen("discovery", port, true)).contains("discovery subsystem"));
    // One socket per address: a plain subsystem cannot share the secure one's port.
    assert!(err("nvmf_subsystem_add_listener", listen(open, served.secure.port(), false)).contains("secure_channel"));
    add_key(target, "dhchap", "DHHC-1:00:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWadNtdU:");
    let add_host = |key: &str| err("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": STRANGER, "psk": key}));
    assert!(add_host("dhchap").contains("not a TLS PSK"));
    assert!(add_host("missing").contains("no key named"));
    // What the RPCs show: key names and the secure listener, as SPDK shows them.
    let listeners = target.call("nvmf_subsystem_get_listeners", Some(json!({"nqn": NQN})));
    let secure_port = served.secure.port().to_string();
    let secure =
        listeners.as_array().unwrap().iter().find(|l| l["address"]["trsvcid"].as_str() == Some(secure_port.as_str()));
    assert_eq!(secure.unwrap()["secure_channel"], true);
    let subsystems = target.call("nvmf_get_subsystems", None);
    let ours = subsystems.as_array().unwrap().iter().find(|s| s["nqn"] == NQN).unwrap();
    assert_eq!(ours["hosts"], json!([{"nqn": HOSTNQN, "psk": "psk0"}, {"nqn": PLAIN_HOST}]));
}

#[test]
fn a_48_byte_psk_carries_io_over_the_sha384_suite_beside_a_32_byte_one() {
    let served = serve("tls-sha384", json!({}));
    let mut key48 = [0u8; 48];
    random(&mut key48).unwrap();
    let psk48 = ConfiguredPsk::format(Some(PskHash::Sha384), &key48).to_string();
    add_key(&served.target, "psk48", &psk48);
    served.target.call("nvmf_subsystem_add_host", Some(json!({"nqn": NQN, "host": STRANGER, "psk": "psk48"})));
    // Each host in its own half of the 2 MiB namespace.
    for (host, psk, seed, base) in
        [(STRANGER, psk48.as_str(), 40, 0u64), (HOSTNQN, served.psk.as_str(), 50, BLOCKS / 2)]
    {
        let mut controller =
            Controller::connect(served.secure, NQN, host, &options(Some(psk), Digests { header: true, data: true }))
                .unwrap_or_else(|err| panic!("{host}: {err}"));
        let mut queue = controller.io_queue(8).unwrap();
        for (index, (bytes, offset)) in [(512, 0u64), (65536, 8), (524288, 136)].into_iter().enumerate() {
            let blocks = (bytes / BLOCK as usize) as u32;
            let lba = base + offset;
            let data = pattern(bytes, seed + index as u32);
            queue.write(1, lba, blocks, &data).unwrap_or_else(|err| panic!("{host}: write {bytes} B: {err}"));
            let mut back = vec![0u8; bytes];
            queue.read(1, lba, blocks, &mut back).unwrap_or_else(|err| panic!("{host}: read {bytes} B: {err}"));
            assert!(back == data, "{host}: {bytes} B read back differs");
        }
        controller.shutdown().unwrap();
    }
    // Each host's key is its own: the 48-byte key does not open the 32-byte host's door.
    let crossed = Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&psk48), Digests::default()));
    assert!(crossed.is_err(), "a host got in with another host's key");
}

#[test]
fn the_discovery_log_says_the_secure_listener_requires_tls_1_3() {
    let served = serve("tls-discovery", json!({}));
    // Discovery over the plain listener (the discovery controller answers on each).
    let log = discover(served.plain, HOSTNQN, &options(None, Digests::default())).unwrap();
    let entry = |addr: SocketAddr| {
        log.entries
            .iter()
            .find(|e| e.subtype == subtype::NVME && e.subnqn == NQN && e.trsvcid == addr.port().to_string())
            .unwrap_or_else(|| panic!("no entry for {addr}: {log:?}"))
    };
    assert_eq!((entry(served.secure).treq & 0x3, entry(served.secure).tcp_sectype), (1, 2), "required, TLS 1.3");
    assert_eq!((entry(served.plain).treq & 0x3, entry(served.plain).tcp_sectype), (2, 0), "not required, none");
}

#[test]
fn a_host_stalling_mid_handshake_is_evicted_and_does_not_stop_another() {
    let served = serve("tls-stall", json!({"icreq_timeout_ms": 500}));
    // A TLS record header announcing a ClientHello of 512 bytes, and 10 of them.
    let mut stalled = TcpStream::connect(served.secure).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0]).unwrap();
    let started = Instant::now();
    let mut good =
        Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), Digests::default())).unwrap();
    let mut queue = good.io_queue(8).unwrap();
    let data = pattern(4096, 5);
    queue.write(1, 40, 8, &data).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    // The target closes it: end of stream, or a reset.
    match stalled.read(&mut byte) {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("the target answered a stalled handshake"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(9), "evicted after {waited:?}");
    let mut back = vec![0u8; 4096];
    queue.read(1, 40, 8, &mut back).unwrap();
    assert!(back == data);
    good.shutdown().unwrap();
}

#[test]
fn no_key_material_in_the_log_rpc_answers_or_saved_config_and_the_config_round_trips() {
    let served = serve("tls-secrets", json!({}));
    let mut controller =
        Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), Digests::default())).unwrap();
    controller.io_queue(4).unwrap().write(1, 0, 1, &pattern(512, 3)).unwrap();
    let wrong = new_psk();
    Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&wrong), Digests::default())).err().unwrap();
    let target = &served.target;
    let config = saved_config(target);
    let answers = [
        config.to_string(),
        target.call("nvmf_get_subsystems", None).to_string(),
        target.call("nvmf_subsystem_get_listeners", Some(json!({"nqn": NQN}))).to_string(),
        target.call("nvmf_subsystem_get_qpairs", Some(json!({"nqn": NQN}))).to_string(),
        target.call("keyring_get_keys", None).to_string(),
        target.log(),
    ];
    assert!(answers[5].contains("TLS connection from"), "the failed handshake is logged");
    for part in secret_parts(&served.psk).iter().chain(secret_parts(&wrong).iter()) {
        for (index, answer) in answers.iter().enumerate() {
            assert!(!answer.contains(part.as_str()), "answer {index} shows key material");
        }
    }
    let nvmf = config["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap();
    let calls = nvmf["config"].as_array().unwrap();
    let add_host = calls.iter().find(|c| c["method"] == "nvmf_subsystem_add_host" && c["params"]["host"] == HOSTNQN);
    assert_eq!(add_host.unwrap()["params"], json!({"nqn": NQN, "host": HOSTNQN, "psk": "psk0"}));
    let secure_port = served.secure.port().to_string();
    let listener = calls
        .iter()
        .find(|c| {
            c["method"] == "nvmf_subsystem_add_listener"
                && c["params"]["listen_address"]["trsvcid"].as_str() == Some(secure_port.as_str())
        })
        .unwrap();
    assert_eq!(listener["params"]["secure_channel"], true);
    controller.shutdown().unwrap();
    drop(controller);

    // A second target from that configuration serves the same secure channel.
    let path = target.dir().join("saved.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut first = served.target;
    first.stop();
    let second = tgt().start("tls-secrets-reload", &["-c", path.to_str().unwrap()]);
    let mut controller =
        Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), Digests::default())).unwrap();
    let mut back = vec![0u8; 512];
    controller.io_queue(4).unwrap().read(1, 0, 1, &mut back).unwrap();
    Controller::connect(served.secure, NQN, HOSTNQN, &options(None, Digests::default())).err().expect("still TLS only");
    drop(second);
}

/// The kernel's kTLS counters (`/proc/net/tls_stat`), None where it has no tls module.
fn tls_stat(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(char::is_whitespace)?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// With `enable_ktls` the record layer moves into the kernel where the kernel has the
/// tls module, which its counters show; where it has not, the target says so once and
/// keeps the records in OpenSSL. Either way, I/O is intact. With kTLS off (the default)
/// no attempt is made.
#[test]
fn records_move_into_the_kernel_where_it_offers_ktls_and_stay_in_openssl_where_not() {
    let served = serve("tls-ktls", json!({}));
    let options_now = served.target.call("sock_impl_get_options", Some(json!({"impl_name": "ssl"})));
    assert_eq!(options_now, json!({"enable_ktls": false, "tls_version": 13}));
    served.target.call("sock_impl_set_options", Some(json!({"impl_name": "ssl", "enable_ktls": true})));
    let software_before = (tls_stat("TlsTxSw"), tls_stat("TlsRxSw"));
    let io = |seed: u32| {
        let mut controller =
            Controller::connect(served.secure, NQN, HOSTNQN, &options(Some(&served.psk), Digests::default())).unwrap();
        let mut queue = controller.io_queue(8).unwrap();
        for (bytes, lba) in [(512usize, 0u64), (131072, 8), (MAX_IO_BYTES, 512)] {
            let data = pattern(bytes, seed + lba as u32);
            queue.write(1, lba, (bytes / BLOCK as usize) as u32, &data).unwrap();
            let mut back = vec![0u8; bytes];
            queue.read(1, lba, (bytes / BLOCK as usize) as u32, &mut back).unwrap();
            assert!(back == data, "{bytes} B read back differs");
        }
        controller.shutdown().unwrap();
    };
    io(1);
    let log = served.target.log();
    match software_before {
        (Some(tx), Some(rx)) => {
            // Two queues (admin and I/O), each offloaded both ways.
            assert!(tls_stat("TlsTxSw").unwrap() >= tx + 2 && tls_stat("TlsRxSw").unwrap() >= rx + 2, "{log}");
            assert!(!log.contains("kTLS unavailable"), "{log}");
        }
        _ => assert!(log.contains("kTLS unavailable, TLS records stay in OpenSSL: the kernel has no TLS"), "{log}"),
    }
    // Off: connections keep OpenSSL's records, and say nothing about it.
    served.target.call("sock_impl_set_options", Some(json!({"impl_name": "ssl", "enable_ktls": false})));
    let software_off = (tls_stat("TlsTxSw"), tls_stat("TlsRxSw"));
    io(2);
    assert_eq!((tls_stat("TlsTxSw"), tls_stat("TlsRxSw")), software_off, "kTLS was used while off");
    let saved = saved_config(&served.target);
    let sock = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "sock").unwrap();
    assert_eq!(sock["config"][0]["params"], json!({"impl_name": "ssl", "enable_ktls": false, "tls_version": 13}));
}

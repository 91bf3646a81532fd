//! `peerless-tgt --metrics`: a real target scraped over HTTP while a host runs I/O
//! against it, checking that the counters move and the gauges show the connection; the
//! HTTP edges (unknown paths, methods, oversized and silent clients); and the flag's
//! usage errors.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use peerless_testkit::{free_port, Scratch, Target, WAIT};
use peerless_tools::initiator::{Controller, Options};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:metrics";
const LOCKED_NQN: &str = "nqn.2016-06.io.peerless:locked";
const STRANGER: &str = "nqn.2014-08.io.peerless:stranger";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 8192;
/// Bounds the load thread whatever the test does: it stops after this many I/Os even if
/// nobody tells it to.
const MAX_LOAD_IOS: u64 = 200_000;
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP exchange: `request` as given, then everything until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the metrics port");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read until the server closes");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status =
        head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("status in {head}"));
    Response { status, head: head.to_string(), body: body.to_string() }
}

/// The samples of a scrape, keyed by series (name and labels as printed).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: peerless\r\nAccept: */*\r\n\r\n");
    assert_eq!(response.status, 200, "{}\n{}", response.head, response.body);
    assert!(response.head.contains(&format!("Content-Type: {PROMETHEUS_TEXT}")), "{}", response.head);
    assert!(response.head.contains(&format!("Content-Length: {}", response.body.len())), "{}", response.head);
    parse(&response.body)
}

/// The text format's sample lines: `series value`, `#` lines skipped. Checks that every
/// sample belongs to a family announced by a TYPE line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap_or_default().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(typed.iter().any(|family| family == name), "{name} has no TYPE line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
        assert!(samples.insert(series.to_string(), value).is_none(), "{series} twice");
    }
    samples
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        let mut known: Vec<&String> = samples.keys().collect();
        known.sort();
        panic!("no {series} among {known:#?}")
    })
}

fn start_with_metrics(test: &str) -> (Target, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let target = tgt().launch(test).args(["--metrics", &addr.to_string()]).start();
    // The server starts before the target reports ready, which start() waited for.
    assert!(target.log().contains(&format!("metrics on http://{addr}/metrics")), "{}", target.log());
    (target, addr)
}

/// A host writing and reading blocks as fast as it can until `stop`, on its own queue.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut controller = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).expect("connect");
        let mut queue = controller.io_queue(16).expect("an I/O queue");
        let data = vec![0x5a; 8 * BLOCK as usize];
        let mut back = vec![0; data.len()];
        let mut ios = 0;
        while !stop.load(Ordering::Relaxed) && ios < MAX_LOAD_IOS {
            let slba = (ios * 8) % (BLOCKS - 8);
            queue.write(1, slba, 8, &data).expect("write");
            queue.read(1, slba, 8, &mut back).expect("read");
            ios += 2;
        }
        ios
    })
}

#[test]
fn counters_move_under_load() {
    let (target, metrics) = start_with_metrics("metrics_load");
    let addr = target.serve_malloc(NQN, BLOCKS, BLOCK, json!({}));
    let bdev = "{bdev=\"Malloc0\"}";
    let subsystem = format!("{{nqn=\"{NQN}\"}}");
    let group = "{poll_group=\"nvmf_tgt_poll_group_000\"}";

    let idle = scrape(metrics);
    assert_eq!(value(&idle, &format!("peerless_bdev_read_ops_total{bdev}")), 0.0);
    assert_eq!(value(&idle, &format!("peerless_nvmf_subsystem_namespaces{subsystem}")), 1.0);
    assert_eq!(value(&idle, &format!("peerless_nvmf_subsystem_controllers{subsystem}")), 0.0);
    assert_eq!(value(&idle, &format!("peerless_nvmf_subsystem_listeners{subsystem}")), 1.0);
    assert!(value(&idle, "peerless_nvmf_data_buffers{trtype=\"TCP\"}") > 0.0, "the pool shows");
    assert_eq!(value(&idle, "peerless_build_info{version=\"0.1.0\"}"), 1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let host = load(addr, stop.clone());
    // Under load: the host's controller and queues show, and I/O counters climb between scrapes.
    let deadline = Instant::now() + WAIT;
    let mut first = scrape(metrics);
    while value(&first, &format!("peerless_bdev_read_ops_total{bdev}")) == 0.0 {
        assert!(Instant::now() < deadline, "no read counted within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
        first = scrape(metrics);
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = scrape(metrics);
    stop.store(true, Ordering::Relaxed);
    let ios = host.join().expect("the load thread");

    assert_eq!(value(&first, &format!("peerless_nvmf_subsystem_controllers{subsystem}")), 1.0);
    assert_eq!(value(&first, &format!("peerless_nvmf_subsystem_qpairs{subsystem}")), 2.0, "admin + one I/O queue");
    assert_eq!(value(&first, &format!("peerless_nvmf_poll_group_current_io_qpairs{group}")), 1.0);
    // A RAM disk can complete within the poll that submitted it, so its latency sum may
    // stay 0; it must never go back.
    let latency = format!("peerless_bdev_read_latency_seconds_total{bdev}");
    assert!(value(&second, &latency) >= value(&first, &latency), "{latency} went back");
    for series in [
        format!("peerless_bdev_read_ops_total{bdev}"),
        format!("peerless_bdev_write_ops_total{bdev}"),
        format!("peerless_bdev_read_bytes_total{bdev}"),
        format!("peerless_nvmf_poll_group_completed_nvme_io_total{group}"),
        format!("peerless_nvmf_poll_group_busy_seconds_total{group}"),
        "peerless_payload_bytes_total{kind=\"host\"}".to_string(),
    ] {
        assert!(value(&second, &series) > value(&first, &series), "{series} did not move under load");
    }
    let reads = value(&second, &format!("peerless_bdev_read_ops_total{bdev}"));
    assert_eq!(value(&second, &format!("peerless_bdev_read_bytes_total{bdev}")), reads * 8.0 * f64::from(BLOCK));
    assert!(reads <= ios as f64, "no more reads counted ({reads}) than the host sent ({ios})");

    // A host the subsystem does not allow is refused, and counted by its NQN.
    target.call("nvmf_create_subsystem", Some(json!({"nqn": LOCKED_NQN})));
    target.call(
        "nvmf_subsystem_add_listener",
        Some(json!({"nqn": LOCKED_NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}})),
    );
    for _ in 0..2 {
        let refused = Controller::connect(addr, LOCKED_NQN, STRANGER, &Options::default());
        assert!(refused.is_err(), "a host off the allow-list must be refused");
    }
    let after = scrape(metrics);
    assert_eq!(value(&after, &format!("peerless_nvmf_connect_refusals_total{{hostnqn=\"{STRANGER}\"}}")), 2.0);
    assert!(!after.contains_key(&format!("peerless_nvmf_connect_refusals_total{{hostnqn=\"{HOSTNQN}\"}}")));
    let deadline = Instant::now() + WAIT;
    while value(&scrape(metrics), &format!("peerless_nvmf_subsystem_controllers{subsystem}")) != 0.0 {
        assert!(Instant::now() < deadline, "the host's controller outlived its connection");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn http_edges() {
    let (_target, metrics) = start_with_metrics("metrics_http");
    let not_found = exchange(metrics, b"GET /stats HTTP/1.1\r\n\r\n");
    assert_eq!(not_found.status, 404);
    assert!(not_found.body.contains("/metrics"), "{}", not_found.body);
    assert_eq!(exchange(metrics, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status, 405);
    assert_eq!(exchange(metrics, b"garbage\r\n\r\n").status, 400);
    let head = exchange(metrics, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD has headers only");
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(16 * 1024));
    assert_eq!(exchange(metrics, huge.as_bytes()).status, 431, "request heads are bounded");
    assert_eq!(exchange(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").status, 200, "still serving afterwards");

    // A client that connects and says nothing holds the (one-at-a-time) server only
    // until the read timeout, then gets 408; the next scrape is answered.
    let mut silent = TcpStream::connect(metrics).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    scrape(metrics);
    assert!(started.elapsed() < WAIT, "a silent client must not stall scrapes for long");
    let mut answer = String::new();
    silent.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
}

#[test]
fn metrics_flag_usage() {
    let scratch = Scratch::new("metrics_usage");
    let socket = scratch.join("rpc.sock");
    let run = |metrics: &str| {
        let output = tgt().run(["-r".as_ref(), socket.as_os_str(), "--metrics".as_ref(), metrics.as_ref()]);
        (output.status.code(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (code, stderr) = run("localhost");
    assert_eq!(code, Some(2), "no port: {stderr}");
    assert!(stderr.contains("--metrics"), "{stderr}");
    // An address from TEST-NET-1 (RFC 5737) belongs to no host: nothing is sent, bind fails.
    let (code, stderr) = run("192.0.2.1:9100");
    assert_eq!(code, Some(2), "an address this host lacks: {stderr}");
    assert!(stderr.contains("--metrics 192.0.2.1:9100"), "{stderr}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, stderr) = run(&taken.local_addr().unwrap().to_string());
    assert_eq!(code, Some(1), "a port in use is a failure to start: {stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(!socket.exists(), "nothing started");
}

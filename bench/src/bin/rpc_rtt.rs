//! JSON-RPC round-trip time: `spdk_get_version` on one connection to a real
//! peerless-tgt, against a bare Unix-socket echo of the same bytes as the floor,
//! interleaved A B B A; medians and p99 in microseconds.
//!
//! Run: cargo build --release -p peerless-target -p peerless-bench && build/release/rpc_rtt
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerless_bench::{median, sibling_binary};

const CALLS_PER_ROUND: usize = 2000;
const ROUNDS: usize = 3;
/// What rpc.py sends: indented, unterminated.
const REQUEST: &str = "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"spdk_get_version\",\n  \"id\": 1\n}";

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p) as usize]
}

/// Round trips in microseconds: send the request, read until a full line comes back.
fn round_trips(stream: &mut UnixStream) -> Vec<f64> {
    let mut samples = Vec::with_capacity(CALLS_PER_ROUND);
    let mut buf = [0u8; 4096];
    for _ in 0..CALLS_PER_ROUND {
        let started = Instant::now();
        stream.write_all(REQUEST.as_bytes()).expect("send");
        let mut got = 0;
        loop {
            let read = stream.read(&mut buf[got..]).expect("receive");
            assert!(read > 0, "connection closed");
            got += read;
            if buf[..got].ends_with(b"\n") {
                break;
            }
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

fn echo_server(path: &std::path::Path, reply_len: usize) {
    let listener = UnixListener::bind(path).expect("bind echo socket");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut reply = vec![b' '; reply_len];
        if let Some(last) = reply.last_mut() {
            *last = b'\n';
        }
        let mut buf = [0u8; 4096];
        let mut pending = 0;
        while let Ok(read) = stream.read(&mut buf) {
            if read == 0 {
                break;
            }
            pending += read;
            while pending >= REQUEST.len() {
                pending -= REQUEST.len();
                if stream.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    });
}

fn main() {
    let dir = std::env::temp_dir().join(format!("peerless-rpc-rtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let modes = [
        ("interrupt mode", vec!["--interrupt-mode"]),
        ("poll mode", vec!["--poll-mode"]),
        // The target's default.
        ("adaptive mode", vec![]),
    ];
    for (mode, flags) in modes {
        let socket = dir.join("tgt.sock");
        let mut target = Command::new(sibling_binary("peerless-tgt"))
            .arg("-r")
            .arg(&socket)
            .args(&flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start peerless-tgt (build it first)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rpc = loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                break stream;
            }
            assert!(Instant::now() < deadline, "peerless-tgt did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        // The floor replies with as many bytes as the target's answer.
        let reply_len = {
            rpc.write_all(REQUEST.as_bytes()).expect("send");
            let mut buf = [0u8; 4096];
            rpc.read(&mut buf).expect("receive")
        };
        let echo_path = dir.join(format!("echo-{}.sock", mode.len()));
        echo_server(&echo_path, reply_len);
        let mut echo = UnixStream::connect(&echo_path).expect("connect echo");
        let (mut peer, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            peer.extend(round_trips(&mut rpc));
            floor.extend(round_trips(&mut echo));
            floor.extend(round_trips(&mut echo));
            peer.extend(round_trips(&mut rpc));
        }
        let (peer_median, floor_median) = (median(&peer), median(&floor));
        println!(
            "spdk_get_version round trip, {mode}: median {:.1} us, p99 {:.1} us; Unix-socket echo floor median {:.1} us; ratio {:.2}",
            peer_median,
            percentile(&mut peer, 0.99),
            floor_median,
            peer_median / floor_median
        );
        let _ = target.kill();
        let _ = target.wait();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(format!("{}.lock", socket.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

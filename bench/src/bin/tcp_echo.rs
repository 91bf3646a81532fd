//! The physical limit an NVMe/TCP target is measured against: a bare loopback TCP
//! exchange with the same bytes on the wire per command (a 72-byte capsule out and a
//! 24-byte response plus data back for reads; capsule plus data out, response back for
//! writes), pipelined at the same queue depth, server and client pinned like the target
//! and peerless-perf. Prints JSON: {"iops":..,"latency_us":{"avg":..}}.
//!
//! Usage: tcp_echo <read|write> <io_bytes> <queue_depth> <seconds> [server_core client_core]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CAPSULE_BYTES: usize = 72;
const RESPONSE_BYTES: usize = 24;
/// The C2HData header that precedes read data.
const DATA_HEADER_BYTES: usize = 24;

fn pin(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(core).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tcp_echo <read|write> <io_bytes> <queue_depth> <seconds> [server_core client_core]";
    let (Some(mode), Some(io_bytes), Some(depth), Some(seconds)) = (
        args.get(1).cloned(),
        args.get(2).and_then(|v| v.parse::<usize>().ok()),
        args.get(3).and_then(|v| v.parse::<usize>().ok()),
        args.get(4).and_then(|v| v.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let server_core = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    let client_core = args.get(6).and_then(|v| v.parse().ok()).unwrap_or(1);
    let (request, response) = match mode.as_str() {
        "read" => (CAPSULE_BYTES, RESPONSE_BYTES + DATA_HEADER_BYTES + io_bytes),
        "write" => (CAPSULE_BYTES + io_bytes, RESPONSE_BYTES),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let server = std::thread::spawn(move || {
        pin(server_core);
        let Ok((mut stream, _)) = listener.accept() else { return };
        let _ = stream.set_nodelay(true);
        let mut inbound = vec![0u8; request];
        let outbound = vec![0u8; response];
        while stream.read_exact(&mut inbound).is_ok() {
            if stream.write_all(&outbound).is_err() {
                break;
            }
        }
    });
    pin(client_core);
    let mut stream = TcpStream::connect(addr).expect("connect loopback");
    stream.set_nodelay(true).expect("nodelay");
    let outbound = vec![0u8; request];
    let mut inbound = vec![0u8; response];
    let mut sent_at = std::collections::VecDeque::with_capacity(depth);
    for _ in 0..depth {
        stream.write_all(&outbound).expect("send");
        sent_at.push_back(Instant::now());
    }
    let (started, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(seconds));
    let (mut completed, mut latency_ns) = (0u64, 0u128);
    while Instant::now() < deadline {
        stream.read_exact(&mut inbound).expect("receive");
        if let Some(at) = sent_at.pop_front() {
            latency_ns += at.elapsed().as_nanos();
        }
        completed += 1;
        stream.write_all(&outbound).expect("send");
        sent_at.push_back(Instant::now());
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(stream);
    let _ = server.join();
    let avg_us = latency_ns as f64 / completed.max(1) as f64 / 1000.0;
    println!(
        "{{\"iops\":{:.1},\"mibps\":{:.1},\"latency_us\":{{\"avg\":{:.2}}}}}",
        completed as f64 / elapsed,
        completed as f64 * io_bytes as f64 / elapsed / 1048576.0,
        avg_us
    );
}

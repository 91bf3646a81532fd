//! The fairness benchmark: one aggressive host at QD128 and eight moderate hosts at
//! QD32, each on its own controller and I/O queue, all doing 4 KiB random reads against
//! one target reactor. Prints each host's IOPS, its share of the total against an even
//! share (every host is always backlogged, so the fair split is equal), and its p99
//! latency.
//!
//! The hosts run in one thread that takes every completion there is from each queue in
//! turn and refills it at once, so the client itself favours nobody: the split is the
//! target's.
//!
//! Usage: fairness ADDR NQN SECONDS [AGGRESSIVE_QD (128)] [MODERATE_HOSTS (8)] [MODERATE_QD (32)]
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peerless_tools::initiator::{Completion, Controller, IoQueue, Options};

const HOSTNQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:fa1e0000-0000-4000-8000-";
const IO_BYTES: usize = 4096;
const BLOCK_BYTES: u64 = 512;
/// Blocks of the namespace the reads land in (the first 512 MiB).
const SPAN_BLOCKS: u64 = 1 << 20;

struct Host {
    _controller: Controller,
    queue: IoQueue,
    depth: usize,
    submitted_at: Vec<Instant>,
    done: u64,
    latency_ns: Histogram<u64>,
    lba_state: u64,
}

impl Host {
    fn next_lba(&mut self) -> u64 {
        // xorshift: cheap and different per host.
        self.lba_state ^= self.lba_state << 13;
        self.lba_state ^= self.lba_state >> 7;
        self.lba_state ^= self.lba_state << 17;
        (self.lba_state % (SPAN_BLOCKS / (IO_BYTES as u64 / BLOCK_BYTES))) * (IO_BYTES as u64 / BLOCK_BYTES)
    }

    fn submit(&mut self, buf: Vec<u8>, now: Instant) -> Result<(), String> {
        let lba = self.next_lba();
        let cid = self
            .queue
            .submit_read(1, lba, (IO_BYTES as u64 / BLOCK_BYTES) as u32, buf)
            .map_err(|err| format!("submit: {err}"))?;
        self.submitted_at[usize::from(cid)] = now;
        Ok(())
    }
}

fn arg<T: std::str::FromStr>(args: &[String], index: usize, default: Option<T>) -> Result<T, String> {
    match args.get(index) {
        Some(text) => text.parse().map_err(|_| format!("argument {} {text:?} is not valid", index + 1)),
        None => default.ok_or_else(|| {
            "usage: fairness ADDR NQN SECONDS [AGGRESSIVE_QD (128)] [MODERATE_HOSTS (8)] [MODERATE_QD (32)]".to_string()
        }),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = arg(&args, 0, None)?;
    let nqn: String = arg(&args, 1, None)?;
    let seconds: u64 = arg(&args, 2, None)?;
    let aggressive_qd: usize = arg(&args, 3, Some(128))?;
    let moderate_hosts: usize = arg(&args, 4, Some(8))?;
    let moderate_qd: usize = arg(&args, 5, Some(32))?;
    let depths: Vec<usize> =
        std::iter::once(aggressive_qd).chain(std::iter::repeat_n(moderate_qd, moderate_hosts)).collect();
    let mut hosts = Vec::new();
    for (index, &depth) in depths.iter().enumerate() {
        let hostnqn = format!("{HOSTNQN_PREFIX}{index:012}");
        let mut controller = Controller::connect(addr, &nqn, &hostnqn, &Options::default())
            .map_err(|err| format!("host {index}: {err}"))?;
        // One entry more than the depth: a full queue keeps one entry empty.
        let queue = controller.io_queue(depth as u16 + 1).map_err(|err| format!("host {index}: I/O queue: {err}"))?;
        hosts.push(Host {
            _controller: controller,
            queue,
            depth,
            submitted_at: vec![Instant::now(); depth.max(1) * 2 + 2],
            done: 0,
            latency_ns: Histogram::new(3).map_err(|err| err.to_string())?,
            lba_state: 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1),
        });
    }
    let started = Instant::now();
    for host in hosts.iter_mut() {
        for _ in 0..host.depth {
            host.submit(vec![0u8; IO_BYTES], started)?;
        }
    }
    let end = started + Duration::from_secs(seconds);
    let mut completions: Vec<Completion> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        for host in hosts.iter_mut() {
            host.queue.poll(usize::MAX, &mut completions).map_err(|err| format!("poll: {err}"))?;
            for completion in completions.drain(..) {
                if !completion.is_ok() {
                    return Err(format!("a read failed: {:?}", completion.status));
                }
                let latency = now.saturating_duration_since(host.submitted_at[usize::from(completion.cid)]);
                let _ = host.latency_ns.record(latency.as_nanos() as u64);
                host.done += 1;
                host.submit(completion.buf, now)?;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = hosts.iter().map(|host| host.done).sum();
    let fair = 1.0 / hosts.len() as f64;
    println!(
        "fairness: 1 host at QD{aggressive_qd} and {moderate_hosts} at QD{moderate_qd}, 4 KiB randread, {seconds} s; \
         total {:.0} IOPS",
        total as f64 / elapsed
    );
    println!(
        "  {:<6} {:>4} {:>10} {:>8} {:>8} {:>12} {:>10}",
        "host", "QD", "IOPS", "share", "fair", "share/fair", "p99 (us)"
    );
    for (index, host) in hosts.iter().enumerate() {
        let share = host.done as f64 / total.max(1) as f64;
        println!(
            "  {:<6} {:>4} {:>10.0} {:>7.2}% {:>7.2}% {:>12.3} {:>10.1}",
            index,
            host.depth,
            host.done as f64 / elapsed,
            share * 100.0,
            fair * 100.0,
            share / fair,
            host.latency_ns.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    Ok(())
}

fn main() {
    if let Err(err) = run() {
        eprintln!("fairness: {err}");
        std::process::exit(1);
    }
}

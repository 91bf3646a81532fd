//! The crowd benchmark: a busy host's QD1 latency and QD32 IOPS with and without N
//! idle connected hosts beside it, as ratios measured in one run.
//!
//! Each idle host connects its admin queue (ICReq, Fabrics Connect, CC.EN = 1 and
//! Identify, as a real host does) and then says nothing; its Keep Alive Timeout is long
//! enough that none is due during the run. The busy host is `peerless-perf` doing 4 KiB
//! random reads. Per round: uncrowded, crowded, crowded, uncrowded (A B B A); figures
//! are medians, ratios are crowded over uncrowded. It also reports how fast the crowd
//! connected and the target's resident memory per idle connection.
//!
//! Usage: crowd ADDR NQN PERF_BINARY TARGET_PID HOSTS[,HOSTS...] SECONDS ROUNDS
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use peerless_tools::initiator::{Controller, Options};

const HOSTNQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:c0ffee00-0000-4000-8000-";
/// Threads connecting the crowd, so the setup rate is the target's, not one client's.
const CONNECTING_THREADS: usize = 4;
/// After connecting or closing the crowd: time for the target to settle (its sweep gives
/// back the buffers of a connection idle for ten 100 ms intervals).
const SETTLE: Duration = Duration::from_millis(1_600);

struct Args {
    addr: SocketAddr,
    nqn: String,
    perf: String,
    target_pid: u32,
    rpc_socket: String,
    hosts: Vec<usize>,
    seconds: u32,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        return Err("usage: crowd ADDR NQN PERF_BINARY TARGET_PID RPC_SOCKET HOSTS[,HOSTS...] SECONDS ROUNDS".into());
    }
    let number = |what: &str, text: &str| text.parse::<usize>().map_err(|err| format!("{what} {text:?}: {err}"));
    Ok(Args {
        addr: args[0].parse().map_err(|err| format!("ADDR {:?}: {err}", args[0]))?,
        nqn: args[1].clone(),
        perf: args[2].clone(),
        target_pid: number("TARGET_PID", &args[3])? as u32,
        rpc_socket: args[4].clone(),
        hosts: args[5].split(',').map(|n| number("HOSTS", n)).collect::<Result<_, _>>()?,
        seconds: number("SECONDS", &args[6])? as u32,
        rounds: number("ROUNDS", &args[7])?.max(1),
    })
}

/// One busy-host run: (IOPS, average latency us, p99 latency us).
fn perf(args: &Args, depth: u32) -> Result<(f64, f64, f64), String> {
    let trid =
        format!("trtype:tcp adrfam:IPv4 traddr:{} trsvcid:{} subnqn:{}", args.addr.ip(), args.addr.port(), args.nqn);
    let out = Command::new(&args.perf)
        .args(["-r", &trid, "-q", &depth.to_string(), "-o", "4096", "-w", "randread"])
        .args(["-t", &args.seconds.to_string(), "-c", "0x2", "--json"])
        .output()
        .map_err(|err| format!("cannot run {}: {err}", args.perf))?;
    if !out.status.success() {
        return Err(format!("peerless-perf failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|err| format!("peerless-perf's JSON: {err}"))?;
    let field = |path: &[&str]| {
        path.iter().fold(&summary, |value, key| &value[*key]).as_f64().ok_or(format!("no {path:?} in {summary}"))
    };
    Ok((field(&["iops"])?, field(&["latency_us", "avg"])?, field(&["latency_us", "p99"])?))
}

/// Resident memory of a process in bytes (/proc/PID/status VmRSS).
fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|err| format!("pid {pid}: {err}"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).ok_or("no VmRSS")?;
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).ok_or("bad VmRSS")?;
    Ok(kib * 1024)
}

/// The target's heap in bytes (`mem_get_stats` `heap_bytes`, from its counting allocator):
/// exact, where RSS keeps what malloc holds for reuse.
fn heap_bytes(args: &Args) -> Result<u64, String> {
    use peerless_tools::rpc_client::{Address, ClientOptions, RpcClient};
    let address = Address::Unix(args.rpc_socket.clone().into());
    let mut client = RpcClient::connect(&address, ClientOptions::default()).map_err(|err| err.to_string())?;
    let stats = client.call("mem_get_stats", None).map_err(|err| err.to_string())?;
    stats["heap_bytes"].as_u64().ok_or_else(|| format!("mem_get_stats has no heap_bytes: {stats}"))
}

/// Connects `count` idle hosts from a few threads; returns them and the time it took.
fn connect_crowd(args: &Args, count: usize) -> Result<(Vec<Controller>, Duration), String> {
    let options = Options { kato_ms: 600_000, connect_timeout: Duration::from_secs(30), ..Options::default() };
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTING_THREADS)
        .map(|worker| {
            let (addr, nqn, options) = (args.addr, args.nqn.clone(), options.clone());
            thread::spawn(move || {
                (worker..count)
                    .step_by(CONNECTING_THREADS)
                    .map(|host| {
                        let hostnqn = format!("{HOSTNQN_PREFIX}{host:012}");
                        Controller::connect(addr, &nqn, &hostnqn, &options)
                            .map_err(|err| format!("idle host {host}: {err}"))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
        })
        .collect();
    let mut crowd = Vec::with_capacity(count);
    for worker in workers {
        crowd.extend(worker.join().map_err(|_| "a connecting thread panicked".to_string())??);
    }
    Ok((crowd, started.elapsed()))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[derive(Default)]
struct Side {
    iops: Vec<f64>,
    qd1_us: Vec<f64>,
    qd1_p99_us: Vec<f64>,
}

impl Side {
    fn measure(&mut self, args: &Args) -> Result<(), String> {
        self.iops.push(perf(args, 32)?.0);
        let (_, avg, p99) = perf(args, 1)?;
        self.qd1_us.push(avg);
        self.qd1_p99_us.push(p99);
        Ok(())
    }
}

fn run(args: &Args, hosts: usize) -> Result<(), String> {
    let (mut alone, mut crowded) = (Side::default(), Side::default());
    let (mut rates, mut heap_per_conn, mut rss_per_conn) = (Vec::new(), Vec::new(), None);
    for _ in 0..args.rounds {
        alone.measure(args)?;
        let (rss_before, heap_before) = (rss_bytes(args.target_pid)?, heap_bytes(args)?);
        let (crowd, took) = connect_crowd(args, hosts)?;
        thread::sleep(SETTLE);
        let (rss_after, heap_after) = (rss_bytes(args.target_pid)?, heap_bytes(args)?);
        rates.push(hosts as f64 / took.as_secs_f64());
        heap_per_conn.push(heap_after.saturating_sub(heap_before) as f64 / hosts as f64);
        // Only the first crowd grows RSS: later ones reuse what malloc kept of it.
        rss_per_conn.get_or_insert(rss_after.saturating_sub(rss_before) as f64 / hosts as f64);
        crowded.measure(args)?;
        crowded.measure(args)?;
        drop(crowd);
        thread::sleep(SETTLE);
        alone.measure(args)?;
    }
    // Every run's figures, in the order they ran, so a bimodal machine shows itself.
    let runs = |values: &[f64]| values.iter().map(|value| format!("{value:.0}")).collect::<Vec<_>>().join(" ");
    eprintln!("  runs, QD32 IOPS: uncrowded {} | crowded {}", runs(&alone.iops), runs(&crowded.iops));
    let runs = |values: &[f64]| values.iter().map(|value| format!("{value:.1}")).collect::<Vec<_>>().join(" ");
    eprintln!("  runs, QD1 avg us: uncrowded {} | crowded {}", runs(&alone.qd1_us), runs(&crowded.qd1_us));
    let (iops_a, iops_b) = (median(&mut alone.iops), median(&mut crowded.iops));
    let (lat_a, lat_b) = (median(&mut alone.qd1_us), median(&mut crowded.qd1_us));
    let (p99_a, p99_b) = (median(&mut alone.qd1_p99_us), median(&mut crowded.qd1_p99_us));
    println!("{hosts} idle hosts, {} rounds A B B A of {} s runs:", args.rounds, args.seconds);
    println!("  {:<22} {:>12} {:>12} {:>8}", "", "uncrowded", "crowded", "ratio");
    println!("  {:<22} {:>12.0} {:>12.0} {:>8.3}", "QD32 4K randread IOPS", iops_a, iops_b, iops_b / iops_a);
    println!("  {:<22} {:>12.2} {:>12.2} {:>8.3}", "QD1 latency avg (us)", lat_a, lat_b, lat_b / lat_a);
    println!("  {:<22} {:>12.2} {:>12.2} {:>8.3}", "QD1 latency p99 (us)", p99_a, p99_b, p99_b / p99_a);
    println!(
        "  setup: {:.0} hosts/s (ICReq + Connect + enable + Identify, {CONNECTING_THREADS} threads)",
        median(&mut rates)
    );
    println!(
        "  target memory per idle connection: {:.0} bytes of heap (median), {:.0} bytes of RSS growth (first crowd)",
        median(&mut heap_per_conn),
        rss_per_conn.unwrap_or(0.0)
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    // Every idle host is a socket here too.
    let wanted = *args.hosts.iter().max().unwrap_or(&0) as u64 + 256;
    if let Ok((soft, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        if soft < wanted
            && nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, wanted, hard).is_err()
        {
            eprintln!("crowd: need {wanted} open files, the hard limit is {hard}");
            std::process::exit(1);
        }
    }
    for &hosts in &args.hosts {
        if let Err(err) = run(&args, hosts) {
            eprintln!("crowd: {hosts} hosts: {err}");
            std::process::exit(1);
        }
    }
}

//! `peerless-perf`: spdk_nvme_perf's workloads over the initiator library. The main thread
//! connects, creates every queue, starts one pinned thread per core (each with its own
//! queues: shared nothing), prints a line per second, sends keep-alives, and summarizes.
//! trtype PCIe runs the same workloads in process instead, on reactors and the bdev
//! layer's nvme driver (`pcie`, `inproc`, `bdev_job`).

pub mod bdev_job;
pub mod config;
pub mod identify;
pub mod inproc;
pub mod pace;
pub mod pattern;
pub mod pcie;
pub mod report;
pub mod trid;
pub mod worker;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::initiator::{self, discover, subtype, Controller, Options};

pub use config::{parse_core_mask, Access, PerfConfig, Workload};
pub use report::{LatencyUs, Summary};
pub use trid::{Endpoint, PcieAddress, TransportId};

use worker::{Job, Namespace, Plan, Report};

/// How long the main thread waits for a tick before doing its own chores (keep-alive).
const MAIN_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Initiator(#[from] initiator::Error),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    #[error("core {core}: {message}")]
    Worker { core: usize, message: String },
}

/// Finds the subsystem to use: the one named, or the first NVM subsystem discovery lists.
pub fn resolve_subnqn(trid: &TransportId, addr: SocketAddr, hostnqn: &str, options: &Options) -> Result<String, Error> {
    if let Some(subnqn) = &trid.subnqn {
        return Ok(subnqn.clone());
    }
    let log = discover(addr, hostnqn, options)?;
    log.entries
        .into_iter()
        .find(|e| e.subtype == subtype::NVME)
        .map(|e| e.subnqn)
        .ok_or_else(|| Error::Config(format!("discovery at {addr} lists no NVM subsystem")))
}

fn pin_to(core: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(core).map_err(|e| format!("core {core}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pinning to core {core}: {e}"))
}

/// Runs the configured workload, writing progress and the summary table to `out`.
pub fn run(config: &PerfConfig, out: &mut dyn Write) -> Result<Summary, Error> {
    config.check().map_err(Error::Config)?;
    let trid = match &config.trid {
        Endpoint::Fabric(trid) => trid,
        Endpoint::Pcie(pcie) => return pcie::run(config, pcie, out),
    };
    let addr = trid.socket_addr().map_err(Error::Config)?;
    let options = Options {
        trtype: trid.trtype,
        digests: config.digests,
        kato_ms: config.kato_ms,
        auth: config.auth.clone(),
        tls: config.tls.clone(),
        ..Options::default()
    };
    let subnqn = resolve_subnqn(trid, addr, &config.hostnqn, &options)?;
    writeln!(out, "Initializing NVMe Controllers")?;
    let mut ctrl = Controller::connect(addr, &subnqn, &config.hostnqn, &options)?;
    writeln!(out, "Attached to NVMe over Fabrics controller at {addr}: {subnqn}")?;
    let nsids = match trid.nsid {
        Some(nsid) => vec![nsid],
        None => ctrl.active_namespaces()?,
    };
    if nsids.is_empty() {
        return Err(Error::Config(format!("{subnqn} has no active namespace")));
    }
    let mut namespaces = Vec::new();
    for nsid in nsids {
        let info = ctrl.identify_namespace(nsid)?;
        namespaces.push(Namespace { nsid, block_size: info.block_size, blocks: info.nsze });
    }
    if config.io_bytes > ctrl.max_transfer_bytes() {
        let limit = ctrl.max_transfer_bytes();
        return Err(Error::Config(format!(
            "-o {} exceeds the controller's {limit}-byte transfer limit",
            config.io_bytes
        )));
    }
    let per_core = namespaces.len() * usize::from(config.queues_per_ns);
    let wanted = u16::try_from(config.cores.len() * per_core).map_err(|_| Error::Config("too many queues".into()))?;
    let (granted, _) = ctrl.set_number_of_queues(wanted)?;
    if granted < wanted {
        return Err(Error::Config(format!("the controller granted {granted} of {wanted} I/O queues")));
    }
    let device = format!("{} (addr:{} subnqn:{subnqn})", trid.trtype.name(), addr.ip());
    let jobs = build_jobs(config, &mut ctrl, &namespaces, &device, out)?;
    writeln!(out, "Initialization complete. Launching workers.")?;
    let start = Instant::now();
    let plan = Plan {
        io_bytes: config.io_bytes,
        workload: config.workload,
        verify: config.verify,
        seed: config.seed,
        start,
        end: start + config.duration,
    };
    let rates = match config.rate_iops {
        Some(rate) => {
            pace::share_per_core(rate, config.cores.len()).map_err(Error::Config)?.into_iter().map(Some).collect()
        }
        None => vec![None; config.cores.len()],
    };
    let (tick_tx, tick_rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (index, ((core, core_jobs), rate)) in config.cores.iter().copied().zip(jobs).zip(rates).enumerate() {
        let (plan, ticks) = (plan.clone(), tick_tx.clone());
        let rng_seed = config.seed ^ ((index as u64 + 1) << 32);
        let pacer = rate.map(|rate| pace::Pacer::new(start, rate));
        let handle = thread::Builder::new()
            .name(format!("perf-core{core}"))
            .spawn(move || match pin_to(core) {
                Ok(()) => worker::run(core, core_jobs, plan, ticks, rng_seed, pacer),
                Err(message) => {
                    Report { rows: Vec::new(), elapsed: Duration::ZERO, errors: 0, mismatches: 0, fatal: Some(message) }
                }
            })
            .map_err(|e| Error::Config(format!("spawning the core {core} thread: {e}")))?;
        handles.push((core, handle));
    }
    drop(tick_tx);
    let mut live = report::Live::new(handles.len());
    let mut chores_error = None;
    loop {
        match tick_rx.recv_timeout(MAIN_TICK) {
            Ok(tick) => live.add(tick, out)?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // The admin queue lives on this thread; workers never touch it.
        if chores_error.is_none() {
            chores_error = ctrl.keep_alive_if_due().err();
        }
    }
    let mut rows = Vec::new();
    let (mut errors, mut mismatches, mut elapsed) = (0, 0, Duration::ZERO);
    let mut fatal = None;
    for (core, handle) in handles {
        let report = handle.join().map_err(|_| Error::Worker { core, message: "panicked".into() })?;
        errors += report.errors;
        mismatches += report.mismatches;
        elapsed = elapsed.max(report.elapsed);
        rows.extend(report.rows);
        if let Some(message) = report.fatal {
            fatal.get_or_insert(Error::Worker { core, message });
        }
    }
    if let Some(error) = fatal {
        return Err(error);
    }
    if let Some(error) = chores_error {
        return Err(Error::Initiator(error));
    }
    finish(config, &rows, &device, elapsed, errors, mismatches, out)
}

/// The summary table, `-L` percentiles and `--plot`, for every transport alike.
fn finish(
    config: &PerfConfig,
    rows: &[worker::Row],
    device: &str,
    elapsed: Duration,
    errors: u64,
    mismatches: u64,
    out: &mut dyn Write,
) -> Result<Summary, Error> {
    let (summary, hist) = report::summarize(rows, elapsed, errors, mismatches);
    report::table(rows, device, elapsed, &summary, out)?;
    if config.latency_detail > 0 {
        report::latency_detail(&hist, config.latency_detail, out)?;
    }
    if let Some(path) = &config.plot {
        let title = format!(
            "{} x {} B, QD {} - latency percentiles",
            workload_name(config),
            config.io_bytes,
            config.queue_depth
        );
        std::fs::write(path, report::plot_svg(&hist, &title))?;
        writeln!(out, "Latency plot written to {}", path.display())?;
    }
    Ok(summary)
}

fn workload_name(config: &PerfConfig) -> String {
    let prefix = if config.workload.access == Access::Random { "rand" } else { "" };
    match config.workload.read_percent {
        100 => format!("{prefix}read"),
        0 => format!("{prefix}write"),
        p => format!("{prefix}rw {p}% reads"),
    }
}

/// Connects every queue: per core, per namespace, `-P` queues sharing `-q`.
fn build_jobs(
    config: &PerfConfig,
    ctrl: &mut Controller,
    namespaces: &[Namespace],
    device: &str,
    out: &mut dyn Write,
) -> Result<Vec<Vec<Job>>, Error> {
    let queues = usize::from(config.queues_per_ns);
    let max_depth = ctrl.max_io_queue_entries() - 1;
    let mut lanes_used = vec![0u64; namespaces.len()];
    let mut all = Vec::new();
    for core in &config.cores {
        let mut jobs = Vec::new();
        for (ns_index, ns) in namespaces.iter().enumerate() {
            writeln!(out, "Associating {device} NSID {} with lcore {core}", ns.nsid)?;
            for q in 0..queues {
                // Spread -q over the queues; the first ones take the remainder.
                let share = usize::from(config.queue_depth) / queues
                    + usize::from(q < usize::from(config.queue_depth) % queues);
                let mut depth = share as u16;
                if depth > max_depth {
                    writeln!(out, "warning: depth {depth} exceeds the controller's queue size; using {max_depth}")?;
                    depth = max_depth;
                }
                let queue = ctrl.io_queue(depth + 1)?;
                jobs.push(Job {
                    queue,
                    ns: *ns,
                    ns_index,
                    depth,
                    lane_base: lanes_used[ns_index],
                    lanes_total: 0,
                    seq_start: 0,
                });
                lanes_used[ns_index] += u64::from(depth);
            }
        }
        all.push(jobs);
    }
    // Now that every lane is known: verify regions and staggered sequential starts.
    for job in all.iter_mut().flatten() {
        job.lanes_total = lanes_used[job.ns_index];
        let units = job.ns.blocks / (config.io_bytes as u64 / u64::from(job.ns.block_size.max(1))).max(1);
        job.seq_start = units * job.lane_base / job.lanes_total.max(1);
    }
    Ok(all)
}

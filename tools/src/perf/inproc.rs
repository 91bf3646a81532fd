//! The in-process framework under trtype PCIe: reactors on the run's cores and the bdev
//! layer (as peerless-bdevperf starts them), methods called through the RPC registry
//! as a config file's entries are, and the perf workload run as one job per bdev per core.

use std::io::Write;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use peerless_bdev::BdevManager;
use peerless_core::mem::{IoBufPool, PoolConfig, DMA_ALIGN_BYTES, HUGEPAGE_BYTES};
use peerless_core::reactor::{App, AppHandle, AppOptions, CoreMask};
use peerless_core::rpc::{Registry, Responder};
use serde_json::Value;

use super::bdev_job::{self, Event, JobSpec};
use super::config::PerfConfig;
use super::worker::{Plan, Report, DRAIN_TIMEOUT};
use super::{pace, report, Error, Summary};

/// How long framework start-up may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Jobs get this long past the drain timeout to report before the run is declared stuck.
const REPORT_SLACK: Duration = Duration::from_secs(5);

/// A running app with the bdev layer and every bdev module's methods.
pub struct Session {
    app: Option<App>,
    handle: AppHandle,
    registry: Registry,
    bdevs: BdevManager,
}

impl Session {
    /// Reactors on `cores`, the bdev subsystem initialised, ready for runtime methods.
    pub fn start(name: &str, cores: &[usize]) -> Result<Session, Error> {
        let mask = cores.iter().try_fold(0u128, |mask, &core| {
            u32::try_from(core).ok().filter(|core| *core < 128).map(|core| mask | 1u128 << core)
        });
        let mask = mask.ok_or_else(|| Error::Config(format!("cores {cores:?}: beyond the reactor mask")))?;
        let cpumask = CoreMask::parse(&format!("{mask:#x}")).map_err(|e| Error::Config(format!("-c: {e}")))?;
        let app = App::start(AppOptions { name: name.into(), cpumask, ..AppOptions::default() })
            .map_err(|e| Error::Config(format!("starting the reactors: {e}")))?;
        let handle = app.handle();
        let (bdevs, registry) = peerless_bdev::serve_in_app(&handle);
        let session = Session { app: Some(app), handle, registry, bdevs };
        let (tx, rx) = mpsc::channel();
        session.handle.start_init(move |_, result| {
            let _ = tx.send(result);
        });
        match rx.recv_timeout(INIT_TIMEOUT) {
            Ok(Ok(())) => Ok(session),
            Ok(Err(why)) => Err(Error::Config(format!("framework start-up: {why}"))),
            Err(_) => Err(Error::Config(format!("framework start-up took over {INIT_TIMEOUT:?}"))),
        }
    }

    /// Calls a method as `peerless-rpc` would; the error is the method's own message.
    pub fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
        let (tx, rx) = mpsc::channel();
        let responder = Responder::new(method, move |reply| {
            let _ = tx.send(reply);
        });
        self.registry.call(&self.handle, method, Some(params), responder);
        match rx.recv_timeout(timeout) {
            Ok(reply) => reply.map_err(|e| e.message),
            Err(_) => Err(format!("{method} did not answer within {timeout:?}")),
        }
    }

    pub fn bdevs(&self) -> &BdevManager {
        &self.bdevs
    }

    /// Stops the reactors and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(app) = self.app.take() {
            self.handle.stop();
            app.wait();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A bdev the run drives and the namespace ID its rows are labelled with.
#[derive(Clone, Debug)]
pub struct Target {
    pub bdev: String,
    pub nsid: u32,
}

/// Runs `config`'s workload against `targets`, one job per target per core, printing
/// the live line and the same summary as the fabric transports.
pub fn run_on_bdevs(
    session: &Session,
    config: &PerfConfig,
    targets: &[Target],
    device: &str,
    out: &mut dyn Write,
) -> Result<Summary, Error> {
    let writable = config.verify || config.workload.read_percent < 100;
    let mut descs = Vec::new();
    for target in targets {
        let desc = session.bdevs.open(&target.bdev, writable, None, None).map_err(|e| Error::Config(e.to_string()))?;
        descs.push(Arc::new(desc));
    }
    let jobs = config.cores.len() * targets.len();
    let rates = match config.rate_iops {
        Some(rate) => pace::share_per_core(rate, jobs).map_err(Error::Config)?.into_iter().map(Some).collect(),
        None => vec![None; jobs],
    };
    let pool = run_pool(jobs * usize::from(config.queue_depth), config.io_bytes)?;
    let start = Instant::now();
    let plan = Plan {
        io_bytes: config.io_bytes,
        workload: config.workload,
        verify: config.verify,
        seed: config.seed,
        start,
        end: start + config.duration,
    };
    let (tx, rx) = mpsc::channel();
    let mut rates = rates.into_iter();
    let depth = u64::from(config.queue_depth);
    let lanes_total = config.cores.len() as u64 * depth;
    for (core_index, &core) in config.cores.iter().enumerate() {
        let thread = session
            .handle
            .spawn_thread(&format!("perf_core{core}"), Some(core as u32))
            .map_err(|e| Error::Config(format!("core {core}: {e}")))?;
        for (ns_index, (target, desc)) in targets.iter().zip(&descs).enumerate() {
            writeln!(out, "Associating {device} NSID {} with lcore {core}", target.nsid)?;
            let spec = JobSpec {
                core,
                nsid: target.nsid,
                depth: config.queue_depth,
                lane_base: core_index as u64 * depth,
                lanes_total,
                rng_seed: config.seed ^ (((core_index * targets.len() + ns_index) as u64 + 1) << 32),
                rate_iops: rates.next().flatten(),
            };
            let (desc, plan, tx) = (desc.clone(), plan.clone(), tx.clone());
            thread
                .send_blocking(move |ctx| bdev_job::start(ctx, desc, pool, spec, plan, tx))
                .map_err(|e| Error::Config(format!("core {core}: {e}")))?;
        }
    }
    drop(tx);
    writeln!(out, "Initialization complete. Launching workers.")?;
    let mut live = report::Live::new(jobs);
    let mut reports: Vec<Report> = Vec::new();
    let deadline = plan.end + DRAIN_TIMEOUT + REPORT_SLACK;
    while reports.len() < jobs {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Tick(tick)) => live.add(tick, out)?,
            Ok(Event::Done(report)) => reports.push(report),
            Err(_) => {
                let missing = jobs - reports.len();
                return Err(Error::Config(format!("{missing} of {jobs} jobs did not finish their I/O")));
            }
        }
    }
    let mut rows = Vec::new();
    let (mut errors, mut mismatches, mut elapsed) = (0, 0, Duration::ZERO);
    for report in reports {
        if let Some(message) = report.fatal {
            let core = report.rows.first().map_or(0, |row| row.core);
            return Err(Error::Worker { core, message });
        }
        errors += report.errors;
        mismatches += report.mismatches;
        elapsed = elapsed.max(report.elapsed);
        rows.extend(report.rows);
    }
    rows.sort_by_key(|row| (row.core, row.nsid));
    super::finish(config, &rows, device, elapsed, errors, mismatches, out)
}

/// The run's buffers: one per I/O slot, all carved from one piece of DMA memory of at
/// least a hugepage, so it is hugepage-backed wherever the system has them (the uio
/// route needs memory that stays put). The process ends with the run; the pool lives
/// that long.
fn run_pool(slots: usize, io_bytes: usize) -> Result<&'static IoBufPool, Error> {
    let size = io_bytes.div_ceil(DMA_ALIGN_BYTES) * DMA_ALIGN_BYTES;
    let count = slots.max(HUGEPAGE_BYTES.div_ceil(size));
    let config = PoolConfig {
        small_count: 1,
        large_count: count,
        small_cache: 0,
        large_cache: 0,
        small_bytes: DMA_ALIGN_BYTES,
        large_bytes: size,
    };
    let pool = IoBufPool::new(config).map_err(|e| Error::Config(format!("DMA buffers for {slots} I/Os: {e}")))?;
    Ok(Box::leak(Box::new(pool)))
}

/// Parses a method's answer listing bdev names.
pub fn names_of(reply: &Value) -> Vec<String> {
    reply
        .as_array()
        .map(|names| names.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

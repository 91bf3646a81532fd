//! peerless-bdevperf: SPDK bdevperf's shape on the in-process framework and bdev layer.
//! Every bdev of the JSON config that nothing has claimed gets one job per reactor core;
//! a line per second, a table at the end, and `--json` for scripts.

pub mod job;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use peerless_core::reactor::{App, AppOptions, CoreMask};

use crate::perf::config::Workload;
use crate::perf::report::{LatencyUs, Summary};
use crate::perf::worker::new_histogram;
use job::{JobResult, JobSpec, Progress};

const MIB: f64 = 1024.0 * 1024.0;
/// How long stopping jobs may take to drain their I/O before the run is declared stuck.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    pub config: PathBuf,
    pub depth: usize,
    pub io_bytes: usize,
    pub workload: String,
    pub read_percent: Option<u8>,
    pub seconds: u64,
    pub cpumask: String,
    pub json: bool,
    pub track_latency: bool,
    pub bdevs: Vec<String>,
}

pub fn run(options: Options, out: &mut dyn Write, err: &mut dyn Write) -> Result<Summary, String> {
    let verify = options.workload == "verify";
    let workload = Workload::parse(if verify { "write" } else { &options.workload }, options.read_percent)?;
    if options.depth == 0 || options.io_bytes == 0 || options.seconds == 0 {
        return Err("-q, -o and -t must be greater than zero".into());
    }
    let cpumask = CoreMask::parse(&options.cpumask).map_err(|e| format!("-m: {e}"))?;
    let app = App::start(AppOptions { name: "bdevperf".into(), cpumask, ..AppOptions::default() })
        .map_err(|e| e.to_string())?;
    let handle = app.handle();
    let (bdevs, registry) = peerless_bdev::serve_in_app(&handle);
    let outcome = (|| {
        peerless_core::config::load(&options.config, &registry, &handle, true).map_err(|e| e.to_string())?;
        let names: Vec<String> = if options.bdevs.is_empty() {
            bdevs.list().iter().map(|b| b.info().name.clone()).filter(|name| bdevs.claim_of(name).is_none()).collect()
        } else {
            options.bdevs.clone()
        };
        if names.is_empty() {
            return Err(format!("{} creates no bdev to run on", options.config.display()));
        }
        let mut descs = Vec::new();
        for name in &names {
            let writable = verify || workload.read_percent < 100;
            descs.push(Arc::new(bdevs.open(name, writable, None, None).map_err(|e| e.to_string())?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut progress = Vec::new();
        for core in cpumask.cores() {
            let thread = handle.spawn_thread(&format!("bdevperf_{core}"), Some(core)).map_err(|e| e.to_string())?;
            for (index, desc) in descs.iter().enumerate() {
                let spec = JobSpec {
                    workload,
                    verify,
                    io_bytes: options.io_bytes,
                    depth: options.depth,
                    seed: 0x5eed ^ (u64::from(core) << 32) ^ index as u64,
                    track_latency: options.track_latency,
                };
                let counters = Arc::new(Progress::default());
                progress.push(counters.clone());
                let (desc, stop, tx) = (desc.clone(), stop.clone(), tx.clone());
                thread
                    .send_blocking(move |ctx| job::start(ctx, desc, spec, stop, counters, tx))
                    .map_err(|e| e.to_string())?;
            }
        }
        drop(tx);
        let jobs = progress.len();
        let started = Instant::now();
        let mut last = (0u64, 0u64);
        for second in 1..=options.seconds {
            std::thread::sleep((started + Duration::from_secs(second)).saturating_duration_since(Instant::now()));
            let ios: u64 = progress.iter().map(|p| p.ios.load(Ordering::Relaxed)).sum();
            let bytes: u64 = progress.iter().map(|p| p.bytes.load(Ordering::Relaxed)).sum();
            let _ = writeln!(
                err,
                "[{second:>4} s] IOPS: {:>12}  MiB/s: {:>10.2}",
                ios - last.0,
                (bytes - last.1) as f64 / MIB
            );
            last = (ios, bytes);
        }
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let mut results = Vec::new();
        for _ in 0..jobs {
            results.push(rx.recv_timeout(DRAIN_TIMEOUT).map_err(|_| "a job did not drain its I/O".to_string())?);
        }
        Ok((results, elapsed, options.depth))
    })();
    handle.stop();
    app.wait();
    let (results, elapsed, depth) = outcome?;
    let summary = summarize(&results, elapsed, depth, options.track_latency);
    print_table(&results, elapsed, &summary, out).map_err(|e| e.to_string())?;
    Ok(summary)
}

fn summarize(results: &[JobResult], elapsed: Duration, depth: usize, tracked: bool) -> Summary {
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let mut hist: Histogram<u64> = new_histogram();
    let (mut ios, mut bytes, mut errors, mut mismatches) = (0, 0, 0, 0);
    for result in results {
        let _ = hist.add(&result.latency_ns);
        ios += result.ios;
        bytes += result.bytes;
        errors += result.errors;
        mismatches += result.mismatches;
    }
    let iops = ios as f64 / secs;
    let latency_us = if tracked {
        LatencyUs::of(&hist)
    } else {
        // Little's law per job: depth I/O always in flight.
        let per_job_iops = iops / results.len().max(1) as f64;
        LatencyUs { avg: depth as f64 / per_job_iops.max(f64::EPSILON) * 1e6, ..LatencyUs::default() }
    };
    Summary { iops, mibps: bytes as f64 / MIB / secs, latency_us, ios, errors, mismatches }
}

fn print_table(results: &[JobResult], elapsed: Duration, total: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    writeln!(
        out,
        "{:<24} {:>6} {:>14} {:>12} {:>10} {:>10}",
        "Job (bdev)", "core", "IOPS", "MiB/s", "errors", "mismatch"
    )?;
    for result in results {
        writeln!(
            out,
            "{:<24} {:>6} {:>14.2} {:>12.2} {:>10} {:>10}",
            result.bdev,
            result.core,
            result.ios as f64 / secs,
            result.bytes as f64 / MIB / secs,
            result.errors,
            result.mismatches
        )?;
    }
    writeln!(
        out,
        "{:<24} {:>6} {:>14.2} {:>12.2} {:>10} {:>10}",
        "Total", "", total.iops, total.mibps, total.errors, total.mismatches
    )?;
    let cores = results.iter().map(|r| r.core).collect::<std::collections::BTreeSet<_>>().len().max(1);
    writeln!(
        out,
        "per-I/O cost: {:.1} ns per core; average latency {:.2} us",
        1e9 * cores as f64 / total.iops.max(1.0),
        total.latency_us.avg
    )
}

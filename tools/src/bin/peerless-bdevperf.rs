//! peerless-bdevperf: SPDK bdevperf's options over Peerless's in-process bdev layer.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peerless_tools::bdevperf::{run, Options};

#[derive(Parser, Debug)]
#[command(name = "peerless-bdevperf", version, about = "Benchmark bdevs in process, as SPDK's bdevperf does")]
struct Args {
    /// JSON config (SPDK's format) that creates the bdevs.
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// I/O depth per job.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 128)]
    depth: usize,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_bytes: usize,
    /// read, write, randread, randwrite, rw, randrw or verify.
    #[arg(short = 'w', long = "workload", default_value = "randread")]
    workload: String,
    /// Read percentage for rw and randrw.
    #[arg(short = 'M', long = "rwmixread")]
    read_percent: Option<u8>,
    /// Seconds to run.
    #[arg(short = 't', long = "time", default_value_t = 5)]
    seconds: u64,
    /// Reactor core mask; one job per bdev per core.
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// Only these bdevs (repeatable); default: every bdev nothing has claimed.
    #[arg(short = 'b', long = "bdev")]
    bdevs: Vec<String>,
    /// Time every I/O for percentiles (costs two clock reads per I/O).
    #[arg(short = 'L', long = "latency")]
    track_latency: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        config: args.config,
        depth: args.depth,
        io_bytes: args.io_bytes,
        workload: args.workload,
        read_percent: args.read_percent,
        seconds: args.seconds,
        cpumask: args.cpumask,
        json: args.json,
        track_latency: args.track_latency,
        bdevs: args.bdevs,
    };
    let json = options.json;
    let mut table = Vec::new();
    let result = run(options, &mut table, &mut std::io::stderr());
    match result {
        Ok(summary) => {
            if json {
                eprint!("{}", String::from_utf8_lossy(&table));
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print!("{}", String::from_utf8_lossy(&table));
            }
            if summary.errors > 0 || summary.mismatches > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("peerless-bdevperf: {err}");
            ExitCode::FAILURE
        }
    }
}

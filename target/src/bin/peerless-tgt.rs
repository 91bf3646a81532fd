//! peerless-tgt: the NVMe-oF target application, flag-compatible with SPDK's `nvmf_tgt`
//! where the two overlap.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peerless_core::mem::alloc_count::CountingAllocator;
use peerless_core::mem::env::{EnvOptions, IovaMode, MemEnv};
use peerless_target::app::{run, ModeFlags, TargetError, TargetOptions};

/// Counts heap allocations per thread (one thread-local increment each), so each
/// reactor's count in `framework_get_reactors` shows whether I/O allocates.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[derive(Parser, Debug)]
#[command(name = "peerless-tgt", version, about = "Peerless NVMe-over-Fabrics target")]
struct Args {
    /// Core mask for reactors: a hex mask (0x3) or a core list ([0,2-3]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON config file (SPDK's format) to load at start-up.
    #[arg(short = 'c', long = "json")]
    json: Option<PathBuf>,
    /// Unix socket for JSON-RPC.
    #[arg(short = 'r', long = "rpc-socket", default_value = peerless_core::rpc::DEFAULT_RPC_SOCKET)]
    rpc_socket: PathBuf,
    /// Wait for the framework_start_init RPC before initialising subsystems.
    #[arg(long = "wait-for-rpc")]
    wait_for_rpc: bool,
    /// Enable debug logs of a component (repeatable): app, reactor, thread, mem, accel,
    /// rpc, bdev, nvmf, nvmf_tcp, p2p, or all.
    #[arg(short = 'L', long = "logflag")]
    logflag: Vec<String>,
    /// Interrupt mode: a reactor sleeps in epoll as soon as it finds nothing to do. No
    /// CPU when idle; each request that finds it asleep pays a wake-up.
    #[arg(long = "interrupt-mode", conflicts_with = "poll_mode")]
    interrupt_mode: bool,
    /// Poll mode (SPDK's default): reactors busy-poll without pause. Lowest latency; one
    /// whole core per reactor, even when idle.
    #[arg(long = "poll-mode")]
    poll_mode: bool,
    /// Adaptive mode (the default, without --poll-mode or --interrupt-mode): the longest
    /// a reactor keeps polling after its last work before it sleeps. The window follows
    /// the gaps between requests within [--poll-window-min-us, this]; 0 is interrupt mode.
    #[arg(long = "poll-window-us", value_name = "US")]
    poll_window_us: Option<u32>,
    /// Adaptive mode: the shortest poll window after work (default 5, at most the cap).
    #[arg(long = "poll-window-min-us", value_name = "US")]
    poll_window_min_us: Option<u32>,
    /// Where DMA memory comes from: plain (anonymous mappings) or dpdk (the DPDK EAL
    /// heap; needs a build with --features peerless-core/dpdk).
    #[arg(long = "env", default_value = "plain", value_name = "plain|dpdk")]
    env: MemEnv,
    /// DPDK memory size in MiB (--env dpdk).
    #[arg(short = 's', long = "mem-size", value_name = "MB")]
    mem_size_mb: Option<u32>,
    /// DPDK without hugepages: 4 KiB anonymous pages, IOVA as VA (--env dpdk).
    #[arg(long = "no-huge")]
    no_huge: bool,
    /// DPDK IOVA mode: pa or va (--env dpdk; DPDK picks when absent).
    #[arg(long = "iova-mode", value_name = "pa|va")]
    iova_mode: Option<IovaMode>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off unless given; binds
    /// only this address, e.g. 127.0.0.1:9100 or [::1]:9100).
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mem = EnvOptions {
        env: args.env,
        mem_size_mb: args.mem_size_mb,
        no_huge: args.no_huge,
        iova_mode: args.iova_mode,
        ..EnvOptions::default()
    };
    let mut options = match TargetOptions::from_flags(
        &args.cpumask,
        args.json,
        args.rpc_socket,
        args.wait_for_rpc,
        &args.logflag,
        ModeFlags {
            poll_mode: args.poll_mode,
            interrupt_mode: args.interrupt_mode,
            poll_window_us: args.poll_window_us,
            poll_window_min_us: args.poll_window_min_us,
        },
        mem,
    ) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("peerless-tgt: {err}");
            eprintln!("Try 'peerless-tgt --help' for more information.");
            return ExitCode::from(2);
        }
    };
    options.metrics = args.metrics;
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ TargetError::Usage(_)) => {
            eprintln!("peerless-tgt: {err}");
            eprintln!("Try 'peerless-tgt --help' for more information.");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("peerless-tgt: {err}");
            ExitCode::FAILURE
        }
    }
}

//! peerless-tgt: the NVMe-oF target application, flag-compatible with SPDK's `nvmf_tgt`
//! where the two overlap.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use peerless_target::app::{run, TargetOptions};

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
    /// Sleep in epoll when idle instead of busy-polling.
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = match TargetOptions::from_flags(
        &args.cpumask,
        args.json,
        args.rpc_socket,
        args.wait_for_rpc,
        &args.logflag,
        args.interrupt_mode,
    ) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("peerless-tgt: {err}");
            eprintln!("Try 'peerless-tgt --help' for more information.");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("peerless-tgt: {err}");
            ExitCode::FAILURE
        }
    }
}

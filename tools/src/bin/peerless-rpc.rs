//! peerless-rpc: JSON-RPC client for peerless-tgt, with SPDK rpc.py's command names,
//! arguments and output.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use peerless_tools::rpc_cli::{run, Cli};

fn main() -> ExitCode {
    run::execute(&Cli::parse())
}

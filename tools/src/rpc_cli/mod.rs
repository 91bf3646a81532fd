//! The command line of `peerless-rpc`: SPDK `rpc.py`'s global options, subcommand names,
//! positional arguments and flags, each turned into the exact wire
//! parameters. Parsing and mapping are pure, so tests check them without a server;
//! `run` does the talking and printing.

pub mod bdev;
pub mod bdev_nvme;
pub mod config;
pub mod framework;
pub mod nvmf;
pub mod run;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::rpc_client::{DEFAULT_PORT, DEFAULT_SERVER};

/// Global options come before the subcommand, as with rpc.py (subcommands reuse -s, -t,
/// -p and -r for their own flags).
#[derive(Parser, Debug)]
#[command(name = "peerless-rpc", version, about = "Peerless JSON-RPC client, command-compatible with SPDK's rpc.py")]
pub struct Cli {
    /// RPC Unix socket path, or an IP address (TCP, port from -p), or ip:port.
    #[arg(short = 's', long = "server", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// TCP port, used only when -s is an IP address.
    #[arg(short = 'p', long = "port", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Seconds to wait for each response (a decimal number).
    #[arg(short = 't', long = "timeout", default_value_t = 60.0)]
    pub timeout: f64,
    /// Retry connecting this many times, 0.2 s apart.
    #[arg(short = 'r', long = "conn-retries", default_value_t = 0)]
    pub conn_retries: u32,
    /// Print the request that would be sent and exit without connecting.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Print every request and response to stderr.
    #[arg(short = 'v')]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Framework(framework::Command),
    #[command(flatten)]
    Bdev(bdev::Command),
    #[command(flatten)]
    BdevNvme(bdev_nvme::Command),
    #[command(flatten)]
    Nvmf(nvmf::Command),
    #[command(flatten)]
    Config(config::Command),
}

impl Command {
    /// What to do; an error here is a usage error the parser could not catch (a value
    /// out of range, bad JSON), reported before anything is sent.
    pub fn action(&self) -> Result<Action, String> {
        match self {
            Command::Framework(command) => Ok(command.action()),
            Command::Bdev(command) => command.action(),
            Command::BdevNvme(command) => command.action(),
            Command::Nvmf(command) => command.action(),
            Command::Config(command) => command.action(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Call(Call),
    /// framework_get_subsystems, then framework_get_config per subsystem (config.py).
    SaveConfig {
        indent: i32,
    },
    /// Replays a config file (stdin when `file` is None) in the states it needs.
    LoadConfig {
        file: Option<std::path::PathBuf>,
        include_aliases: bool,
    },
}

/// One request and how to print its result.
#[derive(Debug, PartialEq)]
pub struct Call {
    pub method: String,
    pub params: Option<Value>,
    pub output: Output,
}

/// How rpc.py prints a method's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `print_json` / `print_dict`: JSON with indent 2, a string printed bare.
    Json,
    /// `print_array`: the elements on one line, separated by spaces.
    Words,
    /// The result (usually `true`) is not printed.
    Nothing,
}

pub(crate) fn call(method: &str, params: Params, output: Output) -> Action {
    Action::Call(Call { method: method.to_string(), params: params.into_value(), output })
}

/// Builds a params object in wire order. Optional values and false flags are left out,
/// so the server applies its defaults and an older server never sees a key it lacks.
#[derive(Default)]
pub(crate) struct Params(Map<String, Value>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    pub fn opt<T: Into<Value>>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(value) => self.set(key, value),
            None => self,
        }
    }

    pub fn flag(self, key: &str, on: bool) -> Self {
        if on {
            self.set(key, true)
        } else {
            self
        }
    }

    /// Nests `inner` under `key` (listen_address, namespace).
    pub fn object(self, key: &str, inner: Params) -> Self {
        self.set(key, Value::Object(inner.0))
    }

    pub fn into_value(self) -> Option<Value> {
        if self.0.is_empty() {
            None
        } else {
            Some(Value::Object(self.0))
        }
    }
}

/// rpc.py's conversion of a size in MiB to a block count: `(size * 1024 * 1024) // block_size`.
pub(crate) fn blocks_from_mib(size_mib: f64, block_size: u32) -> Result<u64, String> {
    if block_size == 0 {
        return Err("block size must be greater than 0".into());
    }
    if !size_mib.is_finite() || size_mib <= 0.0 {
        return Err(format!("size must be a positive number of MiB, not {size_mib}"));
    }
    let blocks = (size_mib * 1024.0 * 1024.0 / f64::from(block_size)).floor();
    if blocks < 1.0 || blocks > u64::MAX as f64 {
        return Err(format!("{size_mib} MiB is not a usable number of {block_size}-byte blocks"));
    }
    Ok(blocks as u64)
}

#[cfg(test)]
mod tests;

//! Client-side composites (SPDK's config.py): `save_config`, `load_config`,
//! and `call` for any method with raw JSON params. The composites take the calling
//! function as a parameter so tests can drive them against a simulated target.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::{Action, Call, Output};
use crate::rpc_client::ClientError;

/// A bound on load_config's rounds: each round must replay at least one entry or start
/// init, so a file of N entries needs at most N + 1; this only stops a server that keeps
/// advertising framework_start_init without changing state.
const MAX_LOAD_ROUNDS: usize = 10_000;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the live configuration of every subsystem as a config file
    #[command(name = "save_config")]
    SaveConfig {
        /// Indent level; below 0 prints compact JSON
        #[arg(short = 'i', long, default_value_t = 2, allow_negative_numbers = true)]
        indent: i32,
    },
    /// Configure the target from a config file (stdin unless -j)
    #[command(name = "load_config")]
    LoadConfig {
        /// Config file to read instead of stdin
        #[arg(short = 'j', long)]
        json_conf: Option<PathBuf>,
        /// Accept deprecated method aliases
        #[arg(short = 'i', long)]
        include_aliases: bool,
    },
    /// Call any method with optional JSON params, e.g. call bdev_get_bdevs '{"name":"Malloc0"}'
    #[command(name = "call")]
    Call {
        method: String,
        /// Params as a JSON object (or array)
        params: Option<String>,
    },
}

impl Command {
    pub fn action(&self) -> Result<Action, String> {
        Ok(match self {
            Command::SaveConfig { indent } => Action::SaveConfig { indent: *indent },
            Command::LoadConfig { json_conf, include_aliases } => {
                Action::LoadConfig { file: json_conf.clone(), include_aliases: *include_aliases }
            }
            Command::Call { method, params } => {
                let params = match params {
                    None => None,
                    Some(text) => match serde_json::from_str::<Value>(text) {
                        Ok(value @ (Value::Object(_) | Value::Array(_))) => Some(value),
                        Ok(other) => return Err(format!("params must be a JSON object or array, not {other}")),
                        Err(err) => return Err(format!("params are not valid JSON: {err}")),
                    },
                };
                Action::Call(Call { method: method.clone(), params, output: Output::Json })
            }
        })
    }
}

/// Something that performs one call: the real client, or a test's simulated target.
pub type Caller<'a> = dyn FnMut(&str, Option<Value>) -> Result<Value, ClientError> + 'a;

/// `{"subsystems":[{"subsystem":..,"config":[..]}]}` in the order the target lists them.
pub fn save_config(caller: &mut Caller<'_>) -> Result<Value, ClientError> {
    let listed = caller("framework_get_subsystems", None)?;
    let mut subsystems = Vec::new();
    for entry in listed.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = entry.get("subsystem").and_then(Value::as_str) else { continue };
        let config = caller("framework_get_config", Some(json!({"name": name})))?;
        subsystems.push(json!({"subsystem": name, "config": config}));
    }
    Ok(json!({"subsystems": subsystems}))
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the config is not valid: {0}")]
    Invalid(String),
    #[error("the config calls methods the target does not have: {0}")]
    UnknownMethods(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// One `{method, params}` entry still to replay.
struct Entry {
    method: String,
    params: Option<Value>,
}

fn entries(config: &Value) -> Result<Vec<Vec<Entry>>, LoadError> {
    let subsystems = config
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| LoadError::Invalid("no \"subsystems\" array at the top level".into()))?;
    let mut out = Vec::new();
    for subsystem in subsystems {
        let name = subsystem.get("subsystem").and_then(Value::as_str).unwrap_or("?");
        let mut list = Vec::new();
        for item in subsystem.get("config").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let Some(method) = item.get("method").and_then(Value::as_str) else {
                return Err(LoadError::Invalid(format!("an entry of subsystem '{name}' has no \"method\": {item}")));
            };
            list.push(Entry { method: method.to_string(), params: item.get("params").cloned() });
        }
        if !list.is_empty() {
            out.push(list);
        }
    }
    Ok(out)
}

fn method_names(value: &Value) -> Vec<String> {
    value.as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(Value::as_str).map(String::from).collect()
}

/// Replays `config` as config.py does: check every method exists, then in rounds call
/// every entry allowed in the current state, and framework_start_init whenever the
/// target offers it, until all are done or a round makes no progress. Returns how many
/// entries could not be replayed (their state had passed).
pub fn load_config(caller: &mut Caller<'_>, config: &Value, include_aliases: bool) -> Result<usize, LoadError> {
    let mut pending = entries(config)?;
    let flags = |current: bool| {
        let mut params = Map::new();
        if current {
            params.insert("current".into(), Value::Bool(true));
        }
        if include_aliases {
            params.insert("include_aliases".into(), Value::Bool(true));
        }
        (!params.is_empty()).then_some(Value::Object(params))
    };
    if pending.is_empty() {
        // Nothing to replay; a target waiting for RPC still wants to be started. config.py
        // asks for all methods here, which offers framework_start_init to a running
        // target too; asking for the current ones does not.
        let current = method_names(&caller("rpc_get_methods", flags(true))?);
        if current.iter().any(|name| name == "framework_start_init") {
            caller("framework_start_init", None)?;
        }
        return Ok(0);
    }
    let known = method_names(&caller("rpc_get_methods", flags(false))?);
    let unknown: Vec<&str> =
        pending.iter().flatten().map(|entry| entry.method.as_str()).filter(|m| !known.iter().any(|k| k == m)).collect();
    if !unknown.is_empty() {
        return Err(LoadError::UnknownMethods(unknown.join(", ")));
    }
    for _ in 0..MAX_LOAD_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let allowed = method_names(&caller("rpc_get_methods", flags(true))?);
        let mut progressed = false;
        for list in pending.iter_mut() {
            let mut kept = Vec::new();
            for entry in list.drain(..) {
                if allowed.contains(&entry.method) {
                    caller(&entry.method, entry.params)?;
                    progressed = true;
                } else {
                    kept.push(entry);
                }
            }
            *list = kept;
        }
        pending.retain(|list| !list.is_empty());
        if allowed.iter().any(|name| name == "framework_start_init") {
            caller("framework_start_init", None)?;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(pending.iter().map(Vec::len).sum())
}

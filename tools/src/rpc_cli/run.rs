//! Carries out a parsed command: connects, calls, and prints like rpc.py (results to
//! stdout with indent 2, strings bare; a JSON-RPC error as rpc.py's "request: ...
//! response: ..." report, on stderr, exit 1).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::{load_config, save_config, LoadError};
use super::{Action, Call, Cli, Output};
use crate::rpc_client::{encode_request, Address, ClientError, ClientOptions, RpcClient};

/// Usage errors exit 2 like clap's (and argparse's); failures of the call exit 1.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// The text rpc.py prints for a result, or None when it prints nothing.
pub fn render(result: &Value, output: Output) -> Option<String> {
    match output {
        Output::Nothing => None,
        // print_json strips the quotes of a bare string: a bdev name prints as Malloc0.
        Output::Json => Some(match result {
            Value::String(text) => text.clone(),
            other => pretty(other, 2),
        }),
        Output::Words => Some(match result {
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(quote).unwrap_or_else(|| item.to_string()))
                .collect::<Vec<_>>()
                .join(" "),
            other => pretty(other, 2),
        }),
    }
}

/// Shell quoting as Python's shlex.quote, so a printed list can be pasted back.
fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\"'\"'"))
    }
}

/// JSON with `indent` spaces per level, as Python's json.dumps(indent=N); a negative
/// indent means compact, as rpc.py's save_config -i.
pub fn pretty(value: &Value, indent: i32) -> String {
    let Ok(width) = usize::try_from(indent) else { return value.to_string() };
    let spaces = vec![b' '; width];
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    match serde::Serialize::serialize(value, &mut serializer) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => value.to_string(),
    }
}

/// rpc.py's report of a JSON-RPC error (client.py `call`): the request params with method
/// and req_id added, then the error object, each with indent 2.
pub fn rpc_error_report(method: &str, id: u64, params: &Option<Value>, error: &Value) -> String {
    let mut request = match params {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    request.insert("method".into(), json!(method));
    request.insert("req_id".into(), json!(id));
    format!(
        "request:\n{}\nGot JSON-RPC error response\nresponse:\n{}",
        pretty(&Value::Object(request), 2),
        pretty(error, 2)
    )
}

/// Prints a failed call as rpc.py does and gives the exit code for it.
fn report(err: &ClientError) -> ExitCode {
    match err {
        ClientError::Rpc(failure) => {
            eprintln!("{}", rpc_error_report(&failure.method, failure.id, &failure.params, &failure.error))
        }
        other => eprintln!("peerless-rpc: {other}"),
    }
    ExitCode::from(EXIT_FAILURE)
}

fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (peerless-rpc ... | head) is not worth a panic.
    if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
        return ExitCode::from(EXIT_FAILURE);
    }
    ExitCode::SUCCESS
}

fn read_config(file: &Option<std::path::PathBuf>) -> Result<Value, String> {
    let (text, source) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            (text, path.display().to_string())
        }
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|err| format!("cannot read stdin: {err}"))?;
            (text, "stdin".to_string())
        }
    };
    serde_json::from_str(&text).map_err(|err| format!("{source} is not valid JSON: {err}"))
}

/// What --dry-run prints: each request as it would go on the wire.
fn dry_run(action: &Action) -> Result<String, String> {
    match action {
        Action::Call(Call { method, params, .. }) => Ok(encode_request(1, method, params.as_ref())),
        Action::SaveConfig { .. } => Ok(encode_request(1, "framework_get_subsystems", None)),
        Action::LoadConfig { file, .. } => {
            let config = read_config(file)?;
            let mut requests = Vec::new();
            let subsystems = config.get("subsystems").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for entry in subsystems.iter().flat_map(|s| s.get("config").and_then(Value::as_array).into_iter().flatten())
            {
                let method = entry.get("method").and_then(Value::as_str).unwrap_or("?");
                requests.push(encode_request(requests.len() as u64 + 1, method, entry.get("params")));
            }
            Ok(requests.join("\n"))
        }
    }
}

pub fn execute(cli: &Cli) -> ExitCode {
    let action = match cli.command.action() {
        Ok(action) => action,
        Err(why) => return usage(&why),
    };
    if cli.dry_run {
        return match dry_run(&action) {
            Ok(text) => print(&text),
            Err(why) => failure(&why),
        };
    }
    if !cli.timeout.is_finite() || cli.timeout <= 0.0 {
        return usage(&format!("-t must be a positive number of seconds, not {}", cli.timeout));
    }
    match action {
        Action::Call(call) => run_call(cli, call),
        Action::SaveConfig { indent } => match connect(cli) {
            Ok(mut client) => match save_config(&mut |method: &str, params| client.call(method, params)) {
                Ok(config) => print(&pretty(&config, indent)),
                Err(err) => report(&err),
            },
            Err(code) => code,
        },
        Action::LoadConfig { file, include_aliases } => {
            // Read the file (or stdin) first, so a slow producer holds no connection open.
            let config = match read_config(&file) {
                Ok(config) => config,
                Err(why) => return failure(&why),
            };
            match connect(cli) {
                Ok(mut client) => run_load(&mut client, &config, include_aliases),
                Err(code) => code,
            }
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("peerless-rpc: {why}");
    ExitCode::from(EXIT_USAGE)
}

fn failure(why: &str) -> ExitCode {
    eprintln!("peerless-rpc: {why}");
    ExitCode::from(EXIT_FAILURE)
}

fn connect(cli: &Cli) -> Result<RpcClient, ExitCode> {
    let options = ClientOptions {
        // Duration::from_secs_f64 panics past u64::MAX seconds; a billion is forever enough.
        timeout: Duration::from_secs_f64(cli.timeout.min(1e9)),
        conn_retries: cli.conn_retries,
        verbose: cli.verbose,
    };
    RpcClient::connect(&Address::parse(&cli.server, cli.port), options).map_err(|err| report(&err))
}

fn run_call(cli: &Cli, call: Call) -> ExitCode {
    let mut client = match connect(cli) {
        Ok(client) => client,
        Err(code) => return code,
    };
    match client.call(&call.method, call.params) {
        Ok(result) => render(&result, call.output).map_or(ExitCode::SUCCESS, |text| print(&text)),
        // The target may stop before its answer leaves; rpc.py ignores that too.
        Err(ClientError::Closed { .. }) if call.method == "spdk_kill_instance" => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

fn run_load(client: &mut RpcClient, config: &Value, include_aliases: bool) -> ExitCode {
    match load_config(&mut |method: &str, params| client.call(method, params), config, include_aliases) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(skipped) => {
            // config.py's warning; the entries that did apply stay applied.
            eprintln!(
                "Some configs were skipped because the RPC state that can call them passed over ({skipped} entries)."
            );
            ExitCode::SUCCESS
        }
        Err(LoadError::Client(err)) => report(&err),
        Err(err) => failure(&err.to_string()),
    }
}

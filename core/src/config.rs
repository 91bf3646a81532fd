//! JSON config files in SPDK's shape, `{"subsystems":[{"subsystem":..,"config":[{"method":
//! ..,"params":..}]}]}`, replayed through the RPC registry exactly as `load_config` would:
//! methods allowed before init first, then subsystem init, then the rest. Every error
//! names the file, the line, the subsystem, the entry's index, the method and the field.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::reactor::{AppHandle, AppState};
use crate::rpc::{Registry, Responder};

/// How long one replayed call may take before the load is declared stuck.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub subsystem: String,
    pub index: usize,
    pub method: String,
    pub params: Option<Value>,
    pub line: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{path}: cannot read: {why}")]
    Read { path: String, why: String },
    #[error("{path}:{line}:{column}: {why}")]
    Syntax { path: String, line: usize, column: usize, why: String },
    #[error("{path}:{line}: subsystem '{subsystem}' entry {index}: {why}")]
    Entry { path: String, line: usize, subsystem: String, index: usize, why: String },
    #[error("{path}:{line}: subsystem '{subsystem}' entry {index} ({method}): {why}")]
    Call { path: String, line: usize, subsystem: String, index: usize, method: String, why: String },
    #[error("{path}: subsystem '{subsystem}' is not part of this target (known: {known})")]
    UnknownSubsystem { path: String, subsystem: String, known: String },
    #[error("{path}: subsystem initialisation failed: {why}")]
    Init { path: String, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape<'a> {
    #[serde(borrow)]
    subsystems: Vec<SubsystemShape<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubsystemShape<'a> {
    subsystem: String,
    #[serde(borrow, default)]
    config: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

/// Parses a config text into its entries, in file order.
pub fn parse(path: &Path, text: &str) -> Result<Vec<ConfigEntry>, ConfigError> {
    let shown = path.display().to_string();
    let file: FileShape<'_> = serde_json::from_str(text).map_err(|err| ConfigError::Syntax {
        path: shown.clone(),
        line: err.line(),
        column: err.column(),
        why: err.to_string().split(" at line ").next().unwrap_or_default().to_string(),
    })?;
    let mut entries = Vec::new();
    for subsystem in file.subsystems {
        for (index, raw) in subsystem.config.unwrap_or_default().into_iter().enumerate() {
            let line = line_of(text, raw.get());
            let entry: EntryShape = serde_json::from_str(raw.get()).map_err(|err| ConfigError::Entry {
                path: shown.clone(),
                line,
                subsystem: subsystem.subsystem.clone(),
                index,
                why: err.to_string().split(" at line ").next().unwrap_or_default().to_string(),
            })?;
            entries.push(ConfigEntry {
                subsystem: subsystem.subsystem.clone(),
                index,
                method: entry.method,
                params: entry.params,
                line,
            });
        }
    }
    Ok(entries)
}

/// The 1-based line where `inner` (a slice of `text`) starts.
fn line_of(text: &str, inner: &str) -> usize {
    let offset = (inner.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
    text[..offset].bytes().filter(|byte| *byte == b'\n').count() + 1
}

/// Loads `path` into a running app from an OS thread that is not a reactor. With
/// `init` the subsystems are initialised between the two phases; without (the
/// `--wait-for-rpc` case) the runtime phase waits until someone calls
/// `framework_start_init`.
pub fn load(path: &Path, registry: &Registry, app: &AppHandle, init: bool) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: shown.clone(), why: err.to_string() })?;
    let mut entries = parse(path, &text)?;
    order_by_subsystem(path, &mut entries, app)?;

    let (startup, runtime): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|entry| registry.allows(&entry.method, AppState::Startup));
    for entry in &startup {
        replay(path, registry, app, entry)?;
    }
    if init {
        let (tx, rx) = mpsc::channel();
        app.start_init(move |_, result| {
            let _ = tx.send(result);
        });
        let result = rx.recv_timeout(CALL_TIMEOUT).unwrap_or_else(|_| Err("timed out".to_string()));
        result.map_err(|why| ConfigError::Init { path: shown.clone(), why })?;
    } else {
        app.wait_for_state(AppState::Runtime);
        if app.state() == AppState::ShuttingDown {
            return Ok(());
        }
    }
    for entry in &runtime {
        replay(path, registry, app, entry)?;
    }
    Ok(())
}

/// Stable-sorts entries into the order subsystems initialise in, so a file written in
/// any subsystem order replays dependencies first.
fn order_by_subsystem(path: &Path, entries: &mut [ConfigEntry], app: &AppHandle) -> Result<(), ConfigError> {
    let order: Vec<&'static str> = app.subsystems().iter().map(|subsystem| subsystem.name()).collect();
    for entry in entries.iter() {
        if !order.contains(&entry.subsystem.as_str()) {
            return Err(ConfigError::UnknownSubsystem {
                path: path.display().to_string(),
                subsystem: entry.subsystem.clone(),
                known: order.join(", "),
            });
        }
    }
    entries.sort_by_key(|entry| order.iter().position(|name| *name == entry.subsystem));
    Ok(())
}

fn replay(path: &Path, registry: &Registry, app: &AppHandle, entry: &ConfigEntry) -> Result<(), ConfigError> {
    let call_error = |why: String| ConfigError::Call {
        path: path.display().to_string(),
        line: entry.line,
        subsystem: entry.subsystem.clone(),
        index: entry.index,
        method: entry.method.clone(),
        why,
    };
    let (tx, rx) = mpsc::channel();
    let responder = Responder::new(&entry.method, move |reply| {
        let _ = tx.send(reply);
    });
    registry.call(app, &entry.method, entry.params.clone(), responder);
    match rx.recv_timeout(CALL_TIMEOUT) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(call_error(format!("{} (code {})", err.message, err.code))),
        Err(_) => Err(call_error(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SAMPLE: &str = r#"{
  "subsystems": [
    {
      "subsystem": "bdev",
      "config": [
        {
          "method": "bdev_malloc_create",
          "params": {"name": "Malloc0", "num_blocks": 1024, "block_size": 512}
        },
        {"method": "bdev_wait_for_examine"}
      ]
    },
    {"subsystem": "accel", "config": null}
  ]
}"#;

    #[test]
    fn entries_carry_subsystem_index_and_line() {
        let entries = parse(Path::new("sample.json"), SAMPLE).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].method, "bdev_malloc_create");
        assert_eq!(entries[0].line, 6);
        assert_eq!(entries[0].params, Some(json!({"name": "Malloc0", "num_blocks": 1024, "block_size": 512})));
        assert_eq!((entries[1].index, entries[1].line, entries[1].params.clone()), (1, 10, None));
    }

    #[test]
    fn errors_name_line_and_field() {
        let syntax =
            parse(Path::new("bad.json"), "{\n \"subsystems\": [\n  {\"subsystem\": \"bdev\",,}\n]}").unwrap_err();
        assert!(matches!(syntax, ConfigError::Syntax { line: 3, .. }), "{syntax}");
        assert!(syntax.to_string().starts_with("bad.json:3:"), "{syntax}");

        let unknown_key =
            parse(Path::new("c.json"), "{\"subsystems\": [{\"subsystem\": \"bdev\", \"confg\": []}]}").unwrap_err();
        assert!(unknown_key.to_string().contains("unknown field `confg`"), "{unknown_key}");

        let entry = "{\"subsystems\": [{\"subsystem\": \"bdev\", \"config\": [\n\n {\"methd\": \"x\"}]}]}";
        let err = parse(Path::new("c.json"), entry).unwrap_err();
        assert!(matches!(&err, ConfigError::Entry { line: 3, index: 0, .. }), "{err}");
        assert!(err.to_string().contains("unknown field `methd`"), "{err}");
    }
}

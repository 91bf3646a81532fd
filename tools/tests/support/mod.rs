//! What this package's end-to-end tests share beyond the harness (`peerless-testkit`):
//! where `peerless-tgt` is, the host NQN they connect as, and key files for the keyring.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use peerless_testkit::{Binary, Target};
use serde_json::{json, Value};

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:a1b2c3d4-0000-4000-8000-000000000001";

/// The target binary from this build: another package defines it, so it is found
/// beside the tests; CI builds the workspace before testing.
pub fn tgt() -> Binary {
    Binary::beside_test("cargo build -p peerless-target")
}

/// The parts of a secret (DH-HMAC-CHAP or TLS PSK, `<prefix>:<hh>:<base64>:`) that must
/// never show: its text and its base64 body.
pub fn secret_parts(secret: &str) -> Vec<String> {
    let body = secret.trim_end_matches(':').rsplit(':').next().unwrap().to_string();
    vec![secret.to_string(), body]
}

/// Writes `secret` to `dir/name` as the keyring wants key files: private (0600).
pub fn write_key(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Puts `secret` in a key file beside the target and adds it to its keyring as `name`.
pub fn add_key(target: &Target, name: &str, secret: &str) {
    let path = write_key(target.dir(), &format!("{name}.key"), secret);
    target.call("keyring_file_add_key", Some(json!({"name": name, "path": path})));
}

/// What `save_config` writes (rpc.py's composite of the framework calls).
pub fn saved_config(target: &Target) -> Value {
    let listed = target.call("framework_get_subsystems", None);
    let subsystems: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let name = entry["subsystem"].clone();
            json!({"subsystem": name, "config": target.call("framework_get_config", Some(json!({"name": name})))})
        })
        .collect();
    json!({"subsystems": subsystems})
}

//! The keyring RPCs against a real `peerless-tgt`: keys are added from private files,
//! listed and saved by name and path only, restored from a saved config, and refused with
//! the reason when their file is not private. No key material ever reaches an RPC
//! answer, the saved config or the log.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use peerless_testkit::Binary;
use serde_json::{json, Value};

fn tgt() -> Binary {
    Binary::at(env!("CARGO_BIN_EXE_peerless-tgt"))
}

const SECRET: &str = "DHHC-1:01:3zmuOzEJ7hCfU3bJV8XsJpgqIkNnXK5Nm5G4p2e29ZR5BhTG:";
const TLS_SECRET: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";

fn key_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, TLS_SECRET] {
        let body = &secret[secret.len() - 20..];
        assert!(!text.contains(body), "key material in {what}: {text}");
    }
}

#[test]
fn keys_are_added_listed_saved_restored_and_removed_by_name_only() {
    let mut target = tgt().start("keyring", &[]);
    let dir = target.dir().to_path_buf();
    let chap = key_file(&dir, "chap.key", &format!("{SECRET}\n"), 0o600);
    let tls = key_file(&dir, "tls.key", TLS_SECRET, 0o400);
    assert_eq!(target.call("keyring_file_add_key", Some(json!({"name": "key0", "path": chap}))), json!(true));
    assert_eq!(target.call("keyring_file_add_key", Some(json!({"name": "psk0", "path": tls}))), json!(true));

    let keys = target.call("keyring_get_keys", None);
    assert_eq!(
        keys,
        json!([
            {"name": "key0", "module": "keyring_file", "path": chap, "removed": false, "probed": false, "refcnt": 0},
            {"name": "psk0", "module": "keyring_file", "path": tls, "removed": false, "probed": false, "refcnt": 0},
        ])
    );
    let saved = target.call("framework_get_config", Some(json!({"name": "keyring"})));
    assert_eq!(
        saved,
        json!([
            {"method": "keyring_file_add_key", "params": {"name": "key0", "path": chap}},
            {"method": "keyring_file_add_key", "params": {"name": "psk0", "path": tls}},
        ])
    );

    // A duplicate name, an unknown key and an unknown parameter each say what is wrong.
    let (code, message) = target.call_err("keyring_file_add_key", Some(json!({"name": "key0", "path": tls})));
    assert_eq!((code, message.as_str()), (-17, "key 'key0' already exists"));
    let (code, message) = target.call_err("keyring_file_remove_key", Some(json!({"name": "nope"})));
    assert_eq!((code, message.as_str()), (-19, "no key named 'nope'"));
    let (code, message) =
        target.call_err("keyring_file_add_key", Some(json!({"name": "k", "path": tls, "module": "keyring_file"})));
    assert!(code == -32602 && message.contains("module"), "{code} {message}");

    // save_config -> a new target started from it has the same keys.
    let config = json!({"subsystems": [{"subsystem": "keyring", "config": saved}]});
    let config_path = dir.join("saved.json");
    fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut restored = tgt().launch("keyring-restored").arg("-c").arg(&config_path).start();
    assert_eq!(restored.call("keyring_get_keys", None), keys);
    restored.stop();

    assert_eq!(target.call("keyring_file_remove_key", Some(json!({"name": "key0"}))), json!(true));
    let names: Vec<Value> =
        target.call("keyring_get_keys", None).as_array().unwrap().iter().map(|k| k["name"].clone()).collect();
    assert_eq!(names, vec![json!("psk0")]);

    assert_no_secret("RPC answers", &format!("{keys} {saved}"));
    target.stop();
    assert_no_secret("the log", &target.log());
}

#[test]
fn key_files_that_are_not_private_are_refused_with_the_reason() {
    let mut target = tgt().start("keyring-refused", &[]);
    let dir = target.dir().to_path_buf();
    let open = key_file(&dir, "open.key", SECRET, 0o644);
    let (code, message) = target.call_err("keyring_file_add_key", Some(json!({"name": "k", "path": open})));
    assert_eq!(code, -1, "EPERM, as SPDK answers");
    assert!(message.contains("0644") && message.contains("chmod 600"), "{message}");

    let (code, message) = target.call_err("keyring_file_add_key", Some(json!({"name": "k", "path": "key.txt"})));
    assert!(code == -1 && message.contains("not an absolute path"), "{code} {message}");

    let missing = dir.join("missing.key");
    let (code, message) = target.call_err("keyring_file_add_key", Some(json!({"name": "k", "path": missing})));
    assert!(code == -2 && message.contains("missing.key"), "{code} {message}");

    assert_eq!(target.call("keyring_get_keys", None), json!([]));
    target.stop();
    assert_no_secret("the log", &target.log());
}

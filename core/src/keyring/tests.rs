use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// A directory of its own per test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("peerless-keyring-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn key_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SECRET: &[u8] = b"DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";

#[test]
fn a_private_key_file_is_added_read_at_use_and_listed_without_its_contents() {
    let scratch = Scratch::new("add");
    let mut contents = SECRET.to_vec();
    contents.extend_from_slice(b"\n");
    let path = scratch.key_file("key0", &contents, 0o600);
    let keyring = Keyring::new();
    keyring.add_file_key("key0", &path).unwrap();
    let key = keyring.get("key0").unwrap();
    assert_eq!(key.load().unwrap().bytes(), SECRET, "the trailing newline is not part of the key");

    // Rotation: the file is read again at each use.
    fs::write(&path, b"NVMeTLSkey-1:01:rotated:").unwrap();
    assert_eq!(key.load().unwrap().bytes(), b"NVMeTLSkey-1:01:rotated:");

    let listed = keyring.list();
    assert_eq!(
        listed,
        vec![KeyInfo {
            name: "key0".into(),
            module: FILE_MODULE,
            path: path.clone(),
            removed: false,
            probed: false,
            refcnt: 1
        }]
    );
    let shown = format!("{:?} {:?} {}", key, key.load().unwrap(), serde_json::to_string(&listed).unwrap());
    assert!(!shown.contains("rotated") && !shown.contains("DHHC"), "a secret was printed: {shown}");
}

#[test]
fn files_others_could_read_or_replace_are_refused_with_the_reason() {
    let scratch = Scratch::new("modes");
    let keyring = Keyring::new();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o610] {
        let path = scratch.key_file(&format!("open{mode:o}"), SECRET, mode);
        let err = keyring.add_file_key("k", &path).unwrap_err();
        assert_eq!(err, KeyError::TooOpen { path: path.clone(), mode }, "mode {mode:o}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert_eq!(err.errno(), nix::errno::Errno::EPERM);
    }
    for mode in [0o600, 0o400] {
        let path = scratch.key_file(&format!("private{mode:o}"), SECRET, mode);
        keyring.add_file_key(&format!("private{mode:o}"), &path).unwrap();
    }
}

#[test]
fn paths_that_are_not_a_private_regular_file_are_refused() {
    let scratch = Scratch::new("paths");
    let keyring = Keyring::new();
    let private = scratch.key_file("private", SECRET, 0o600);

    assert_eq!(
        keyring.add_file_key("k", Path::new("relative/key")),
        Err(KeyError::RelativePath("relative/key".into()))
    );
    let missing = scratch.0.join("missing");
    assert!(matches!(keyring.add_file_key("k", &missing), Err(KeyError::Unreadable { .. })));
    assert!(matches!(keyring.add_file_key("k", &scratch.0), Err(KeyError::NotAFile(_) | KeyError::TooOpen { .. })));

    let link = scratch.0.join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    assert!(matches!(keyring.add_file_key("k", &link), Err(KeyError::Unreadable { .. })), "a symlink is followed");

    let empty = scratch.key_file("empty", b" \n", 0o600);
    assert_eq!(keyring.add_file_key("k", &empty), Err(KeyError::Empty(empty.clone())));
    let large = scratch.key_file("large", &vec![b'a'; MAX_KEY_FILE_BYTES as usize + 1], 0o600);
    assert!(matches!(keyring.add_file_key("k", &large), Err(KeyError::TooLarge { .. })));

    assert_eq!(keyring.add_file_key("", &private), Err(KeyError::EmptyName));
    assert!(keyring.list().is_empty(), "a refused key was kept");
}

#[test]
fn a_key_that_becomes_unusable_after_it_was_added_fails_at_use() {
    let scratch = Scratch::new("later");
    let keyring = Keyring::new();
    let path = scratch.key_file("key", SECRET, 0o600);
    keyring.add_file_key("key", &path).unwrap();
    let key = keyring.get("key").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(key.load(), Err(KeyError::TooOpen { .. })));
    fs::remove_file(&path).unwrap();
    assert!(matches!(key.load(), Err(KeyError::Unreadable { .. })));
}

#[test]
fn names_are_unique_and_removal_withdraws_a_key_from_its_holders() {
    let scratch = Scratch::new("remove");
    let keyring = Keyring::new();
    let path = scratch.key_file("key", SECRET, 0o600);
    keyring.add_file_key("key", &path).unwrap();
    assert_eq!(keyring.add_file_key("key", &path), Err(KeyError::Exists("key".into())));

    let held = keyring.get("key").unwrap();
    assert_eq!(keyring.list()[0].refcnt, 1);
    keyring.remove("key").unwrap();
    assert_eq!(held.load().unwrap_err(), KeyError::Removed("key".into()));
    assert_eq!(keyring.get("key").unwrap_err(), KeyError::NotFound("key".into()));
    assert_eq!(keyring.remove("key"), Err(KeyError::NotFound("key".into())));
    let listed = keyring.list();
    assert!(listed.len() == 1 && listed[0].removed && listed[0].refcnt == 1, "{listed:?}");

    // The name is free again, and the removed key goes from the list with its last holder.
    keyring.add_file_key("key", &path).unwrap();
    drop(held);
    let listed = keyring.list();
    assert!(listed.len() == 1 && !listed[0].removed && listed[0].refcnt == 0, "{listed:?}");
}

#[test]
fn a_file_owned_by_another_user_is_refused() {
    let scratch = Scratch::new("owner");
    let path = scratch.key_file("theirs", SECRET, 0o600);
    let ours = nix::unistd::geteuid();
    let other = if ours.is_root() { nix::unistd::Uid::from_raw(65534) } else { ours };
    if ours.is_root() {
        std::os::unix::fs::chown(&path, Some(other.as_raw()), None).unwrap();
        let err = Keyring::new().add_file_key("k", &path).unwrap_err();
        assert_eq!(err, KeyError::WrongOwner { path, owner: 65534, ours: 0 });
    } else {
        // Without root no file can be given away; the owner check still runs on ours.
        Keyring::new().add_file_key("k", &path).unwrap();
    }
}

//! The keyring: named secrets that configuration refers to by name (a host's DH-HMAC-CHAP
//! key, a TLS pre-shared key), so that no RPC, log line or saved config ever carries the
//! secret itself. Keys come from files (`keyring_file_add_key`, SPDK's `keyring_file`
//! module): the file is checked when the key is added and read again each time the key is
//! used, so an operator rotates a key by rewriting its file.
//!
//! A file must be named by an absolute path, be a regular file, be owned by this process's
//! user and grant nothing to group or others (0600 or stricter): a key another account can
//! read or replace is no secret.

pub mod rpc;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use zeroize::Zeroizing;

/// A key file larger than this is not a key (the longest NVMe secret representation, a
/// 64-byte DH-HMAC-CHAP secret in base64 with its prefix and CRC, is under 128 bytes).
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The module every key here belongs to, as `keyring_get_keys` names it.
pub const FILE_MODULE: &str = "keyring_file";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key needs a name")]
    EmptyName,
    #[error("key '{0}' already exists")]
    Exists(String),
    #[error("no key named '{0}'")]
    NotFound(String),
    #[error("key '{0}' was removed from the keyring")]
    Removed(String),
    #[error("key file '{0}' is not an absolute path")]
    RelativePath(PathBuf),
    #[error("key file '{path}': {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("key file '{0}' is not a regular file")]
    NotAFile(PathBuf),
    #[error("key file '{path}' has mode {mode:04o}: group or others may use it; make it 0600 (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file '{path}' is owned by uid {owner}, not by this process's uid {ours}")]
    WrongOwner { path: PathBuf, owner: u32, ours: u32 },
    #[error("key file '{path}' holds {bytes} bytes; a key file holds at most {MAX_KEY_FILE_BYTES}")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("key file '{0}' is empty")]
    Empty(PathBuf),
}

impl KeyError {
    /// SPDK's errno for the same refusal, which its clients show.
    pub fn errno(&self) -> nix::errno::Errno {
        use nix::errno::Errno;
        match self {
            KeyError::EmptyName | KeyError::TooLarge { .. } | KeyError::Empty(_) | KeyError::NotAFile(_) => {
                Errno::EINVAL
            }
            KeyError::Exists(_) => Errno::EEXIST,
            KeyError::NotFound(_) | KeyError::Removed(_) => Errno::ENODEV,
            KeyError::RelativePath(_) | KeyError::TooOpen { .. } | KeyError::WrongOwner { .. } => Errno::EPERM,
            KeyError::Unreadable { .. } => Errno::ENOENT,
        }
    }
}

/// Secret bytes: wiped when dropped, and never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0.len())
    }
}

struct KeyInner {
    name: String,
    path: PathBuf,
    removed: AtomicBool,
}

/// A reference to a key, held by whatever configuration names it. Removing the key from
/// the keyring leaves the reference valid but unusable, so a key can be withdrawn without
/// first finding everything that names it.
#[derive(Clone)]
pub struct KeyRef(Arc<KeyInner>);

impl KeyRef {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn is_removed(&self) -> bool {
        self.0.removed.load(Ordering::Acquire)
    }

    /// Reads the secret now, checking the file again: it may have been replaced since the
    /// key was added. Trailing whitespace (an editor's newline) is not part of the key.
    pub fn load(&self) -> Result<Secret, KeyError> {
        if self.is_removed() {
            return Err(KeyError::Removed(self.0.name.clone()));
        }
        read_key_file(&self.0.path)
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRef({})", self.0.name)
    }
}

/// What `keyring_get_keys` reports of a key: never its contents.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub name: String,
    pub module: &'static str,
    pub path: PathBuf,
    pub removed: bool,
    /// Key files need no probing; kept for SPDK's field set.
    pub probed: bool,
    /// References held by configuration beside the keyring's own.
    pub refcnt: usize,
}

#[derive(Default)]
struct Keys {
    live: BTreeMap<String, KeyRef>,
    /// Removed keys still referenced, listed until the last reference goes.
    removed: Vec<KeyRef>,
}

/// The process's keyring; clones share it.
#[derive(Clone, Default)]
pub struct Keyring(Arc<Mutex<Keys>>);

impl Keyring {
    pub fn new() -> Self {
        Keyring::default()
    }

    /// Adds a file key after checking the file (and reading it once, so a key that cannot
    /// be used is refused now rather than at a host's first connect).
    pub fn add_file_key(&self, name: &str, path: &Path) -> Result<(), KeyError> {
        if name.is_empty() {
            return Err(KeyError::EmptyName);
        }
        drop(read_key_file(path)?);
        let mut keys = self.0.lock();
        if keys.live.contains_key(name) {
            return Err(KeyError::Exists(name.to_string()));
        }
        let key = KeyRef(Arc::new(KeyInner {
            name: name.to_string(),
            path: path.to_path_buf(),
            removed: AtomicBool::new(false),
        }));
        keys.live.insert(name.to_string(), key);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<(), KeyError> {
        let mut keys = self.0.lock();
        let key = keys.live.remove(name).ok_or_else(|| KeyError::NotFound(name.to_string()))?;
        key.0.removed.store(true, Ordering::Release);
        keys.removed.push(key);
        Ok(())
    }

    /// A reference for configuration that names the key.
    pub fn get(&self, name: &str) -> Result<KeyRef, KeyError> {
        self.0.lock().live.get(name).cloned().ok_or_else(|| KeyError::NotFound(name.to_string()))
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let mut keys = self.0.lock();
        // The keyring's own entry in `removed` is the last one once configuration let go.
        keys.removed.retain(|key| Arc::strong_count(&key.0) > 1);
        // The keyring holds one reference to each key it lists, in `live` or `removed`.
        let info = |key: &KeyRef| KeyInfo {
            name: key.0.name.clone(),
            module: FILE_MODULE,
            path: key.0.path.clone(),
            removed: key.is_removed(),
            probed: false,
            refcnt: Arc::strong_count(&key.0) - 1,
        };
        keys.live.values().chain(keys.removed.iter()).map(info).collect()
    }
}

fn read_key_file(path: &Path) -> Result<Secret, KeyError> {
    if !path.is_absolute() {
        return Err(KeyError::RelativePath(path.to_path_buf()));
    }
    let unreadable = |err: std::io::Error| KeyError::Unreadable { path: path.to_path_buf(), reason: err.to_string() };
    // O_NOFOLLOW: a symlink would let whoever owns the link's directory point it elsewhere
    // after the checks; the checks apply to the file actually opened (fstat, not stat).
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile(path.to_path_buf()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: path.to_path_buf(), mode });
    }
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        return Err(KeyError::WrongOwner { path: path.to_path_buf(), owner: meta.uid(), ours });
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge { path: path.to_path_buf(), bytes: meta.len() });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    // One byte past the limit shows a file that grew after the fstat.
    file.by_ref().take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge { path: path.to_path_buf(), bytes: bytes.len() as u64 });
    }
    let kept = bytes.iter().rposition(|byte| !byte.is_ascii_whitespace()).map_or(0, |last| last + 1);
    bytes.truncate(kept);
    if bytes.is_empty() {
        return Err(KeyError::Empty(path.to_path_buf()));
    }
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests;

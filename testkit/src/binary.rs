//! Where the `peerless-tgt` executable is.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::target::{Launch, Target};
use crate::WAIT;

const NAME: &str = "peerless-tgt";

/// The `peerless-tgt` executable a test runs.
#[derive(Clone, Debug)]
pub struct Binary {
    path: PathBuf,
}

impl Binary {
    /// The binary at `path`. Tests in the crate that defines it pass
    /// `env!("CARGO_BIN_EXE_peerless-tgt")`: cargo builds it for them.
    #[track_caller]
    pub fn at(path: impl Into<PathBuf>) -> Binary {
        let path = path.into();
        assert!(path.is_file(), "{NAME} is missing at {}", path.display());
        Binary { path }
    }

    /// The binary built beside this test executable. Cargo sets `CARGO_BIN_EXE_*` only
    /// for a package's own binaries, so other crates look in the test's own profile
    /// directory (tests run from `<target dir>/<profile>/deps/`). Building it from a
    /// test would race other builds, so a missing binary is a panic that names
    /// `build_command`, the command that builds it the way these tests expect.
    #[track_caller]
    pub fn beside_test(build_command: &str) -> Binary {
        let exe = std::env::current_exe().expect("the test knows its own path");
        match locate(&exe, build_command) {
            Ok(path) => Binary { path },
            Err(why) => panic!("{why}"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the binary to completion with `args` and nothing added (usage errors,
    /// `--help`, start-up failures), bounded by [`WAIT`].
    #[track_caller]
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        crate::run(Command::new(&self.path).args(args), WAIT)
    }

    /// A target to configure before starting it; `test` names its scratch directory.
    pub fn launch(&self, test: &str) -> Launch {
        Launch::new(self.clone(), test)
    }

    /// Starts a target in interrupt mode with `args` added and waits until it is
    /// initialized (or only until its socket opens, with `--wait-for-rpc`).
    #[track_caller]
    pub fn start(&self, test: &str, args: &[&str]) -> Target {
        self.launch(test).args(args).start()
    }
}

/// `peerless-tgt` in the profile directory of the test executable `exe`, or a message
/// saying where it was expected and how to build it.
fn locate(exe: &Path, build_command: &str) -> Result<PathBuf, String> {
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target dir>/<profile>/deps/", exe.display()))?;
    let path = profile_dir.join(NAME);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{NAME} is missing at {}: run `{build_command}` (same profile and target dir as the tests) first, \
             or `cargo build --workspace --all-targets`",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scratch;

    #[test]
    fn the_binary_is_found_in_the_profile_dir_of_the_test() {
        let dir = Scratch::new("locate");
        let deps = dir.join("debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("nvmf_e2e-0123");
        let why = locate(&exe, "cargo build -p peerless-target").unwrap_err();
        assert!(why.contains(&format!("missing at {}", dir.join("debug/peerless-tgt").display())), "{why}");
        assert!(why.contains("run `cargo build -p peerless-target`"), "{why}");
        std::fs::write(dir.join("debug/peerless-tgt"), b"").unwrap();
        assert_eq!(locate(&exe, "unused").unwrap(), dir.join("debug/peerless-tgt"));
    }
}

//! A running `peerless-tgt` process.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::process::{kill, wait_within, POLL_INTERVAL};
use crate::{Binary, Client, Scratch, STOP_GRACE, WAIT};

/// How much of the target's log a failing test prints: the end, where the failure is.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
const WAIT_FOR_RPC: &str = "--wait-for-rpc";
const INTERRUPT_MODE: &str = "--interrupt-mode";
const POLL_MODE: &str = "--poll-mode";

/// How the target's reactors wait for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Interrupt,
    Poll,
    /// The target's default: no mode flag.
    Adaptive,
}

/// A target to configure before it starts: [`Binary::launch`].
#[must_use = "a Launch does nothing until start()"]
pub struct Launch {
    binary: Binary,
    test: String,
    args: Vec<OsString>,
    mode: Mode,
    stop_grace: Duration,
}

impl Launch {
    pub(crate) fn new(binary: Binary, test: &str) -> Launch {
        Launch { binary, test: test.to_string(), args: Vec::new(), mode: Mode::Interrupt, stop_grace: STOP_GRACE }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self
    }

    /// Busy-polling reactors (`--poll-mode`) instead of the harness's default
    /// `--interrupt-mode`. Interrupt mode is the default because tests share a small
    /// machine: a polling target keeps a core busy per reactor for as long as it runs.
    pub fn poll_mode(mut self) -> Launch {
        self.mode = Mode::Poll;
        self
    }

    /// The target's own default, adaptive mode: reactors poll for a window after work,
    /// then sleep (no mode flag).
    pub fn adaptive_mode(mut self) -> Launch {
        self.mode = Mode::Adaptive;
        self
    }

    /// How long the process has to exit after SIGTERM, in [`Target::stop`] and on drop,
    /// before it is killed ([`STOP_GRACE`] unless set).
    pub fn stop_grace(mut self, grace: Duration) -> Launch {
        self.stop_grace = grace;
        self
    }

    /// Starts the process with `-r <scratch>/rpc.sock`, its stdout and stderr going to
    /// `<scratch>/peerless-tgt.log`, and waits for its socket, then (as SPDK's scripts
    /// do, since the socket opens before init and config are done) for
    /// `framework_wait_init`, unless it was given `--wait-for-rpc`.
    #[track_caller]
    pub fn start(self) -> Target {
        let scratch = Scratch::new(&self.test);
        let socket = scratch.join("rpc.sock");
        let log = scratch.join("peerless-tgt.log");
        // A file rather than a pipe: nobody drains a pipe while the test runs, and a
        // full one would stall the target on its next log line.
        let log_file = File::create(&log).unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let stdout = log_file.try_clone().unwrap_or_else(|err| panic!("cannot share {}: {err}", log.display()));
        let mut command = Command::new(self.binary.path());
        command.arg("-r").arg(&socket);
        let mode_flag = match self.mode {
            Mode::Interrupt => Some(INTERRUPT_MODE),
            Mode::Poll => Some(POLL_MODE),
            Mode::Adaptive => None,
        };
        // A mode flag among the test's own arguments wins.
        let mode_given = self.args.iter().any(|arg| arg == INTERRUPT_MODE || arg == POLL_MODE);
        if let Some(flag) = mode_flag.filter(|_| !mode_given) {
            command.arg(flag);
        }
        command.args(&self.args).stdin(Stdio::null()).stdout(stdout).stderr(log_file);
        let child =
            command.spawn().unwrap_or_else(|err| panic!("cannot start {}: {err}", self.binary.path().display()));
        let wait_for_rpc = self.args.iter().any(|arg| arg == WAIT_FOR_RPC);
        // From here on, a panic drops the Target, which stops the process and prints its log.
        let mut target =
            Target { child, socket, log, status: None, stop_grace: self.stop_grace, test: self.test, scratch };
        target.wait_for_socket();
        if !wait_for_rpc {
            assert_eq!(target.call("framework_wait_init", None), json!(true), "framework_wait_init");
        }
        target
    }
}

/// A running `peerless-tgt`. Dropping it stops the process: SIGTERM, then SIGKILL after
/// [`STOP_GRACE`] (or [`Launch::stop_grace`]); dropping it while the test panics also
/// prints the end of its log.
pub struct Target {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// Set once the process has been reaped: its pid may then belong to someone else.
    status: Option<ExitStatus>,
    stop_grace: Duration,
    test: String,
    /// Fields drop after `Drop::drop` has stopped the process, so the directory (and the
    /// log in it) outlives the process.
    scratch: Scratch,
}

impl Target {
    /// The JSON-RPC socket (`-r`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The target's scratch directory, a place for config files and other per-test
    /// files; removed with the Target unless the test panics.
    pub fn dir(&self) -> &Path {
        &self.scratch
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new connection to the RPC socket.
    #[track_caller]
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Calls a method that must succeed, on a connection of its own; returns its result.
    #[track_caller]
    pub fn call(&self, method: &str, params: Option<Value>) -> Value {
        self.client().call(method, params)
    }

    /// Calls a method that must fail, on a connection of its own; returns the error's
    /// (code, message).
    #[track_caller]
    pub fn call_err(&self, method: &str, params: Option<Value>) -> (i64, String) {
        self.client().call_err(method, params)
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_else(|err| panic!("cannot read {}: {err}", self.log.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Sends `signal` to the process, which must still be running.
    #[track_caller]
    pub fn signal(&mut self, signal: Signal) {
        assert!(self.exit_status().is_none(), "{} exited before {signal}", self.describe());
        nix::sys::signal::kill(self.nix_pid(), signal)
            .unwrap_or_else(|err| panic!("cannot send {signal} to {}: {err}", self.describe()));
    }

    /// The exit status if the process has exited, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|err| panic!("cannot poll {}: {err}", self.describe()));
        }
        self.status
    }

    /// Waits, up to [`WAIT`], for the process to exit on its own (after an RPC or a
    /// signal asked it to).
    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(WAIT)
    }

    /// Waits, up to `timeout`, for the process to exit on its own.
    #[track_caller]
    pub fn wait_exit_within(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        self.status = wait_within(&mut self.child, timeout);
        match self.status {
            Some(status) => status,
            None => panic!("{} did not exit within {timeout:?}", self.describe()),
        }
    }

    /// Stops the process as an operator would, with SIGTERM, and returns its exit
    /// status, for tests of clean shutdown. One that is still running after its stop
    /// grace ([`STOP_GRACE`] unless [`Launch::stop_grace`] said otherwise) is killed and
    /// the test fails.
    #[track_caller]
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_within(self.stop_grace)
    }

    /// [`Target::stop`] with a bound of the test's choosing.
    #[track_caller]
    pub fn stop_within(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        self.signal(Signal::SIGTERM);
        match wait_within(&mut self.child, timeout) {
            Some(status) => *self.status.insert(status),
            None => {
                self.status = Some(kill(&mut self.child));
                panic!("{} was still running {timeout:?} after SIGTERM and was killed", self.describe())
            }
        }
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.exit_status() {
                panic!("{} exited with {status} before opening {}", self.describe(), self.socket.display());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not open {} within {WAIT:?}",
                self.describe(),
                self.socket.display()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a Linux pid fits in i32"))
    }

    fn describe(&self) -> String {
        format!("peerless-tgt (test {}, pid {})", self.test, self.child.id())
    }

    /// The last [`LOG_TAIL_BYTES`] of the log.
    fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(&self.log) else { return format!("(no log at {})", self.log.display()) };
        let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let skipped = length.saturating_sub(LOG_TAIL_BYTES);
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(skipped)).and_then(|_| file.read_to_end(&mut bytes)).is_err() {
            return format!("(cannot read {})", self.log.display());
        }
        let text = String::from_utf8_lossy(&bytes);
        if skipped > 0 {
            format!("[... {skipped} earlier bytes in {}]\n{text}", self.log.display())
        } else {
            text.into_owned()
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(self.nix_pid(), Signal::SIGTERM);
            if wait_within(&mut self.child, self.stop_grace).is_none() {
                kill(&mut self.child);
                eprintln!("{} ignored SIGTERM for {:?} and was killed", self.describe(), self.stop_grace);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}---- end of log ----", self.describe(), self.log_tail());
        }
    }
}

//! Bounded waits on child processes.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a wait looks at the child again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `command` to completion with stdout and stderr captured, like
/// `Command::output`, but kills it and panics (showing what it printed) if it is still
/// running after `timeout`.
#[track_caller]
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
    // Both pipes are drained while the child runs: one that fills would stall it.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_within(&mut child, timeout);
    let output =
        Output { status: status.unwrap_or_else(|| kill(&mut child)), stdout: join(stdout), stderr: join(stderr) };
    assert!(
        status.is_some(),
        "{program} was still running after {timeout:?} and was killed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The child's exit status once it exits, or `None` if it is still running after
/// `timeout`.
pub(crate) fn wait_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(err) => panic!("cannot wait for process {}: {err}", child.id()),
        }
    }
}

/// SIGKILL and reap: a killed process exits at once, so this wait needs no bound.
pub(crate) fn kill(child: &mut Child) -> ExitStatus {
    let _ = child.kill();
    child.wait().unwrap_or_else(|err| panic!("cannot reap process {}: {err}", child.id()))
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
}

fn join(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.map(|reader| reader.join().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_both_streams_and_the_status() {
        let output = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }

    #[test]
    fn run_kills_a_process_that_outlives_its_bound() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| run(Command::new("sleep").arg("30"), Duration::from_millis(200)));
        let message = *result.expect_err("a run past its bound fails").downcast::<String>().expect("a text panic");
        assert!(message.contains("still running after 200ms and was killed"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10), "the sleeper was not killed");
    }

    #[test]
    fn wait_within_returns_none_while_the_child_runs() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep runs");
        assert_eq!(wait_within(&mut child, Duration::from_millis(50)), None);
        assert!(!kill(&mut child).success());
    }
}

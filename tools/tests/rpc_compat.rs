//! Runs `rpc_compat.py` (Python standard library only) against the real target: it
//! sends exactly what SPDK's rpc.py sends for every method Peerless answers.

mod support;

use std::process::Command;
use std::time::Duration;

/// The script starts and stops targets of its own and bounds each of its reads; this
/// bounds the whole (python3 comes from ci/packages).
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

#[test]
fn rpc_py_requests_work_unchanged() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rpc_compat.py");
    let output = peerless_testkit::run(Command::new("python3").arg(script).arg(support::tgt().path()), SCRIPT_WAIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rpc_compat.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

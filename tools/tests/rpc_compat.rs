//! Runs `rpc_compat.py` (Python standard library only) against the real target: it
//! sends exactly what SPDK's rpc.py sends for every method Peerless answers.

mod support;

use std::process::Command;

#[test]
fn rpc_py_requests_work_unchanged() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rpc_compat.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(support::target_binary())
        .output()
        .expect("python3 runs (ci/packages installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rpc_compat.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

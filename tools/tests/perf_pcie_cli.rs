//! `peerless-perf -r 'trtype:PCIe ...'` refusals from the real binary: an address with no
//! function behind it (this host has no PCI NVMe device; the guest job
//! ci/guest/jobs/nvme-perf.sh runs the real thing), malformed addresses and fabric-only
//! options each end with the reason and exit status 1, never a panic.

use std::process::Command;

/// Runs peerless-perf with `args`; its exit code and stderr.
fn perf(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_peerless-perf")).args(args).output().expect("run peerless-perf");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn refused(args: &[&str], fragment: &str) {
    let (code, stderr) = perf(args);
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(stderr.contains(fragment), "{args:?}: no {fragment:?} in {stderr}");
}

const RUN: [&str; 8] = ["-q", "1", "-o", "4096", "-w", "read", "-t", "1"];

#[test]
fn pcie_runs_are_refused_with_the_reason() {
    // Bus ff device 1f function 7: nothing there on any machine this runs on.
    let absent = [&["-r", "trtype:PCIe traddr:0000:ff:1f.7"][..], &RUN].concat();
    refused(&absent, "no PCI function 0000:ff:1f.7");
    refused(&["identify", "-r", "trtype:PCIe traddr:ff:1f.7"], "no PCI function 0000:ff:1f.7");
    for bad in ["0000:00:04", "0000:00:04.9", "00:20.0", "nvme0"] {
        let trid = format!("trtype:PCIe traddr:{bad}");
        refused(&[&["-r", trid.as_str()][..], &RUN].concat(), "is not a PCI address like 0000:00:04.0");
        refused(&["identify", "-r", trid.as_str()], "is not a PCI address like 0000:00:04.0");
    }
    let trid = "trtype:PCIe traddr:0000:ff:1f.7";
    refused(&[&["-r", trid, "-H"][..], &RUN].concat(), "-H applies to fabrics");
    refused(&[&["-r", trid, "--kato-ms", "5000"][..], &RUN].concat(), "--kato-ms applies to fabrics");
    refused(
        &["-r", trid, "-P", "2", "-q", "4", "-o", "4096", "-w", "read", "-t", "1"],
        "-P 2: trtype PCIe runs one queue",
    );
    refused(&["identify", "-r", trid, "--hostnqn", "nqn.x"], "--hostnqn applies to fabrics");
    refused(
        &[&["-r", "trtype:PCIe traddr:0000:ff:1f.7 trsvcid:4420"][..], &RUN].concat(),
        "trsvcid applies to fabrics",
    );
}

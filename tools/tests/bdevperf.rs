//! peerless-bdevperf as a user runs it: a JSON config, a workload, a summary.

use std::process::Command;

use serde_json::Value;

fn run(config: &str, args: &[&str]) -> (bool, Value, String) {
    let dir = std::env::temp_dir().join(format!(
        "peerless-bdevperf-{}-{}",
        std::process::id(),
        args.join("_").replace('/', "")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_peerless-bdevperf"))
        .arg("-c")
        .arg(&path)
        .args(["-t", "1", "--json"])
        .args(args)
        .output()
        .expect("run peerless-bdevperf");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let summary = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.success(), summary, stderr)
}

const CONFIG: &str = r#"{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":65536,"block_size":512}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":65536,"block_size":512}}]}]}"#;

#[test]
fn every_workload_runs_and_reports() {
    for (bdev, workload) in [("Null0", "randread"), ("Null0", "randwrite"), ("Malloc0", "rw"), ("Malloc0", "verify")] {
        let (ok, summary, stderr) = run(CONFIG, &["-b", bdev, "-w", workload, "-q", "16", "-o", "4096"]);
        assert!(ok, "{bdev} {workload}: {stderr}");
        assert!(summary["iops"].as_f64().unwrap() > 1000.0, "{bdev} {workload}: {summary}");
        assert_eq!(summary["errors"], 0);
        assert_eq!(summary["mismatches"], 0);
        assert!(stderr.contains("[   1 s] IOPS:"), "a line per second: {stderr}");
        assert!(stderr.contains("per-I/O cost"), "{stderr}");
    }
}

#[test]
fn verify_catches_corruption_and_latency_tracking_gives_percentiles() {
    // An error bdev that corrupts reads: verify must count mismatches and fail the run.
    let corrupting = r#"{"subsystems":[{"subsystem":"bdev","config":[
      {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":65536,"block_size":512}},
      {"method":"bdev_error_create","params":{"base_name":"Malloc0"}},
      {"method":"bdev_error_inject_error","params":{"name":"EE_Malloc0","io_type":"read","error_type":"corrupt_data","num":5,"corrupt_offset":100,"corrupt_value":255}}]}]}"#;
    let (ok, summary, stderr) = run(corrupting, &["-b", "EE_Malloc0", "-w", "verify", "-q", "8"]);
    assert!(!ok, "corruption must fail the run: {stderr}");
    assert_eq!(summary["mismatches"], 5, "{summary}");
    let (ok, summary, stderr) = run(CONFIG, &["-b", "Null0", "-L"]);
    assert!(ok, "{stderr}");
    let p99 = summary["latency_us"]["p99"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 >= summary["latency_us"]["p50"].as_f64().unwrap(), "{summary}");
}

#[test]
fn bad_input_is_explained() {
    let (ok, _, stderr) = run(CONFIG, &["-w", "sideways"]);
    assert!(!ok && stderr.contains("-w \"sideways\""), "{stderr}");
    let (ok, _, stderr) = run(r#"{"subsystems":[]}"#, &[]);
    assert!(!ok && stderr.contains("creates no bdev"), "{stderr}");
}

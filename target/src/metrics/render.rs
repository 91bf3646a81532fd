//! A [`Snapshot`] in Prometheus's text exposition format (version 0.0.4), written by the
//! Prometheus project's own client library (`prometheus-client`), which does the
//! naming suffixes, label escaping and number formatting the format requires.
//!
//! Counters are cumulative since the target started (or since an operator reset bdev
//! statistics with `bdev_get_iostat --reset-mode`); gauges are the state at the scrape.
//! The bdev layer keeps sums, maxima and minima of latency, not a distribution, so the
//! latencies are exported as total seconds per operation type plus the maximum: a rate of
//! the sum divided by a rate of the operations is the mean latency over any window.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::sync::atomic::AtomicU64;

use super::collect::Snapshot;

pub use prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

fn int(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Builds one registry per scrape from plain values.
struct Exposition {
    registry: Registry,
}

/// The library ends every HELP text with a period of its own.
fn help_text(help: &str) -> &str {
    help.trim_end_matches('.')
}

impl Exposition {
    fn counter(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (set, value) in rows {
            family.get_or_create(&set).inc_by(value);
        }
        self.registry.register(name, help_text(help), family);
    }

    fn seconds(&mut self, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (set, value) in rows {
            family.get_or_create(&set).inc_by(value);
        }
        self.registry.register(name, help_text(help), family);
    }

    fn gauge(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (set, value) in rows {
            family.get_or_create(&set).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.registry.register(name, help_text(help), family);
    }

    fn gauge_seconds(&mut self, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (set, value) in rows {
            family.get_or_create(&set).set(value);
        }
        self.registry.register(name, help_text(help), family);
    }
}

/// The exposition of one scrape.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = Exposition { registry: Registry::with_prefix("peerless") };
    out.gauge(
        "build_info",
        "Always 1; the version label names the running peerless-tgt.",
        vec![(labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1)],
    );
    bdevs(&mut out, &snapshot.iostat);
    subsystems(&mut out, snapshot);
    poll_groups(&mut out, &snapshot.nvmf_stats, &snapshot.threads);
    memory(&mut out, &snapshot.mem);
    out.counter(
        "nvmf_connect_refusals",
        "Fabrics Connect commands refused, by the host NQN they carried (\"\" when unreadable, \"*\" for hosts beyond the first 1024).",
        snapshot.connect_refusals.iter().map(|(host, count)| (labels(&[("hostnqn", host)]), *count)).collect(),
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &out.registry);
    text
}

fn bdevs(out: &mut Exposition, iostat: &Value) {
    let tick_rate = iostat["tick_rate"].as_f64().filter(|rate| *rate > 0.0).unwrap_or(1e9);
    let rows: Vec<(&str, &Value)> = iostat["bdevs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|bdev| Some((bdev["name"].as_str()?, bdev)))
        .collect();
    let per = |key: &str| -> Vec<(Labels, u64)> {
        rows.iter().map(|(name, bdev)| (labels(&[("bdev", name)]), int(&bdev[key]))).collect()
    };
    let secs = |key: &str| -> Vec<(Labels, f64)> {
        rows.iter().map(|(name, bdev)| (labels(&[("bdev", name)]), int(&bdev[key]) as f64 / tick_rate)).collect()
    };
    for op in ["read", "write", "unmap"] {
        let (ops, bytes) = match op {
            "read" => ("num_read_ops", "bytes_read"),
            "write" => ("num_write_ops", "bytes_written"),
            _ => ("num_unmap_ops", "bytes_unmapped"),
        };
        out.counter(&format!("bdev_{op}_ops"), &format!("Successful {op} I/O completed by the bdev."), per(ops));
        out.counter(&format!("bdev_{op}_bytes"), &format!("Bytes of successful {op} I/O."), per(bytes));
        out.seconds(
            &format!("bdev_{op}_latency_seconds"),
            &format!("Summed latency of successful {op} I/O, submission to completion (no histogram is kept)."),
            secs(&format!("{op}_latency_ticks")),
        );
        out.gauge_seconds(
            &format!("bdev_{op}_latency_max_seconds"),
            &format!("Longest {op} I/O since start or the last max/min reset."),
            secs(&format!("max_{op}_latency_ticks")),
        );
    }
    let mut errors = Vec::new();
    for (name, bdev) in &rows {
        for (status, count) in bdev["io_error"].as_object().into_iter().flatten() {
            errors.push((labels(&[("bdev", name), ("status", status)]), int(count)));
        }
    }
    out.counter("bdev_io_errors", "Failed I/O by NVMe status.", errors);
    let driver = |key: &str| -> Vec<(Labels, u64)> {
        rows.iter().map(|(name, bdev)| (labels(&[("bdev", name)]), int(&bdev["driver_specific"][key]))).collect()
    };
    out.counter(
        "bdev_bounced_ios",
        "I/O whose buffers were copied through host memory because the bdev cannot DMA from their domain.",
        driver("bounced_ios"),
    );
    out.counter("bdev_nomem_retries", "Times an I/O waited for the bdev module's resources.", driver("nomem_retries"));
}

fn subsystems(out: &mut Exposition, snapshot: &Snapshot) {
    let mut namespaces = Vec::new();
    let mut controllers = Vec::new();
    let mut qpairs = Vec::new();
    let mut listeners = Vec::new();
    let mut hosts = Vec::new();
    for entry in &snapshot.subsystems {
        let Some(nqn) = entry.subsystem["nqn"].as_str() else { continue };
        let set = labels(&[("nqn", nqn)]);
        let count = |key: &str| entry.subsystem[key].as_array().map_or(0, |list| list.len() as u64);
        let ctrlrs = entry.controllers.as_array().map(Vec::as_slice).unwrap_or_default();
        // Each controller has its admin queue plus its I/O queues.
        let queues: u64 = ctrlrs.iter().map(|ctrlr| 1 + int(&ctrlr["num_io_qpairs"])).sum();
        namespaces.push((set.clone(), count("namespaces")));
        listeners.push((set.clone(), count("listen_addresses")));
        hosts.push((set.clone(), count("hosts")));
        controllers.push((set.clone(), ctrlrs.len() as u64));
        qpairs.push((set, queues));
    }
    out.gauge("nvmf_subsystem_namespaces", "Namespaces of the subsystem.", namespaces);
    out.gauge("nvmf_subsystem_controllers", "Connected controllers of the subsystem.", controllers);
    out.gauge("nvmf_subsystem_qpairs", "Queue pairs of the subsystem's controllers, admin queues included.", qpairs);
    out.gauge("nvmf_subsystem_listeners", "Addresses the subsystem listens on.", listeners);
    out.gauge("nvmf_subsystem_allowed_hosts", "Host NQNs on the subsystem's allow-list.", hosts);
}

fn poll_groups(out: &mut Exposition, stats: &Value, threads: &Value) {
    let groups: Vec<(&str, &Value)> = stats["poll_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|group| Some((group["name"].as_str()?, group)))
        .collect();
    let per = |key: &str| -> Vec<(Labels, u64)> {
        groups.iter().map(|(name, group)| (labels(&[("poll_group", name)]), int(&group[key]))).collect()
    };
    out.counter("nvmf_poll_group_admin_qpairs", "Admin queue pairs the poll group has taken.", per("admin_qpairs"));
    out.counter("nvmf_poll_group_io_qpairs", "I/O queue pairs the poll group has taken.", per("io_qpairs"));
    out.gauge(
        "nvmf_poll_group_current_admin_qpairs",
        "Admin queue pairs now on the poll group.",
        per("current_admin_qpairs"),
    );
    out.gauge("nvmf_poll_group_current_io_qpairs", "I/O queue pairs now on the poll group.", per("current_io_qpairs"));
    out.gauge("nvmf_poll_group_pending_bdev_io", "Commands now waiting for their bdev.", per("pending_bdev_io"));
    out.counter(
        "nvmf_poll_group_completed_nvme_io",
        "NVMe I/O commands the poll group completed.",
        per("completed_nvme_io"),
    );
    out.counter(
        "nvmf_poll_group_buffer_waits",
        "Commands that waited for a transport data buffer.",
        per("pending_buffer_waits"),
    );

    let tick_rate = threads["tick_rate"].as_f64().filter(|rate| *rate > 0.0).unwrap_or(1e9);
    let all: Vec<(&str, &Value)> = threads["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|thread| Some((thread["name"].as_str()?, thread)))
        .collect();
    // A poll group is a lightweight thread of the same name.
    let time = |key: &str, label: &str, only_groups: bool| -> Vec<(Labels, f64)> {
        all.iter()
            .filter(|(name, _)| !only_groups || groups.iter().any(|(group, _)| group == name))
            .map(|(name, thread)| (labels(&[(label, name)]), int(&thread[key]) as f64 / tick_rate))
            .collect()
    };
    out.seconds(
        "nvmf_poll_group_busy_seconds",
        "Time the poll group's thread did work.",
        time("busy", "poll_group", true),
    );
    out.seconds(
        "nvmf_poll_group_idle_seconds",
        "Time the poll group's thread found nothing to do.",
        time("idle", "poll_group", true),
    );
    out.seconds("thread_busy_seconds", "Time each lightweight thread did work.", time("busy", "thread", false));
    out.seconds(
        "thread_idle_seconds",
        "Time each lightweight thread found nothing to do.",
        time("idle", "thread", false),
    );
}

fn memory(out: &mut Exposition, mem: &Value) {
    let keyed = |object: &Value, label: &str, keys: &[&str]| -> Vec<(Labels, u64)> {
        keys.iter().map(|key| (labels(&[(label, key)]), int(&object[*key]))).collect()
    };
    out.counter(
        "payload_bytes",
        "Command payload bytes placed in data buffers, by memory kind.",
        keyed(&mem["payload_bytes"], "kind", &["host", "iomem", "device"]),
    );
    out.counter(
        "cpu_bytes",
        "Bytes the CPU touched through the memory gate, by path.",
        keyed(&mem["cpu_bytes"], "path", &["direct", "io_accessor", "bounce"]),
    );
    out.counter(
        "p2p_fallbacks",
        "Commands that wanted P2P memory and fell back to host memory.",
        vec![(Labels::new(), int(&mem["p2p_fallbacks"]))],
    );
    out.counter(
        "memory_gate_refusals",
        "CPU accesses the memory gate refused (device memory).",
        vec![(Labels::new(), int(&mem["refused"]))],
    );

    let pools: Vec<(&str, &Value)> = mem["data_buffers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pool| Some((pool["trtype"].as_str()?, pool)))
        .collect();
    let per_pool = |key: &str| -> Vec<(Labels, u64)> {
        pools.iter().map(|(trtype, pool)| (labels(&[("trtype", trtype)]), int(&pool[key]))).collect()
    };
    out.gauge("nvmf_data_buffer_bytes", "DMA memory of the transport's data buffer pool.", per_pool("bytes"));
    out.gauge("nvmf_data_buffers", "Buffers of each size class in the pool.", per_pool("buffers_per_class"));
    out.gauge(
        "nvmf_data_buffer_cache_per_poll_group",
        "Buffers of each class each poll group caches.",
        per_pool("cache_per_poll_group"),
    );
    let mut free = Vec::new();
    for (trtype, pool) in &pools {
        free.push((labels(&[("trtype", trtype), ("class", "small")]), int(&pool["small_free"])));
        free.push((labels(&[("trtype", trtype), ("class", "large")]), int(&pool["large_free"])));
    }
    out.gauge("nvmf_data_buffers_free", "Buffers now free in the shared pool (not counting poll group caches).", free);

    let providers: Vec<(&str, &str, &Value)> = mem["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|provider| Some((provider["name"].as_str()?, provider["kind"].as_str().unwrap_or(""), provider)))
        .collect();
    let per_provider = |key: &str| -> Vec<(Labels, u64)> {
        providers
            .iter()
            .map(|(name, kind, provider)| (labels(&[("provider", name), ("kind", kind)]), int(&provider[key])))
            .collect()
    };
    out.gauge("p2p_provider_size_bytes", "Device memory a P2P provider offers.", per_provider("size"));
    out.gauge("p2p_provider_free_bytes", "Device memory of a P2P provider not in use.", per_provider("free"));
}

#[cfg(test)]
mod tests {
    use super::super::collect::SubsystemSnapshot;
    use super::*;
    use serde_json::json;

    fn sample() -> Snapshot {
        Snapshot {
            iostat: json!({"tick_rate": 1_000_000_000u64, "ticks": 5, "bdevs": [{
                "name": "Malloc0", "bytes_read": 8192, "num_read_ops": 2, "bytes_written": 512, "num_write_ops": 1,
                "bytes_unmapped": 0, "num_unmap_ops": 0, "read_latency_ticks": 3_000_000_000u64,
                "max_read_latency_ticks": 2_500_000_000u64, "write_latency_ticks": 10, "max_write_latency_ticks": 10,
                "unmap_latency_ticks": 0, "max_unmap_latency_ticks": 0,
                "io_error": {"unrecovered read error": 4},
                "driver_specific": {"bounced_ios": 1, "nomem_retries": 0}}]}),
            nvmf_stats: json!({"tick_rate": 1_000_000_000u64, "poll_groups": [{"name": "nvmf_tgt_poll_group_000",
                "admin_qpairs": 3, "io_qpairs": 6, "current_admin_qpairs": 1, "current_io_qpairs": 2,
                "current_unassociated_qpairs": 0, "pending_bdev_io": 0, "completed_nvme_io": 77,
                "pending_buffer_waits": 5, "transports": [{"trtype": "TCP"}]}]}),
            threads: json!({"tick_rate": 1_000_000_000u64, "threads": [
                {"name": "app_thread", "id": 1, "busy": 1_000_000_000u64, "idle": 0},
                {"name": "nvmf_tgt_poll_group_000", "id": 2, "busy": 500_000_000u64, "idle": 1_500_000_000u64}]}),
            mem: json!({"payload_bytes": {"host": 4096, "iomem": 8192, "device": 0},
                "cpu_bytes": {"direct": 1, "io_accessor": 2, "bounce": 3}, "p2p_fallbacks": 6, "buffer_waits": 5,
                "data_buffers": [{"trtype": "TCP", "bytes": 71_303_168u64, "buffers_per_class": 511,
                    "cache_per_poll_group": 32, "small_free": 479, "large_free": 470}],
                "refused": 0, "providers": [{"name": "Sim0", "kind": "emulated-cmb", "size": 64, "free": 60}]}),
            subsystems: vec![SubsystemSnapshot {
                subsystem: json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_addresses": [{}], "hosts": [],
                    "namespaces": [{"nsid": 1}, {"nsid": 2}]}),
                controllers: json!([{"cntlid": 1, "num_io_qpairs": 2}]),
            }],
            connect_refusals: vec![("nqn.2014-08.io.example:\"odd\"".to_string(), 3)],
        }
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_in_the_text_format() {
        let text = render(&sample());
        let checks: [(&str, f64); 16] = [
            ("peerless_bdev_read_ops_total{bdev=\"Malloc0\"}", 2.0),
            ("peerless_bdev_read_bytes_total{bdev=\"Malloc0\"}", 8192.0),
            ("peerless_bdev_read_latency_seconds_total{bdev=\"Malloc0\"}", 3.0),
            ("peerless_bdev_read_latency_max_seconds{bdev=\"Malloc0\"}", 2.5),
            ("peerless_bdev_io_errors_total{bdev=\"Malloc0\",status=\"unrecovered read error\"}", 4.0),
            ("peerless_nvmf_subsystem_namespaces{nqn=\"nqn.2016-06.io.spdk:cnode1\"}", 2.0),
            ("peerless_nvmf_subsystem_controllers{nqn=\"nqn.2016-06.io.spdk:cnode1\"}", 1.0),
            ("peerless_nvmf_subsystem_qpairs{nqn=\"nqn.2016-06.io.spdk:cnode1\"}", 3.0),
            ("peerless_nvmf_poll_group_completed_nvme_io_total{poll_group=\"nvmf_tgt_poll_group_000\"}", 77.0),
            ("peerless_nvmf_poll_group_busy_seconds_total{poll_group=\"nvmf_tgt_poll_group_000\"}", 0.5),
            ("peerless_nvmf_poll_group_idle_seconds_total{poll_group=\"nvmf_tgt_poll_group_000\"}", 1.5),
            ("peerless_thread_busy_seconds_total{thread=\"app_thread\"}", 1.0),
            ("peerless_payload_bytes_total{kind=\"iomem\"}", 8192.0),
            ("peerless_nvmf_data_buffers_free{trtype=\"TCP\",class=\"large\"}", 470.0),
            ("peerless_p2p_provider_free_bytes{provider=\"Sim0\",kind=\"emulated-cmb\"}", 60.0),
            // A host NQN is wire input: its quotes come out escaped, not breaking the line.
            ("peerless_nvmf_connect_refusals_total{hostnqn=\"nqn.2014-08.io.example:\\\"odd\\\"\"}", 3.0),
        ];
        for (series, expected) in checks {
            assert_eq!(sample_value(&text, series), Some(expected), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE peerless_bdev_read_ops_total counter\n"), "{text}");
        assert!(text.contains("# TYPE peerless_nvmf_subsystem_controllers gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "the 0.0.4 text format has no OpenMetrics EOF marker");
        assert!(text.lines().all(|line| line.starts_with('#') || line.starts_with("peerless_")), "{text}");
    }

    #[test]
    fn missing_answers_render_empty_families() {
        let empty = Snapshot {
            iostat: Value::Null,
            nvmf_stats: Value::Null,
            threads: Value::Null,
            mem: Value::Null,
            subsystems: Vec::new(),
            connect_refusals: Vec::new(),
        };
        let text = render(&empty);
        assert_eq!(sample_value(&text, "peerless_p2p_fallbacks_total"), Some(0.0));
        assert!(!text.contains("bdev=\""), "{text}");
    }
}

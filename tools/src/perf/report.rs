//! Turning worker reports into what a person reads: the live line per second, the
//! summary table, `-L` percentiles, the `--json` summary and the `--plot` SVG.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::worker::{new_histogram, Row, Tick};

const MIB: f64 = 1024.0 * 1024.0;
/// The table's device column is at least this wide (spdk_nvme_perf's width).
const MIN_NAME_WIDTH: usize = 56;
/// Percentiles `-L` prints, as spdk_nvme_perf's latency summary does.
const SUMMARY_PERCENTILES: [f64; 12] = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99];

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyUs {
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyUs {
    pub fn of(hist: &Histogram<u64>) -> LatencyUs {
        if hist.is_empty() {
            return LatencyUs::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyUs {
            avg: hist.mean() / 1000.0,
            p50: us(hist.value_at_quantile(0.5)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        }
    }
}

/// The `--json` summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub iops: f64,
    pub mibps: f64,
    pub latency_us: LatencyUs,
    pub ios: u64,
    pub errors: u64,
    pub mismatches: u64,
}

/// Collects the workers' ticks and prints a line when every worker reported a second.
pub struct Live {
    workers: usize,
    pending: Vec<(u64, usize, u64, u64, Histogram<u64>)>,
}

impl Live {
    pub fn new(workers: usize) -> Live {
        Live { workers, pending: Vec::new() }
    }

    pub fn add(&mut self, tick: Tick, out: &mut dyn Write) -> io::Result<()> {
        let at = match self.pending.iter().position(|p| p.0 == tick.second) {
            Some(at) => at,
            None => {
                self.pending.push((tick.second, 0, 0, 0, new_histogram()));
                self.pending.len() - 1
            }
        };
        let entry = &mut self.pending[at];
        entry.1 += 1;
        entry.2 += tick.ios;
        entry.3 += tick.bytes;
        // Both histograms share bounds; adding cannot fail, and if it did the line just shows less.
        let _ = entry.4.add(&tick.latency_ns);
        if entry.1 == self.workers {
            let (second, _, ios, bytes, hist) = self.pending.remove(at);
            let p99 = hist.value_at_quantile(0.99) as f64 / 1000.0;
            writeln!(out, "[{second:>4} s] IOPS: {ios:>10}  MiB/s: {:>10.2}  p99: {p99:>9.2} us", bytes as f64 / MIB)?;
        }
        Ok(())
    }
}

/// Totals over rows for `elapsed`.
pub fn summarize(rows: &[Row], elapsed: Duration, errors: u64, mismatches: u64) -> (Summary, Histogram<u64>) {
    let mut hist = new_histogram();
    let (mut ios, mut bytes) = (0u64, 0u64);
    for row in rows {
        let _ = hist.add(&row.latency_ns);
        ios += row.ios;
        bytes += row.bytes;
    }
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let summary = Summary {
        iops: ios as f64 / secs,
        mibps: bytes as f64 / MIB / secs,
        latency_us: LatencyUs::of(&hist),
        ios,
        errors,
        mismatches,
    };
    (summary, hist)
}

/// The end-of-run table, one row per (core, namespace), in spdk_nvme_perf's shape.
pub fn table(rows: &[Row], device: &str, elapsed: Duration, total: &Summary, out: &mut dyn Write) -> io::Result<()> {
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let names: Vec<String> =
        rows.iter().map(|row| format!("{device} NSID {} from core {}", row.nsid, row.core)).collect();
    // The name column fits the longest device name, as the numbers must line up.
    let width = names.iter().map(String::len).max().unwrap_or(0).max(MIN_NAME_WIDTH);
    let rule = "=".repeat(width + 2 + 6 * 11);
    writeln!(out, "{rule}")?;
    writeln!(out, "{:>w$}", "Latency(us)", w = rule.len())?;
    let columns = ["IOPS", "MiB/s", "Average", "p99", "min", "max"];
    write!(out, "{:<width$}: ", "Device Information")?;
    writeln!(out, "{}", columns.map(|c| format!("{c:>10}")).join(" "))?;
    for (row, name) in rows.iter().zip(&names) {
        let lat = LatencyUs::of(&row.latency_ns);
        let min = row.latency_ns.min() as f64 / 1000.0;
        let figures = [row.ios as f64 / secs, row.bytes as f64 / MIB / secs, lat.avg, lat.p99, min, lat.max];
        writeln!(out, "{name:<width$}: {}", figures.map(|f| format!("{f:>10.2}")).join(" "))?;
    }
    writeln!(out, "{rule}")?;
    let lat = &total.latency_us;
    let min_ns = rows.iter().filter(|r| !r.latency_ns.is_empty()).map(|r| r.latency_ns.min()).min().unwrap_or(0);
    let figures = [total.iops, total.mibps, lat.avg, lat.p99, min_ns as f64 / 1000.0, lat.max];
    writeln!(out, "{:<width$}: {}", "Total", figures.map(|f| format!("{f:>10.2}")).join(" "))?;
    if total.errors > 0 || total.mismatches > 0 {
        writeln!(out, "I/O errors: {}  verify mismatches (blocks): {}", total.errors, total.mismatches)?;
    }
    Ok(())
}

/// `-L`: percentiles; `-LL`: also the histogram's buckets.
pub fn latency_detail(hist: &Histogram<u64>, level: u8, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "\nSummary latency data:")?;
    writeln!(out, "{}", "=".repeat(46))?;
    for percent in SUMMARY_PERCENTILES {
        let us = hist.value_at_quantile(percent / 100.0) as f64 / 1000.0;
        writeln!(out, "{percent:>9.5}% : {us:>12.3} us")?;
    }
    if level > 1 {
        writeln!(out, "\nLatency histogram:\n{:>24} {:>12} {:>10}", "Range in us", "Cumulative", "IO count")?;
        let total = hist.len().max(1) as f64;
        let mut seen = 0u64;
        let mut low = 0.0;
        for step in hist.iter_log(1000, 2.0) {
            let count = step.count_since_last_iteration();
            seen += count;
            let high = step.value_iterated_to() as f64 / 1000.0;
            if count > 0 {
                writeln!(out, "{low:>11.3} - {high:>10.3}: {:>11.4}% {count:>10}", seen as f64 * 100.0 / total)?;
            }
            low = high;
        }
    }
    Ok(())
}

/// Points (x, y) where x = log10(1 / (1 - quantile)) and y = latency in us: the usual
/// percentile curve, on which 90%, 99% and 99.9% sit one unit apart.
fn curve(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for step in hist.iter_quantiles(4) {
        let quantile = step.quantile_iterated_to();
        if quantile >= 1.0 {
            break;
        }
        points.push(((1.0 / (1.0 - quantile)).log10(), step.value_iterated_to() as f64 / 1000.0));
    }
    points
}

/// The latency percentile curve as a self-contained SVG.
pub fn plot_svg(hist: &Histogram<u64>, title: &str) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 80.0;
    const BOTTOM: f64 = 60.0;
    const TOP: f64 = 40.0;
    const RIGHT: f64 = 30.0;
    let points = curve(hist);
    let x_max = points.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil();
    let y_max = (hist.max() as f64 / 1000.0).max(points.iter().map(|p| p.1).fold(1.0, f64::max)) * 1.05;
    let sx = |x: f64| LEFT + x / x_max * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - y / y_max * (H - BOTTOM - TOP);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ =
        writeln!(svg, r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#, W / 2.0, escape(title));
    let (x0, y0) = (sx(0.0), sy(0.0));
    let _ = writeln!(svg, r#"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/>"#, sx(x_max));
    let _ = writeln!(svg, r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#, sy(y_max));
    for decade in 0..=x_max as u32 {
        let x = sx(f64::from(decade));
        let label = 100.0 - 100.0 / 10f64.powi(decade as i32);
        let _ = writeln!(svg, r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#ddd"/>"##, sy(y_max));
        let _ = writeln!(svg, r#"<text x="{x}" y="{}" text-anchor="middle">{}%</text>"#, y0 + 18.0, trim(label));
    }
    for tick in 0..=5 {
        let value = y_max * f64::from(tick) / 5.0;
        let y = sy(value);
        let _ = writeln!(svg, r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/>"##, sx(x_max));
        let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{value:.1}</text>"#, x0 - 6.0, y + 4.0);
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#, W / 2.0, H - 16.0);
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency (us)</text>"#,
        H / 2.0,
        H / 2.0
    );
    let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
    let _ = writeln!(svg, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##, path.join(" "));
    svg.push_str("</svg>\n");
    svg
}

fn trim(value: f64) -> String {
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist_of(values_us: &[u64]) -> Histogram<u64> {
        let mut hist = new_histogram();
        for v in values_us {
            hist.record(v * 1000).expect("in range");
        }
        hist
    }

    #[test]
    fn summary_figures() {
        let rows = vec![Row { core: 0, nsid: 1, ios: 1000, bytes: 1000 * 4096, latency_ns: hist_of(&[10; 1000]) }];
        let (summary, _) = summarize(&rows, Duration::from_secs(2), 0, 0);
        assert_eq!(summary.iops, 500.0);
        assert!((summary.mibps - 1000.0 * 4096.0 / MIB / 2.0).abs() < 1e-9);
        assert!((summary.latency_us.p99 - 10.0).abs() < 0.01);
        let json = serde_json::to_value(&summary).expect("json");
        for key in ["iops", "mibps"] {
            assert!(json[key].is_number(), "{key}");
        }
        for key in ["avg", "p50", "p99", "p999", "max"] {
            assert!(json["latency_us"][key].is_number(), "{key}");
        }
        let mut text = Vec::new();
        table(&rows, "TCP (addr:x)", Duration::from_secs(2), &summary, &mut text).expect("table");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("NSID 1 from core 0") && text.contains("Total"), "{text}");
        let colons: Vec<usize> = text.lines().filter_map(|line| line.find(": ")).collect();
        assert_eq!(colons.len(), 3, "header, row, total: {text}");
        assert!(colons.iter().all(|c| *c == colons[0]), "columns line up: {text}");
    }

    #[test]
    fn live_line_waits_for_every_worker() {
        let mut live = Live::new(2);
        let mut out = Vec::new();
        let tick = |ios| Tick { second: 1, ios, bytes: ios * 4096, latency_ns: hist_of(&[5, 7]) };
        live.add(tick(100), &mut out).expect("write");
        assert!(out.is_empty());
        live.add(tick(50), &mut out).expect("write");
        let line = String::from_utf8(out).expect("utf8");
        assert!(line.starts_with("[   1 s] IOPS:        150"), "{line}");
    }

    #[test]
    fn svg_is_well_formed() {
        let svg = plot_svg(&hist_of(&(1..=10_000).collect::<Vec<_>>()), "4K <randread>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("<polyline") && svg.contains("99.9%") && svg.contains("&lt;randread&gt;"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }
}

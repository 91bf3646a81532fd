//! Shared helpers for the benchmark programs: interleaved A/B measurement and medians,
//! because absolute times on shared machines drift by tens of percent over minutes.
#![forbid(unsafe_code)]

/// Runs `a` and `b` alternately in the order A B B A, `rounds` times, and returns each
/// side's samples.
pub fn interleave(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (Vec<f64>, Vec<f64>) {
    let (mut side_a, mut side_b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        side_a.push(a());
        side_b.push(b());
        side_b.push(b());
        side_a.push(a());
    }
    (side_a, side_b)
}

pub fn median(samples: &[f64]) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// /proc reports CPU time in USER_HZ ticks, fixed at 100 in the Linux ABI on x86-64.
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) a process has used, in seconds, from /proc.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// Where the benchmark's sibling binaries (peerless-tgt, ...) were built.
pub fn sibling_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("exe has a folder").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_interleaving() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut order = Vec::new();
        let log = std::cell::RefCell::new(&mut order);
        let (a, b) = interleave(
            2,
            || {
                log.borrow_mut().push('A');
                1.0
            },
            || {
                log.borrow_mut().push('B');
                2.0
            },
        );
        assert_eq!((a.len(), b.len()), (4, 4));
        assert_eq!(order.iter().collect::<String>(), "ABBAABBA");
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }
}

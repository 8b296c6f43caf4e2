//! Small statistics helpers: percentiles over recorded samples and the
//! formatting of numbers and ratios in the report.

/// Nearest-rank percentile (`p` in 0..=100) of samples that are already
/// sorted ascending. `None` for an empty slice.
#[must_use]
pub fn percentile_sorted(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value such that at least p% of samples are <= it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.saturating_sub(1).min(sorted.len() - 1);
    Some(sorted[idx])
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u32,
    /// 99th percentile.
    pub p99_us: u32,
    /// 99.9th percentile.
    pub p999_us: u32,
    /// Largest sample.
    pub max_us: u32,
}

impl LatencySummary {
    /// Sorts `samples` in place and summarises them.
    #[must_use]
    pub fn from_samples(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len() as u64,
            p50_us: percentile_sorted(samples, 50.0).unwrap_or(0),
            p99_us: percentile_sorted(samples, 99.0).unwrap_or(0),
            p999_us: percentile_sorted(samples, 99.9).unwrap_or(0),
            max_us: samples.last().copied().unwrap_or(0),
        }
    }
}

/// `value / base`, `None` when either is missing or the base is zero.
#[must_use]
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => Some(v / b),
        _ => None,
    }
}

/// Formats a number with a sensible number of digits for a table cell.
#[must_use]
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        assert_eq!(percentile_sorted(&[7], 99.0), Some(7));
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }

    #[test]
    fn percentile_small_sets_round_up() {
        // 3 samples: p50 is the 2nd, p99 the 3rd.
        let v = [10, 20, 30];
        assert_eq!(percentile_sorted(&v, 50.0), Some(20));
        assert_eq!(percentile_sorted(&v, 99.0), Some(30));
    }

    #[test]
    fn summary_sorts_unsorted_input() {
        let mut v = vec![5, 1, 4, 2, 3, 1000];
        let s = LatencySummary::from_samples(&mut v);
        assert_eq!(s.count, 6);
        assert_eq!(s.p50_us, 3);
        assert_eq!(s.p99_us, 1000);
        assert_eq!(s.max_us, 1000);
        let empty = LatencySummary::from_samples(&mut []);
        assert_eq!(empty, LatencySummary::default());
    }

    #[test]
    fn ratio_and_format() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
    }
}

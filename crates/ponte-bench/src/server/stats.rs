//! Numbers for the messaging-server report: nearest-rank percentiles of
//! latency samples, medians over runs, and table-cell formatting.

/// Nearest-rank percentile (`p` in 0..=100) of ascending-sorted samples;
/// `None` for no samples.
#[must_use]
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// Median of the present values (mean of the middle two for an even
/// count); `None` when there are none.
#[must_use]
pub fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A rate or count with thousands separators (`52,310`).
#[must_use]
pub fn fmt_int(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    let head = s.len() % 3;
    for (i, c) in s.chars().enumerate() {
        if i > 0 && i % 3 == head {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as milliseconds with two decimals (`1.25 ms`).
#[must_use]
pub fn fmt_ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// Bytes as KiB with one decimal (`3.4 KiB`).
#[must_use]
pub fn fmt_kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// `a / b` with two decimals and an `×`, or a dash.
#[must_use]
pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "—".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn median_skips_missing_and_averages_even_counts() {
        assert_eq!(median(&[Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median(&[Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median(&[None]), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_int(1234567.4), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
        assert_eq!(fmt_int(1000.0), "1,000");
        assert_eq!(fmt_ms(1250.0), "1.25 ms");
        assert_eq!(fmt_kib(2048.0), "2.0 KiB");
        assert_eq!(fmt_ratio(Some(1.0), Some(4.0)), "0.25×");
        assert_eq!(fmt_ratio(Some(1.0), None), "—");
        assert_eq!(fmt_ratio(Some(1.0), Some(0.0)), "—");
    }
}

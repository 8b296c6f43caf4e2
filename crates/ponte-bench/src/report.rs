//! The figures of one run and their Markdown rendering: values per system,
//! ratios to haproxy-official (and to direct for throughput), and a verdict
//! for each of ponte's targets.

use crate::stats::{fmt_num, ratio};
use crate::systems::Kind;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One figure of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Payload MB/s (10^6 bytes) delivered to the upstream.
    Throughput {
        /// Parallel connections.
        conns: usize,
        /// Over TLS.
        tls: bool,
    },
    /// Relay CPU seconds (user + system) per GB (10^9 bytes) relayed.
    CpuPerGb {
        /// Parallel connections.
        conns: usize,
        /// Over TLS.
        tls: bool,
    },
    /// New connections per second (32 workers).
    ConnRate {
        /// Over TLS.
        tls: bool,
    },
    /// Ping-pong round trips per second over 64 connections.
    RoundTrips {
        /// Over TLS.
        tls: bool,
    },
    /// Median round trip, µs.
    P50 {
        /// Over TLS.
        tls: bool,
    },
    /// 99th percentile round trip, µs.
    P99 {
        /// Over TLS.
        tls: bool,
    },
    /// Relay CPU time per new connection, µs.
    CpuPerConn {
        /// Over TLS.
        tls: bool,
    },
    /// Relay CPU time per round trip, µs.
    CpuPerRt {
        /// Over TLS.
        tls: bool,
    },
    /// Relay RSS growth per idle connection, bytes.
    IdleMem {
        /// Connections held.
        n: usize,
        /// Over TLS.
        tls: bool,
    },
}

/// What ponte must reach against haproxy-official.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    /// ponte / official at least this.
    AtLeast(f64),
    /// ponte / official at most this.
    AtMost(f64),
    /// Reported only.
    None,
}

fn proto(tls: bool) -> &'static str {
    if tls {
        "TLS"
    } else {
        "plain"
    }
}

impl Metric {
    fn label(self) -> String {
        match self {
            Metric::Throughput { conns, tls } => {
                format!(
                    "throughput, {} conn{}, {} (MB/s)",
                    conns,
                    if conns == 1 { "" } else { "s" },
                    proto(tls)
                )
            }
            Metric::CpuPerGb { conns, tls } => {
                format!("relay CPU per GB, {conns} conns, {} (s/GB)", proto(tls))
            }
            Metric::ConnRate { tls } => format!("new connections/s, {}", proto(tls)),
            Metric::CpuPerConn { tls } => {
                format!("relay CPU per new connection, {} (µs)", proto(tls))
            }
            Metric::CpuPerRt { tls } => format!("relay CPU per round trip, {} (µs)", proto(tls)),
            Metric::RoundTrips { tls } => format!("round trips/s, 64 conns, {}", proto(tls)),
            Metric::P50 { tls } => format!("round trip p50, {} (µs)", proto(tls)),
            Metric::P99 { tls } => format!("round trip p99, {} (µs)", proto(tls)),
            Metric::IdleMem { n, tls } => {
                format!("memory per idle conn, {n} conns, {} (KiB)", proto(tls))
            }
        }
    }

    fn goal(self) -> Goal {
        match self {
            Metric::Throughput { tls: false, .. } => Goal::AtLeast(2.0),
            Metric::Throughput { tls: true, .. } => Goal::AtLeast(1.2),
            Metric::ConnRate { .. } => Goal::AtLeast(1.0),
            Metric::RoundTrips { .. } => Goal::AtLeast(1.2),
            Metric::P99 { .. } => Goal::AtMost(1.0),
            Metric::IdleMem { .. } => Goal::AtMost(0.5),
            Metric::CpuPerGb { .. }
            | Metric::CpuPerConn { .. }
            | Metric::CpuPerRt { .. }
            | Metric::P50 { .. } => Goal::None,
        }
    }

    /// Value as shown in the table (bytes become KiB).
    fn display(self, v: f64) -> String {
        match self {
            Metric::IdleMem { .. } => fmt_num(v / 1024.0),
            Metric::P50 { .. } | Metric::P99 { .. } => format!("{v:.0}"),
            _ => fmt_num(v),
        }
    }
}

/// Every figure of one run.
#[derive(Debug)]
pub struct Results {
    kinds: Vec<Kind>,
    idle: Vec<usize>,
    /// Whether idle memory was also measured over TLS.
    pub idle_tls: bool,
    values: BTreeMap<(Kind, Metric), Vec<f64>>,
    notes: Vec<(Kind, Metric, String)>,
    suites: BTreeMap<Kind, String>,
}

impl Results {
    /// Empty results for these systems and idle counts.
    #[must_use]
    pub fn new(kinds: Vec<Kind>, idle: Vec<usize>, idle_tls: bool) -> Self {
        Self {
            kinds,
            idle,
            idle_tls,
            values: BTreeMap::new(),
            notes: Vec::new(),
            suites: BTreeMap::new(),
        }
    }

    /// Records a figure (one sample; with several rounds the median is shown).
    pub fn set(&mut self, kind: Kind, metric: Metric, value: f64) {
        self.values.entry((kind, metric)).or_default().push(value);
    }

    /// Attaches a note (errors, failures) to a figure.
    pub fn note(&mut self, kind: Kind, metric: Metric, text: String) {
        self.notes.push((kind, metric, text));
    }

    /// Records the TLS cipher suite a system negotiated.
    pub fn suite(&mut self, kind: Kind, suite: &str) {
        self.suites.entry(kind).or_insert_with(|| suite.to_owned());
    }

    fn get(&self, kind: Kind, metric: Metric) -> Option<f64> {
        self.values.get(&(kind, metric)).and_then(|v| median(v))
    }

    fn rows(&self) -> Vec<Metric> {
        let mut rows = Vec::new();
        for tls in [false, true] {
            for conns in [1, 64] {
                rows.push(Metric::Throughput { conns, tls });
            }
        }
        rows.push(Metric::CpuPerGb {
            conns: 64,
            tls: false,
        });
        rows.push(Metric::CpuPerGb {
            conns: 64,
            tls: true,
        });
        for tls in [false, true] {
            rows.push(Metric::ConnRate { tls });
        }
        for tls in [false, true] {
            rows.push(Metric::CpuPerConn { tls });
        }
        for tls in [false, true] {
            rows.push(Metric::RoundTrips { tls });
            rows.push(Metric::P50 { tls });
            rows.push(Metric::P99 { tls });
        }
        for tls in [false, true] {
            rows.push(Metric::CpuPerRt { tls });
        }
        let mut tls_modes = vec![false];
        if self.idle_tls {
            tls_modes.push(true);
        }
        for tls in tls_modes {
            for &n in &self.idle {
                rows.push(Metric::IdleMem { n, tls });
            }
        }
        rows
    }

    /// Renders the run as Markdown: one table plus notes.
    #[must_use]
    pub fn render(&self) -> String {
        let official = Kind::HaproxyOfficial;
        let has = |k: Kind| self.kinds.contains(&k);
        let mut out = String::new();
        let mut head = vec!["metric".to_owned()];
        head.extend(self.kinds.iter().map(|k| k.name().to_owned()));
        if has(Kind::HaproxyTuned) {
            head.push("tuned / official".to_owned());
        }
        head.push("ponte / official".to_owned());
        head.push("ponte / direct".to_owned());
        head.push("target (ponte vs official)".to_owned());
        head.push("result".to_owned());
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            head.iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for m in self.rows() {
            let mut cells = vec![m.label()];
            for &k in &self.kinds {
                let cell = match self.get(k, m) {
                    Some(v) => m.display(v),
                    None if self.notes.iter().any(|(nk, nm, _)| *nk == k && *nm == m) => {
                        "failed".to_owned()
                    }
                    None => "—".to_owned(),
                };
                cells.push(cell);
            }
            let r = |a: Kind, b: Kind| ratio(self.get(a, m), self.get(b, m));
            let fmt_ratio =
                |x: Option<f64>| x.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}×"));
            if has(Kind::HaproxyTuned) {
                cells.push(fmt_ratio(r(Kind::HaproxyTuned, official)));
            }
            let vs_official = r(Kind::Ponte, official);
            cells.push(fmt_ratio(vs_official));
            let is_tput = matches!(m, Metric::Throughput { .. });
            cells.push(if is_tput {
                fmt_ratio(r(Kind::Ponte, Kind::Direct))
            } else {
                "—".to_owned()
            });
            let (target, verdict) = match (m.goal(), vs_official) {
                (Goal::None, _) => ("—".to_owned(), "—".to_owned()),
                (Goal::AtLeast(g), v) => (format!("≥ {g:.1}×"), verdict(v.map(|v| v >= g))),
                (Goal::AtMost(g), v) => (format!("≤ {g:.1}×"), verdict(v.map(|v| v <= g))),
            };
            let (target, verdict) = match m {
                Metric::Throughput { tls: false, .. } => {
                    let aim = r(Kind::Ponte, Kind::Direct).map(|x| x >= 0.7);
                    (
                        format!("{target} (aim ≥ 0.7× direct)"),
                        match aim {
                            Some(a) => {
                                format!("{verdict} (aim {})", if a { "met" } else { "missed" })
                            }
                            None => verdict,
                        },
                    )
                }
                _ => (target, verdict),
            };
            cells.push(target);
            cells.push(verdict);
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        if !self.kinds.contains(&Kind::Ponte) {
            let _ = writeln!(
                out,
                "\nponte was not part of this run: its columns stay empty until the harness is run with `--ponte`."
            );
        }
        if !self.suites.is_empty() {
            let _ = writeln!(out, "\nTLS cipher suites negotiated:");
            for (k, s) in &self.suites {
                let _ = writeln!(out, "- {k}: {s}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nNotes from this run:");
            for (k, m, text) in &self.notes {
                let _ = writeln!(out, "- {k}, {}: {text}", m.label());
            }
        }
        out
    }
}

/// Median of the samples (mean of the middle two for an even count).
#[must_use]
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn verdict(v: Option<bool>) -> String {
    match v {
        Some(true) => "pass".to_owned(),
        Some(false) => "**FAIL**".to_owned(),
        None => "—".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn render_computes_ratios_and_verdicts() {
        let mut r = Results::new(
            vec![Kind::Direct, Kind::HaproxyOfficial, Kind::Ponte],
            vec![3000],
            false,
        );
        let t = Metric::Throughput {
            conns: 64,
            tls: false,
        };
        r.set(Kind::Direct, t, 1000.0);
        r.set(Kind::HaproxyOfficial, t, 300.0);
        r.set(Kind::Ponte, t, 750.0);
        let m = Metric::IdleMem {
            n: 3000,
            tls: false,
        };
        r.set(Kind::HaproxyOfficial, m, 4096.0);
        r.set(Kind::Ponte, m, 3072.0);
        let p99 = Metric::P99 { tls: false };
        r.set(Kind::HaproxyOfficial, p99, 100.0);
        r.note(Kind::Ponte, p99, "failed: boom".to_owned());
        let text = r.render();
        let row = text
            .lines()
            .find(|l| l.contains("throughput, 64 conns, plain"))
            .unwrap_or_default();
        assert!(row.contains("2.50×"), "{row}");
        assert!(row.contains("0.75×"), "{row}");
        assert!(row.contains("pass (aim met)"), "{row}");
        let mem = text
            .lines()
            .find(|l| l.contains("idle conn"))
            .unwrap_or_default();
        assert!(mem.contains("| 4.00 | 3.00 |"), "{mem}");
        assert!(mem.contains("0.75×") && mem.contains("**FAIL**"), "{mem}");
        let p = text
            .lines()
            .find(|l| l.contains("p99, plain"))
            .unwrap_or_default();
        assert!(p.contains("failed"), "{p}");
        assert!(text.contains("failed: boom"));
    }
}

//! Percentiles and error tallies, computed here rather than with a histogram
//! crate: a phase keeps at most a few hundred thousand samples, so sorting a
//! `Vec<u64>` once per phase is cheap and exact.

use std::collections::BTreeMap;
use std::time::Duration;

/// Time-to-first-token samples of one phase, in microseconds.
#[derive(Default)]
pub struct Latencies {
    us: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.us.push(d.as_micros() as u64);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.us.extend(other.us);
        self.sorted = false;
    }

    /// Nearest-rank percentile (`p` in 0..=100), in milliseconds; `None` when
    /// there are no samples, so an empty phase prints "-" instead of a zero
    /// that would look like a measurement.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.us.is_empty() {
            return None;
        }
        if !self.sorted {
            self.us.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.us.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.us.len()) - 1;
        Some(self.us[idx] as f64 / 1000.0)
    }
}

/// Failed turns by category, with the first detail seen for each so a report
/// can say what actually went wrong without logging every failure.
#[derive(Default)]
pub struct Errors {
    by_kind: BTreeMap<String, (u64, String)>,
}

impl Errors {
    pub fn record(&mut self, kind: &str, detail: String) {
        let entry = self
            .by_kind
            .entry(kind.to_owned())
            .or_insert_with(|| (0, detail));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (kind, (n, detail)) in other.by_kind {
            let entry = self.by_kind.entry(kind).or_insert_with(|| (0, detail));
            entry.0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    /// `(kind, count, first detail)` in kind order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.by_kind
            .iter()
            .map(|(k, (n, d))| (k.as_str(), *n, d.as_str()))
    }
}

/// `a - b` for optional figures, for the "added TTFT" columns.
pub fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// A figure or "-" when it could not be measured.
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), Some(50.0));
        assert_eq!(l.percentile_ms(99.0), Some(99.0));
        assert_eq!(l.percentile_ms(100.0), Some(100.0));
        assert_eq!(Latencies::default().percentile_ms(50.0), None);
    }
}

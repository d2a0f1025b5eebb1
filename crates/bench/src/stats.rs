//! Percentiles over latency samples.

use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<i64>);

impl Samples {
    /// Adds one sample, in microseconds.
    pub fn push_us(&mut self, us: i64) {
        self.0.push(us);
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    }

    /// How many samples there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no sample.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nearest-rank percentile `p` (0–100), in milliseconds; `None` without samples.
    #[must_use]
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        #[allow(clippy::cast_precision_loss)]
        Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0)
    }

    /// `p50 / p99 ms (n)` for the table, or `n/a`.
    #[must_use]
    pub fn p50_p99(&self) -> String {
        if self.is_empty() {
            return "n/a".into();
        }
        match (self.percentile_ms(50.0), self.percentile_ms(99.0)) {
            (Some(a), Some(b)) => format!("{} / {} ms  (n={})", fmt_ms(a), fmt_ms(b), self.len()),
            _ => "n/a".into(),
        }
    }
}

/// Milliseconds with a precision that suits their size.
#[must_use]
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

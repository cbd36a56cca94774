//! Per-call latency accumulation and the shared per-frame histograms it folds into.
//!
//! [`LatencyHistogram`]: a compact log-scale histogram kept by the call task; recording is one
//! array increment. [`FrameHistogram`]: a Prometheus histogram with fixed `le` buckets made of
//! atomic counters, for the families observed once per frame (relay-added latency, inbound
//! jitter). A fold adds a call's pending counts bucket by bucket: a few atomic adds per fold,
//! no matter how many frames. (`metrics-exporter-prometheus` keeps every observation, with a
//! timestamp, until its upkeep runs; at 150 observations per call per second that buffered
//! about 13 KiB per call.) Owns no I/O and no global state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per power of two (resolution ~19 %).
const SUB_BUCKETS: u32 = 4;
/// Number of buckets: edges 1 µs · 2^(i/4) cover 1 µs … ~0.92 s; larger values land in the
/// last bucket, whose observations are reported at the call's exact maximum (an upper
/// bound) rather than at the bucket's edge.
const BUCKETS: usize = 80;

/// Log-scale latency counts for one direction of one call (640 bytes).
#[derive(Clone)]
pub struct LatencyHistogram {
    /// Counts already folded into the shared histogram.
    folded: [u32; BUCKETS],
    /// Counts recorded since the last fold.
    pending: [u32; BUCKETS],
    total: u64,
    unfolded: u32,
    max_micros: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            folded: [0; BUCKETS],
            pending: [0; BUCKETS],
            total: 0,
            unfolded: 0,
            max_micros: 0,
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    let log2 = 63 - micros.leading_zeros(); // floor(log2)
    let base = 1u64 << log2;
    // Linear position inside [base, 2*base) in quarters.
    let frac = ((micros - base) * SUB_BUCKETS as u64) / base;
    let mut b = ((log2 * SUB_BUCKETS) as usize + frac as usize + 1).min(BUCKETS - 1);
    // Buckets are (upper(b-1), upper(b)]: a value on an edge belongs to the lower bucket.
    if b > 0 && upper_micros(b - 1) >= micros as f64 {
        b -= 1;
    }
    b
}

/// Upper bound of bucket `i` in microseconds.
/// The value reported for bucket `i`: its upper bound, or for the last, open-ended bucket
/// the call's maximum `max_micros` (at least that bound).
fn reported_micros(i: usize, max_micros: u64) -> f64 {
    if i == BUCKETS - 1 {
        upper_micros(i).max(max_micros as f64)
    } else {
        upper_micros(i)
    }
}

fn upper_micros(i: usize) -> f64 {
    if i == 0 {
        return 1.0;
    }
    let j = (i - 1) as u32;
    let log2 = j / SUB_BUCKETS;
    let frac = j % SUB_BUCKETS;
    let base = (1u64 << log2) as f64;
    base + base * (frac + 1) as f64 / SUB_BUCKETS as f64
}

impl LatencyHistogram {
    /// Records one observation.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let micros = d.as_micros().min(u64::MAX as u128) as u64;
        self.max_micros = self.max_micros.max(micros);
        self.pending[bucket_of(micros)] += 1;
        self.total += 1;
        self.unfolded += 1;
    }

    /// Observations recorded since the last [`LatencyHistogram::fold_into`].
    pub fn unfolded(&self) -> u32 {
        self.unfolded
    }

    /// Number of observations in total.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest observation (exact), `None` when empty.
    pub fn max(&self) -> Option<Duration> {
        (self.total > 0).then(|| Duration::from_micros(self.max_micros))
    }

    /// Approximate quantile `q` (0..=1) as the upper bound of the bucket holding it
    /// (within ~19 % above the true value; in the last, open-ended bucket the exact maximum,
    /// an upper bound); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, (&a, &b)) in self.folded.iter().zip(&self.pending).enumerate() {
            seen += a as u64 + b as u64;
            if seen >= rank {
                let edge = reported_micros(i, self.max_micros);
                return Some(Duration::from_nanos((edge * 1000.0) as u64));
            }
        }
        None
    }

    /// Adds the observations recorded since the last fold to `target`, each at its bucket's
    /// upper bound (the last bucket's at the call's maximum), so Prometheus bucket counts
    /// stay exact for bounds that fall on our bucket edges and `_sum` is within ~19 % for
    /// values under ~0.92 s.
    pub fn fold_into(&mut self, target: &FrameHistogram) {
        let max_micros = self.max_micros;
        for (i, (p, f)) in self
            .pending
            .iter_mut()
            .zip(self.folded.iter_mut())
            .enumerate()
        {
            if *p > 0 {
                target.add(reported_micros(i, max_micros), u64::from(*p));
                *f += *p;
                *p = 0;
            }
        }
        self.unfolded = 0;
    }
}

/// A Prometheus histogram family member with fixed buckets, counted in atomics.
#[derive(Debug)]
pub struct FrameHistogram {
    /// Bucket upper bounds in seconds, ascending (the `+Inf` bucket is implicit).
    edges: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observations in microseconds.
    sum_micros: AtomicU64,
}

impl FrameHistogram {
    /// An empty histogram with these bucket bounds (seconds).
    pub fn new(edges: &'static [f64]) -> FrameHistogram {
        FrameHistogram {
            edges,
            counts: (0..=edges.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Adds `n` observations of `micros` µs.
    pub fn add(&self, micros: f64, n: u64) {
        let secs = micros / 1e6;
        // A value on an edge belongs to that bucket (`le`); allow for float rounding.
        let i = self
            .edges
            .iter()
            .position(|&e| secs <= e * (1.0 + 1e-9))
            .unwrap_or(self.edges.len());
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((micros * n as f64) as u64, Ordering::Relaxed);
    }

    /// Appends this member's `_bucket`, `_sum` and `_count` lines (Prometheus text format)
    /// for metric `name` with `labels` (`k="v",…`, may be empty).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match self.edges.get(i) {
                Some(e) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{e}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_values() {
        let mut last = 0;
        for us in [
            0u64, 1, 2, 3, 5, 8, 13, 100, 999, 1000, 1001, 50_000, 999_999,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            last = b;
            if b < BUCKETS - 1 {
                assert!(upper_micros(b) >= us as f64, "{us} -> {}", upper_micros(b));
            }
            if b > 0 && b < BUCKETS - 1 {
                assert!(upper_micros(b - 1) < us as f64, "{us}");
            }
        }
    }

    #[test]
    fn frame_histogram_counts_exactly_on_shared_edges() {
        static EDGES: [f64; 3] = [0.000_128, 0.001_024, 0.008_192];
        let target = FrameHistogram::new(&EDGES);
        let mut h = LatencyHistogram::default();
        for us in [100u64, 128, 129, 1000, 1024, 5000, 20_000] {
            h.record(Duration::from_micros(us));
        }
        h.fold_into(&target);
        h.fold_into(&target); // nothing pending: no change
        let mut out = String::new();
        target.render("x_seconds", "direction=\"a\"", &mut out);
        assert!(
            out.contains("x_seconds_bucket{direction=\"a\",le=\"0.000128\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{direction=\"a\",le=\"0.001024\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{direction=\"a\",le=\"0.008192\"} 6\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{direction=\"a\",le=\"+Inf\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{direction=\"a\"} 7\n"),
            "{out}"
        );
        let mut bare = String::new();
        FrameHistogram::new(&EDGES).render("y", "", &mut bare);
        assert!(
            bare.contains("y_bucket{le=\"+Inf\"} 0\n") && bare.contains("y_count 0\n"),
            "{bare}"
        );
    }

    #[test]
    fn quantiles_are_within_resolution() {
        let mut h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        assert!((500.0..=500.0 * 1.25).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((990.0..=990.0 * 1.25).contains(&p99), "{p99}");
        assert_eq!(h.count(), 1000);
        assert!(LatencyHistogram::default().quantile(0.5).is_none());
    }

    /// A stall longer than the histogram's range (~0.92 s) is reported at the call's maximum,
    /// not at the range's end.
    #[test]
    fn values_beyond_the_range_report_the_maximum() {
        let mut h = LatencyHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_secs(3));
        h.record(Duration::from_secs(5));
        assert_eq!(h.quantile(0.99), Some(Duration::from_secs(5)));
        static EDGES: [f64; 2] = [1.0, 4.0];
        let target = FrameHistogram::new(&EDGES);
        h.fold_into(&target);
        let mut text = String::new();
        target.render("x", "", &mut text);
        assert!(text.contains("x_bucket{le=\"4\"} 98\n"), "{text}");
    }
}

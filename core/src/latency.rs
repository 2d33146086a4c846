//! Request latency histograms for the listeners, cheap enough for the hot
//! path: off unless the daemon serves metrics ([`Latency::enable`]), and
//! then only one request in [`SAMPLE_EVERY`] per connection is timed, so
//! the serving loop pays two clock reads per [`SAMPLE_EVERY`] requests and
//! nothing else. The buckets are Prometheus-style cumulative upper bounds
//! chosen around ramdir's answers (tens of microseconds) up to Postfix's
//! patience (seconds); the metrics endpoint encodes them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One request in this many (per connection) is timed.
pub const SAMPLE_EVERY: u32 = 16;

/// Bucket upper bounds in microseconds (`le`), ascending; above the last
/// is `+Inf`.
pub const BUCKETS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000, 1_000_000, 10_000_000,
];

/// A latency histogram shared by a listener's connections.
#[derive(Debug, Default)]
pub struct Latency {
    enabled: AtomicBool,
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram's figures at one moment (cumulative buckets, as exposed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `(le in µs, cumulative count)`; `None` is `+Inf`.
    pub buckets: Vec<(Option<u64>, u64)>,
    /// Sum of the observed latencies in nanoseconds.
    pub sum_ns: u64,
    /// Observations (the `+Inf` bucket).
    pub count: u64,
}

impl Latency {
    /// Start recording (the daemon does this when `[metrics]` is on).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The figures, cumulative.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS_US.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            buckets.push((BUCKETS_US.get(i).copied(), total));
        }
        Snapshot {
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            count: total,
        }
    }
}

/// A connection's sampler: which of its requests to time.
#[derive(Debug, Default)]
pub struct Sampler {
    n: u32,
}

impl Sampler {
    /// Call at the start of each request: the start time when this one is
    /// to be timed.
    #[inline]
    pub fn start(&mut self, latency: &Latency) -> Option<Instant> {
        self.n = self.n.wrapping_add(1);
        if self.n % SAMPLE_EVERY != 1 || !latency.enabled.load(Ordering::Relaxed) {
            return None;
        }
        Some(Instant::now())
    }

    /// Call instead of [`Sampler::finish`] when there was no whole request
    /// to answer after all, so that only requests count towards the
    /// sampling.
    #[inline]
    pub fn undo(&mut self) {
        self.n = self.n.wrapping_sub(1);
    }

    /// Call when the request is answered.
    #[inline]
    pub fn finish(latency: &Latency, started: Option<Instant>) {
        if let Some(t) = started {
            latency.observe(t.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_inf() {
        let l = Latency::default();
        l.observe(Duration::from_micros(10));
        l.observe(Duration::from_micros(25));
        l.observe(Duration::from_micros(26));
        l.observe(Duration::from_secs(60));
        let s = l.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (Some(25), 2));
        assert_eq!(s.buckets[1], (Some(50), 3));
        assert_eq!(s.buckets[BUCKETS_US.len() - 1], (Some(10_000_000), 3));
        assert_eq!(s.buckets[BUCKETS_US.len()], (None, 4));
        assert_eq!(s.sum_ns, 61_000 + 60_000_000_000);
    }

    #[test]
    fn sampling_is_off_until_enabled_then_one_in_n() {
        let l = Latency::default();
        let mut s = Sampler::default();
        for _ in 0..100 {
            assert!(s.start(&l).is_none());
        }
        l.enable();
        let timed = (0..SAMPLE_EVERY * 10)
            .filter(|_| {
                let t = s.start(&l);
                Sampler::finish(&l, t);
                t.is_some()
            })
            .count();
        assert_eq!(timed, 10);
        assert_eq!(l.snapshot().count, 10);
    }
}

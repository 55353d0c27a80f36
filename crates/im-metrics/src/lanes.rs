//! Per-lane (per-backend) attempt figures for `/status`: attempts, successes, and the latency of
//! the last [`WINDOW`] attempts (average and p95).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Latencies kept per lane.
pub const WINDOW: usize = 1024;

#[derive(Default)]
struct Lane {
    attempts: u64,
    succeeded: u64,
    latencies_ms: VecDeque<f64>,
}

/// One lane's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaneFigures {
    /// Upstream attempts made on the lane.
    pub requests: u64,
    /// The share of them that succeeded (1.0 when none was made).
    pub success_rate: f64,
    /// Average upstream time of the last attempts, in milliseconds.
    pub avg_latency_ms: Option<f64>,
    /// Their 95th percentile, in milliseconds.
    pub p95_latency_ms: Option<f64>,
}

/// Attempt figures per lane. Cheap to clone; shared by every clone.
#[derive(Clone, Default)]
pub struct LaneStats(Arc<Mutex<BTreeMap<String, Lane>>>);

impl LaneStats {
    /// An attempt on `lane` ended, succeeding or not, after `latency` upstream.
    pub fn attempt(&self, lane: &str, ok: bool, latency: Duration) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let l = match g.get_mut(lane) {
            Some(l) => l,
            None => g.entry(lane.to_owned()).or_default(),
        };
        l.attempts += 1;
        l.succeeded += u64::from(ok);
        if l.latencies_ms.len() == WINDOW {
            l.latencies_ms.pop_front();
        }
        l.latencies_ms.push_back(latency.as_secs_f64() * 1000.0);
    }

    /// The figures of `lane` (zeros when it has seen no attempt).
    pub fn figures(&self, lane: &str) -> LaneFigures {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = g.get(lane) else {
            return LaneFigures {
                requests: 0,
                success_rate: 1.0,
                avg_latency_ms: None,
                p95_latency_ms: None,
            };
        };
        let mut sorted: Vec<f64> = l.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let avg = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64);
        let p95 = (!sorted.is_empty())
            .then(|| sorted[((sorted.len() - 1) as f64 * 0.95).round() as usize]);
        LaneFigures {
            requests: l.attempts,
            success_rate: if l.attempts == 0 {
                1.0
            } else {
                l.succeeded as f64 / l.attempts as f64
            },
            avg_latency_ms: avg,
            p95_latency_ms: p95,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_attempts() {
        let s = LaneStats::default();
        assert_eq!(s.figures("gpu0").requests, 0);
        for i in 1..=20u64 {
            s.attempt("gpu0", i % 10 != 0, Duration::from_millis(i * 10));
        }
        let f = s.figures("gpu0");
        assert_eq!(f.requests, 20);
        assert!((f.success_rate - 0.9).abs() < 1e-9);
        assert_eq!(f.avg_latency_ms, Some(105.0));
        assert_eq!(f.p95_latency_ms, Some(190.0));
        for _ in 0..WINDOW {
            s.attempt("gpu0", true, Duration::from_millis(1));
        }
        assert_eq!(
            s.figures("gpu0").p95_latency_ms,
            Some(1.0),
            "old latencies leave the window"
        );
    }
}

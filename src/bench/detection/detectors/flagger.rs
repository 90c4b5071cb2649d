//! Flagger's threshold rule.

use super::*;

/// Flagger's threshold rule.
pub(crate) struct Flagger {
    pub(crate) windows: Windows,
    pub(crate) metric: Metric,
    /// Errors: the largest error share that passes; latency: which threshold is the p99 limit.
    pub(crate) limit: f64,
    pub(crate) threshold_index: usize,
    pub(crate) failed_limit: u32,
    pub(crate) failed: u32,
    pub(crate) passed: u32,
}

impl Detector for Flagger {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        self.windows.add(obs);
        if !t.is_multiple_of(60) {
            return Decision::Continue;
        }
        let (c, _, missing) = self.windows.take();
        let ok = !missing
            && match self.metric {
                Metric::Errors => (c.errors as f64) / (c.total as f64) <= self.limit,
                // p99 ≤ L ⟺ at most 1% of requests slower than L
                Metric::Latency => (c.slow[self.threshold_index] as f64) / (c.total as f64) <= 0.01,
            };
        if ok {
            self.passed += 1;
            if self.passed >= 10 {
                Decision::Promote
            } else {
                Decision::Continue
            }
        } else {
            self.failed += 1;
            if self.failed >= self.failed_limit {
                Decision::Rollback
            } else {
                Decision::Continue
            }
        }
    }
}

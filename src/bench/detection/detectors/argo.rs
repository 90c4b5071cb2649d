//! Argo Rollouts' analysis runs.

use super::*;

/// Argo Rollouts' analysis rule.
pub(crate) struct Argo {
    pub(crate) windows: Windows,
    pub(crate) metric: Metric,
    pub(crate) limit: f64,
    pub(crate) threshold_index: usize,
    pub(crate) failure_limit: u32,
    pub(crate) failures: u32,
    pub(crate) consecutive_errors: u32,
    pub(crate) successes: u32,
}

impl Detector for Argo {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        self.windows.add(obs);
        if !t.is_multiple_of(60) {
            return Decision::Continue;
        }
        let (c, _, missing) = self.windows.take();
        if missing {
            self.consecutive_errors += 1;
            return if self.consecutive_errors > 4 {
                Decision::Rollback
            } else {
                Decision::Continue
            };
        }
        self.consecutive_errors = 0;
        let value = match self.metric {
            Metric::Errors => c.errors as f64 / c.total as f64,
            Metric::Latency => c.slow[self.threshold_index] as f64 / c.total as f64 / 0.01 * self.limit,
        };
        if value <= self.limit {
            self.successes += 1;
            if self.successes >= 10 {
                Decision::Promote
            } else {
                Decision::Continue
            }
        } else {
            self.failures += 1;
            if self.failures > self.failure_limit {
                Decision::Rollback
            } else {
                Decision::Continue
            }
        }
    }
}

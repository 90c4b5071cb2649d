//! A naive repeated z-test.

use super::*;

/// A fixed-sample two-proportion test repeated every minute on the cumulative counts.
pub(crate) struct Naive {
    pub(crate) metric: Metric,
    pub(crate) last: Obs,
}

impl Detector for Naive {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        if obs.canary.is_some() {
            self.last.canary = obs.canary;
        }
        if obs.stable.is_some() {
            self.last.stable = obs.stable;
        }
        if !t.is_multiple_of(60) {
            return Decision::Continue;
        }
        let (Some(c), Some(b)) = (self.last.canary, self.last.stable) else {
            return Decision::Continue;
        };
        let (x1, n1) = bad_total(&c, self.metric, 0);
        let (x2, n2) = bad_total(&b, self.metric, 0);
        if n1 == 0 || n2 == 0 {
            return Decision::Continue;
        }
        let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
        let p = (x1 + x2) as f64 / (n1 + n2) as f64;
        let se = (p * (1.0 - p) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt();
        if se > 0.0 && (p1 - p2) / se > 1.645 {
            Decision::Rollback
        } else if t >= 1800 {
            Decision::Promote
        } else {
            Decision::Continue
        }
    }
}

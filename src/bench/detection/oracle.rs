//! A reference below any judge that must discover the effect: the relative regression test of
//! our judge (the conditional binomial against the boundary `1 + δ_r`, crossing at `1/α`, read
//! at the same ticks), with the whole of its prior on the scenario's true error ratio. It knows
//! in advance what it is looking for, which no judge can; the gap between it and ours is the
//! price of not knowing the size of the regression. The gap between it and the floor is the
//! price of the design itself: an unknown base rate (stable's errors are evidence too), a
//! one-sided test valid however often it looks, and looks every tick.

use super::scenarios::{Metric, Scenario, stream};
use autopilot::control::judge::theta;

/// Mean canary requests to a rollback for the oracle on `s` (error scenarios with a
/// regression past the boundary; `None` otherwise), with regression boundary `1 + delta_r` and
/// level `alpha`.
pub fn oracle_requests(s: &Scenario, delta_r: f64, alpha: f64) -> Option<f64> {
    let boundary = 1.0 + delta_r;
    let r = s.p_canary / s.p_stable;
    if s.metric != Metric::Errors || r <= boundary || s.bug_after_secs > 0 || s.swing {
        return None;
    }
    let threshold = (1.0 / alpha).ln();
    let mut requests = Vec::new();
    for i in 0..s.runs {
        let ticks = stream(s, 0x5eed_0000 + i as u64);
        let (mut log_e, mut last_c, mut last_s) = (0.0, (0, 0), (0, 0));
        for t in ticks {
            let (c, st) = (t.canary, t.stable);
            let (nc, xc) = (c.total - last_c.0, c.errors - last_c.1);
            let (nb, xb) = (st.total - last_s.0, st.errors - last_s.1);
            (last_c, last_s) = ((c.total, c.errors), (st.total, st.errors));
            if nc == 0 || nb == 0 || xc + xb == 0 {
                continue;
            }
            let rho = nc as f64 / (nc + nb) as f64;
            let (t0, t1) = (theta(boundary, rho), theta(r, rho));
            log_e += xc as f64 * (t1 / t0).ln() + xb as f64 * ((1.0 - t1) / (1.0 - t0)).ln();
            if log_e >= threshold {
                requests.push(c.total as f64);
                break;
            }
        }
    }
    (!requests.is_empty()).then(|| requests.iter().sum::<f64>() / requests.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::detection::scenarios;

    #[test]
    fn the_oracle_needs_more_than_the_floor_and_less_than_a_judge_that_must_discover_the_effect() {
        let all = scenarios(0.1);
        let s1 = all.iter().find(|s| s.id == "S1").unwrap();
        let zone_floor = s1.zone_floor(0.1, 0.5).unwrap();
        let oracle = oracle_requests(s1, 0.1, 0.05).unwrap();
        // a one-sided test at 1/α = 20 needs ln 20 nats, the floor (α = β = 5%) kl(0.95‖0.05)
        assert!(oracle > zone_floor * 1.1, "{oracle} vs {zone_floor}");
        assert!(oracle < zone_floor * 2.0, "{oracle} vs {zone_floor}");
        // healthy scenarios and latency have no oracle here
        let s0 = all.iter().find(|s| s.id == "S0").unwrap();
        assert_eq!(oracle_requests(s0, 0.1, 0.05), None);
    }
}

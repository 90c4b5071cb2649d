//! References below any judge that must discover the effect: the relative regression test of
//! our judge (the conditional binomial against the boundary `1 + δ_r`, crossing at `1/α`, read
//! at the same ticks) with its prior placed knowing the scenario. The **oracle** puts all of it on
//! the true error ratio: it knows in advance what it is looking for, which no judge can. The
//! **best grid prior** puts all of it on the two ratios of our grid that bracket the true one
//! (half each): the most any prior over our grid could do for this scenario, at the cost of
//! every other. The gap between ours and them is the price of not knowing the size of the
//! regression; the gap between the oracle and the floor is the price of the design itself: an
//! unknown base rate (stable's errors are evidence too), a one-sided test valid however often it
//! looks, and looks every tick.

use super::scenarios::{Metric, Scenario, stream};
use autopilot::control::judge::{REGRESSION_RATIOS, relative_log_ratio};

/// Mean canary requests to a rollback for the relative test with the prior `prior` (pairs of
/// an error ratio and its weight, the weights summing to 1) on `s`, with regression boundary
/// `1 + delta_r` and level `alpha`. `None` for scenarios this does not model (latency,
/// swings, late bugs) or if no run crossed.
pub fn mixture_requests(s: &Scenario, delta_r: f64, alpha: f64, prior: &[(f64, f64)]) -> Option<f64> {
    if s.metric != Metric::Errors || s.bug_after_secs > 0 || s.swing || s.gap.is_some() {
        return None;
    }
    let boundary = 1.0 + delta_r;
    let threshold = (1.0 / alpha).ln();
    let mut requests = Vec::new();
    for i in 0..s.runs {
        let ticks = stream(s, 0x5eed_0000 + i as u64);
        let mut logs = vec![0.0; prior.len()];
        let (mut last_c, mut last_s) = ((0, 0), (0, 0));
        for t in ticks {
            let (c, st) = (t.canary, t.stable);
            let (nc, xc) = (c.total - last_c.0, c.errors - last_c.1);
            let (nb, xb) = (st.total - last_s.0, st.errors - last_s.1);
            (last_c, last_s) = ((c.total, c.errors), (st.total, st.errors));
            if nc == 0 || nb == 0 || xc + xb == 0 {
                continue;
            }
            let rho = nc as f64 / (nc + nb) as f64;
            for (log, (r, _)) in logs.iter_mut().zip(prior) {
                *log += relative_log_ratio(xc as f64, xb as f64, rho, *r, boundary);
            }
            let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e = top
                + logs
                    .iter()
                    .zip(prior)
                    .map(|(l, (_, w))| w * (l - top).exp())
                    .sum::<f64>()
                    .ln();
            if e >= threshold {
                requests.push(c.total as f64);
                break;
            }
        }
    }
    (!requests.is_empty()).then(|| requests.iter().sum::<f64>() / requests.len() as f64)
}

/// The scenario's true error ratio, if it is a regression past the boundary `1 + delta_r`.
fn true_ratio(s: &Scenario, delta_r: f64) -> Option<f64> {
    let r = s.p_canary / s.p_stable;
    (r > 1.0 + delta_r).then_some(r)
}

/// The oracle: all of the prior on the true ratio.
pub fn oracle_requests(s: &Scenario, delta_r: f64, alpha: f64) -> Option<f64> {
    mixture_requests(s, delta_r, alpha, &[(true_ratio(s, delta_r)?, 1.0)])
}

/// The best prior over our grid for this scenario: half on each of the two grid ratios that
/// bracket the true one (all on the nearest end where none does).
pub fn best_grid_requests(s: &Scenario, delta_r: f64, alpha: f64) -> Option<f64> {
    let boundary = 1.0 + delta_r;
    let m = true_ratio(s, delta_r)? / boundary;
    let grid = REGRESSION_RATIOS;
    let prior: Vec<(f64, f64)> = match grid.iter().position(|g| *g >= m) {
        Some(0) => vec![(grid[0] * boundary, 1.0)],
        Some(k) => vec![(grid[k - 1] * boundary, 0.5), (grid[k] * boundary, 0.5)],
        None => vec![(grid[grid.len() - 1] * boundary, 1.0)],
    };
    mixture_requests(s, delta_r, alpha, &prior)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::detection::scenarios;

    #[test]
    fn an_oracle_needs_more_than_the_floor_and_the_best_grid_prior_more_than_the_oracle() {
        let all = scenarios(0.1);
        let s1 = all.iter().find(|s| s.id == "S1").unwrap();
        let zone_floor = s1.zone_floor(0.1, 0.5).unwrap();
        let oracle = oracle_requests(s1, 0.1, 0.05).unwrap();
        let grid = best_grid_requests(s1, 0.1, 0.05).unwrap();
        // a one-sided test at 1/α = 20 needs ln 20 nats, the floor (α = β = 5%) kl(0.95‖0.05)
        assert!(oracle > zone_floor * 1.1, "{oracle} vs {zone_floor}");
        assert!(oracle < zone_floor * 2.0, "{oracle} vs {zone_floor}");
        // the same streams: knowing the ratio exactly is worth something over bracketing it
        assert!(grid > oracle, "{grid} vs {oracle}");
        // a wrong prior costs more: all of it on a ratio barely past the boundary
        let far = mixture_requests(s1, 0.1, 0.05, &[(1.2, 1.0)]).unwrap();
        assert!(far > grid, "{far} vs {grid}");
        // healthy scenarios and latency have no oracle here
        let s0 = all.iter().find(|s| s.id == "S0").unwrap();
        assert_eq!(oracle_requests(s0, 0.1, 0.05), None);
        let s3 = all.iter().find(|s| s.id == "S3a").unwrap();
        assert_eq!(best_grid_requests(s3, 0.1, 0.05), None);
    }
}

//! The ramp's arithmetic and the blast-radius cap, apart from the decisions that use them: which
//! weight comes first, next and last on a ramp, and how large a step the remaining budget allows.
//! Pure functions of their arguments.

use super::judge::Counts;
use crate::spec::controllers::Ramp;
use crate::spec::units::Weight;

/// The ramp's first weight (no ramp: blue/green and A/B without one go straight to all
/// traffic).
pub fn first_weight(ramp: Option<&Ramp>) -> Weight {
    match ramp {
        Some(Ramp::Steps(steps)) => steps.first().copied().unwrap_or(Weight::MAX),
        Some(Ramp::Adaptive(a)) => a.start,
        None => Weight::MAX,
    }
}

/// The weight after which the release is promoted (no ramp: promoted from its held stage, at 0).
pub fn final_weight(ramp: Option<&Ramp>) -> Weight {
    match ramp {
        Some(Ramp::Steps(steps)) => steps.last().copied().unwrap_or(Weight::MAX),
        Some(Ramp::Adaptive(a)) => a.max,
        None => Weight(0),
    }
}

/// The ramp's next weight after `weight` (at `step`), or `None` at the end.
pub fn next_step(ramp: Option<&Ramp>, step: usize, weight: Weight) -> Option<(usize, Weight)> {
    match ramp? {
        Ramp::Steps(steps) => steps
            .iter()
            .enumerate()
            .skip(step + 1)
            .find(|(_, w)| **w > weight)
            .map(|(i, w)| (i, *w)),
        Ramp::Adaptive(a) => {
            if weight >= a.max {
                return None;
            }
            let grown = (f64::from(weight.0) * a.factor).ceil().min(f64::from(a.max.0)) as u8;
            Some((step + 1, Weight(grown.max(weight.0 + 1))))
        }
    }
}

/// The step index of a weight on the ramp (for skipping ahead).
pub fn step_of(ramp: Option<&Ramp>, weight: Weight, current: usize) -> usize {
    match ramp {
        Some(Ramp::Steps(steps)) => steps.iter().rposition(|w| *w <= weight).unwrap_or(current),
        Some(Ramp::Adaptive(_)) => current + 1,
        None => current,
    }
}

/// What the blast-radius cap looks at.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bad requests beyond stable's the rollout may still serve.
    pub remaining: f64,
    /// Time since the rollout started (the traffic rate is counted over it), in seconds.
    pub elapsed_secs: f64,
    /// Time until the next look, in seconds.
    pub interval_secs: f64,
}

/// The largest weight at which a canary as bad as the evidence still allows would serve at most
/// the remaining budget of excess bad requests before the next look. `arms` holds, per
/// objective, the canary's upper bound and the counts of both arms since the rollout started.
pub fn budget_cap(budget: Budget, arms: &[(f64, Counts, Counts)]) -> Weight {
    let mut cap = 100.0_f64;
    for (upper, c, s) in arms {
        let rate = if budget.elapsed_secs > 0.0 {
            (c.total + s.total) as f64 / budget.elapsed_secs
        } else {
            0.0
        };
        let base = if s.total > 0 { s.ratio() } else { 0.0 };
        let per_percent = (upper - base).max(0.0) * rate * budget.interval_secs / 100.0;
        if per_percent > 0.0 {
            cap = cap.min(budget.remaining.max(0.0) / per_percent);
        }
    }
    Weight(cap.floor().clamp(0.0, 100.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::controllers::AdaptiveRamp;

    fn steps(w: &[u8]) -> Ramp {
        Ramp::Steps(w.iter().map(|w| Weight(*w)).collect())
    }

    #[test]
    fn fixed_steps_go_in_order_skip_to_the_last_and_end() {
        let r = steps(&[5, 25, 50]);
        assert_eq!(first_weight(Some(&r)), Weight(5));
        assert_eq!(final_weight(Some(&r)), Weight(50));
        assert_eq!(next_step(Some(&r), 0, Weight(5)), Some((1, Weight(25))));
        // an operator set 30%: the next step is the first above it
        assert_eq!(next_step(Some(&r), 1, Weight(30)), Some((2, Weight(50))));
        assert_eq!(next_step(Some(&r), 2, Weight(50)), None);
        assert_eq!(step_of(Some(&r), Weight(50), 0), 2);
        assert_eq!(step_of(Some(&r), Weight(30), 0), 1);
    }

    #[test]
    fn an_adaptive_ramp_grows_by_its_factor_up_to_its_max() {
        let r = Ramp::Adaptive(AdaptiveRamp {
            start: Weight(3),
            max: Weight(50),
            factor: 2.5,
        });
        assert_eq!(next_step(Some(&r), 0, Weight(3)), Some((1, Weight(8))));
        assert_eq!(next_step(Some(&r), 1, Weight(40)), Some((2, Weight(50))));
        assert_eq!(next_step(Some(&r), 2, Weight(50)), None);
        // a factor that would not move the weight still moves it by one
        let slow = Ramp::Adaptive(AdaptiveRamp {
            start: Weight(1),
            max: Weight(10),
            factor: 1.1,
        });
        assert_eq!(next_step(Some(&slow), 0, Weight(1)), Some((1, Weight(2))));
    }

    #[test]
    fn no_ramp_switches_at_once_from_the_held_stage() {
        assert_eq!(first_weight(None), Weight::MAX);
        assert_eq!(final_weight(None), Weight(0));
        assert_eq!(next_step(None, 0, Weight(0)), None);
    }

    #[test]
    fn the_cap_keeps_the_worst_case_within_the_remaining_budget_until_the_next_look() {
        // 100 req/s over both arms; the canary may be as bad as 11% against stable's 1%: each
        // percent of weight risks (0.11 − 0.01) × 100 × 10 s / 100 = 1 excess bad request
        let arms = [(0.11, Counts::new(0, 0), Counts::new(10, 1000))];
        let budget = |remaining| Budget {
            remaining,
            elapsed_secs: 10.0,
            interval_secs: 10.0,
        };
        assert_eq!(budget_cap(budget(25.0), &arms), Weight(25));
        assert_eq!(budget_cap(budget(0.0), &arms), Weight(0));
        assert_eq!(budget_cap(budget(1e9), &arms), Weight(100));
        // a canary that cannot be worse than stable risks nothing
        let safe = [(0.01, Counts::new(0, 0), Counts::new(10, 1000))];
        assert_eq!(budget_cap(budget(0.0), &safe), Weight(100));
    }
}

//! The detectors the benchmark runs: ours, and each peer from its documented rules (one file
//! each).

mod argo;
mod flagger;
mod kayenta;
mod naive;
mod ours;

pub(crate) use argo::Argo;
pub(crate) use flagger::Flagger;
pub(crate) use kayenta::MannWhitney;
pub(crate) use naive::Naive;
pub(crate) use ours::Ours;

use super::scenarios::*;
use autopilot::control::judge::JudgeConfig;

/// A detector's answer at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Rollback,
    Promote,
}

/// A canary judge as the benchmark drives it.
pub trait Detector {
    /// Reads one tick (`t` seconds since the canary started).
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision;

    /// The detector promoted at `t`: does it go on watching the promoted release (then every
    /// later tick goes to `observe`, and a `Rollback` takes the promotion back)? Flagger's and
    /// Argo's canary analyses end at the promotion, and Kayenta judges a canary only.
    fn promoted(&mut self, _t: u64) -> bool {
        false
    }
}

/// The metric value of an arm: bad and total for the scenario's metric and threshold.
pub(crate) fn bad_total(a: &Arm, metric: Metric, threshold: usize) -> (u64, u64) {
    match metric {
        Metric::Errors => (a.errors, a.total),
        Metric::Latency => (a.slow[threshold], a.total),
    }
}

/// Per-interval (60 s) windows from cumulative observations; handles counter resets like
/// Prometheus' `increase()`.
#[derive(Default)]
pub(crate) struct Windows {
    pub(crate) last: Obs,
    pub(crate) canary: Arm,
    pub(crate) stable: Arm,
    pub(crate) missing: bool,
}

impl Windows {
    pub(crate) fn add(&mut self, obs: &Obs) {
        let inc = |now: Option<Arm>, last: Option<Arm>| match (now, last) {
            (Some(n), Some(l)) if n.total >= l.total => Some(n.minus(&l)),
            (Some(n), _) => Some(n),
            (None, _) => None,
        };
        match inc(obs.canary, self.last.canary) {
            Some(d) => add(&mut self.canary, &d),
            None => self.missing = true,
        }
        match inc(obs.stable, self.last.stable) {
            Some(d) => add(&mut self.stable, &d),
            None => self.missing = true,
        }
        if obs.canary.is_some() {
            self.last.canary = obs.canary;
        }
        if obs.stable.is_some() {
            self.last.stable = obs.stable;
        }
    }

    /// Takes the window's (canary, stable) and whether data was missing, and starts anew.
    pub(crate) fn take(&mut self) -> (Arm, Arm, bool) {
        let r = (self.canary, self.stable, self.missing || self.canary.total == 0);
        self.canary = Arm::default();
        self.stable = Arm::default();
        self.missing = false;
        r
    }
}

pub(crate) fn add(a: &mut Arm, d: &Arm) {
    a.total += d.total;
    a.errors += d.errors;
    for i in 0..3 {
        a.slow[i] += d.slow[i];
    }
}

/// The detectors, by name: a constructor per scenario.
/// A detector's name, its setting in words, and its constructor.
pub type DetectorEntry = (&'static str, &'static str, fn(&Scenario) -> Box<dyn Detector>);

/// Our judge as the benchmark runs it: α and the false-promotion rate 5%, the target between
/// baseline and regression, regression and safety boundaries δ_r and δ_s.
pub(crate) fn ours(s: &Scenario, delta_r: f64, delta_s: f64) -> Box<dyn Detector> {
    Box::new(Ours {
        state: Default::default(),
        cfg: JudgeConfig {
            alpha: 0.05,
            alpha_safe: 0.05,
            tolerance: delta_r,
            safety_tolerance: delta_s,
            max_bad: 0.015,
            compare_with_stable: true,
        },
        metric: s.metric,
        watch: None,
    })
}

/// The detectors.
pub fn detectors() -> Vec<DetectorEntry> {
    fn tuned_error_limit(s: &Scenario) -> f64 {
        // between the baseline and the regression worth catching (1% → 2%): 1.5%
        let target = if s.healthy() {
            2.0 * s.p_stable
        } else {
            s.p_canary.min(2.0 * s.p_stable)
        };
        (s.p_stable + target) / 2.0
    }
    fn flagger(s: &Scenario, tuned: bool, failed_limit: u32) -> Box<dyn Detector> {
        Box::new(Flagger {
            windows: Windows::default(),
            metric: s.metric,
            limit: if tuned { tuned_error_limit(s) } else { 0.01 },
            threshold_index: if tuned { 1 } else { 2 },
            failed_limit,
            failed: 0,
            passed: 0,
        })
    }
    fn argo(s: &Scenario, tuned: bool) -> Box<dyn Detector> {
        Box::new(Argo {
            windows: Windows::default(),
            metric: s.metric,
            limit: if tuned { tuned_error_limit(s) } else { 0.01 },
            threshold_index: if tuned { 1 } else { 2 },
            failure_limit: 0,
            failures: 0,
            consecutive_errors: 0,
            successes: 0,
        })
    }
    vec![
        (
            "ours",
            "α 5%, false-promotion rate 5%, indifference zone: roll back beyond 10% worse, promote within 50%, target 1.5% bad",
            |s| ours(s, 0.1, 0.5),
        ),
        (
            "ours, one tolerance",
            "as before the indifference zone: tolerance 50% for both tests",
            |s| ours(s, 0.5, 0.5),
        ),
        (
            "flagger t=1",
            "defaults: success ≥ 99%, p99 ≤ 500 ms, threshold 1",
            |s| flagger(s, false, 1),
        ),
        ("flagger t=10", "defaults, threshold 10 (docs)", |s| {
            flagger(s, false, 10)
        }),
        (
            "flagger tuned t=1",
            "limit between baseline and regression (1.5% errors, p99 176 ms)",
            |s| flagger(s, true, 1),
        ),
        ("flagger tuned t=10", "tuned limits, threshold 10", |s| {
            flagger(s, true, 10)
        }),
        (
            "argo",
            "success condition ≤ 1% errors / p99 ≤ 500 ms, failureLimit 0",
            |s| argo(s, false),
        ),
        (
            "argo tuned",
            "condition between baseline and regression, failureLimit 0",
            |s| argo(s, true),
        ),
        (
            "mann-whitney",
            "Kayenta: 98% confidence, tolerance 0.25, pass 95 / marginal 75",
            |s| {
                Box::new(MannWhitney {
                    windows: Windows::default(),
                    metric: s.metric,
                    canary: Vec::new(),
                    baseline: Vec::new(),
                })
            },
        ),
        (
            "naive",
            "two-proportion z-test at 5% repeated every minute",
            |s| {
                Box::new(Naive {
                    metric: s.metric,
                    last: Obs::default(),
                })
            },
        ),
    ]
}

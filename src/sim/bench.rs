//! `autopilot bench detection`: BENCHMARKS.md §1. Every detector sees identical seeded streams
//! (200 requests/s, canary share 5%, stable at 1% errors, lognormal latency with median 50 ms and
//! σ 0.5, counters read every 10 s, 30 minutes to decide); figures are printed next to the
//! Wald–Wolfowitz floor of each scenario.
//!
//! Peers are implemented from their documented rules, each with its documented defaults and
//! tuned as a careful user would tune it for the scenario:
//! - *flagger*: every 60 s the last minute's success rate (≥ 99%) or p99 (≤ 500 ms) is checked;
//!   a failed check (no data counts as failed) stops the advance, and `threshold` failed checks
//!   roll back (1 in code, 10 in the docs); 10 good checks (stepWeight 5 to maxWeight 50) promote.
//! - *argo*: a measurement every 60 s with a success condition; more than `failureLimit` (0)
//!   failures roll back, more than `consecutiveErrorLimit` (4) missing measurements too; 10
//!   successful measurements promote.
//! - *mann-whitney* (Kayenta's judge): per-minute canary and baseline values, two-sided
//!   Mann-Whitney at 98% confidence with effect tolerance 0.25, re-judged each minute on the
//!   growing window from 5 minutes on; a failing score (< 75) rolls back, 30 minutes of passes
//!   promote.
//! - *naive*: a one-sided two-proportion z-test at 5% on the cumulative counts every minute.
//!
//! Latency is judged as counts: requests slower than a threshold (stable's p99 for our judge and
//! the tuned peers; 500 ms for the defaults). The same streams carry every threshold.

use crate::control::judge::{self, Counts, JudgeConfig, Reading, Verdict, floor_requests};
use crate::control::time::Time;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Binomial, Distribution};
use serde::Serialize;
use statrs::distribution::{Beta as BetaDist, ContinuousCDF, Normal};
use std::fmt::Write as _;

const TICK: u64 = 10;
/// Latency thresholds carried by every stream: stable's p99 (160 ms), the tuned peers' p99 limit
/// (176 ms, between stable's 160 ms and the slowed canary's 192 ms) and Flagger's default 500 ms.
const THRESHOLDS_MS: [f64; 3] = [160.0, 176.0, 500.0];

/// One arm's counters since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub total: u64,
    pub errors: u64,
    pub slow: [u64; 3],
}

impl Arm {
    fn minus(&self, o: &Arm) -> Arm {
        Arm {
            total: self.total.saturating_sub(o.total),
            errors: self.errors.saturating_sub(o.errors),
            slow: [0, 1, 2].map(|i| self.slow[i].saturating_sub(o.slow[i])),
        }
    }
}

/// What the sensors report at one tick (`None`: missing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Obs {
    pub canary: Option<Arm>,
    pub stable: Option<Arm>,
}

/// Which signal a scenario is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Metric {
    Errors,
    Latency,
}

/// A benchmark scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: &'static str,
    pub what: String,
    pub runs: usize,
    pub rate: f64,
    pub rho: f64,
    pub limit_secs: u64,
    pub metric: Metric,
    /// Stable's and the canary's error rate.
    pub p_stable: f64,
    pub p_canary: f64,
    /// Latency: the canary's scale at every quantile, or only for the slowest 5%.
    pub latency_scale: f64,
    pub tail_only: bool,
    /// The regression starts this late (S7).
    pub bug_after_secs: u64,
    /// Daily swing, load-dependent errors, over-dispersion and a shared burst (S5).
    pub swing: bool,
    /// A gap in the counters: (from, to, canary only) or a counter reset at `from`.
    pub gap: Option<(u64, u64, GapKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GapKind {
    Both,
    CanaryOnly,
    Reset,
}

impl Scenario {
    fn base(id: &'static str, what: &str, runs: usize) -> Scenario {
        Scenario {
            id,
            what: what.into(),
            runs,
            rate: 200.0,
            rho: 0.05,
            limit_secs: 30 * 60,
            metric: Metric::Errors,
            p_stable: 0.01,
            p_canary: 0.01,
            latency_scale: 1.0,
            tail_only: false,
            bug_after_secs: 0,
            swing: false,
            gap: None,
        }
    }

    /// Is the canary healthy (a rollback is a false alarm)?
    pub fn healthy(&self) -> bool {
        (self.p_canary - self.p_stable).abs() < 1e-12 && self.latency_scale == 1.0
    }

    /// The canary's and stable's bad shares for this scenario's metric (at stable's p99).
    pub fn bad_shares(&self) -> (f64, f64) {
        match self.metric {
            Metric::Errors => (self.p_stable, self.p_canary),
            Metric::Latency => (
                slow_share(THRESHOLDS_MS[0], 1.0, false),
                slow_share(THRESHOLDS_MS[0], self.latency_scale, self.tail_only),
            ),
        }
    }

    /// The floor in canary requests (α = β = 0.05): to detect the regression, or, for a healthy
    /// canary, to rule out a doubling.
    /// The floor of the indifference zone's own hypotheses, for error scenarios: telling the
    /// canary's share from the regression boundary `p0 (1 + δ_r)` (bad canaries), or from the
    /// safety boundary `p0 (1 + δ_s)` (healthy ones). `None` where the plain floor is the one.
    pub fn zone_floor(&self, delta_r: f64, delta_s: f64) -> Option<f64> {
        if self.metric != Metric::Errors {
            return None;
        }
        let (p0, p1) = self.bad_shares();
        if self.healthy() {
            Some(floor_requests(p0 * (1.0 + delta_s), p0, 0.05, 0.05))
        } else if p1 > p0 * (1.0 + delta_r) {
            Some(floor_requests(p0 * (1.0 + delta_r), p1, 0.05, 0.05))
        } else {
            None
        }
    }

    pub fn floor(&self) -> f64 {
        let (p0, p1) = self.bad_shares();
        if self.healthy() {
            // promoting: the truth is p0, the alternative to rule out a doubling
            return floor_requests(2.0 * p0, p0, 0.05, 0.05);
        }
        match self.metric {
            Metric::Errors => floor_requests(p0, p1, 0.05, 0.05),
            Metric::Latency => {
                // the whole latency distribution, in closed form for the lognormal: a scale
                // shift by s moves ln L by a = ln s / σ
                let kl_target = judge::kl_bernoulli(0.95, 0.05);
                let a = self.latency_scale.ln() / 0.5;
                let kl = if self.tail_only {
                    let normal = Normal::new(0.0, 1.0).expect("standard normal");
                    let z95 = normal.inverse_cdf(0.95);
                    let phi = (-z95 * z95 / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    a * phi + a * a * 0.05 / 2.0
                } else {
                    a * a / 2.0
                };
                kl_target / kl
            }
        }
    }
}

/// All scenarios of BENCHMARKS.md §1, with `scale` times the documented runs (at least 20).
pub fn scenarios(scale: f64) -> Vec<Scenario> {
    let n = |runs: usize| ((runs as f64 * scale).round() as usize).max(20);
    let mut v = vec![Scenario::base("S0", "healthy canary (A/A)", n(2000))];
    v.push(Scenario {
        p_canary: 0.02,
        ..Scenario::base("S1", "errors 1% → 2%", n(500))
    });
    v.push(Scenario {
        p_canary: 0.05,
        ..Scenario::base("S2", "errors 1% → 5%", n(500))
    });
    v.push(Scenario {
        metric: Metric::Latency,
        latency_scale: 1.2,
        ..Scenario::base("S3a", "latency ×1.2 at every quantile", n(500))
    });
    v.push(Scenario {
        metric: Metric::Latency,
        latency_scale: 1.2,
        tail_only: true,
        ..Scenario::base("S3b", "slowest 5% slowed ×1.2", n(500))
    });
    for (id, rho, p) in [
        ("S4a", 0.05, 0.01),
        ("S4b", 0.05, 0.05),
        ("S4c", 0.5, 0.01),
        ("S4d", 0.5, 0.05),
    ] {
        let what = format!(
            "1 request/s, ρ {:.0}%, {}",
            rho * 100.0,
            if p > 0.01 { "1% → 5%" } else { "healthy" }
        );
        v.push(Scenario {
            rate: 1.0,
            rho,
            p_canary: p,
            limit_secs: 2 * 3600,
            ..Scenario::base(id, &what, n(500))
        });
    }
    v.push(Scenario {
        swing: true,
        ..Scenario::base(
            "S5a",
            "swing, load-dependent errors, dispersion, shared burst: healthy",
            n(1000),
        )
    });
    v.push(Scenario {
        swing: true,
        p_canary: 0.02,
        ..Scenario::base("S5b", "same, errors 1% → 2%", n(500))
    });
    for (id, kind, name) in [
        ("S6a", GapKind::Both, "gap, both arms"),
        ("S6b", GapKind::CanaryOnly, "gap, canary only"),
        ("S6c", GapKind::Reset, "counter reset"),
    ] {
        v.push(Scenario {
            gap: Some((300, 600, kind)),
            ..Scenario::base(id, &format!("{name}: healthy"), n(500))
        });
        let bad_id: &'static str = match id {
            "S6a" => "S6a'",
            "S6b" => "S6b'",
            _ => "S6c'",
        };
        v.push(Scenario {
            gap: Some((300, 600, kind)),
            p_canary: 0.05,
            ..Scenario::base(bad_id, &format!("{name}: 1% → 5%"), n(500))
        });
    }
    v.push(Scenario {
        p_canary: 0.05,
        bug_after_secs: 600,
        ..Scenario::base("S7", "1% → 5% starting 10 min in", n(500))
    });
    v.push(Scenario {
        p_canary: 1.0,
        ..Scenario::base("S8", "crash: every canary request fails", n(200))
    });
    v
}

fn slow_share(threshold_ms: f64, scale: f64, tail_only: bool) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    let (ln_median, sigma) = (50f64.ln(), 0.5);
    let above = |x: f64, s: f64| 1.0 - normal.cdf((x.ln() - ln_median - s.ln()) / sigma);
    if !tail_only {
        return above(threshold_ms, scale);
    }
    let q95 = (ln_median + sigma * normal.inverse_cdf(0.95)).exp();
    if threshold_ms <= q95 {
        above(threshold_ms, 1.0)
    } else {
        above((threshold_ms / scale).max(q95), 1.0)
    }
}

/// One tick of a stream: what the sensors reported, and the true counters behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tick {
    pub obs: Obs,
    pub canary: Arm,
    pub stable: Arm,
}

/// Generates one seeded stream.
pub fn stream(s: &Scenario, seed: u64) -> Vec<Tick> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ticks = s.limit_secs / TICK;
    let (mut c, mut b) = (Arm::default(), Arm::default());
    let mut reset_base = Arm::default();
    let shares = |scale: f64, tail: bool| THRESHOLDS_MS.map(|t| slow_share(t, scale, tail));
    let stable_slow = shares(1.0, false);
    let canary_slow = shares(s.latency_scale, s.tail_only);
    let mut out = Vec::with_capacity(ticks as usize);
    for k in 1..=ticks {
        let t = k * TICK;
        let (mut rate, mut load) = (s.rate, 1.0);
        if s.swing {
            let phase = (t as f64 / 7200.0) * std::f64::consts::TAU;
            rate *= 1.0 + 0.7 * phase.sin();
            load = 1.0 + 0.5 * 0.7 * phase.sin();
        }
        let n = (rate * TICK as f64).round() as u64;
        let nc = Binomial::new(n, s.rho).map_or(0, |d| d.sample(&mut rng));
        let nb = n - nc;
        let bug = t > s.bug_after_secs;
        let mut pb = (s.p_stable * load).min(1.0);
        let mut pc = if bug { (s.p_canary * load).min(1.0) } else { pb };
        if s.swing {
            // over-dispersion: a common shock to the base rate this tick (both arms), and a
            // 2-minute burst of 20% errors on both arms at minute 10
            let shock = Beta::new(10.0, 10.0).map_or(0.5, |d| d.sample(&mut rng)) * 2.0;
            pb = (pb * shock).min(1.0);
            pc = (pc * shock).min(1.0);
            if (600..720).contains(&t) {
                pb = 1.0 - (1.0 - pb) * 0.8;
                pc = 1.0 - (1.0 - pc) * 0.8;
            }
        }
        let draw = |arm: &mut Arm, n: u64, p: f64, slow: [f64; 3], rng: &mut ChaCha8Rng| {
            arm.total += n;
            arm.errors += Binomial::new(n, p).map_or(0, |d| d.sample(rng));
            // nested thresholds: slower than 500 ⊂ slower than 176 ⊂ slower than 160
            let s0 = Binomial::new(n, slow[0]).map_or(0, |d| d.sample(rng));
            let s1 = Binomial::new(s0, (slow[1] / slow[0]).min(1.0)).map_or(0, |d| d.sample(rng));
            let s2 = Binomial::new(s1, (slow[2] / slow[1]).min(1.0)).map_or(0, |d| d.sample(rng));
            arm.slow[0] += s0;
            arm.slow[1] += s1;
            arm.slow[2] += s2;
        };
        let canary_latency = if bug || s.metric == Metric::Errors {
            canary_slow
        } else {
            stable_slow
        };
        draw(&mut c, nc, pc, canary_latency, &mut rng);
        draw(&mut b, nb, pb, stable_slow, &mut rng);
        let mut obs = Obs {
            canary: Some(c.minus(&reset_base)),
            stable: Some(b),
        };
        if let Some((from, to, kind)) = s.gap {
            match kind {
                GapKind::Both if t > from && t <= to => obs = Obs::default(),
                GapKind::CanaryOnly if t > from && t <= to => obs.canary = None,
                GapKind::Reset if t > from && reset_base.total == 0 => {
                    reset_base = c;
                    obs.canary = Some(Arm::default());
                }
                _ => {}
            }
        }
        out.push(Tick {
            obs,
            canary: c,
            stable: b,
        });
    }
    out
}

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
}

/// The metric value of an arm: bad and total for the scenario's metric and threshold.
fn bad_total(a: &Arm, metric: Metric, threshold: usize) -> (u64, u64) {
    match metric {
        Metric::Errors => (a.errors, a.total),
        Metric::Latency => (a.slow[threshold], a.total),
    }
}

/// Our judge.
struct Ours {
    state: judge::JudgeState,
    cfg: JudgeConfig,
    metric: Metric,
}

impl Detector for Ours {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        let conv = |a: Option<Arm>| {
            a.map(|a| {
                let (bad, total) = bad_total(&a, self.metric, 0);
                Counts::new(bad, total)
            })
        };
        let reading = Reading::of(conv(obs.canary), conv(obs.stable));
        let (next, j) = judge::observe(&self.state, reading, &self.cfg, Time::from_secs(t));
        self.state = next;
        match j.verdict {
            Verdict::Regressed => Decision::Rollback,
            Verdict::Safe => Decision::Promote,
            Verdict::NotYet(_) => Decision::Continue,
        }
    }
}

/// Per-interval (60 s) windows from cumulative observations; handles counter resets like
/// Prometheus' `increase()`.
#[derive(Default)]
struct Windows {
    last: Obs,
    canary: Arm,
    stable: Arm,
    missing: bool,
}

impl Windows {
    fn add(&mut self, obs: &Obs) {
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
    fn take(&mut self) -> (Arm, Arm, bool) {
        let r = (self.canary, self.stable, self.missing || self.canary.total == 0);
        self.canary = Arm::default();
        self.stable = Arm::default();
        self.missing = false;
        r
    }
}

fn add(a: &mut Arm, d: &Arm) {
    a.total += d.total;
    a.errors += d.errors;
    for i in 0..3 {
        a.slow[i] += d.slow[i];
    }
}

/// Flagger's threshold rule.
struct Flagger {
    windows: Windows,
    metric: Metric,
    /// Errors: the largest error share that passes; latency: which threshold is the p99 limit.
    limit: f64,
    threshold_index: usize,
    failed_limit: u32,
    failed: u32,
    passed: u32,
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

/// Argo Rollouts' analysis rule.
struct Argo {
    windows: Windows,
    metric: Metric,
    limit: f64,
    threshold_index: usize,
    failure_limit: u32,
    failures: u32,
    consecutive_errors: u32,
    successes: u32,
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

/// Kayenta's Mann-Whitney judge on per-minute values.
struct MannWhitney {
    windows: Windows,
    metric: Metric,
    canary: Vec<f64>,
    baseline: Vec<f64>,
}

/// Two-sided Mann-Whitney: returns (p-value, Hodges–Lehmann shift of canary over baseline).
fn mann_whitney(x: &[f64], y: &[f64]) -> (f64, f64) {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, usize)> = x
        .iter()
        .map(|v| (*v, 0))
        .chain(y.iter().map(|v| (*v, 1)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut ranks = vec![0.0; all.len()];
    let mut i = 0;
    let mut tie_term = 0.0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for rank in ranks.iter_mut().take(j + 1).skip(i) {
            *rank = r;
        }
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let r1: f64 = all
        .iter()
        .zip(&ranks)
        .filter(|(a, _)| a.1 == 0)
        .map(|(_, r)| r)
        .sum();
    let u = r1 - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let sd = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let p = if sd > 0.0 {
        let z = (u - n1 * n2 / 2.0).abs() / sd;
        2.0 * (1.0 - Normal::new(0.0, 1.0).expect("normal").cdf(z))
    } else {
        1.0
    };
    let mut diffs: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
    diffs.sort_by(|a, b| a.total_cmp(b));
    (p, diffs.get(diffs.len() / 2).copied().unwrap_or(0.0))
}

impl Detector for MannWhitney {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        self.windows.add(obs);
        if !t.is_multiple_of(60) {
            return Decision::Continue;
        }
        let (c, b, missing) = self.windows.take();
        if !missing && b.total > 0 {
            let (cb, ct) = bad_total(&c, self.metric, 0);
            let (bb, bt) = bad_total(&b, self.metric, 0);
            self.canary.push(cb as f64 / ct as f64);
            self.baseline.push(bb as f64 / bt as f64);
        }
        if self.canary.len() < 5 {
            return Decision::Continue;
        }
        let (p, shift) = mann_whitney(&self.canary, &self.baseline);
        let base = {
            let mut v = self.baseline.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2].max(1e-9)
        };
        // a metric fails when the difference is significant at 98% and beyond the 25% tolerance
        let fails = p < 0.02 && shift / base > 0.25;
        let score = if fails { 0.0 } else { 100.0 };
        if score < 75.0 {
            Decision::Rollback
        } else if t >= 1800 && score >= 95.0 {
            Decision::Promote
        } else {
            Decision::Continue
        }
    }
}

/// A fixed-sample two-proportion test repeated every minute on the cumulative counts.
struct Naive {
    metric: Metric,
    last: Obs,
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

/// The detectors, by name: a constructor per scenario.
/// A detector's name, its setting in words, and its constructor.
pub type DetectorEntry = (&'static str, &'static str, fn(&Scenario) -> Box<dyn Detector>);

/// Our judge as the benchmark runs it: α and the false-promotion rate 5%, the target between
/// baseline and regression, regression and safety boundaries δ_r and δ_s.
fn ours(s: &Scenario, delta_r: f64, delta_s: f64) -> Box<dyn Detector> {
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

/// One detector on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub detector: &'static str,
    pub runs: usize,
    pub healthy: bool,
    pub rolled_back: usize,
    pub promoted: usize,
    pub held: usize,
    /// Rollback rate, with its Clopper–Pearson 95% interval.
    pub rollback_rate: f64,
    pub rollback_ci: (f64, f64),
    /// Seconds (and canary requests) to the decision that matters: rollback of a bad canary,
    /// promotion of a healthy one; median, p90, p99.
    pub time_secs: [f64; 3],
    pub requests: [f64; 3],
    pub mean_requests: f64,
    pub floor: f64,
    pub efficiency: f64,
    /// Failed canary requests before rollback (bad canaries), mean; and the excess over stable.
    pub blast_radius: f64,
    pub blast_excess: f64,
    /// Decisions taken at a tick whose data was missing.
    pub decisions_on_missing_data: usize,
    /// Rollbacks before a late bug started (S7): false alarms, not detections.
    pub early_rollbacks: usize,
}

fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    [q(0.5), q(0.9), q(0.99)]
}

fn clopper_pearson(k: usize, n: usize) -> (f64, f64) {
    let (k, n) = (k as f64, n as f64);
    let lo = if k == 0.0 {
        0.0
    } else {
        BetaDist::new(k, n - k + 1.0).map_or(0.0, |b| b.inverse_cdf(0.025))
    };
    let hi = if k == n {
        1.0
    } else {
        BetaDist::new(k + 1.0, n - k).map_or(1.0, |b| b.inverse_cdf(0.975))
    };
    (lo, hi)
}

/// Runs every detector on every scenario.
pub fn run(scale: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in scenarios(scale) {
        let streams: Vec<Vec<Tick>> = (0..s.runs).map(|i| stream(&s, 0x5eed_0000 + i as u64)).collect();
        let (p0, _) = s.bad_shares();
        let bug_tick = (s.bug_after_secs / TICK) as usize;
        for (name, _, make) in detectors() {
            let (mut rolled, mut promoted) = (0, 0);
            let (mut times, mut reqs, mut blast, mut excess) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut on_missing = 0;
            let mut early = 0;
            for ticks in &streams {
                let mut d = make(&s);
                for (k, tick) in ticks.iter().enumerate() {
                    let t = (k as u64 + 1) * TICK;
                    let decision = d.observe(t, &tick.obs);
                    if decision == Decision::Continue {
                        continue;
                    }
                    if tick.obs.canary.is_none() || tick.obs.stable.is_none() {
                        on_missing += 1;
                    }
                    match decision {
                        Decision::Rollback if t <= s.bug_after_secs => early += 1,
                        Decision::Rollback => {
                            rolled += 1;
                            if !s.healthy() {
                                // the truth since the bug started: requests and failures served
                                let before = if bug_tick == 0 {
                                    Arm::default()
                                } else {
                                    ticks[bug_tick - 1].canary
                                };
                                let since = tick.canary.minus(&before);
                                let (bad, n) = bad_total(&since, s.metric, 0);
                                times.push(t.saturating_sub(s.bug_after_secs) as f64);
                                reqs.push(n as f64);
                                blast.push(bad as f64);
                                excess.push(bad as f64 - n as f64 * p0);
                            }
                        }
                        Decision::Promote => {
                            promoted += 1;
                            if s.healthy() {
                                times.push(t as f64);
                                reqs.push(tick.canary.total as f64);
                            }
                        }
                        Decision::Continue => unreachable!("skipped above"),
                    }
                    break;
                }
            }
            let n = s.runs;
            let mean_requests = if reqs.is_empty() {
                f64::NAN
            } else {
                reqs.iter().sum::<f64>() / reqs.len() as f64
            };
            let floor = s.floor();
            rows.push(Row {
                scenario: s.id,
                detector: name,
                runs: n,
                healthy: s.healthy(),
                rolled_back: rolled,
                promoted,
                held: n - rolled - promoted - early,
                rollback_rate: rolled as f64 / n as f64,
                rollback_ci: clopper_pearson(rolled, n),
                time_secs: quantiles(times),
                requests: quantiles(reqs.clone()),
                mean_requests,
                floor,
                efficiency: mean_requests / floor,
                blast_radius: if blast.is_empty() {
                    f64::NAN
                } else {
                    blast.iter().sum::<f64>() / blast.len() as f64
                },
                blast_excess: if excess.is_empty() {
                    f64::NAN
                } else {
                    excess.iter().sum::<f64>() / excess.len() as f64
                },
                decisions_on_missing_data: on_missing,
                early_rollbacks: early,
            });
        }
    }
    rows
}

fn f(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// The Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Scenarios\n");
    let _ = writeln!(
        out,
        "| id | scenario | runs | floor (canary requests) | floor at our zone's boundaries (δ_r 10%, δ_s 50%) |\n|---|---|---|---|---|"
    );
    for s in scenarios(1.0) {
        let runs = rows.iter().find(|r| r.scenario == s.id).map_or(0, |r| r.runs);
        let zone = s
            .zone_floor(0.1, 0.5)
            .map_or("–".to_owned(), |f| format!("{f:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {runs} | {:.0} | {zone} |",
            s.id,
            s.what,
            s.floor()
        );
    }
    let _ = writeln!(out, "\n## Detectors\n\n| detector | setting |\n|---|---|");
    for (name, setting, _) in detectors() {
        let _ = writeln!(out, "| {name} | {setting} |");
    }
    let _ = writeln!(out, "\n## Results\n");
    let _ = writeln!(
        out,
        "Bad canaries: rolled back = detected; time and requests to rollback (since the bug started), mean blast radius \
         (bad canary requests before rollback) and excess over stable. Healthy canaries: rolled back = false rollback \
         (95% Clopper–Pearson interval); time and requests to promotion; held = neither by the limit.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | detector | rolled back | CP 95% | promoted | held | time p50/p90/p99 (s) | canary requests p50/p90/p99 | mean / floor | blast radius | excess | decisions on missing data | rolled back before the bug |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1}% | [{:.1}%, {:.1}%] | {:.1}% | {:.1}% | {}/{}/{} | {}/{}/{} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.detector,
            100.0 * r.rollback_rate,
            100.0 * r.rollback_ci.0,
            100.0 * r.rollback_ci.1,
            100.0 * r.promoted as f64 / r.runs as f64,
            100.0 * r.held as f64 / r.runs as f64,
            f(r.time_secs[0], 0),
            f(r.time_secs[1], 0),
            f(r.time_secs[2], 0),
            f(r.requests[0], 0),
            f(r.requests[1], 0),
            f(r.requests[2], 0),
            f(r.efficiency, 2),
            f(r.blast_radius, 1),
            f(r.blast_excess, 1),
            r.decisions_on_missing_data,
            r.early_rollbacks,
        );
    }
    out.push_str(&goals(rows));
    out
}

/// The goals of the judge's second generation, cell by cell, met or not, for our judge
/// (α 5% in this benchmark) against Flagger tuned t=10 in the same run.
pub fn goals(rows: &[Row]) -> String {
    let ours = |id: &str| rows.iter().find(|r| r.scenario == id && r.detector == "ours");
    let flagger = |id: &str| {
        rows.iter()
            .find(|r| r.scenario == id && r.detector == "flagger tuned t=10")
    };
    let mut out =
        String::from("\n## Goals\n\n| goal | scenario | ours | target | met |\n|---|---|---|---|---|\n");
    let mut cell = |goal: &str,
                    id: &str,
                    value: Option<f64>,
                    target: Option<f64>,
                    shown: &dyn Fn(f64) -> String,
                    at_most: bool| {
        let met = match (value, target) {
            (Some(v), Some(t)) if at_most => {
                if v <= t {
                    "met"
                } else {
                    "not met"
                }
            }
            (Some(v), Some(t)) => {
                if v >= t {
                    "met"
                } else {
                    "not met"
                }
            }
            _ => "not measured",
        };
        let v = value.map_or("–".to_owned(), shown);
        let t = target.map_or("–".to_owned(), |t| {
            format!("{} {}", if at_most { "≤" } else { "≥" }, shown(t))
        });
        let _ = writeln!(out, "| {goal} | {id} | {v} | {t} | {met} |");
    };
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let num = |v: f64| format!("{v:.1}");
    for r in rows.iter().filter(|r| r.detector == "ours" && r.healthy) {
        cell(
            "false rollbacks ≤ α (CP upper ≤ α + 1%)",
            r.scenario,
            Some(r.rollback_ci.1),
            Some(0.06),
            &pct,
            true,
        );
    }
    for id in ["S1", "S3a", "S5b"] {
        let target = flagger(id).map(|f| f.blast_radius / 5.0);
        cell(
            "blast radius ≤ 1/5 of Flagger tuned t=10",
            id,
            ours(id).map(|r| r.blast_radius),
            target,
            &num,
            true,
        );
    }
    for id in ["S1", "S3a", "S3b", "S5b", "S7", "S9"] {
        cell(
            "detected within the limit ≥ 95%",
            id,
            ours(id).map(|r| r.rollback_rate),
            Some(0.95),
            &pct,
            false,
        );
    }
    cell(
        "mean canary requests ≤ 1.5× the floor",
        "S1",
        ours("S1").map(|r| r.efficiency),
        Some(1.5),
        &|v| format!("{v:.2}×"),
        true,
    );
    cell(
        "healthy promotion median no slower than 540 s",
        "S0",
        ours("S0").map(|r| r.time_secs[0]),
        Some(540.0),
        &|v| format!("{v:.0} s"),
        true,
    );
    out
}

/// The CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "scenario,detector,runs,healthy,rolled_back,promoted,held,rollback_rate,ci_low,ci_high,time_p50,time_p90,time_p99,requests_p50,requests_p90,requests_p99,mean_requests,floor,efficiency,blast_radius,blast_excess,decisions_on_missing_data,early_rollbacks\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.5},{:.5},{:.5},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.3},{:.2},{:.2},{},{}",
            r.scenario,
            r.detector,
            r.runs,
            r.healthy,
            r.rolled_back,
            r.promoted,
            r.held,
            r.rollback_rate,
            r.rollback_ci.0,
            r.rollback_ci.1,
            r.time_secs[0],
            r.time_secs[1],
            r.time_secs[2],
            r.requests[0],
            r.requests[1],
            r.requests[2],
            r.mean_requests,
            r.floor,
            r.efficiency,
            r.blast_radius,
            r.blast_excess,
            r.decisions_on_missing_data,
            r.early_rollbacks
        );
    }
    out
}

/// An SVG chart: per scenario, each detector's mean canary requests to its decision as a
/// multiple of the floor (log scale), and the false rollback rate on healthy scenarios.
pub fn svg(rows: &[Row]) -> String {
    use plotters::prelude::*;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1200, 900)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (top, bottom) = root.split_vertically(450);
        let names: Vec<&str> = detectors().iter().map(|d| d.0).collect();
        let colors = |i: usize| Palette99::pick(i).to_rgba();
        let bad: Vec<&str> = {
            let mut v: Vec<&str> = rows.iter().filter(|r| !r.healthy).map(|r| r.scenario).collect();
            v.dedup();
            v
        };
        let healthy: Vec<&str> = {
            let mut v: Vec<&str> = rows.iter().filter(|r| r.healthy).map(|r| r.scenario).collect();
            v.dedup();
            v
        };
        let groups = |scenarios: &[&str],
                      area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                      title: &str,
                      value: &dyn Fn(&Row) -> f64,
                      log: bool| {
            let max = rows
                .iter()
                .filter(|r| scenarios.contains(&r.scenario))
                .map(value)
                .filter(|v| v.is_finite())
                .fold(1.0, f64::max);
            // headroom above the bars for the legend
            let y_top = if log {
                max.log10().ceil().max(1.0) + 1.5
            } else {
                (max * 1.7).max(0.05)
            };
            let Ok(mut chart) = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(-0.5..scenarios.len() as f64 - 0.5, 0.0..y_top)
            else {
                return;
            };
            let labels = scenarios.to_vec();
            let _ = chart
                .configure_mesh()
                .x_labels(scenarios.len())
                .x_label_formatter(&|x| {
                    let k = x.round();
                    if (x - k).abs() > 1e-6 || k < 0.0 {
                        return String::new();
                    }
                    labels.get(k as usize).map_or(String::new(), |s| s.to_string())
                })
                .y_label_formatter(&|y| {
                    if log {
                        format!("{:.0}", 10f64.powf(*y))
                    } else {
                        format!("{:.0}%", y * 100.0)
                    }
                })
                .disable_x_mesh()
                .draw();
            let w = 0.8 / names.len() as f64;
            for (i, name) in names.iter().enumerate() {
                let bars = scenarios.iter().enumerate().filter_map(|(k, s)| {
                    let r = rows.iter().find(|r| r.scenario == *s && r.detector == *name)?;
                    let v = value(r);
                    if !v.is_finite() {
                        return None;
                    }
                    let h = if log { v.max(1.0).log10() } else { v };
                    let x0 = k as f64 - 0.4 + w * i as f64;
                    Some(Rectangle::new([(x0, 0.0), (x0 + w, h)], colors(i).filled()))
                });
                if let Ok(a) = chart.draw_series(bars) {
                    a.label(*name).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 4), (x + 10, y + 4)], colors(i).filled())
                    });
                }
            }
            let _ = chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw();
        };
        groups(
            &bad,
            &top,
            "bad canaries: mean canary requests to rollback / floor (log scale; no bar: never detected, or below 1x with false alarms)",
            &|r: &Row| r.efficiency,
            true,
        );
        groups(
            &healthy,
            &bottom,
            "healthy canaries: false rollback rate",
            &|r: &Row| r.rollback_rate,
            false,
        );
        let _ = root.present();
    }
    text
}

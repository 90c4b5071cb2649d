//! The canary judge: anytime-valid sequential tests on counts of bad events.
//!
//! For one objective the judge sees four growing counters — bad and total, for the canary and
//! for stable — and answers `Regressed`, `Safe` or `NotYet`, with evidence a person can read.
//! It may be asked at every tick, at any pace, with increments of any size: every test here is
//! a test martingale (an e-process), so by Ville's inequality the chance that a healthy canary
//! is *ever* called `Regressed` stays below α however often it looks.
//!
//! # The tests (see `shared/JUDGE.md`)
//! - **Relative regression** (null: the canary's bad share is at most `1 + δ` times stable's):
//!   given the bad events of a tick, the canary's share of them is `Binomial(x, θ)` with
//!   `θ(r) = rρ / (rρ + 1 − ρ)`, `ρ` the canary's share of the tick's traffic. The unknown and
//!   time-varying base rate cancels. A mixture over a grid of ratios `r_k > 1 + δ`
//!   (Lindon & Malek 2022). Per-alternative log-products are carried from tick to tick,
//!   since `ρ` changes with the weight.
//! - **Relative safety**: the same with the alternatives below the boundary.
//! - **Absolute regression / safety** against the target `p₀`: the canary's own counts,
//!   `Binomial(n, p)`; the cumulative counts are sufficient, so no per-tick state is needed.
//! - **"Moot" relative comparison**: a canary whose bad share is, with confidence, below
//!   `δ · p₀` is within tolerance whatever stable does: the tolerance applies to the ratio with
//!   stable *or* as a share of the target, whichever is larger. (A loose target therefore
//!   loosens the comparison: the benchmark found that a 5% target with δ = 50% lets a canary at
//!   2% through next to a stable at 1%. Set targets near what the service really promises.) Without it, a service with no errors
//!   at all could never be promoted (the relative tests learn nothing when `x = 0`).
//!
//! `Regressed` comes from the relative test when the objective compares with stable: a canary
//! no worse than stable is not rolled back because the *service* misses its target (a burst
//! hitting both arms, a degraded dependency) — the absolute target then holds promotion
//! instead. Without the comparison, the absolute test decides. `plan` splits α between
//! objectives; the false-promotion rate is split by a union bound between the safety tests.
//! A crossing is final: once a test has rejected, its verdict stays.
//!
//! # Missing data
//! A reading that is absent (or NaN upstream) moves nothing: gaps never cause a false alarm
//! and never count as safety. The judge reports how long data has been missing; the plan
//! applies the missing-data policy. A counter that goes down was reset: the increment is
//! counted from zero, never negative.
//!
//! # Never
//! No I/O, no clock (time comes in), no randomness.

use super::counters::increment;
use super::time::Time;
use serde::{Deserialize, Serialize};

pub use super::counters::Counts;

/// What the sensors said at one moment; `None` is missing data, and `missing` says why.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reading {
    pub canary: Option<Counts>,
    pub stable: Option<Counts>,
    /// Why an arm has no counts (the canary's reason first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
}

impl Reading {
    /// Both arms read.
    pub fn of(canary: Option<Counts>, stable: Option<Counts>) -> Reading {
        Reading {
            canary,
            stable,
            missing: None,
        }
    }
}

/// Why a sensor has no counts. Each is missing data — never zero requests, never a perfect
/// canary — and the plan holds on it, then acts after the objective's `missingData.hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missing {
    /// No series matches the sensor's selector (nothing exported yet, or a wrong label).
    NoSeries,
    /// The series were there, and no sample has come since the staleness limit.
    Stale,
    /// Some of the arm's series were scraped recently, others not: the sum would be partial.
    ScrapeGap,
    /// A counter went down (its process restarted): what it counted since the last read is lost.
    CounterReset,
    /// The value is NaN or infinite.
    NotANumber,
    /// Prometheus (or the sensor's source) could not be reached.
    Unreachable,
    /// The source did not answer within its timeout.
    Timeout,
    /// The source answered with an error (a bad query, an overloaded server).
    QueryError,
    /// Nothing here reads this kind of sensor.
    Unsupported,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Missing::NoSeries => "no series matches the sensor",
            Missing::Stale => "the series went stale (no recent sample)",
            Missing::ScrapeGap => "a scrape gap (some series have no recent sample)",
            Missing::CounterReset => "a counter reset (what it counted since the last read is lost)",
            Missing::NotANumber => "the value is not a number",
            Missing::Unreachable => "the sensor's source is unreachable",
            Missing::Timeout => "the sensor's source timed out",
            Missing::QueryError => "the sensor's source answered with an error",
            Missing::Unsupported => "no adapter here reads this sensor",
        })
    }
}

/// The judge's settings for one objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// The chance of ever calling a healthy canary regressed, for this objective.
    pub alpha: f64,
    /// The chance of calling a canary safe that is worse than tolerated, for this objective.
    pub alpha_safe: f64,
    /// δ_r: the regression test's boundary, relative to stable (0.1 = 10% worse): a canary
    /// within it is rolled back with probability at most α.
    pub tolerance: f64,
    /// δ_s ≥ δ_r: the safety test's boundary: a canary worse than it is promoted with
    /// probability at most the false-promotion rate. Equal to δ_r: no indifference zone.
    pub safety_tolerance: f64,
    /// The absolute target: the largest acceptable share of bad events.
    pub max_bad: f64,
    /// Judge against stable too (else only against the target).
    pub compare_with_stable: bool,
}

/// Alternatives for the relative regression test, as multiples of the boundary `1 + δ`: from a
/// mild regression to a crash, so the mixture adapts to the unknown size of the effect.
pub const REGRESSION_RATIOS: [f64; 8] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0];
/// The mixture's weights over [`REGRESSION_RATIOS`] (they sum to 1, so the mixture stays a test
/// martingale): most on the regressions that are hard to see (1.5–3× the boundary), where each
/// nat of the mixture's price costs hundreds of requests; little on crashes, which pay it back
/// within a few bad requests.
pub(crate) const REGRESSION_WEIGHTS: [f64; 8] = [0.1, 0.3, 0.3, 0.14, 0.06, 0.04, 0.03, 0.03];
/// Alternatives for the relative safety test, as multiples of stable's bad share.
const SAFETY_RATIOS: [f64; 4] = [1.0, 0.8, 0.5, 0.25];
/// Alternatives for the absolute regression test, as multiples of the target (capped below 1);
/// the largest makes a crash (every request failing) decisive within a few requests.
pub(crate) const ABS_REGRESSION_MULTIPLES: [f64; 8] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0];
/// Alternatives for the absolute safety tests, as multiples of the bound being ruled out.
const ABS_SAFETY_MULTIPLES: [f64; 5] = [0.75, 0.5, 0.25, 0.1, 0.01];
/// The largest bad share an alternative may claim (1.0 would make one good request fatal).
pub(crate) const MAX_ALTERNATIVE: f64 = 0.999;

/// Which test crossed, and when. Sticky.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Crossing {
    pub at: Time,
    /// The e-value when it crossed.
    pub e_value: f64,
}

/// Everything the judge remembers between ticks for one objective of one rollout.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JudgeState {
    /// The last cumulative counters read, to compute increments.
    last: Reading,
    /// Increments accumulated since the rollout started (resets handled).
    pub canary: Counts,
    pub stable: Counts,
    /// Log-products of the relative tests' likelihood ratios, one per alternative.
    log_rel_regression: Vec<f64>,
    log_rel_safety: Vec<f64>,
    pub regressed: Option<(Test, Crossing)>,
    pub safe_relative: Option<Crossing>,
    pub safe_absolute: Option<Crossing>,
    /// The canary's counts the absolute tests judge: ticks in which stable itself was
    /// significantly above the target (a shared incident) are left out. The choice depends on
    /// stable's counts only, so the canary's e-process stays valid.
    pub canary_judged: Counts,
    /// Ticks left out of the absolute tests as shared incidents.
    pub shared_ticks: u32,
    /// Bad canary requests beyond what stable's rate *at the same time* would have produced,
    /// summed tick by tick (cumulative shares would mislead when the weight changes while the
    /// base rate moves: Simpson's paradox). Negative when the canary does better.
    pub excess_bad: f64,
    /// When data started missing (for the canary, or for stable when comparing).
    pub missing_since: Option<Time>,
    /// Why, as the latest reading without data said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_reason: Option<Missing>,
    /// When the last reading with data arrived.
    pub last_data_at: Option<Time>,
    /// Increments not yet given to the relative tests: (canary, stable) since the last look at
    /// which both arms had requests. A look where one arm served nothing says nothing of the
    /// ratio (ρ is 0 or 1), so its requests wait for the next look that can compare them
    /// instead of being lost; at 250 ms looks on a service with one request a second most
    /// looks are such. Where a batch ends depends on the request counts only, never on which
    /// requests were bad, so the relative tests stay test martingales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<(Counts, Counts)>,
}

impl JudgeState {
    /// A judge for counters that count anew from zero (an A/B segment's stage ended: each arm
    /// is now all of its release's requests, a different series): no evidence, no verdict,
    /// no last counters; the bad requests served beyond stable's stay spent.
    pub fn anew(&self) -> JudgeState {
        JudgeState {
            last_data_at: self.last_data_at,
            excess_bad: self.excess_bad.max(0.0),
            ..JudgeState::default()
        }
    }

    /// The last cumulative counters read (both arms), for a watch that goes on from here.
    pub fn last_reading(&self) -> Reading {
        self.last
    }

    /// A judge that starts over from now: no evidence, no verdict, but the last counters read
    /// kept, so that only what comes after counts (a shadow rollout's copies are not the users'
    /// evidence).
    pub fn afresh(&self) -> JudgeState {
        JudgeState {
            last: self.last,
            last_data_at: self.last_data_at,
            ..JudgeState::default()
        }
    }
}

/// The judge's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Test {
    RelativeRegression,
    AbsoluteRegression,
    RelativeSafety,
    AbsoluteSafety,
}

/// Why the judge cannot decide yet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Waiting {
    /// No data has arrived yet.
    NoDataYet,
    /// Data stopped arriving at `since`.
    DataMissing { since: Time },
    /// Data arrives but is not yet conclusive.
    MoreEvidence,
}

impl Waiting {
    /// Why a test that has not decided waits: no data yet, data missing since a moment, or
    /// data that is not yet conclusive.
    pub fn why(missing_since: Option<Time>, last_data_at: Option<Time>) -> Waiting {
        match (missing_since, last_data_at) {
            (Some(_), None) => Waiting::NoDataYet,
            (Some(since), Some(_)) => Waiting::DataMissing { since },
            (None, _) => Waiting::MoreEvidence,
        }
    }
}

/// The judge's answer for one objective at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    Regressed,
    Safe,
    NotYet(Waiting),
}

/// Why the judge says what it says: the numbers and one line for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub canary: Counts,
    pub stable: Counts,
    /// The largest regression e-value now (relative or absolute) and its threshold 1/α'.
    pub regression_e: f64,
    pub regression_threshold: f64,
    /// The smallest of the safety e-values still needed, and its threshold.
    pub safety_e: f64,
    pub safety_threshold: f64,
    /// An anytime-valid upper bound on the canary's bad share (at the safety level).
    pub canary_upper: f64,
    /// Everything, for `--verbose` and the record: counts, the test, the e-values.
    pub explanation: String,
    /// For people: the counts and the verdict in words first, the statistic second.
    #[serde(default)]
    pub words: String,
}

/// The judge's verdict and evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub evidence: Evidence,
}

/// Is this tick's bad share significantly above `p0` (one-sided binomial test at 0.1%)?
fn significantly_above(c: Counts, p0: f64) -> bool {
    use statrs::distribution::{Binomial, DiscreteCDF};
    if c.total == 0 || c.ratio() <= p0 {
        return false;
    }
    // P(X ≥ bad) under Binomial(total, p0)
    Binomial::new(p0, c.total).is_ok_and(|b| b.sf(c.bad.saturating_sub(1)) < 1e-3)
}

/// The canary's expected share of a tick's bad events when its bad share is `r` times stable's and
/// it serves the share `rho` of the traffic.
pub(crate) fn theta(r: f64, rho: f64) -> f64 {
    r * rho / (r * rho + 1.0 - rho)
}

/// One tick's log-likelihood ratio in the relative tests: `xc` of the tick's bad events were the
/// canary's and `xb` stable's, the canary serving the share `rho`; the ratio `r` against the
/// `boundary` (both as multiples of stable's bad share).
pub fn relative_log_ratio(xc: f64, xb: f64, rho: f64, r: f64, boundary: f64) -> f64 {
    let t0 = theta(boundary, rho);
    let t = theta(r, rho).clamp(1e-15, 1.0 - 1e-15);
    xc * (t / t0).ln() + xb * ((1.0 - t) / (1.0 - t0)).ln()
}

/// `ln Σ w_k e^{l_k}` with the given weights.
pub(crate) fn log_weighted_sum_exp(logs: &[f64], weights: &[f64]) -> f64 {
    let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + logs
        .iter()
        .zip(weights)
        .map(|(l, w)| w * (l - m).exp())
        .sum::<f64>()
        .ln()
}

/// `ln Σ w_k e^{l_k}` with equal weights.
fn log_mean_exp(logs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = logs.collect();
    if v.is_empty() {
        return 0.0;
    }
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + (v.iter().map(|l| (l - m).exp()).sum::<f64>() / v.len() as f64).ln()
}

/// Log e-value of the one-sample binomial test of `p = p0` against a mixture of `alternatives`
/// (multiples of p0), given cumulative counts. For alternatives above p0 this tests
/// "p ≤ p0" (regression), below p0 "p ≥ p0" (safety).
fn log_binomial_mixture(counts: Counts, p0: f64, multiples: &[f64]) -> f64 {
    let x = counts.bad as f64;
    let n = counts.total as f64;
    let mut seen = Vec::new();
    for m in multiples {
        let p1 = (p0 * m).clamp(1e-12, MAX_ALTERNATIVE);
        if (p1 - p0).abs() > 1e-15 && !seen.iter().any(|s: &f64| (s - p1).abs() < 1e-15) {
            seen.push(p1);
        }
    }
    log_mean_exp(
        seen.iter()
            .map(|p1| x * (p1 / p0).ln() + (n - x) * ((1.0 - p1) / (1.0 - p0)).ln()),
    )
}

/// An anytime-valid upper confidence bound on a binomial share: the smallest `p` that the
/// safety mixture rejects ("the share is at least p") at level α.
pub fn upper_bound(counts: Counts, alpha: f64) -> f64 {
    let threshold = (1.0 / alpha).ln();
    let rejects = |p: f64| log_binomial_mixture(counts, p, &ABS_SAFETY_MULTIPLES) >= threshold;
    if !rejects(MAX_ALTERNATIVE) {
        return 1.0;
    }
    let observed = if counts.total == 0 { 0.0 } else { counts.ratio() };
    let (mut lo, mut hi) = (observed.clamp(0.0, MAX_ALTERNATIVE), MAX_ALTERNATIVE);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if rejects(mid) { hi = mid } else { lo = mid }
    }
    hi
}

impl JudgeConfig {
    /// Safety needs absolute safety and (relative safety or a moot comparison): three tests
    /// that can each promote falsely.
    fn safety_tests(&self) -> f64 {
        if self.compare_with_stable { 3.0 } else { 1.0 }
    }

    fn regression_threshold(&self) -> f64 {
        1.0 / self.alpha
    }

    fn safety_threshold(&self) -> f64 {
        self.safety_tests() / self.alpha_safe
    }
}

/// Feeds one reading to the judge: returns the new state and the judgement.
pub fn observe(
    state: &JudgeState,
    reading: Reading,
    cfg: &JudgeConfig,
    now: Time,
) -> (JudgeState, Judgement) {
    let mut s = state.clone();
    if s.log_rel_regression.is_empty() {
        s.log_rel_regression = vec![0.0; REGRESSION_RATIOS.len()];
        s.log_rel_safety = vec![0.0; SAFETY_RATIOS.len()];
    }
    let canary_inc = reading.canary.map(|c| increment(s.last.canary, c));
    let stable_inc = reading.stable.map(|c| increment(s.last.stable, c));
    if let Some(c) = reading.canary {
        s.last.canary = Some(c);
    }
    if let Some(c) = reading.stable {
        s.last.stable = Some(c);
    }

    // missing data: the canary's counts are always needed; stable's when comparing
    let has_data = reading.canary.is_some() && (reading.stable.is_some() || !cfg.compare_with_stable);
    if has_data {
        s.missing_since = None;
        s.missing_reason = None;
        s.last_data_at = Some(now);
    } else {
        if s.missing_since.is_none() {
            s.missing_since = Some(now);
        }
        s.missing_reason = reading.missing.or(s.missing_reason);
    }

    if let Some(ci) = canary_inc {
        s.canary.add(ci);
        let shared_incident =
            cfg.compare_with_stable && stable_inc.is_some_and(|si| significantly_above(si, cfg.max_bad));
        if shared_incident {
            s.shared_ticks += 1;
        } else {
            s.canary_judged.add(ci);
        }
        match stable_inc {
            Some(si) if si.total > 0 => s.excess_bad += ci.bad as f64 - ci.total as f64 * si.ratio(),
            // no stable traffic to compare with this tick: count against the target
            _ => s.excess_bad += ci.bad as f64 - ci.total as f64 * cfg.max_bad,
        }
    }
    if let Some(si) = stable_inc {
        s.stable.add(si);
    }

    // relative tests: the batch's ρ from the increments (pooled until both arms served
    // requests); no information without bad events
    let batch = match (canary_inc, stable_inc) {
        (Some(ci), Some(si)) if cfg.compare_with_stable => {
            let (pc, ps) = s.pending.take().unwrap_or_default();
            let (ci, si) = (pc + ci, ps + si);
            if ci.total > 0 && si.total > 0 {
                Some((ci, si))
            } else {
                s.pending = Some((ci, si)).filter(|(c, s)| c.total + s.total > 0);
                None
            }
        }
        _ => None,
    };
    if let Some((ci, si)) = batch
        && ci.bad + si.bad > 0
    {
        let rho = ci.total as f64 / (ci.total + si.total) as f64;
        let (xc, xb) = (ci.bad as f64, si.bad as f64);
        // each test against its own boundary: regression at 1 + δ_r, safety at 1 + δ_s
        let step = |r: f64, boundary: f64| relative_log_ratio(xc, xb, rho, r, boundary);
        let (reg_boundary, safe_boundary) = (1.0 + cfg.tolerance, 1.0 + cfg.safety_tolerance);
        for (acc, m) in s.log_rel_regression.iter_mut().zip(REGRESSION_RATIOS) {
            *acc += step(m * reg_boundary, reg_boundary);
        }
        for (acc, r) in s.log_rel_safety.iter_mut().zip(SAFETY_RATIOS) {
            *acc += step(r, safe_boundary);
        }
    }

    let reg_threshold = cfg.regression_threshold();
    let safe_threshold = cfg.safety_threshold();
    let e_rel_reg = log_weighted_sum_exp(&s.log_rel_regression, &REGRESSION_WEIGHTS).exp();
    let e_rel_safe = log_mean_exp(s.log_rel_safety.iter().copied()).exp();
    let e_abs_reg = log_binomial_mixture(s.canary_judged, cfg.max_bad, &ABS_REGRESSION_MULTIPLES).exp();
    let e_abs_safe = log_binomial_mixture(s.canary_judged, cfg.max_bad, &ABS_SAFETY_MULTIPLES).exp();
    let moot_bound = cfg.safety_tolerance * cfg.max_bad;
    let e_moot = if moot_bound > 0.0 {
        log_binomial_mixture(s.canary_judged, moot_bound, &ABS_SAFETY_MULTIPLES).exp()
    } else {
        0.0
    };

    if s.regressed.is_none() {
        let crossing = |e: f64| Crossing { at: now, e_value: e };
        if cfg.compare_with_stable {
            if e_rel_reg >= reg_threshold {
                s.regressed = Some((Test::RelativeRegression, crossing(e_rel_reg)));
            }
        } else if e_abs_reg >= reg_threshold {
            s.regressed = Some((Test::AbsoluteRegression, crossing(e_abs_reg)));
        }
    }
    if s.safe_absolute.is_none() && e_abs_safe >= safe_threshold {
        s.safe_absolute = Some(Crossing {
            at: now,
            e_value: e_abs_safe,
        });
    }
    if s.safe_relative.is_none() {
        let e = e_rel_safe.max(e_moot);
        if !cfg.compare_with_stable || e >= safe_threshold {
            s.safe_relative = Some(Crossing { at: now, e_value: e });
        }
    }

    let canary_upper = upper_bound(s.canary_judged, cfg.alpha_safe / cfg.safety_tests());
    let verdict = if s.regressed.is_some() {
        Verdict::Regressed
    } else if s.safe_absolute.is_some() && s.safe_relative.is_some() {
        Verdict::Safe
    } else {
        Verdict::NotYet(Waiting::why(s.missing_since, s.last_data_at))
    };

    let regression_e = if cfg.compare_with_stable {
        e_rel_reg
    } else {
        e_abs_reg
    };
    let safety_e = match (s.safe_absolute.is_some(), s.safe_relative.is_some()) {
        (false, false) => e_abs_safe.min(e_rel_safe.max(e_moot)),
        (false, true) => e_abs_safe,
        (true, false) => e_rel_safe.max(e_moot),
        (true, true) => e_abs_safe.max(safe_threshold),
    };
    let evidence = Evidence {
        canary: s.canary,
        stable: s.stable,
        regression_e,
        regression_threshold: reg_threshold,
        safety_e,
        safety_threshold: safe_threshold,
        canary_upper,
        explanation: explain(
            &s,
            &verdict,
            cfg,
            regression_e,
            reg_threshold,
            safety_e,
            safe_threshold,
        ),
        words: in_words(
            &s,
            &verdict,
            cfg,
            [regression_e, reg_threshold, safety_e, safe_threshold],
        ),
    };
    (s, Judgement { verdict, evidence })
}

/// An e-value for people: plain when small, scientific when huge.
fn e(v: f64) -> String {
    if !v.is_finite() {
        "> 1e308".into()
    } else if v >= 1e4 {
        format!("{v:.1e}")
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn pct(c: Counts) -> String {
    if c.total == 0 {
        "no requests".into()
    } else {
        format!("{:.2}% ({}/{})", 100.0 * c.ratio(), c.bad, c.total)
    }
}

fn explain(
    s: &JudgeState,
    verdict: &Verdict,
    cfg: &JudgeConfig,
    reg_e: f64,
    reg_t: f64,
    safe_e: f64,
    safe_t: f64,
) -> String {
    let shared = if s.shared_ticks > 0 {
        format!(
            " ({} tick(s) of a shared incident left out of the target test)",
            s.shared_ticks
        )
    } else {
        String::new()
    };
    let counts = if cfg.compare_with_stable {
        format!("canary {} vs stable {}{shared}", pct(s.canary), pct(s.stable))
    } else {
        format!(
            "canary {} against target {:.3}%",
            pct(s.canary),
            100.0 * cfg.max_bad
        )
    };
    match verdict {
        Verdict::Regressed => {
            let (test, c) = s.regressed.expect("regressed has a crossing");
            let what = regression_what(Some(test), cfg);
            format!(
                "{counts}; {what}: evidence ratio {:.0} > {:.0} = 1/α",
                c.e_value, reg_t
            )
        }
        Verdict::Safe => format!(
            "{counts}; within target and tolerance: safety evidence {} ≥ {:.0}",
            e(safe_e.max(safe_t)),
            safe_t
        ),
        Verdict::NotYet(Waiting::NoDataYet) => match s.missing_reason {
            Some(why) => format!("{counts}; waiting for the first data ({why})"),
            None => format!("{counts}; waiting for the first data"),
        },
        Verdict::NotYet(Waiting::DataMissing { since }) => {
            let why = s.missing_reason.map(|w| format!(" ({w})")).unwrap_or_default();
            format!("{counts}; no data since {since}{why}: holding (missing data is never evidence)")
        }
        Verdict::NotYet(Waiting::MoreEvidence) => format!(
            "{counts}; not yet conclusive: regression evidence {} < {reg_t:.0}, safety evidence {} < {safe_t:.0}",
            e(reg_e),
            e(safe_e)
        ),
    }
}

/// What a regression crossed, in words.
fn regression_what(test: Option<Test>, cfg: &JudgeConfig) -> String {
    match test {
        Some(Test::RelativeRegression) => {
            format!("worse than stable by more than {:.0}%", 100.0 * cfg.tolerance)
        }
        _ => format!("above the target {:.3}%", 100.0 * cfg.max_bad),
    }
}

/// A share for people: `2.1% (21 of 1000)`.
pub(crate) fn share(c: Counts) -> String {
    if c.total == 0 {
        return "no requests".into();
    }
    let p = 100.0 * c.ratio();
    let digits = if p == 0.0 || p >= 10.0 {
        0
    } else if p >= 1.0 {
        1
    } else {
        2
    };
    format!("{p:.digits$}% ({} of {})", c.bad, c.total)
}

/// An e-value said plainly: "overwhelming" beyond what a float holds.
pub(crate) fn ev(v: f64) -> String {
    if v.is_finite() {
        e(v)
    } else {
        "overwhelming".into()
    }
}

/// About how many more canary requests a test needs to reach its threshold, if the canary
/// keeps behaving as observed: the log e-value grows by about KL(observed ‖ boundary) per
/// request. `None` when the observed share sits on the boundary (it may never decide).
fn requests_to_decide(c: Counts, boundary: f64, e_now: f64, threshold: f64) -> Option<u64> {
    // half a bad request each way keeps a share of 0 or 1 away from the edges
    let observed = (c.bad as f64 + 0.5) / (c.total as f64 + 1.0);
    let boundary = boundary.clamp(1e-9, 1.0 - 1e-9);
    let per_request = kl_bernoulli(observed, boundary);
    let missing = (threshold.ln() - e_now.max(1e-300).ln()).max(0.0);
    (per_request > 1e-9)
        .then(|| (missing / per_request).ceil())
        .filter(|n| *n < 1e9)
        .map(|n| n as u64)
}

/// The judgement in words first and the statistic second: what the canary did, against what,
/// whether the judge is sure, and (when not) about how much more it needs.
fn in_words(
    s: &JudgeState,
    verdict: &Verdict,
    cfg: &JudgeConfig,
    [reg_e, reg_t, safe_e, safe_t]: [f64; 4],
) -> String {
    let shared = if s.shared_ticks > 0 {
        format!(
            ", {} look(s) of an incident shared with stable left out",
            s.shared_ticks
        )
    } else {
        String::new()
    };
    let (counts, boundary) = if cfg.compare_with_stable && s.stable.total > 0 {
        (
            format!(
                "canary {} bad vs stable {}{shared}",
                share(s.canary),
                share(s.stable)
            ),
            s.stable.ratio() * (1.0 + cfg.safety_tolerance),
        )
    } else {
        (
            format!(
                "canary {} bad, target below {:.3}%",
                share(s.canary),
                100.0 * cfg.max_bad
            ),
            cfg.max_bad,
        )
    };
    let alpha = 100.0 / reg_t;
    match verdict {
        Verdict::Regressed => {
            let what = regression_what(s.regressed.map(|(t, _)| t), cfg);
            format!(
                "{counts}: {what}, and the judge is sure (evidence {} ≥ {reg_t:.0}, which a healthy canary reaches less than {alpha}% of the time)",
                ev(s.regressed.map_or(reg_e, |(_, c)| c.e_value))
            )
        }
        Verdict::Safe => format!(
            "{counts}: no worse than allowed, and the judge is sure (safety evidence {} ≥ {safe_t:.0})",
            ev(safe_e.max(safe_t))
        ),
        Verdict::NotYet(Waiting::NoDataYet) => match s.missing_reason {
            Some(why) => format!("{counts}: waiting for the first data ({why})"),
            None => format!("{counts}: waiting for the first data"),
        },
        Verdict::NotYet(Waiting::DataMissing { since }) => {
            let why = s.missing_reason.map(|w| format!(" ({w})")).unwrap_or_default();
            format!("{counts}: no data since {since}{why}; holding, as missing data is never evidence")
        }
        Verdict::NotYet(Waiting::MoreEvidence) => {
            let worse = s.canary.total > 0 && s.canary.ratio() > boundary;
            let needs = if worse {
                requests_to_decide(s.canary, boundary, reg_e, reg_t).map(|n| (n, "a regression"))
            } else {
                requests_to_decide(s.canary, boundary, safe_e, safe_t).map(|n| (n, "safety"))
            };
            let needs = match needs {
                Some((n, what)) => format!("needs about {n} more canary requests to be sure of {what}"),
                None => "the canary sits on the boundary; it may take long to decide".into(),
            };
            format!(
                "{counts}: not yet sure — {needs} (regression evidence {} of {reg_t:.0}, safety evidence {} of {safe_t:.0})",
                ev(reg_e),
                ev(safe_e)
            )
        }
    }
}

/// Bernoulli Kullback–Leibler divergence `KL(p1 ‖ p0)` in nats.
pub fn kl_bernoulli(p1: f64, p0: f64) -> f64 {
    let term = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p1, p0) + term(1.0 - p1, 1.0 - p0)
}

/// The Wald–Wolfowitz floor: the least mean number of canary requests any test with
/// false-alarm rate α and miss rate β needs to tell `p1` from `p0`.
pub fn floor_requests(p0: f64, p1: f64, alpha: f64, beta: f64) -> f64 {
    kl_bernoulli(1.0 - beta, alpha) / kl_bernoulli(p1, p0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JudgeConfig {
        JudgeConfig {
            alpha: 0.01,
            alpha_safe: 0.05,
            tolerance: 0.1,
            safety_tolerance: 0.1,
            max_bad: 0.05,
            compare_with_stable: true,
        }
    }

    /// (canary, stable) cumulative (bad, total), `None` for missing.
    type Stream = [(Option<(u64, u64)>, Option<(u64, u64)>)];

    /// Feeds cumulative readings, one per second; returns the last judgement.
    fn run(readings: &Stream, cfg: &JudgeConfig) -> (JudgeState, Judgement) {
        let mut state = JudgeState::default();
        let mut last = None;
        for (i, (c, s)) in readings.iter().enumerate() {
            let reading = Reading::of(
                c.map(|(b, t)| Counts::new(b, t)),
                s.map(|(b, t)| Counts::new(b, t)),
            );
            let (next, j) = observe(&state, reading, cfg, Time::from_secs(i as u64));
            state = next;
            last = Some(j);
        }
        (state, last.unwrap())
    }

    #[test]
    fn the_floor_matches_the_reference_values() {
        assert_eq!(floor_requests(0.01, 0.02, 0.05, 0.05).round(), 677.0);
        assert_eq!(floor_requests(0.01, 0.05, 0.05, 0.05).round(), 64.0);
    }

    #[test]
    fn a_crash_is_regressed_within_a_handful_of_requests() {
        // 5% canary share, stable at 1% errors; every canary request fails
        let mut readings = vec![(Some((0, 0)), Some((0, 0)))];
        let mut crossed_at = None;
        for n in 1..=20u64 {
            readings.push((Some((n, n)), Some((n * 19 / 100, n * 19))));
            let (_, j) = run(&readings, &cfg());
            if j.verdict == Verdict::Regressed {
                crossed_at = Some(n);
                break;
            }
        }
        let n = crossed_at.expect("a crash is detected");
        assert!(n <= 5, "needed {n} canary requests");
    }

    /// Guards against losing the bad requests of looks where only one arm served anything:
    /// at one request a second looked at every 250 ms, each look sees the canary or stable,
    /// never both, and a per-look comparison learned nothing (a canary failing a third of its
    /// requests was stopped only by its blast-radius budget).
    #[test]
    fn looks_too_frequent_to_compare_pool_their_requests_until_both_arms_served() {
        // canary and stable take turns, one request a look; every third canary request fails
        let mut readings = vec![(Some((0, 0)), Some((0, 0)))];
        let (mut c, mut b) = ((0u64, 0u64), (0u64, 0u64));
        let mut crossed_at = None;
        for look in 1..=400u64 {
            if look % 2 == 1 {
                c.1 += 1;
                c.0 += u64::from(c.1 % 3 == 0);
            } else {
                b.1 += 1;
            }
            readings.push((Some(c), Some(b)));
            let (_, j) = run(&readings, &cfg());
            if j.verdict == Verdict::Regressed {
                crossed_at = Some(c.0);
                break;
            }
        }
        // every bad canary request is evidence: regressed after a few dozen of them at most
        assert!(crossed_at.is_some_and(|bad| bad <= 40), "{crossed_at:?}");
    }

    #[test]
    fn a_healthy_canary_with_no_errors_at_all_is_promoted_on_its_clean_requests() {
        // no bad events anywhere: the relative tests learn nothing, the absolute ones do
        let readings: Vec<_> = (0..=200u64)
            .map(|i| (Some((0, i * 100)), Some((0, i * 1900))))
            .collect();
        let (_, j) = run(&readings, &cfg());
        assert_eq!(j.verdict, Verdict::Safe, "{}", j.evidence.explanation);
    }

    #[test]
    fn missing_data_moves_nothing_and_says_why() {
        let readings = vec![
            (Some((0, 0)), Some((0, 0))),
            (Some((1, 100)), Some((19, 1900))),
            (None, Some((38, 3800))),
            (None, Some((57, 5700))),
        ];
        let (state, j) = run(&readings, &cfg());
        assert_eq!(
            j.verdict,
            Verdict::NotYet(Waiting::DataMissing {
                since: Time::from_secs(2)
            })
        );
        assert!(
            j.evidence.explanation.contains("no data since"),
            "{}",
            j.evidence.explanation
        );
        assert_eq!(state.canary, Counts::new(1, 100));
        let (_, j) = run(&[(None, None)], &cfg());
        assert_eq!(j.verdict, Verdict::NotYet(Waiting::NoDataYet));
    }

    #[test]
    fn the_excess_is_counted_tick_by_tick_not_from_cumulative_shares() {
        // a burst hits both arms while the canary's share grows: per tick the canary is exactly
        // as bad as stable, though its cumulative share ends up higher
        let readings = vec![
            (Some((1, 100)), Some((10, 1000))),    // 1% both, canary 9%
            (Some((101, 600)), Some((210, 2000))), // burst: 20% both, canary 33%
        ];
        let (state, _) = run(&readings, &cfg());
        assert!(state.excess_bad.abs() < 1e-9, "{}", state.excess_bad);
        assert!(state.canary.ratio() > state.stable.ratio());
    }

    #[test]
    fn a_counter_reset_is_a_reset_not_a_negative_increment() {
        let readings = vec![
            (Some((0, 0)), Some((0, 0))),
            (Some((5, 1000)), Some((50, 10_000))),
            (Some((1, 200)), Some((60, 12_000))), // the canary restarted
        ];
        let (state, _) = run(&readings, &cfg());
        assert_eq!(state.canary, Counts::new(6, 1200));
        assert_eq!(state.stable, Counts::new(60, 12_000));
    }

    #[test]
    fn a_regression_explains_itself_with_counts_and_the_threshold() {
        let readings: Vec<_> = (0..=30u64)
            .map(|i| (Some((i * 10, i * 100)), Some((i * 19, i * 1900))))
            .collect();
        let (_, j) = run(&readings, &cfg());
        assert_eq!(j.verdict, Verdict::Regressed);
        let e = &j.evidence.explanation;
        assert!(
            e.starts_with("canary 10.00% (300/3000) vs stable 1.00% (570/57000)"),
            "{e}"
        );
        assert!(e.contains("= 1/α"), "{e}");
    }

    #[test]
    fn a_burst_hitting_both_arms_is_not_a_regression_of_the_canary() {
        // 20% errors on both arms, far above the 5% target: the service is unhealthy, the
        // canary is not worse than stable
        let readings: Vec<_> = (0..=60u64)
            .map(|i| (Some((i * 20, i * 100)), Some((i * 380, i * 1900))))
            .collect();
        let (_, j) = run(&readings, &cfg());
        assert_ne!(j.verdict, Verdict::Regressed, "{}", j.evidence.explanation);
        assert_ne!(j.verdict, Verdict::Safe, "during the burst: not promoted");
        assert!(
            j.evidence.explanation.contains("shared incident"),
            "{}",
            j.evidence.explanation
        );
        // without the comparison, the target decides
        let absolute = JudgeConfig {
            compare_with_stable: false,
            ..cfg()
        };
        let (_, j) = run(&readings, &absolute);
        assert_eq!(j.verdict, Verdict::Regressed);
    }

    #[test]
    fn the_upper_bound_covers_the_observed_share_and_shrinks_with_data() {
        let a = upper_bound(Counts::new(10, 1000), 0.05);
        let b = upper_bound(Counts::new(100, 10_000), 0.05);
        assert!(a > 0.01 && b > 0.01 && b < a, "{a} {b}");
        assert!(upper_bound(Counts::new(0, 0), 0.05) >= 0.99);
    }
}

//! The bake watch: after the judge's last word, an e-detector that looks for a *change* in the
//! release's behaviour — a bug that starts late, after the canary was judged safe.
//!
//! The canary judge's test martingales accumulate evidence from the rollout's start, so once a
//! release has looked healthy for a while, a bug that starts later must first pay back all of
//! that evidence (hours, for a 1% → 5% regression at 200 requests/s). Change detection restarts
//! instead: per alternative `r_k`, a CUSUM of likelihood ratios `C_k(t) = max(C_k(t−1), 1)·L_t(r_k)`
//! (the largest product over every start time), mixed with the judge's regression weights
//! (Shin, Ramdas & Rinaldo 2022, "E-detectors").
//!
//! # Guarantees
//! - **False alarms.** The watch looks at most once per `look_every` (readings in between are
//!   added to the next look, so nothing is lost) and at most `looks` times. Its statistic is
//!   bounded by the sum of the `looks` mixture martingales started at each look; under the null
//!   that sum is a nonnegative supermartingale starting at `looks`, so by Ville's inequality it
//!   ever reaches `looks / α` with probability at most α. The chance that a release within the
//!   null is rolled back during the whole watch is therefore at most α, and the average run
//!   length to a false alarm is at least `looks / α` looks (Lorden).
//! - **The null** is the canary judge's regression boundary: when the objective compares with
//!   stable, the release's bad share is at most `1 + δ_r` times the baseline's *at the same time*
//!   (the previous release, kept serving a share of the traffic during the watch), judged on the
//!   canary's share of each look's bad events, so daily swings and a burst shared by both cancel;
//!   otherwise the release's bad share is at most the objective's target.
//! - Missing data moves nothing (it is never evidence either way), and a counter that goes down
//!   was reset, as in the judge.
//!
//! # Never
//! No I/O, no clock (time comes in), no randomness.

use super::counters::increment;
use super::judge::{
    self, ABS_REGRESSION_MULTIPLES, Counts, Crossing, Evidence, Judgement, MAX_ALTERNATIVE,
    REGRESSION_RATIOS, REGRESSION_WEIGHTS, Reading, Verdict, Waiting,
};
use super::time::Time;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The watch's settings for one objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WatchConfig {
    /// The chance of ever calling a release within the null regressed during the whole watch.
    pub alpha: f64,
    /// The most looks the watch takes (the union bound covers this many start times).
    pub looks: u32,
    /// The least time between two looks.
    pub look_every: Duration,
    /// δ_r: the regression boundary relative to the baseline (as in the canary judge).
    pub tolerance: f64,
    /// The objective's target: the largest acceptable share of bad events.
    pub max_bad: f64,
    /// Compare with the baseline release (else with the target).
    pub compare_with_stable: bool,
}

impl WatchConfig {
    /// The watch's settings for an objective judged by `judge`: a look per `look_every` over
    /// `span`, at the judge's α.
    pub fn for_judge(judge: &judge::JudgeConfig, span: Duration, look_every: Duration) -> WatchConfig {
        let every = look_every.max(Duration::from_millis(1));
        let looks = (span.as_secs_f64() / every.as_secs_f64()).ceil() as u32 + 1;
        WatchConfig {
            alpha: judge.alpha,
            looks: looks.max(1),
            look_every: every,
            tolerance: judge.tolerance,
            max_bad: judge.max_bad,
            compare_with_stable: judge.compare_with_stable,
        }
    }

    /// The alarm threshold on the mixture: `looks / α`.
    pub fn threshold(&self) -> f64 {
        f64::from(self.looks) / self.alpha
    }
}

/// What the watch remembers between readings for one objective.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WatchState {
    /// The last cumulative counters read.
    last: Reading,
    /// Increments since the last look (added to the next one).
    pending_release: Counts,
    pending_baseline: Counts,
    /// Everything the watch has seen of each arm.
    pub release: Counts,
    pub baseline: Counts,
    /// Looks taken, and when the last was.
    pub looks: u32,
    last_look: Option<Time>,
    /// Log CUSUM per alternative (each ≥ 0 after the restart at 1).
    log_cusum: Vec<f64>,
    /// The alarm, once raised (sticky).
    pub alarm: Option<Crossing>,
    pub missing_since: Option<Time>,
    pub last_data_at: Option<Time>,
}

impl WatchState {
    /// A watch that goes on from the canary judge's last look: only what comes after counts.
    pub fn after(judge: &judge::JudgeState) -> WatchState {
        WatchState {
            last: judge.last_reading(),
            ..WatchState::default()
        }
    }
}

/// The alternatives and their weights for `cfg`'s test.
fn alternatives(cfg: &WatchConfig) -> (&'static [f64], Vec<f64>) {
    if cfg.compare_with_stable {
        (&REGRESSION_RATIOS, REGRESSION_WEIGHTS.to_vec())
    } else {
        let k = ABS_REGRESSION_MULTIPLES.len() as f64;
        (
            &ABS_REGRESSION_MULTIPLES,
            vec![1.0 / k; ABS_REGRESSION_MULTIPLES.len()],
        )
    }
}

/// The log likelihood ratio of one look's counts for alternative `m`, against the null's
/// boundary. `None`: the look holds no information for this test.
fn look_ratio(cfg: &WatchConfig, release: Counts, baseline: Counts, m: f64) -> Option<f64> {
    if cfg.compare_with_stable {
        // given the look's bad events, the release's share of them is Binomial(x, θ(r))
        if release.total == 0 || baseline.total == 0 || release.bad + baseline.bad == 0 {
            return None;
        }
        let rho = release.total as f64 / (release.total + baseline.total) as f64;
        let boundary = 1.0 + cfg.tolerance;
        let (xc, xb) = (release.bad as f64, baseline.bad as f64);
        Some(judge::relative_log_ratio(xc, xb, rho, m * boundary, boundary))
    } else {
        if release.total == 0 {
            return None;
        }
        let p0 = cfg.max_bad.clamp(1e-12, MAX_ALTERNATIVE);
        let p1 = (p0 * m).clamp(1e-12, MAX_ALTERNATIVE);
        if p1 <= p0 {
            return Some(0.0);
        }
        let (x, n) = (release.bad as f64, release.total as f64);
        Some(x * (p1 / p0).ln() + (n - x) * ((1.0 - p1) / (1.0 - p0)).ln())
    }
}

/// Feeds one reading (the release as the canary arm, the baseline as the stable arm) to the
/// watch: returns the new state and its judgement (`Regressed`, or `NotYet` while it watches).
pub fn observe(
    state: &WatchState,
    reading: Reading,
    cfg: &WatchConfig,
    now: Time,
) -> (WatchState, Judgement) {
    let mut s = state.clone();
    let (alts, weights) = alternatives(cfg);
    if s.log_cusum.len() != alts.len() {
        s.log_cusum = vec![0.0; alts.len()];
    }
    let release_inc = reading.canary.map(|c| increment(s.last.canary, c));
    let baseline_inc = reading.stable.map(|c| increment(s.last.stable, c));
    let has_data = release_inc.is_some() && (baseline_inc.is_some() || !cfg.compare_with_stable);
    if has_data {
        // (an arm read alone is not taken as read: the next look's increments of both arms
        // then span the same period)
        s.last.canary = reading.canary;
        s.last.stable = reading.stable.or(s.last.stable);
        s.missing_since = None;
        s.last_data_at = Some(now);
    } else if s.missing_since.is_none() {
        s.missing_since = Some(now);
    }
    // a look holds both arms' increments of the same period: a reading with one arm missing
    // adds nothing to either
    if has_data {
        let r = release_inc.unwrap_or_default();
        let b = baseline_inc.unwrap_or_default();
        s.pending_release = s.pending_release + r;
        s.pending_baseline = s.pending_baseline + b;
        s.release = s.release + r;
        s.baseline = s.baseline + b;
    }
    let due = s.last_look.is_none_or(|l| now.since(l) >= cfg.look_every);
    if s.alarm.is_none() && due && s.looks < cfg.looks && s.pending_release.total > 0 {
        let (r, b) = (s.pending_release, s.pending_baseline);
        let mut informative = false;
        for (acc, m) in s.log_cusum.iter_mut().zip(alts) {
            if let Some(l) = look_ratio(cfg, r, b, *m) {
                // CUSUM: restart at 1 (log 0) whenever the product fell below it
                *acc = acc.max(0.0) + l;
                informative = true;
            }
        }
        if informative || !cfg.compare_with_stable {
            s.looks += 1;
            s.last_look = Some(now);
            s.pending_release = Counts::default();
            s.pending_baseline = Counts::default();
        }
    }
    let clamped: Vec<f64> = s.log_cusum.iter().map(|l| l.max(0.0)).collect();
    let e = judge::log_weighted_sum_exp(&clamped, &weights).exp();
    let threshold = cfg.threshold();
    if s.alarm.is_none() && e >= threshold {
        s.alarm = Some(Crossing { at: now, e_value: e });
    }
    let verdict = if s.alarm.is_some() {
        Verdict::Regressed
    } else {
        Verdict::NotYet(Waiting::why(s.missing_since, s.last_data_at))
    };
    let words = in_words(&s, &verdict, cfg, e);
    let evidence = Evidence {
        canary: s.release,
        stable: s.baseline,
        regression_e: s.alarm.map_or(e, |c| c.e_value),
        regression_threshold: threshold,
        safety_e: 0.0,
        safety_threshold: f64::INFINITY,
        canary_upper: judge::upper_bound(s.release, cfg.alpha),
        explanation: words.clone(),
        words,
    };
    (s, Judgement { verdict, evidence })
}

/// The watch's judgement for people.
fn in_words(s: &WatchState, verdict: &Verdict, cfg: &WatchConfig, e: f64) -> String {
    let against = if cfg.compare_with_stable {
        format!(
            "release {} bad vs the previous release {}",
            judge::share(s.release),
            judge::share(s.baseline)
        )
    } else {
        format!(
            "release {} bad, target below {:.3}%",
            judge::share(s.release),
            100.0 * cfg.max_bad
        )
    };
    let what = if cfg.compare_with_stable {
        format!(
            "worse than the previous release by more than {:.0}%",
            100.0 * cfg.tolerance
        )
    } else {
        format!("above the target {:.3}%", 100.0 * cfg.max_bad)
    };
    let guarantee = format!(
        "a healthy release reaches {:.0} less than {}% of the time over the watch's {} looks",
        cfg.threshold(),
        100.0 * cfg.alpha,
        cfg.looks
    );
    match verdict {
        Verdict::Regressed => format!(
            "watching after the judge's word: {against}: it changed, now {what} (change evidence {} ≥ {:.0}; {guarantee})",
            judge::ev(s.alarm.map_or(e, |c| c.e_value)),
            cfg.threshold()
        ),
        Verdict::NotYet(Waiting::NoDataYet) => format!("watching: {against}: waiting for the first data"),
        Verdict::NotYet(Waiting::DataMissing { since }) => {
            format!("watching: {against}: no data since {since}; missing data is never evidence")
        }
        Verdict::NotYet(Waiting::MoreEvidence) | Verdict::Safe => format!(
            "watching: {against}: no change seen (change evidence {} of {:.0}, look {} of {})",
            judge::ev(e),
            cfg.threshold(),
            s.looks,
            cfg.looks
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Binomial, Distribution};

    fn cfg(compare: bool) -> WatchConfig {
        WatchConfig {
            alpha: 0.05,
            looks: 181,
            look_every: Duration::from_secs(10),
            tolerance: 0.1,
            max_bad: 0.015,
            compare_with_stable: compare,
        }
    }

    /// Runs a seeded stream: 200 requests/s, the release at 90%, errors `p` for the baseline and
    /// `p_after` for the release from `change_at` seconds (looks every 10 s for 30 minutes).
    /// Returns when the watch alarmed, if it did.
    fn run(cfg: &WatchConfig, seed: u64, p: f64, p_after: f64, change_at: u64) -> Option<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |n: u64, p: f64| Binomial::new(n, p).map_or(0, |d| d.sample(&mut rng));
        let (mut rel, mut base) = (Counts::default(), Counts::default());
        let mut s = WatchState::default();
        for k in 1..=180u64 {
            let t = k * 10;
            let pr = if t > change_at { p_after } else { p };
            let nr = 1800;
            let nb = 200;
            rel = rel + Counts::new(draw(nr, pr), nr);
            base = base + Counts::new(draw(nb, p), nb);
            let (next, j) = observe(&s, Reading::of(Some(rel), Some(base)), cfg, Time::from_secs(t));
            s = next;
            if j.verdict == Verdict::Regressed {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn a_healthy_release_is_rarely_called_changed_over_the_whole_watch() {
        // at the regression boundary itself (10% worse), the guarantee's worst case
        for compare in [true, false] {
            let c = cfg(compare);
            let (p, p_release) = if compare { (0.01, 0.011) } else { (0.015, 0.015) };
            let alarms = (0..400)
                .filter(|i| run(&c, 1000 + i, p, p_release, 0).is_some())
                .count();
            assert!(alarms <= 20, "compare {compare}: {alarms} of 400 (α 5%)");
        }
    }

    #[test]
    fn a_bug_that_starts_late_is_caught_within_a_few_looks_in_spite_of_the_evidence_before() {
        for compare in [true, false] {
            let c = cfg(compare);
            let mut delays = Vec::new();
            for i in 0..100 {
                let at = run(&c, 5000 + i, 0.01, 0.05, 900).expect("detected");
                assert!(at > 900, "no alarm before the change: {at}");
                delays.push(at - 900);
            }
            delays.sort();
            assert!(
                delays[50] <= 120,
                "compare {compare}: median delay {} s",
                delays[50]
            );
        }
    }

    #[test]
    fn readings_between_looks_are_kept_for_the_next_look_and_looks_are_bounded() {
        let c = WatchConfig {
            looks: 3,
            ..cfg(false)
        };
        let mut s = WatchState::default();
        for t in 1..=100u64 {
            let reading = Reading::of(Some(Counts::new(0, t * 100)), None);
            s = observe(&s, reading, &c, Time::from_secs(t)).0;
        }
        // a look at 1 s, 11 s and 21 s, then no more: the bound on start times holds
        assert_eq!(s.looks, 3);
        assert_eq!(s.release, Counts::new(0, 10_000));
    }

    #[test]
    fn missing_data_and_a_counter_reset_move_nothing() {
        let c = cfg(true);
        let mut s = WatchState::default();
        let readings = [
            Reading::of(Some(Counts::new(10, 1000)), Some(Counts::new(1, 100))),
            Reading::of(None, Some(Counts::new(2, 200))),
            Reading::of(Some(Counts::new(3, 300)), Some(Counts::new(3, 300))),
        ];
        let mut last = None;
        for (i, r) in readings.into_iter().enumerate() {
            let (next, j) = observe(&s, r, &c, Time::from_secs(20 * i as u64));
            s = next;
            last = Some(j);
        }
        // the canary's counter went down: a reset, counted from zero
        assert_eq!(s.release, Counts::new(13, 1300));
        assert_ne!(last.map(|j| j.verdict), Some(Verdict::Regressed));
        let (_, j) = observe(&WatchState::default(), Reading::default(), &c, Time::from_secs(0));
        assert_eq!(j.verdict, Verdict::NotYet(Waiting::NoDataYet));
    }
}

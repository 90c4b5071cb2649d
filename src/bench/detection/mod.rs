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
//!
//! The parts: [`scenarios`] (S0–S9 and their seeded streams), [`detectors`] (ours and one file
//! per peer), this file (the runs and their statistics) and `render` (Markdown, CSV, SVG and the
//! goals).

pub mod detectors;
pub mod oracle;
mod render;
pub mod scenarios;

pub use detectors::*;
pub use render::{csv, markdown, svg};
pub use scenarios::*;

use serde::Serialize;
use statrs::distribution::{Beta as BetaDist, ContinuousCDF};

/// One detector on one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub detector: &'static str,
    pub runs: usize,
    pub healthy: bool,
    pub rolled_back: usize,
    /// Of those, rolled back by the watch after a promotion.
    pub rolled_back_after_promotion: usize,
    /// Promoted and not taken back.
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
    /// Rollbacks before a late bug started (S7, S9): false alarms, not detections.
    pub early_rollbacks: usize,
}

pub(crate) fn quantiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    [q(0.5), q(0.9), q(0.99)]
}

pub(crate) fn clopper_pearson(k: usize, n: usize) -> (f64, f64) {
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

/// How one run of one detector ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Neither decision within the limit.
    Held,
    /// Rolled back before the regression existed (S7, S9): a false alarm, not a detection.
    Early,
    /// Rolled back at `t`, after the bug started (or at all, for a healthy canary); `watched`:
    /// by the watch after a promotion. `truth`: the canary's true counters then.
    RolledBack { t: u64, truth: Arm, watched: bool },
    /// Promoted at `t` (and not taken back), `truth` the canary's counters then.
    Promoted { t: u64, truth: Arm },
}

/// One detector on one stream: the canary phase, then, if it promoted and watches, the watch.
/// Returns the outcome, the promotion (if any) and the whole timeline it saw.
fn run_one(
    s: &Scenario,
    seed: u64,
    ticks: &[Tick],
    d: &mut dyn Detector,
) -> (Outcome, Option<(u64, Arm)>, Vec<Tick>, usize) {
    let mut on_missing = 0;
    let missing = |tick: &Tick| usize::from(tick.obs.canary.is_none() || tick.obs.stable.is_none());
    for (k, tick) in ticks.iter().enumerate() {
        let t = (k as u64 + 1) * TICK;
        match d.observe(t, &tick.obs) {
            Decision::Continue => continue,
            Decision::Rollback => {
                on_missing += missing(tick);
                let outcome = if t <= s.bug_after_secs {
                    Outcome::Early
                } else {
                    Outcome::RolledBack {
                        t,
                        truth: tick.canary,
                        watched: false,
                    }
                };
                return (outcome, None, ticks[..=k].to_vec(), on_missing);
            }
            Decision::Promote => {
                on_missing += missing(tick);
                let promotion = Some((t, tick.canary));
                let promoted = Outcome::Promoted {
                    t,
                    truth: tick.canary,
                };
                if !d.promoted(t) {
                    return (promoted, promotion, ticks[..=k].to_vec(), on_missing);
                }
                let after = after_promotion(s, seed, ticks, k + 1);
                let bug_at = bug_start(s, Some(t));
                let mut timeline = ticks[..=k].to_vec();
                for (j, w) in after.iter().enumerate() {
                    timeline.push(*w);
                    let tw = t + (j as u64 + 1) * TICK;
                    if d.observe(tw, &w.obs) == Decision::Rollback {
                        on_missing += missing(w);
                        let outcome = if tw <= bug_at {
                            Outcome::Early
                        } else {
                            Outcome::RolledBack {
                                t: tw,
                                truth: w.canary,
                                watched: true,
                            }
                        };
                        return (outcome, promotion, timeline, on_missing);
                    }
                }
                return (promoted, promotion, timeline, on_missing);
            }
        }
    }
    (Outcome::Held, None, ticks.to_vec(), on_missing)
}

/// When the canary's regression starts, in seconds from the canary's start (S9: after the
/// promotion, if there was one; `u64::MAX`: never).
fn bug_start(s: &Scenario, promoted_at: Option<u64>) -> u64 {
    match (s.bug_after_promotion, promoted_at) {
        (Some(d), Some(t)) => t + d,
        (Some(_), None) => u64::MAX,
        (None, _) => s.bug_after_secs,
    }
}

/// Runs every detector on every scenario.
pub fn run(scale: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in scenarios(scale) {
        let seeds: Vec<u64> = (0..s.runs).map(|i| 0x5eed_0000 + i as u64).collect();
        let streams: Vec<Vec<Tick>> = seeds.iter().map(|seed| stream(&s, *seed)).collect();
        let (p0, _) = s.bad_shares();
        for (name, _, make) in detectors() {
            let (mut rolled, mut promoted, mut watched) = (0, 0, 0);
            let (mut times, mut reqs, mut blast, mut excess) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut on_missing = 0;
            let mut early = 0;
            for (ticks, seed) in streams.iter().zip(&seeds) {
                let mut d = make(&s);
                let (outcome, promotion, timeline, missing) = run_one(&s, *seed, ticks, d.as_mut());
                on_missing += missing;
                if s.healthy()
                    && let Some((t, truth)) = promotion
                {
                    // time to promote a healthy canary, whatever the watch did after
                    times.push(t as f64);
                    reqs.push(truth.total as f64);
                }
                match outcome {
                    Outcome::Held => {}
                    Outcome::Early => early += 1,
                    Outcome::Promoted { .. } => promoted += 1,
                    Outcome::RolledBack { t, truth, watched: w } => {
                        rolled += 1;
                        watched += usize::from(w);
                        if !s.healthy() {
                            // the truth since the bug started: requests and failures served
                            let bug_at = bug_start(&s, promotion.map(|(t, _)| t));
                            let k = (bug_at / TICK) as usize;
                            let before = if k == 0 {
                                Arm::default()
                            } else {
                                timeline[k - 1].canary
                            };
                            let since = truth.minus(&before);
                            let (bad, n) = bad_total(&since, s.metric, 0);
                            times.push(t.saturating_sub(bug_at) as f64);
                            reqs.push(n as f64);
                            blast.push(bad as f64);
                            excess.push(bad as f64 - n as f64 * p0);
                        }
                    }
                }
            }
            let n = s.runs;
            let mean_requests = if reqs.is_empty() {
                f64::NAN
            } else {
                reqs.iter().sum::<f64>() / reqs.len() as f64
            };
            let floor = s.floor();
            let mean = |v: &[f64]| {
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            rows.push(Row {
                scenario: s.id,
                detector: name,
                runs: n,
                healthy: s.healthy(),
                rolled_back: rolled,
                rolled_back_after_promotion: watched,
                promoted,
                held: n - rolled - promoted - early,
                rollback_rate: rolled as f64 / n as f64,
                rollback_ci: clopper_pearson(rolled, n),
                time_secs: quantiles(times),
                requests: quantiles(reqs.clone()),
                mean_requests,
                floor,
                efficiency: mean_requests / floor,
                blast_radius: mean(&blast),
                blast_excess: mean(&excess),
                decisions_on_missing_data: on_missing,
                early_rollbacks: early,
            });
        }
    }
    rows
}

#[cfg(test)]
mod quick;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clopper_pearson_matches_its_closed_forms() {
        let (lo, hi) = clopper_pearson(0, 100);
        assert_eq!(lo, 0.0);
        assert!((hi - (1.0 - 0.025f64.powf(1.0 / 100.0))).abs() < 1e-9, "{hi}");
        let (lo, hi) = clopper_pearson(100, 100);
        assert!((lo - 0.025f64.powf(1.0 / 100.0)).abs() < 1e-9, "{lo}");
        assert_eq!(hi, 1.0);
        let (lo, hi) = clopper_pearson(5, 10);
        assert!((lo + hi - 1.0).abs() < 1e-9, "symmetric at one half: {lo} {hi}");
        assert!((0.187..0.188).contains(&lo), "{lo}");
    }

    #[test]
    fn quantiles_are_nearest_ranks_and_none_of_nothing() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(quantiles(v), [51.0, 91.0, 100.0]);
        assert!(quantiles(Vec::new()).iter().all(|q| q.is_nan()));
    }

    #[test]
    fn the_streams_are_seeded() {
        let s = &scenarios(0.01)[0];
        assert_eq!(stream(s, 7), stream(s, 7));
        assert_ne!(stream(s, 7), stream(s, 8));
    }
}

//! Calibration of the canary judge on seeded streams (BENCHMARKS.md §1 defaults, small size):
//! 200 requests/s, canary share 5%, stable at 1% errors, counters read every 10 s, 30 minutes.
//!
//! - A/A: over 2,000 healthy streams per α, the share ever called `Regressed` stays within α
//!   (Clopper–Pearson 95% interval). Run at the boundary of the nulls (tolerance 0, target equal
//!   to the true rate), where the tests are exact martingales and calibration is tightest.
//! - 1%→2% and 1%→5%: the mean number of canary requests to `Regressed`, next to the
//!   Wald–Wolfowitz floor.
//!
//! Prints its figures (run with `--nocapture`) and writes them to
//! `target/figures/judge-calibration.md`.

use autopilot::control::judge::{Counts, JudgeConfig, JudgeState, Reading, Verdict, floor_requests, observe};
use autopilot::control::time::Time;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use statrs::distribution::{Beta, ContinuousCDF};
use std::fmt::Write as _;

const RATE: u64 = 200;
const RHO: f64 = 0.05;
const TICK_SECS: u64 = 10;
const LIMIT_SECS: u64 = 30 * 60;

struct Outcome {
    /// Canary requests served when the verdict became `Regressed`, if it did.
    regressed_after: Option<u64>,
    /// Whether the verdict was ever `Safe` (what promotes a canary).
    ever_safe: bool,
}

fn run_stream(seed: u64, p_stable: f64, p_canary: f64, cfg: &JudgeConfig) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = JudgeState::default();
    let (mut canary, mut stable) = (Counts::default(), Counts::default());
    let mut ever_safe = false;
    let mut t = 0;
    while t < LIMIT_SECS {
        t += TICK_SECS;
        let n = RATE * TICK_SECS;
        let nc = Binomial::new(n, RHO).unwrap().sample(&mut rng);
        let nb = n - nc;
        canary.total += nc;
        canary.bad += Binomial::new(nc, p_canary).unwrap().sample(&mut rng);
        stable.total += nb;
        stable.bad += Binomial::new(nb, p_stable).unwrap().sample(&mut rng);
        let reading = Reading::of(Some(canary), Some(stable));
        let (next, judgement) = observe(&state, reading, cfg, Time::from_secs(t));
        state = next;
        ever_safe |= judgement.verdict == Verdict::Safe;
        if judgement.verdict == Verdict::Regressed {
            return Outcome {
                regressed_after: Some(canary.total),
                ever_safe,
            };
        }
    }
    Outcome {
        regressed_after: None,
        ever_safe,
    }
}

/// Clopper–Pearson 95% interval for k successes in n trials.
fn clopper_pearson(k: u64, n: u64) -> (f64, f64) {
    let lo = if k == 0 {
        0.0
    } else {
        Beta::new(k as f64, (n - k + 1) as f64)
            .unwrap()
            .inverse_cdf(0.025)
    };
    let hi = if k == n {
        1.0
    } else {
        Beta::new((k + 1) as f64, (n - k) as f64)
            .unwrap()
            .inverse_cdf(0.975)
    };
    (lo, hi)
}

fn report(text: &str) {
    println!("{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/figures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("judge-calibration.md");
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    all.push_str(text);
    all.push('\n');
    let _ = std::fs::write(path, all);
}

#[test]
fn healthy_canaries_are_rolled_back_at_most_at_rate_alpha() {
    const RUNS: u64 = 2_000;
    let mut out = String::from("\n## A/A: false rollback rate (2,000 healthy streams each)\n\n");
    out.push_str("| α | rolled back | rate | Clopper–Pearson 95% |\n|---|---|---|---|\n");
    for alpha in [0.01, 0.05] {
        let cfg = JudgeConfig {
            alpha,
            alpha_safe: 0.05,
            tolerance: 0.0,
            safety_tolerance: 0.0,
            max_bad: 0.01,
            compare_with_stable: true,
        };
        let rolled_back = (0..RUNS)
            .filter(|seed| {
                run_stream(1_000_000 + seed, 0.01, 0.01, &cfg)
                    .regressed_after
                    .is_some()
            })
            .count() as u64;
        let (lo, hi) = clopper_pearson(rolled_back, RUNS);
        let rate = rolled_back as f64 / RUNS as f64;
        let _ = writeln!(
            out,
            "| {alpha} | {rolled_back}/{RUNS} | {rate:.4} | [{lo:.4}, {hi:.4}] |"
        );
        assert!(
            lo <= alpha,
            "false rollback rate {rate} (95% CI [{lo}, {hi}]) is above α = {alpha}"
        );
    }
    report(&out);
}

#[test]
fn regressions_are_detected_near_the_information_floor() {
    const RUNS: u64 = 500;
    let alpha = 0.05;
    let cfg = JudgeConfig {
        alpha,
        alpha_safe: 0.05,
        tolerance: 0.1,
        safety_tolerance: 0.1,
        max_bad: 0.05,
        compare_with_stable: true,
    };
    let mut out = String::from("\n## Requests to detect (500 streams each, α = 0.05, tolerance 10%)\n\n");
    out.push_str(
        "| regression | detected | mean canary requests | median | floor (α=β=0.05) | mean / floor |\n|---|---|---|---|---|---|\n",
    );
    for (p1, max_ratio) in [(0.02, 12.0), (0.05, 12.0)] {
        let mut detected: Vec<u64> = (0..RUNS)
            .filter_map(|seed| run_stream(2_000_000 + seed, 0.01, p1, &cfg).regressed_after)
            .collect();
        detected.sort_unstable();
        let rate = detected.len() as f64 / RUNS as f64;
        let mean = detected.iter().sum::<u64>() as f64 / detected.len().max(1) as f64;
        let median = detected.get(detected.len() / 2).copied().unwrap_or(0);
        let floor = floor_requests(0.01, p1, 0.05, 0.05);
        let ratio = mean / floor;
        let _ = writeln!(
            out,
            "| 1% → {:.0}% | {:.1}% | {mean:.0} | {median} | {floor:.0} | {ratio:.2} |",
            p1 * 100.0,
            rate * 100.0
        );
        assert!(rate >= 0.95, "1% → {p1}: detected only {rate}");
        assert!(ratio < max_ratio, "1% → {p1}: {ratio} times the floor");
    }
    report(&out);
}

/// The indifference zone keeps both guarantees, each at its own boundary: a canary exactly
/// δ_r = 10% worse than stable is rolled back at most at rate α, and one exactly δ_s = 50% worse
/// is called safe (promoted) at most at the false-promotion rate; a canary twice as bad as
/// stable is caught by nearly every stream.
#[test]
fn the_indifference_zone_keeps_both_guarantees_at_their_boundaries() {
    const RUNS: u64 = 2_000;
    let cfg = JudgeConfig {
        alpha: 0.05,
        alpha_safe: 0.05,
        tolerance: 0.1,
        safety_tolerance: 0.5,
        // the target (3%) lets the absolute safety test pass; the tolerance as a share of it
        // (50% of 3% = 1.5%) sits exactly at the canary's rate, so that path is at its boundary too
        max_bad: 0.03,
        compare_with_stable: true,
    };
    let mut out =
        String::from("\n## Indifference zone δ_r 10%, δ_s 50% (2,000 streams each, α = α_s = 0.05)\n\n");
    out.push_str("| canary | rolled back | called safe | Clopper–Pearson 95% of the guarded rate |\n|---|---|---|---|\n");
    // (rolled back, called safe) of RUNS streams with the canary at `p_canary`
    let counts = |first_seed: u64, p_canary: f64| {
        let runs: Vec<Outcome> = (0..RUNS)
            .map(|seed| run_stream(first_seed + seed, 0.01, p_canary, &cfg))
            .collect();
        (
            runs.iter().filter(|o| o.regressed_after.is_some()).count() as u64,
            runs.iter().filter(|o| o.ever_safe).count() as u64,
        )
    };
    let (rolled_back, safe) = counts(3_000_000, 0.011);
    let (lo, hi) = clopper_pearson(rolled_back, RUNS);
    let _ = writeln!(
        out,
        "| 1.1% (at δ_r) | {rolled_back}/{RUNS} | {safe}/{RUNS} | rollback [{lo:.4}, {hi:.4}] |"
    );
    assert!(
        lo <= cfg.alpha,
        "rolled back {rolled_back}/{RUNS} at the regression boundary"
    );
    let (rolled_back, safe) = counts(4_000_000, 0.015);
    let (lo, hi) = clopper_pearson(safe, RUNS);
    let _ = writeln!(
        out,
        "| 1.5% (at δ_s) | {rolled_back}/{RUNS} | {safe}/{RUNS} | promotion [{lo:.4}, {hi:.4}] |"
    );
    assert!(
        lo <= cfg.alpha_safe,
        "called safe {safe}/{RUNS} at the safety boundary"
    );

    let runs: Vec<Outcome> = (0..500)
        .map(|seed| run_stream(5_000_000 + seed, 0.01, 0.02, &cfg))
        .collect();
    let caught = runs.iter().filter(|o| o.regressed_after.is_some()).count();
    let safe = runs.iter().filter(|o| o.ever_safe).count();
    let _ = writeln!(out, "| 2% (2× stable) | {caught}/500 | {safe}/500 | |");
    assert!(
        caught >= 475,
        "a 2× regression caught in only {caught}/500 streams"
    );
    report(&out);
}

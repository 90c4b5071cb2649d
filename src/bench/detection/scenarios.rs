//! The benchmark's scenarios and the seeded streams every detector reads.

use autopilot::control::judge::{self, floor_requests};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Binomial, Distribution};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

pub(crate) const TICK: u64 = 10;
/// Latency thresholds carried by every stream: stable's p99 (160 ms), the tuned peers' p99 limit
/// (176 ms, between stable's 160 ms and the slowed canary's 192 ms) and Flagger's default 500 ms.
pub(crate) const THRESHOLDS_MS: [f64; 3] = [160.0, 176.0, 500.0];

/// One arm's counters since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub total: u64,
    pub errors: u64,
    pub slow: [u64; 3],
}

impl Arm {
    pub(crate) fn minus(&self, o: &Arm) -> Arm {
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
    /// The regression starts this late (S7); `u64::MAX`: never during the canary phase.
    pub bug_after_secs: u64,
    /// The regression starts this long after the promotion (S9): the canary is healthy.
    pub bug_after_promotion: Option<u64>,
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
            bug_after_promotion: None,
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
    v.push(Scenario {
        p_canary: 0.05,
        bug_after_secs: u64::MAX,
        bug_after_promotion: Some(300),
        ..Scenario::base("S9", "healthy until promoted; 1% → 5% from 5 min after", n(500))
    });
    v
}

pub(crate) fn slow_share(threshold_ms: f64, scale: f64, tail_only: bool) -> f64 {
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

/// The share of the traffic the previous release keeps while our watch runs after a promotion
/// (the concurrent baseline the watch compares with), as `promotion.bake.baseline` defaults.
pub const WATCH_BASELINE: f64 = 0.1;
/// How long the benchmark watches a promoted release (`promotion.bake.for`).
pub const WATCH_SECS: u64 = 30 * 60;

/// Where a stream stands: both arms' true counters, the counter-reset base, and its random
/// source, so a stream can go on after a promotion with other shares.
#[derive(Debug, Clone)]
pub struct StreamState {
    rng: ChaCha8Rng,
    canary: Arm,
    stable: Arm,
    reset_base: Arm,
    /// The last tick generated.
    pub tick: u64,
}

impl StreamState {
    /// A stream about to start, from its seed.
    pub fn new(seed: u64) -> StreamState {
        StreamState {
            rng: ChaCha8Rng::seed_from_u64(seed),
            canary: Arm::default(),
            stable: Arm::default(),
            reset_base: Arm::default(),
            tick: 0,
        }
    }
}

/// Generates one seeded stream: the canary phase, `limit_secs` of it.
pub fn stream(s: &Scenario, seed: u64) -> Vec<Tick> {
    let mut st = StreamState::new(seed);
    extend(s, &mut st, s.limit_secs / TICK, s.rho, s.bug_after_secs)
}

/// The stream after a promotion at the end of `canary` (its first `promoted_tick` ticks): the
/// promoted release serves all but [`WATCH_BASELINE`] of the traffic for [`WATCH_SECS`]; its
/// bug starts `bug_after_promotion` after the promotion (S9), else when the scenario's does.
/// Seeded apart from the canary phase, so the canary phase is the same for every detector.
pub fn after_promotion(s: &Scenario, seed: u64, canary: &[Tick], promoted_tick: usize) -> Vec<Tick> {
    let last = canary[promoted_tick - 1];
    let mut st = StreamState::new(seed ^ 0x00a1_1ed0_5eed);
    st.tick = promoted_tick as u64;
    st.canary = last.canary;
    st.stable = last.stable;
    // a counter reset before the promotion stays in the canary's series
    st.reset_base = match (last.obs.canary, s.gap) {
        (Some(seen), Some((_, _, GapKind::Reset))) => last.canary.minus(&seen),
        _ => Arm::default(),
    };
    let bug_after = match s.bug_after_promotion {
        Some(d) => st.tick * TICK + d,
        None => s.bug_after_secs,
    };
    extend(s, &mut st, WATCH_SECS / TICK, 1.0 - WATCH_BASELINE, bug_after)
}

/// `ticks` more ticks of a stream with the canary's share `rho`; the canary's regression is on
/// after `bug_after` seconds (from the canary's start).
fn extend(s: &Scenario, st: &mut StreamState, ticks: u64, rho: f64, bug_after: u64) -> Vec<Tick> {
    let shares = |scale: f64, tail: bool| THRESHOLDS_MS.map(|t| slow_share(t, scale, tail));
    let stable_slow = shares(1.0, false);
    let canary_slow = shares(s.latency_scale, s.tail_only);
    let mut out = Vec::with_capacity(ticks as usize);
    let first = st.tick + 1;
    for k in first..first + ticks {
        st.tick = k;
        let t = k * TICK;
        let (mut rate, mut load) = (s.rate, 1.0);
        if s.swing {
            let phase = (t as f64 / 7200.0) * std::f64::consts::TAU;
            rate *= 1.0 + 0.7 * phase.sin();
            load = 1.0 + 0.5 * 0.7 * phase.sin();
        }
        let rng = &mut st.rng;
        let n = (rate * TICK as f64).round() as u64;
        let nc = Binomial::new(n, rho).map_or(0, |d| d.sample(rng));
        let nb = n - nc;
        let bug = t > bug_after;
        let mut pb = (s.p_stable * load).min(1.0);
        let mut pc = if bug { (s.p_canary * load).min(1.0) } else { pb };
        if s.swing {
            // over-dispersion: a common shock to the base rate this tick (both arms), and a
            // 2-minute burst of 20% errors on both arms at minute 10
            let shock = Beta::new(10.0, 10.0).map_or(0.5, |d| d.sample(rng)) * 2.0;
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
        draw(&mut st.canary, nc, pc, canary_latency, rng);
        draw(&mut st.stable, nb, pb, stable_slow, rng);
        let mut obs = Obs {
            canary: Some(st.canary.minus(&st.reset_base)),
            stable: Some(st.stable),
        };
        if let Some((from, to, kind)) = s.gap {
            match kind {
                GapKind::Both if t > from && t <= to => obs = Obs::default(),
                GapKind::CanaryOnly if t > from && t <= to => obs.canary = None,
                GapKind::Reset if t > from && st.reset_base.total == 0 => {
                    st.reset_base = st.canary;
                    obs.canary = Some(Arm::default());
                }
                _ => {}
            }
        }
        out.push(Tick {
            obs,
            canary: st.canary,
            stable: st.stable,
        });
    }
    out
}

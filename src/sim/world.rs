//! The simulated world behind the driver's [`Ports`]: a store in memory, a builder that takes
//! its build time, a runtime whose instances become ready (or crash), a router that splits
//! seeded traffic by the planned weights, and sensors that report the counters — or fail to,
//! as the scenario's incidents say.
//!
//! Every random draw comes from one seeded generator, in a fixed order, and every collection
//! iterates in a fixed order: the same scenario and seed give the same run, byte for byte.

use crate::control::counters::since_base;
use crate::control::judge::{Counts, Reading};
use crate::control::plan::PlanSpec;
use crate::control::ports::{
    Builder, Instances, Loaded, PortError, Route, RouteWeights, Router, Runtime, Sensors, SourceEvents, Store,
};
use crate::control::rollout::*;
use crate::control::time::Time;
use crate::spec::simulations::{Arm, IncidentKind, Latency, PortName, Scenario};
use crate::spec::units::Weight;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Binomial, Distribution, Poisson};
use statrs::distribution::{ContinuousCDF, Normal};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Instances become ready this long after they are deployed.
const STARTUP: Duration = Duration::from_secs(20);

/// What an objective's sensor counts in the simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Failed requests.
    Errors,
    /// Requests slower than this threshold.
    SlowerThan(Duration),
}

/// How one release behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    pub errors: f64,
    /// The share of the A/B segment's requests that fail, if unlike the others'.
    pub segment_errors: Option<f64>,
    pub latency: Latency,
    pub crash_on_deploy: bool,
    pub build_time: Duration,
}

/// Counters of one environment and objective since the current rollout started.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    rollout_release: String,
    /// Counting an A/B segment's requests (the proxy's segment series), not everyone's: the
    /// counters start from zero when this changes, as the live sensor's do.
    segment: bool,
    canary: Counts,
    stable: Counts,
    /// What was counted before a counter reset (subtracted from what is reported).
    canary_offset: Counts,
    stable_offset: Counts,
}

/// What each release served in each environment while it was a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// Requests served as canary.
    pub requests: u64,
    /// Failed requests served as canary.
    pub bad: u64,
    /// What stable's error rate would have failed of the same requests (expected).
    pub stable_would_fail: f64,
}

/// The simulated world.
pub struct World {
    pub service: String,
    pub now: Time,
    start: Time,
    rng: ChaCha8Rng,
    scenario: Scenario,
    /// (objective, signal), in the service's order.
    pub signals: Vec<(String, Signal)>,
    pub environments: Vec<String>,
    pub behaviours: BTreeMap<String, Behaviour>,
    pub state: ServiceState,
    pub overrides: Overrides,
    pushes: Vec<(Time, String)>,
    builds: Vec<(Time, String)>,
    deployed: BTreeMap<(String, String), Time>,
    /// Per environment: what the router routes.
    pub routes: BTreeMap<String, Route>,
    counters: BTreeMap<(String, String), Counters>,
    pub served: BTreeMap<(String, String), Served>,
    resets_done: BTreeSet<usize>,
    /// The store's version (one more per recorded tick).
    version: u64,
    /// Requests generated in every environment (the simulator's work).
    pub generated: u64,
    /// Traffic is served up to here (a [`QUANTUM`] grid point).
    served_until: Time,
    /// Each environment's random stream.
    env_rngs: BTreeMap<String, ChaCha8Rng>,
    /// Recorded sensor data replacing the model for one environment.
    pub recordings: Option<super::replay::Recordings>,
    /// Per objective: the rollout and the recorded counters when it started.
    replay_baseline: BTreeMap<String, (String, Reading)>,
}

/// Traffic is drawn this much at a time, on a grid from the scenario's start.
pub const QUANTUM: Duration = Duration::from_millis(250);

/// Each environment's own random stream: its traffic does not depend on another's draws.
fn env_rng(seed: u64, env: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in env.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

fn release_id(name: &str) -> Release {
    // a stable stand-in for the artifact digest: FNV-1a of the name, widened
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Release {
        id: name.to_owned(),
        commit: name.to_owned(),
        digest: format!("sha256:{h:016x}{:016x}{h:016x}{:016x}", !h, h.rotate_left(17)),
    }
}

impl World {
    pub fn new(scenario: &Scenario, spec: &PlanSpec, signals: Vec<(String, Signal)>, start: Time) -> World {
        let mut behaviours = BTreeMap::new();
        behaviours.insert(
            scenario.stable.name.clone(),
            Behaviour {
                errors: scenario.stable.errors.fraction(),
                segment_errors: None,
                latency: scenario.stable.latency.clone(),
                crash_on_deploy: false,
                build_time: Duration::ZERO,
            },
        );
        for r in &scenario.releases {
            behaviours.insert(
                r.name.clone(),
                Behaviour {
                    errors: r.errors.fraction(),
                    segment_errors: r.segment_errors.map(|p| p.fraction()),
                    latency: r.latency.clone(),
                    crash_on_deploy: r.crash_on_deploy,
                    build_time: r.build_time.0,
                },
            );
        }
        let environments: Vec<String> = spec.environments.iter().map(|e| e.name.clone()).collect();
        let stable = release_id(&scenario.stable.name);
        let mut state = ServiceState {
            releases: vec![stable.clone()],
            ..Default::default()
        };
        let mut routes = BTreeMap::new();
        let mut deployed = BTreeMap::new();
        for env in &environments {
            state.environments.insert(
                env.clone(),
                EnvState {
                    stable: Some(stable.id.clone()),
                    stable_since: Some(Time::ZERO),
                    rollout: None,
                    blocked: None,
                    previous: None,
                },
            );
            routes.insert(env.clone(), Route::decide(None, &stable.id, Weight::MAX, None));
            deployed.insert((env.clone(), stable.id.clone()), Time::ZERO);
        }
        World {
            service: spec.service.clone(),
            now: start,
            served_until: start,
            env_rngs: BTreeMap::new(),
            start,
            rng: ChaCha8Rng::seed_from_u64(scenario.seed),
            scenario: scenario.clone(),
            signals,
            environments,
            behaviours,
            state,
            overrides: Overrides::default(),
            pushes: scenario
                .releases
                .iter()
                .map(|r| (start.plus(r.pushed_at.0), r.name.clone()))
                .collect(),
            builds: Vec::new(),
            deployed,
            routes,
            counters: BTreeMap::new(),
            served: BTreeMap::new(),
            resets_done: BTreeSet::new(),
            version: 0,
            generated: 0,
            recordings: None,
            replay_baseline: BTreeMap::new(),
        }
    }

    fn elapsed(&self, t: Time) -> Duration {
        t.since(self.start)
    }

    /// Incidents active at `t`, with their index.
    fn active(&self, t: Time) -> impl Iterator<Item = (usize, &IncidentKind, Duration, Option<Duration>)> {
        let e = self.elapsed(t);
        self.scenario
            .incidents
            .iter()
            .enumerate()
            .filter_map(move |(i, inc)| {
                let from = inc.at.0;
                let to = inc.lasts.map(|d| from + d.0);
                let on = e >= from && to.is_none_or(|to| e < to);
                on.then_some((i, &inc.what, e - from.min(e), inc.lasts.map(|d| d.0)))
            })
    }

    /// A release's error rate at `t`, with incidents applied.
    fn error_rate(&self, release: &str, t: Time) -> f64 {
        let mut p = self.behaviours.get(release).map_or(0.0, |b| b.errors);
        let e = self.elapsed(t);
        for inc in &self.scenario.incidents {
            let from = inc.at.0;
            match &inc.what {
                IncidentKind::ErrorStep { release: r, errors } if r == release && e >= from => {
                    p = errors.fraction()
                }
                IncidentKind::Drift { release: r, errors } if r == release && e >= from => {
                    let span = inc
                        .lasts
                        .map_or(Duration::from_secs(1), |d| d.0)
                        .as_secs_f64()
                        .max(1.0);
                    let f = ((e - from).as_secs_f64() / span).min(1.0);
                    p += (errors.fraction() - p) * f;
                }
                _ => {}
            }
        }
        for (_, what, _, _) in self.active(t) {
            if let IncidentKind::Burst { errors } = what {
                p = 1.0 - (1.0 - p) * (1.0 - errors.fraction());
            }
        }
        p.clamp(0.0, 1.0)
    }

    /// The share of a release's requests slower than `threshold`.
    fn slow_share(&self, release: &str, threshold: Duration) -> f64 {
        let Some(b) = self.behaviours.get(release) else {
            return 0.0;
        };
        let l = &b.latency;
        let normal = Normal::new(0.0, 1.0).expect("standard normal");
        let ln_median = (l.median.as_secs_f64() * l.scale).ln();
        let above = |x: f64| 1.0 - normal.cdf((x.ln() - ln_median) / l.sigma.max(1e-9));
        let t = threshold.as_secs_f64();
        match l.tail_share {
            None => above(t),
            Some(share) => {
                // the slowest `share` of requests are slowed by `tail_scale`
                let q = (ln_median + l.sigma * normal.inverse_cdf(1.0 - share.fraction())).exp();
                if t <= q {
                    above(t)
                } else {
                    above((t / l.tail_scale).max(q))
                }
            }
        }
    }

    fn rate(&self, env: &str, t: Time) -> f64 {
        let tr = &self.scenario.traffic;
        let base = tr.environments.get(env).copied().unwrap_or(tr.rate);
        match tr.swing {
            None => base,
            Some(a) => {
                let phase = self.elapsed(t).as_secs_f64() / tr.swing_period.as_secs_f64();
                base * (1.0 + a.fraction() * (2.0 * std::f64::consts::PI * phase).sin())
            }
        }
    }

    /// Draws the bad events of `n` requests at share `p`, with the scenario's over-dispersion.
    fn draw_bad(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let p = match self.scenario.traffic.dispersion {
            Some(cv) if cv.fraction() > 0.0 => {
                // Beta with mean p and coefficient of variation cv
                let var = (cv.fraction() * p).powi(2).min(p * (1.0 - p) * 0.99);
                let k = p * (1.0 - p) / var - 1.0;
                Beta::new(p * k, (1.0 - p) * k).map_or(p, |b| b.sample(&mut self.rng))
            }
            _ => p,
        };
        Binomial::new(n, p).map_or(0, |b| b.sample(&mut self.rng))
    }

    /// Moves the clock to `to`, serving traffic on a fixed grid of [`QUANTUM`]s from the start,
    /// each environment from a random stream of its own: how often the controller looks changes
    /// nothing of what the services are sent (only what it decides does), as in production.
    /// A look between two grid points sees the traffic up to the last one.
    pub fn advance(&mut self, to: Time) {
        while self.served_until.plus(QUANTUM) <= to {
            let (from, until) = (self.served_until, self.served_until.plus(QUANTUM));
            self.serve(from, until);
            self.served_until = until;
        }
        self.now = to;
    }

    /// Serves traffic from `from` to `to`.
    fn serve(&mut self, from: Time, to: Time) {
        let dt = to.since(from).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let mid = Time::from_millis((from.millis() + to.millis()) / 2);
        let load = {
            let tr = &self.scenario.traffic;
            match tr.swing {
                Some(a) => {
                    let phase = self.elapsed(mid).as_secs_f64() / tr.swing_period.as_secs_f64();
                    1.0 + tr.load_sensitivity * a.fraction() * (2.0 * std::f64::consts::PI * phase).sin()
                }
                None => 1.0,
            }
        };
        for env in self.environments.clone() {
            let mut rng = self
                .env_rngs
                .remove(&env)
                .unwrap_or_else(|| env_rng(self.scenario.seed, &env));
            std::mem::swap(&mut self.rng, &mut rng);
            self.serve_env(&env, mid, dt, load);
            std::mem::swap(&mut self.rng, &mut rng);
            self.env_rngs.insert(env, rng);
        }
        // counter resets happen once, at their moment
        let resets: Vec<(usize, Arm)> = self
            .scenario
            .incidents
            .iter()
            .enumerate()
            .filter(|(i, inc)| {
                matches!(inc.what, IncidentKind::CounterReset { .. })
                    && !self.resets_done.contains(i)
                    && self.elapsed(to) >= inc.at.0
            })
            .map(|(i, inc)| match inc.what {
                IncidentKind::CounterReset { arm } => (i, arm),
                _ => unreachable!("filtered to counter resets"),
            })
            .collect();
        for (i, arm) in resets {
            self.resets_done.insert(i);
            for c in self.counters.values_mut() {
                if matches!(arm, Arm::Canary | Arm::Both) {
                    c.canary_offset = c.canary;
                }
                if matches!(arm, Arm::Stable | Arm::Both) {
                    c.stable_offset = c.stable;
                }
            }
        }
    }

    /// Serves one environment's traffic for `dt` seconds around `mid` (from `self.rng`).
    fn serve_env(&mut self, env: &str, mid: Time, dt: f64, load: f64) {
        let env = env.to_owned();
        let Some(route) = self.routes.get(&env).cloned() else {
            return;
        };
        // the route as the proxy serves it, read as the proxy's per-release counters are:
        // a rollout's release served alone (promoting) is the canary arm at 100%, beside
        // the stable it replaces
        let st = self.state.environments.get(&env);
        let moving = st
            .and_then(|e| e.rollout.as_ref())
            .filter(|r| !r.phase.is_finished())
            .map(|r| r.release.as_str());
        let (stable, canary, weight) = match (&route.stable, &route.canary) {
            (s, Some(c)) => (s.clone(), c.clone(), route.weight),
            (Some(s), None) if moving == Some(s.as_str()) => {
                (st.and_then(|e| e.stable.clone()), s.clone(), Weight::MAX)
            }
            (Some(s), None) => (Some(s.clone()), s.clone(), Weight(0)),
            (None, None) => return,
        };
        // the share of stable's requests copied to the held canary
        let mirror = route.mirror.as_ref().map_or(0.0, |m| m.share.fraction());
        // A/B: the share of the segment's requests sent to the held canary (its counts are
        // then the segment's only, as the proxy keeps them apart)
        let segment = route.segment.as_ref().map(|s| s.share.fraction());
        let mean = self.rate(&env, mid) * dt;
        let n = if mean > 0.0 {
            Poisson::new(mean).map_or(0.0, |p| p.sample(&mut self.rng)) as u64
        } else {
            0
        };
        self.generated += n;
        // the segment's callers, when the scenario has them: (to canary, to stable, factor)
        // (a scenario that does not say: a tenth of the callers, like everyone else)
        let seg_traffic = self.scenario.traffic.segment.clone().or_else(|| {
            segment.map(|_| crate::spec::simulations::SegmentTraffic {
                share: crate::spec::units::Percent(0.1),
                error_factor: 1.0,
            })
        });
        let (nc, nb, seg) = match &seg_traffic {
            None => {
                let nc = Binomial::new(n, f64::from(weight.0) / 100.0).map_or(0, |b| b.sample(&mut self.rng));
                (nc, n - nc, None)
            }
            Some(st) => {
                let ns =
                    Binomial::new(n, st.share.fraction().min(1.0)).map_or(0, |b| b.sample(&mut self.rng));
                let nr = n - ns;
                let w = f64::from(weight.0) / 100.0;
                let ncr = Binomial::new(nr, w).map_or(0, |b| b.sample(&mut self.rng));
                let to_canary = segment.unwrap_or(w).clamp(0.0, 1.0);
                let ncs = Binomial::new(ns, to_canary).map_or(0, |b| b.sample(&mut self.rng));
                (ncr, nr - ncr, Some((ncs, ns - ncs, st.error_factor)))
            }
        };
        // copies of stable's requests sent to the canary: its evidence, served to no user
        let nm = if mirror > 0.0 && stable.is_some() {
            Binomial::new(nb, mirror.min(1.0)).map_or(0, |b| b.sample(&mut self.rng))
        } else {
            0
        };
        let stable_name = stable.clone().unwrap_or_else(|| canary.clone());
        let rollout_release = self
            .state
            .environments
            .get(&env)
            .and_then(|e| e.rollout.as_ref())
            .map(|r| r.release.clone())
            .unwrap_or_default();
        let pe_c = (self.error_rate(&canary, mid) * load).min(1.0);
        let pe_b = (self.error_rate(&stable_name, mid) * load).min(1.0);
        let seg_rate = |w: &World, release: &str, p: f64, factor: f64| {
            w.behaviours
                .get(release)
                .and_then(|b| b.segment_errors)
                .map_or(p * factor, |s| s * load)
                .min(1.0)
        };
        let (pes_c, pes_b) = match seg {
            Some((_, _, factor)) => (
                seg_rate(self, &canary, pe_c, factor),
                seg_rate(self, &stable_name, pe_b, factor),
            ),
            None => (pe_c, pe_b),
        };
        let mut canary_errors = None;
        for (objective, signal) in self.signals.clone() {
            let (pc, pb) = match signal {
                Signal::Errors => (pe_c, pe_b),
                Signal::SlowerThan(t) => (self.slow_share(&canary, t), self.slow_share(&stable_name, t)),
            };
            let bc = self.draw_bad(nc, pc);
            let bb = self.draw_bad(nb, pb);
            let bm = self.draw_bad(nm, pc);
            // the segment's requests: (canary, bad), (stable, bad)
            let (segc, segb) = match seg {
                Some((ncs, nbs, _)) => {
                    let (psc, psb) = match signal {
                        Signal::Errors => (pes_c, pes_b),
                        Signal::SlowerThan(_) => (pc, pb),
                    };
                    let bcs = self.draw_bad(ncs, psc);
                    let bbs = self.draw_bad(nbs, psb);
                    (Counts::new(bcs, ncs), Counts::new(bbs, nbs))
                }
                None => (Counts::default(), Counts::default()),
            };
            if signal == Signal::Errors && canary_errors.is_none() {
                let would_fail = nc as f64 * pb + segc.total as f64 * pes_b;
                canary_errors = Some((bc + segc.bad, would_fail));
            }
            let key = (env.clone(), objective.clone());
            let c = self.counters.entry(key).or_default();
            if c.rollout_release != rollout_release || c.segment != segment.is_some() {
                *c = Counters {
                    rollout_release: rollout_release.clone(),
                    segment: segment.is_some(),
                    ..Default::default()
                };
            }
            if segment.is_some() {
                // A/B stage: the proxy counts the segment's requests apart, and the judge
                // reads both arms' segment series
                c.canary = c.canary + segc;
                c.stable = c.stable + segb;
            } else {
                c.canary = c.canary + Counts::new(bc + bm, nc + nm) + segc;
                c.stable = c.stable + Counts::new(bb, nb) + segb;
            }
        }
        let canary_rollout_active = self
            .state
            .environments
            .get(&env)
            .and_then(|e| e.rollout.as_ref())
            .is_some_and(|r| r.release == canary && !r.phase.is_finished());
        let replayed = self.recordings.as_ref().is_some_and(|r| r.environment == env);
        // the users the canary served (copies are no one's)
        let users = nc + seg.map_or(0, |(ncs, _, _)| ncs);
        if users > 0 && canary_rollout_active && !replayed {
            let (bad, would_fail) = canary_errors.unwrap_or((0, nc as f64 * pe_b));
            let s = self.served.entry((env.clone(), canary.clone())).or_default();
            s.requests += users;
            s.bad += bad;
            s.stable_would_fail += would_fail;
        }
    }

    /// The next moment something scheduled happens after `t` (a push, a build ending, an
    /// instance becoming ready, an incident or operator action starting or ending).
    pub fn next_event_after(&self, t: Time) -> Option<Time> {
        let mut times: Vec<Time> = Vec::new();
        times.extend(self.pushes.iter().map(|(at, _)| *at));
        times.extend(self.builds.iter().map(|(at, _)| *at));
        times.extend(self.deployed.values().map(|at| at.plus(STARTUP)));
        for inc in &self.scenario.incidents {
            let from = self.start.plus(inc.at.0);
            times.push(from);
            if let Some(d) = inc.lasts {
                times.push(from.plus(d.0));
            }
        }
        times.extend(self.scenario.operators.iter().map(|o| self.start.plus(o.at.0)));
        times.into_iter().filter(|x| *x > t).min()
    }

    /// The counters of every environment and objective, as the sensors would report them.
    fn read_sensors(
        &mut self,
        spec: &PlanSpec,
        state: &ServiceState,
        now: Time,
    ) -> BTreeMap<(String, String), Reading> {
        let (canary_blind, stable_blind) = (self.sensor_blind(Arm::Canary), self.sensor_blind(Arm::Stable));
        let mut out = BTreeMap::new();
        for env in &spec.environments {
            for o in &env.objectives {
                let key = (env.name.clone(), o.name.clone());
                let Some(c) = self.counters.get(&key) else {
                    continue;
                };
                let sub = |a: Counts, b: Counts| Counts::new(a.bad - b.bad, a.total - b.total);
                out.insert(
                    key,
                    Reading {
                        canary: (!canary_blind).then(|| sub(c.canary, c.canary_offset)),
                        stable: (!stable_blind).then(|| sub(c.stable, c.stable_offset)),
                        missing: self.blind_reason(canary_blind || stable_blind),
                    },
                );
            }
        }
        // a recording starts with the canary's rollout in its environment, unless `at:` says
        if let Some(rec) = &mut self.recordings
            && rec.start.is_none()
            && let Some(r) = state
                .environments
                .get(&rec.environment)
                .and_then(|e| e.rollout.as_ref())
                .filter(|r| !r.phase.is_finished())
        {
            rec.start = Some(r.started_at);
        }
        if let Some(rec) = &self.recordings {
            let env = rec.environment.clone();
            let rollout = state
                .environments
                .get(&env)
                .and_then(|e| e.rollout.as_ref())
                .map(|r| r.release.clone())
                .unwrap_or_default();
            for objective in rec.series.keys().cloned().collect::<Vec<_>>() {
                let Some(raw) = rec.raw(&objective, now) else {
                    continue;
                };
                let base = self
                    .replay_baseline
                    .entry(objective.clone())
                    .or_insert_with(|| (rollout.clone(), raw));
                if base.0 != rollout {
                    *base = (rollout.clone(), raw);
                }
                let blind = (canary_blind, stable_blind);
                let reading = since_baseline(&mut base.1, raw, blind);
                // what the recording says the canary served (errors objectives)
                let errors = self
                    .signals
                    .iter()
                    .find(|(_, sig)| *sig == Signal::Errors)
                    .map(|(o, _)| o.clone());
                let active = state
                    .environments
                    .get(&env)
                    .and_then(|e| e.rollout.as_ref())
                    .is_some_and(|r| !r.phase.is_finished());
                if errors.as_deref() == Some(objective.as_str())
                    && active
                    && let (Some(c), Some(st)) = (reading.canary, reading.stable)
                {
                    let share = if st.total > 0 { st.ratio() } else { 0.0 };
                    self.served.insert(
                        (env.clone(), rollout.clone()),
                        Served {
                            requests: c.total,
                            bad: c.bad,
                            stable_would_fail: c.total as f64 * share,
                        },
                    );
                }
                out.insert((env.clone(), objective), reading);
            }
        }
        out
    }

    /// Fails if the scenario has `port` down now.
    fn up(&self, port: PortName) -> Result<(), PortError> {
        let down = self
            .active(self.now)
            .any(|(_, what, _, _)| matches!(what, IncidentKind::PortDown { port: p } if *p == port));
        if down {
            Err(PortError::retry(port.as_str(), "unavailable (simulated outage)"))
        } else {
            Ok(())
        }
    }

    /// Why the sensors are blind now, as the real adapter would say it.
    fn blind_reason(&self, blind: bool) -> Option<crate::control::judge::Missing> {
        use crate::control::judge::Missing;
        if !blind {
            return None;
        }
        let outage = self
            .active(self.now)
            .any(|(_, what, _, _)| matches!(what, IncidentKind::PrometheusOutage));
        Some(if outage {
            Missing::Unreachable
        } else {
            Missing::ScrapeGap
        })
    }

    fn sensor_blind(&self, arm: Arm) -> bool {
        self.active(self.now).any(|(_, what, _, _)| match what {
            IncidentKind::Gap { arm: a } => *a == Arm::Both || *a == arm,
            IncidentKind::PrometheusOutage => true,
            _ => false,
        })
    }
}

/// Counters since the rollout started, from raw recorded counters: a counter that went below
/// its baseline was reset, and counts from zero again.
fn since_baseline(base: &mut Reading, raw: Reading, (canary_blind, stable_blind): (bool, bool)) -> Reading {
    let canary = since_base(&mut base.canary, raw.canary);
    let stable = since_base(&mut base.stable, raw.stable);
    Reading {
        canary: canary.filter(|_| !canary_blind),
        stable: stable.filter(|_| !stable_blind),
        missing: raw.missing,
    }
}

impl Store for World {
    async fn load(&mut self, _service: &str) -> Result<Loaded, PortError> {
        self.up(PortName::Store)?;
        Ok(Loaded {
            state: self.state.clone(),
            overrides: self.overrides.clone(),
            version: self.version,
        })
    }

    async fn record(
        &mut self,
        _service: &str,
        version: u64,
        plan: &Plan,
        _failures: &[(Action, PortError)],
    ) -> Result<(), PortError> {
        self.up(PortName::Store)?;
        if version != self.version {
            return Err(PortError::fatal(
                "store",
                format!("stale write: version {version}, stored {}", self.version),
            ));
        }
        self.version += 1;
        self.state = plan.state.clone();
        self.overrides.consume(&plan.consumed);
        Ok(())
    }
}

impl Sensors for World {
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        now: Time,
    ) -> BTreeMap<String, crate::control::ports::Readings> {
        services
            .iter()
            .map(|(spec, state)| (spec.service.clone(), self.read_sensors(spec, state, now)))
            .collect()
    }
}

impl Builder for World {
    async fn events(&mut self, _service: &str) -> Result<SourceEvents, PortError> {
        self.up(PortName::Builder)?;
        let now = self.now;
        let pushes = self
            .pushes
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, c)| c.clone())
            .collect();
        let finished = self
            .builds
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, c)| (c.clone(), BuildOutcome::Built(release_id(c))))
            .collect();
        Ok(SourceEvents {
            pushes,
            finished,
            requested: Vec::new(),
            cursor: now.millis().to_string(),
        })
    }

    async fn ack(&mut self, _service: &str, cursor: &str) -> Result<(), PortError> {
        self.up(PortName::Builder)?;
        let upto = Time::from_millis(
            cursor
                .parse()
                .map_err(|_| PortError::fatal("builder", format!("bad cursor `{cursor}`")))?,
        );
        self.pushes.retain(|(at, _)| *at > upto);
        self.builds.retain(|(at, _)| *at > upto);
        Ok(())
    }

    async fn start_build(
        &mut self,
        _service: &str,
        commit: &str,
        _skipped: &[String],
    ) -> Result<(), PortError> {
        self.up(PortName::Builder)?;
        let time = self
            .behaviours
            .get(commit)
            .map_or(Duration::from_secs(60), |b| b.build_time);
        self.builds.push((self.now.plus(time), commit.to_owned()));
        Ok(())
    }
}

impl Runtime for World {
    async fn instances(&mut self, _service: &str) -> Result<Instances, PortError> {
        self.up(PortName::Runtime)?;
        Ok(self
            .deployed
            .iter()
            .map(|((env, release), at)| {
                let crash = self.behaviours.get(release).is_some_and(|b| b.crash_on_deploy);
                let ready = !crash && self.now >= at.plus(STARTUP);
                (
                    (env.clone(), release.clone()),
                    Readiness {
                        ready: u32::from(ready),
                        desired: 1,
                        failed: crash && self.now >= at.plus(STARTUP),
                        reason: None,
                    },
                )
            })
            .collect())
    }

    async fn deploy(
        &mut self,
        _service: &str,
        environment: &str,
        release: &Release,
    ) -> Result<(), PortError> {
        self.up(PortName::Runtime)?;
        self.deployed
            .entry((environment.to_owned(), release.id.clone()))
            .or_insert(self.now);
        Ok(())
    }

    async fn retire(&mut self, _service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        self.up(PortName::Runtime)?;
        self.deployed
            .remove(&(environment.to_owned(), release.to_owned()));
        Ok(())
    }
}

impl Router for World {
    async fn routes(&mut self, _service: &str) -> Result<BTreeMap<String, RouteWeights>, PortError> {
        self.up(PortName::Router)?;
        Ok(self
            .routes
            .iter()
            .map(|(env, r)| (env.clone(), r.weights()))
            .collect())
    }

    async fn set_route(&mut self, _service: &str, environment: &str, route: &Route) -> Result<(), PortError> {
        self.up(PortName::Router)?;
        self.routes.insert(environment.to_owned(), route.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_counters_count_from_the_rollout_and_survive_a_reset() {
        let r = |c: (u64, u64), s: (u64, u64)| {
            Reading::of(Some(Counts::new(c.0, c.1)), Some(Counts::new(s.0, s.1)))
        };
        let mut base = Reading::default();
        // the first reading is the baseline: raw counters count from process start
        assert_eq!(
            since_baseline(&mut base, r((5, 1000), (50, 90_000)), (false, false)),
            r((0, 0), (0, 0))
        );
        assert_eq!(
            since_baseline(&mut base, r((7, 1500), (52, 91_000)), (false, false)),
            r((2, 500), (2, 1000))
        );
        // the canary restarted: its counter fell below the baseline, and counts from zero
        assert_eq!(
            since_baseline(&mut base, r((1, 100), (53, 92_000)), (false, false)),
            r((1, 100), (3, 2000))
        );
        // a blind arm is missing, not zero
        let blind = since_baseline(&mut base, r((2, 200), (54, 93_000)), (true, false));
        assert_eq!(blind.canary, None);
    }
}

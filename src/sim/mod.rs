//! The simulation harness: replays a scenario through the *same* driver, `plan` and executor
//! as production, with simulated ports ([`world::World`]) and a virtual clock.
//!
//! After every tick an invariant checker runs (weights valid, nothing promoted while an
//! objective is regressed, every phase change recorded); a violation fails the run. The same
//! file and seed give byte-identical output.

pub mod replay;
pub mod report;
pub mod world;

use crate::control::driver;
use crate::control::judge::Verdict;
use crate::control::plan::PlanSpec;
use crate::control::rollout::*;
use crate::control::time::Time;
use crate::control::wake::{self, Rhythm};
pub use crate::report::Sample;
use crate::spec::simulations::{ExpectedOutcome, OperatorAction, OperatorKind, Scenario};
use crate::spec::units::{Target, Weight};
use crate::spec::{self, Catalog, LoadError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use world::{Served, Signal, World};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Specs(String),
    #[error("service `{service}` is not in the specs {specs:?}")]
    UnknownService { service: String, specs: Vec<PathBuf> },
    #[error("environment `{0}` named by an operator action is not one of the service's")]
    UnknownEnvironment(String),
    #[error("invariant violated at {at}: {what}")]
    Invariant { at: Time, what: String },
}

/// An operator's action as the timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorEntry {
    pub at: Time,
    pub environment: String,
    pub by: String,
    /// In words: `pause`, `approve v2 as release-managers`.
    pub action: String,
    pub reason: Option<String>,
    /// Why it was refused (it contradicted the rollout's state), if it was.
    pub refused: Option<String>,
}

/// How a release ended in an environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub release: String,
    pub environment: String,
    /// The last phase reached.
    pub phase: PhaseKind,
    pub pushed_at: Time,
    /// When it was promoted or rolled back.
    pub decided_at: Option<Time>,
    pub served: Served,
}

/// The result of an expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub expectation: String,
    pub passed: bool,
    pub detail: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimResult {
    pub scenario: String,
    pub seed: u64,
    pub start: Time,
    pub end: Time,
    pub environments: Vec<String>,
    pub objectives: Vec<String>,
    pub transitions: Vec<Transition>,
    pub notes: Vec<(Time, String)>,
    /// What operators did, at the time they did it (and whether it was refused).
    pub operator_actions: Vec<OperatorEntry>,
    pub samples: Vec<Sample>,
    pub outcomes: Vec<Outcome>,
    pub checks: Vec<Check>,
    pub ticks: u64,
    /// Requests served as canary (all environments).
    pub requests: u64,
    /// Requests simulated in all environments, each judged through the sensors.
    pub generated: u64,
}

impl SimResult {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Loads a scenario file and the specs it names (relative to it).
pub fn load(path: &Path) -> Result<(Scenario, Catalog), SimError> {
    let (scenario, catalog, _) = load_with_base(path)?;
    Ok((scenario, catalog))
}

/// Loads a scenario, its specs, and the folder its relative paths start from (the first
/// scenario by name, when the file holds several).
pub fn load_with_base(path: &Path) -> Result<(Scenario, Catalog, PathBuf), SimError> {
    load_all_with_base(path)?
        .into_iter()
        .next()
        .ok_or_else(|| SimError::Specs(format!("{}: not a `kind: Simulation` file", path.display())))
}

/// Every scenario of a file (several documents may each be one), by name, each with its
/// specs and the folder its relative paths start from.
pub fn load_all_with_base(path: &Path) -> Result<Vec<(Scenario, Catalog, PathBuf)>, SimError> {
    let render = |e: LoadError| match e {
        LoadError::Invalid(r) => r.render_text(),
        LoadError::Usage(u) => u.to_string(),
    };
    let file = spec::load(&[path.to_path_buf()]).map_err(|e| SimError::Specs(render(e)))?;
    if file.simulations.is_empty() {
        return Err(SimError::Specs(format!(
            "{}: not a `kind: Simulation` file",
            path.display()
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut all = Vec::new();
    for (_, (_, scenario)) in file.simulations {
        let specs: Vec<PathBuf> = scenario.specs.iter().map(|s| base.join(s)).collect();
        let catalog = spec::load(&specs).map_err(|e| SimError::Specs(render(e)))?;
        if !catalog.services.contains_key(&scenario.service) {
            return Err(SimError::UnknownService {
                service: scenario.service.clone(),
                specs,
            });
        }
        all.push((scenario, catalog, base.to_path_buf()));
    }
    Ok(all)
}

/// What each of the service's objectives counts in the simulated world.
fn signals(catalog: &Catalog, service: &str) -> Vec<(String, Signal)> {
    let svc = &catalog.services[service];
    svc.objectives
        .iter()
        .map(|o| {
            let signal = match o.target {
                Target::Latency { threshold, .. } => Signal::SlowerThan(threshold.0),
                Target::BadRatio { .. } => Signal::Errors,
            };
            (o.name.clone(), signal)
        })
        .collect()
}

/// Applies a scenario's operator action the way the API does (the same checks: an action that
/// contradicts the rollout's state is refused); returns what the timeline shows of it.
fn apply_operator(world: &mut World, op: &OperatorAction, now: Time) -> OperatorEntry {
    use crate::control::overrides::{self, OverrideAction};
    let (env, by) = (op.environment.as_str(), op.by.as_str());
    let actor = Actor {
        who: by.to_owned(),
        reason: op.reason.clone().unwrap_or_else(|| "scenario".into()),
    };
    let what = match &op.action {
        OperatorKind::Weight(w) => format!("hold the weight at {}%", w.0),
        OperatorKind::Pin(r) => format!("pin {r}"),
        OperatorKind::Approve(a) => format!("approve {} as {}", a.release, a.groups.join(", ")),
        OperatorKind::PauseRegardless => "pause regardless of regressions".into(),
        OperatorKind::ReleaseWeight => "stop holding the weight".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    let action = match &op.action {
        OperatorKind::Pause => OverrideAction::Pause,
        OperatorKind::PauseRegardless => OverrideAction::PauseRegardless,
        OperatorKind::Resume => OverrideAction::Resume,
        OperatorKind::Promote => OverrideAction::Promote,
        OperatorKind::Rollback => OverrideAction::Rollback,
        OperatorKind::Weight(w) => OverrideAction::Weight(*w),
        OperatorKind::ReleaseWeight => OverrideAction::ClearWeight,
        OperatorKind::Freeze => OverrideAction::Freeze,
        OperatorKind::Unfreeze => OverrideAction::Unfreeze,
        OperatorKind::Pin(r) => OverrideAction::Pin(r.clone()),
        OperatorKind::Unpin => OverrideAction::Unpin,
        OperatorKind::Approve(a) => OverrideAction::Approve {
            release: Some(a.release.clone()),
            groups: a.groups.clone(),
        },
    };
    let refused = overrides::apply(
        &world.state,
        &mut world.overrides,
        env,
        &action,
        actor.clone(),
        now,
    )
    .err()
    .map(|e| e.to_string());
    OperatorEntry {
        at: now,
        environment: env.to_owned(),
        by: by.to_owned(),
        action: what,
        reason: op.reason.clone(),
        refused,
    }
}

/// Checks the invariants of one tick: weights within 0..=100; nothing promoted by the
/// controller while an objective is regressed or undecided; the canary's weight never lowered
/// but by a rollback or an operator, and never raised on missing data; every phase change
/// recorded. Used by the simulator after every tick and by the plan tests.
pub fn check_invariants(tick: &driver::Tick) -> Result<(), String> {
    let (observed, p) = (&tick.observed, &tick.plan);
    let by_operator = |env: &str| {
        p.transitions
            .iter()
            .any(|t| t.environment == env && matches!(t.cause, Cause::Operator { .. }))
    };
    for a in &p.actions {
        if let Action::SetWeights {
            environment,
            canary_weight,
            ..
        } = a
        {
            if canary_weight.0 > 100 {
                return Err(format!("weight {} out of range", canary_weight.0));
            }
            let all_missing = observed
                .readings
                .iter()
                .filter(|((e, _), _)| e == environment)
                .all(|(_, r)| r.canary.is_none());
            let has_readings = observed.readings.keys().any(|(e, _)| e == environment);
            let before = observed
                .state
                .environments
                .get(environment)
                .and_then(|e| e.rollout.as_ref());
            let raised = before
                .is_some_and(|b| matches!(b.phase, Phase::Canary { weight, .. } if *canary_weight > weight));
            if has_readings && all_missing && raised && !by_operator(environment) {
                return Err(format!("weight raised in {environment} on missing data: {a:?}"));
            }
        }
    }
    for a in &p.actions {
        if let Action::Retire { environment, release } = a {
            let share = observed
                .routes
                .as_ref()
                .map(|r| r.get(environment).map_or(0, |w| w.share_of(release)));
            if share != Some(0) {
                return Err(format!(
                    "{release} retired in {environment} while the router gives it {share:?}% of traffic"
                ));
            }
        }
    }
    for t in &p.transitions {
        // promoted (or baking, on the way there) only on the judge's word that it is safe;
        // after a bake, on its watch having seen no change (the judge's word came before)
        let judged = matches!(t.to, PhaseKind::Promoting | PhaseKind::Baking);
        if judged && !matches!(t.cause, Cause::Operator { .. } | Cause::FirstRelease) {
            let baked = matches!(t.cause, Cause::Baked { .. });
            let mine = p
                .evidence
                .iter()
                .filter(|e| e.environment == t.environment && e.release == t.release);
            for e in mine {
                let fine = if baked {
                    e.judgement.verdict != Verdict::Regressed
                } else {
                    e.judgement.verdict == Verdict::Safe
                };
                if !fine {
                    return Err(format!(
                        "{} promoted in {} while {} is {:?}",
                        t.release, t.environment, e.objective, e.judgement.verdict
                    ));
                }
            }
        }
    }
    for (env, after) in &p.state.environments {
        let before = observed
            .state
            .environments
            .get(env)
            .and_then(|e| e.rollout.as_ref());
        let Some(a) = &after.rollout else { continue };
        if let Some(b) = before
            && b.release == a.release
            && let (Phase::Canary { weight: wb, .. }, Phase::Canary { weight: wa, .. }) = (&b.phase, &a.phase)
            && wa < wb
            && !by_operator(env)
        {
            return Err(format!(
                "the canary's weight in {env} went down from {} to {}",
                wb.0, wa.0
            ));
        }
        let changed = before.is_none_or(|b| b.release != a.release || b.phase.name() != a.phase.name());
        let recorded = p
            .transitions
            .iter()
            .any(|t| &t.environment == env && t.release == a.release && t.to == a.phase.name());
        if changed && !recorded {
            return Err(format!(
                "unrecorded change of {} in {env} to {}",
                a.release,
                a.phase.name()
            ));
        }
    }
    Ok(())
}

/// Runs a scenario whose recordings (if any) are found relative to `base`.
pub fn run_file(path: &Path) -> Result<SimResult, SimError> {
    let (scenario, catalog, base) = load_with_base(path)?;
    run_in(&scenario, &catalog, &base)
}

/// Runs a scenario (recordings, if any, relative to the current folder).
pub fn run(scenario: &Scenario, catalog: &Catalog) -> Result<SimResult, SimError> {
    run_in(scenario, catalog, Path::new("."))
}

/// Runs a scenario; recordings are found relative to `base`.
pub fn run_in(scenario: &Scenario, catalog: &Catalog, base: &Path) -> Result<SimResult, SimError> {
    let spec = PlanSpec::resolve(catalog, &scenario.service).ok_or_else(|| SimError::UnknownService {
        service: scenario.service.clone(),
        specs: Vec::new(),
    })?;
    for op in &scenario.operators {
        if !spec.environments.iter().any(|e| e.name == op.environment) {
            return Err(SimError::UnknownEnvironment(op.environment.clone()));
        }
    }
    let start: Time = scenario.start.parse().map_err(SimError::Specs)?;
    // production's wake-up rule: Prometheus sensors have news once a scrape, the proxy's at once
    let reads_prometheus = catalog.services.get(&scenario.service).is_some_and(|s| {
        s.objectives.iter().any(|o| {
            catalog
                .sensors
                .get(&o.sensor)
                .is_some_and(|x| !matches!(x.source, spec::sensors::SensorSource::Proxy(_)))
        })
    });
    let rhythm = Rhythm::new(
        scenario.tick.0,
        reads_prometheus.then_some(scenario.scrape_interval.0),
    );
    let end = start.plus(scenario.duration.0);
    let signals = signals(catalog, &scenario.service);
    let objectives: Vec<String> = signals.iter().map(|(o, _)| o.clone()).collect();
    let mut world = World::new(scenario, &spec, signals, start);
    if let Some(replay) = &scenario.replay {
        if !spec.environments.iter().any(|e| e.name == replay.environment) {
            return Err(SimError::UnknownEnvironment(replay.environment.clone()));
        }
        for objective in replay.objectives.keys() {
            if !world.signals.iter().any(|(o, _)| o == objective) {
                return Err(SimError::Specs(format!(
                    "replay: `{objective}` is not an objective of `{}`",
                    scenario.service
                )));
            }
        }
        let rec =
            replay::Recordings::load(replay, base, start).map_err(|e| SimError::Specs(e.to_string()))?;
        world.recordings = Some(rec);
    }
    let mut result = SimResult {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        start,
        end,
        environments: world.environments.clone(),
        objectives,
        transitions: Vec::new(),
        notes: Vec::new(),
        operator_actions: Vec::new(),
        samples: Vec::new(),
        outcomes: Vec::new(),
        checks: Vec::new(),
        ticks: 0,
        requests: 0,
        generated: 0,
    };
    // the simulated ports answer at once; a single-threaded runtime drives the async driver
    let executor = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| SimError::Specs(format!("cannot start the simulation's executor: {e}")))?;
    let mut operators: Vec<_> = scenario.operators.iter().collect();
    operators.sort_by_key(|o| o.at);
    let mut next_operator = 0;
    let mut t = start;
    let mut samples = Samples::default();
    let mut last_notes: std::collections::BTreeSet<String> = Default::default();
    while t < end {
        while next_operator < operators.len() && start.plus(operators[next_operator].at.0) <= t {
            let op = operators[next_operator];
            result.operator_actions.push(apply_operator(&mut world, op, t));
            next_operator += 1;
        }
        world.now = t;
        let tick = match executor.block_on(driver::tick(&spec, &mut world, t)) {
            Ok(tick) => tick,
            Err(e) => {
                // a port failed the whole tick (the store is down): nothing was recorded, and
                // the next look plans again from the same state
                let note = format!("tick failed: {e}");
                if result.notes.last().map(|(_, n)| n) != Some(&note) {
                    result.notes.push((t, note));
                }
                let next = rhythm.next(t, [None]).min(end);
                world.advance(next);
                t = next;
                continue;
            }
        };
        check_invariants(&tick).map_err(|what| SimError::Invariant { at: t, what })?;
        result.ticks += 1;
        result.transitions.extend(tick.plan.transitions.iter().cloned());
        // failed actions and observations are noted like the plan's notes: once, when they start
        let failed = tick.failures.iter().map(|(a, e)| format!("{a:?} failed: {e}"));
        let unobserved = tick.unobserved.iter().map(|e| format!("cannot observe: {e}"));
        let notes: std::collections::BTreeSet<String> = tick
            .plan
            .notes
            .iter()
            .cloned()
            .chain(failed)
            .chain(unobserved)
            .collect();
        for n in notes.difference(&last_notes) {
            result.notes.push((t, n.clone()));
        }
        last_notes = notes;
        samples.add(&world, &tick.plan, t);
        // next look: production's rule, or sooner when something happens (an operator acts,
        // a release is pushed: production's store wakes its loop the same way)
        let mut next = rhythm.next(t, [Some(&tick.plan)]);
        if let Some(e) = world.next_event_after(t) {
            next = next.min(e.max(t.plus(wake::MIN_GAP)));
        }
        let next = next.min(end);
        world.advance(next);
        t = next;
    }
    result.samples = samples.into_sorted();
    result.requests = world.served.values().map(|s| s.requests).sum::<u64>();
    result.generated = world.generated;
    result.outcomes = outcomes(scenario, &world, &result.transitions, start);
    result.checks = expectations(scenario, &result.outcomes, start);
    Ok(result)
}

/// The chart's history, bounded whatever the scenario's length: an environment is sampled
/// only while a rollout runs there (and once as it ends), and when its samples reach
/// [`Samples::CAP`] every other one is dropped and it is sampled half as often from then on.
#[derive(Default)]
struct Samples {
    /// Per environment: the samples, every how many looks one is kept, looks since the last.
    envs: BTreeMap<String, (Vec<Sample>, u64, u64)>,
}

/// At most this many chart samples are kept per environment, however long the scenario.
pub const MAX_SAMPLES_PER_ENVIRONMENT: usize = 2000;

impl Samples {
    const CAP: usize = MAX_SAMPLES_PER_ENVIRONMENT;

    fn add(&mut self, world: &World, plan: &Plan, t: Time) {
        for env in &world.environments {
            let st = &plan.state.environments[env];
            let rollout = st.rollout.as_ref().filter(|r| !r.phase.is_finished());
            let (kept, stride, since) = self.envs.entry(env.clone()).or_insert((Vec::new(), 1, 0));
            let was_running = kept.last().is_some_and(|s| s.release.is_some());
            if rollout.is_none() && !was_running {
                continue;
            }
            // the first and last look of a rollout are always kept
            *since += 1;
            let edge = rollout.is_none() || !was_running;
            if !edge && *since < *stride {
                continue;
            }
            *since = 0;
            let weight = match rollout {
                Some(r) => world
                    .routes
                    .get(env)
                    .map_or(Weight(0), |route| Weight(route.weights().share_of(&r.release))),
                None => Weight(0),
            };
            let rates = plan
                .evidence
                .iter()
                .filter(|e| &e.environment == env)
                .map(|e| {
                    let (c, s) = (e.judgement.evidence.canary, e.judgement.evidence.stable);
                    let r = |x: crate::control::judge::Counts| (x.total > 0).then(|| x.ratio());
                    (e.objective.clone(), r(c), r(s))
                })
                .collect();
            kept.push(Sample {
                at: t,
                environment: env.clone(),
                release: rollout.map(|r| r.release.clone()),
                weight: weight.0,
                rates,
            });
            if kept.len() >= Self::CAP {
                let mut i = 0;
                kept.retain(|s| {
                    i += 1;
                    // keep every other sample, and every rollout's last
                    i % 2 == 1 || s.release.is_none()
                });
                *stride *= 2;
            }
        }
    }

    fn into_sorted(self) -> Vec<Sample> {
        let mut all: Vec<Sample> = self.envs.into_values().flat_map(|(s, _, _)| s).collect();
        all.sort_by_key(|s| s.at);
        all
    }
}

fn outcomes(scenario: &Scenario, world: &World, transitions: &[Transition], start: Time) -> Vec<Outcome> {
    let mut out = Vec::new();
    for r in &scenario.releases {
        for env in &world.environments {
            let mine: Vec<&Transition> = transitions
                .iter()
                .filter(|t| &t.environment == env && t.release == r.name)
                .collect();
            let Some(last) = mine.last() else { continue };
            // the last decision (a blue/green switch rolled back in its window was promoted first)
            let decided_at = mine
                .iter()
                .rfind(|t| matches!(t.to, PhaseKind::Promoted | PhaseKind::RolledBack))
                .map(|t| t.at);
            out.push(Outcome {
                release: r.name.clone(),
                environment: env.clone(),
                phase: last.to,
                pushed_at: start.plus(r.pushed_at.0),
                decided_at,
                served: world
                    .served
                    .get(&(env.clone(), r.name.clone()))
                    .copied()
                    .unwrap_or_default(),
            });
        }
    }
    out
}

fn expectations(scenario: &Scenario, outcomes: &[Outcome], start: Time) -> Vec<Check> {
    let mut checks = Vec::new();
    for e in &scenario.expect {
        let o = outcomes
            .iter()
            .find(|o| o.release == e.release && o.environment == e.environment);
        let phase = o.map_or("never started", |o| o.phase.as_str());
        let outcome_ok = match e.outcome {
            ExpectedOutcome::Promoted => phase == "promoted",
            ExpectedOutcome::RolledBack => phase == "rolled-back",
            ExpectedOutcome::Held => o.is_some() && phase != "promoted" && phase != "rolled-back",
            ExpectedOutcome::NeverStarted => o.is_none(),
        };
        let pushed = scenario
            .releases
            .iter()
            .find(|r| r.name == e.release)
            .map_or(start, |r| start.plus(r.pushed_at.0));
        let took = o.and_then(|o| o.decided_at).map(|d| d.since(pushed));
        let within_ok = match (e.within, e.outcome) {
            (Some(limit), ExpectedOutcome::Promoted | ExpectedOutcome::RolledBack) => {
                took.is_some_and(|t| t <= limit.0)
            }
            _ => true,
        };
        let bad = o.map_or(0, |o| o.served.bad);
        let blast_ok = e.max_blast_radius.is_none_or(|m| bad <= m);
        let mut detail = phase.to_string();
        if let Some(t) = took {
            detail.push_str(&format!(
                " after {}",
                crate::spec::units::Duration(std::time::Duration::from_secs(t.as_secs().max(1)))
            ));
        }
        detail.push_str(&format!(", {bad} failed canary requests"));
        let mut expectation = format!("{} in {}: {:?}", e.release, e.environment, e.outcome)
            .replace("RolledBack", "rolled back")
            .replace("NeverStarted", "never started");
        expectation = expectation
            .replace("Promoted", "promoted")
            .replace("Held", "held");
        if let Some(w) = e.within {
            expectation.push_str(&format!(" within {w}"));
        }
        if let Some(m) = e.max_blast_radius {
            expectation.push_str(&format!(", at most {m} failed canary requests"));
        }
        checks.push(Check {
            expectation,
            passed: outcome_ok && within_ok && blast_ok,
            detail,
        });
    }
    checks
}

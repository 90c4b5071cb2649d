//! The decision engine driven tick by tick in a small seeded world: builds finish, instances
//! become ready, traffic splits by the planned weights, counters grow. The real `plan` decides;
//! the world only carries out its actions. Covers promotion through dev → staging → prod with
//! the same release, rollback on regression and on a crash at deploy, missing data, the
//! blast-radius cap, supersession, and every operator override; then property tests for the
//! invariants.

use autopilot::control::gates::Approval;
use autopilot::control::judge::{Counts, Reading, Verdict};
use autopilot::control::ports::Route;
use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::control::{PlanSpec, plan};
use autopilot::spec::controllers::StopAction;
use autopilot::spec::{self, units::Weight};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution};
use std::collections::{BTreeMap, HashMap, HashSet};

const SERVICE: &str = r#"
apiVersion: autopilot/v1
kind: Service
name: shop
source: {repository: "https://git.example.com/shop.git"}
build: {command: make, artifact: {files: [bin/shop]}}
run: {command: bin/shop}
environments:
  - {name: dev, controller: quick}
  - {name: staging}
  - {name: prod, controller: gated}
controller: steady
objectives:
  - {name: errors, sensor: proxy.errors, target: "< 2%", tolerance: 50%}
  - {name: latency, sensor: proxy.latency, target: "p99 < 300ms", tolerance: 50%}
"#;

const SENSORS: &str = r#"
apiVersion: autopilot/v1
kind: Sensors
sensors:
  - {name: proxy.errors, source: {proxy: errors}, missingData: {hold: 1m, then: rollback}}
  - {name: proxy.latency, source: {proxy: latency}, missingData: {hold: 1m, then: rollback}}
"#;

fn controller(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: autopilot/v1
kind: Controller
name: {name}
ramp: {{steps: [5, 25, 50]}}
analysis: {{interval: 10s, falseRollbackRate: 1%, tolerance: 50%, minEvidence: {{requests: 500}}}}
progressDeadline: 2h
blastRadius: {{budget: 500}}
missingData: {{hold: 1m, then: rollback}}
{extra}
"#
    )
}

fn spec() -> PlanSpec {
    let quick = controller("quick", "");
    let steady = controller("steady", "promotion: {gates: [{soak: 5m}]}");
    let gated = controller(
        "gated",
        "promotion: {gates: [{soak: 5m}, {approval: {groups: [sre]}}]}",
    );
    shop(SERVICE, &[&quick, &steady, &gated])
}

/// The shop of `service`, with the sensors and these controllers, resolved for planning.
fn shop(service: &str, controllers: &[&str]) -> PlanSpec {
    let names: Vec<String> = (0..controllers.len())
        .map(|i| format!("controller-{i}.yaml"))
        .collect();
    let mut texts = vec![("shop.yaml", service), ("sensors.yaml", SENSORS)];
    texts.extend(names.iter().map(String::as_str).zip(controllers.iter().copied()));
    let catalog = spec::load_texts(&texts).unwrap_or_else(|r| panic!("{}", r.render_text()));
    PlanSpec::resolve(&catalog, "shop").unwrap()
}

/// What the router routes in one environment: stable, canary, the canary's weight, the mirror's
/// share, the segment's share.
/// The traffic arms of a route: stable, canary, the canary's weight, the share of stable's
/// requests copied to the canary (a preview's mirror), the share of the A/B segment sent to the
/// canary (while it serves the segment). A rollout's release served alone (promoting) is the
/// canary arm at 100%, as the proxy's per-release counters read it.
type Routed = (Option<String>, String, Weight, f64, Option<f64>);

fn arms(route: &Route, env: Option<&EnvState>) -> Option<Routed> {
    let moving = env
        .and_then(|e| e.rollout.as_ref())
        .filter(|r| !r.phase.is_finished())
        .map(|r| r.release.as_str());
    let mirror = route.mirror.as_ref().map_or(0.0, |m| m.share.fraction());
    let segment = route.segment.as_ref().map(|s| s.share.fraction());
    Some(match (&route.stable, &route.canary) {
        (s, Some(c)) => (s.clone(), c.clone(), route.weight, mirror, segment),
        (Some(s), None) if moving == Some(s.as_str()) => (
            env.and_then(|e| e.stable.clone()),
            s.clone(),
            Weight::MAX,
            0.0,
            None,
        ),
        (Some(s), None) => (Some(s.clone()), s.clone(), Weight(0), 0.0, None),
        (None, None) => return None,
    })
}

/// A simulated world that carries out plans.
struct World {
    spec: PlanSpec,
    state: ServiceState,
    overrides: Overrides,
    now: Time,
    rng: ChaCha8Rng,
    /// Requests per second into each environment.
    rate: u64,
    /// Error and slow-request shares per release (default: healthy).
    errors: HashMap<String, f64>,
    crash_at_deploy: HashSet<String>,
    /// While true, the sensors return nothing.
    blackout: bool,
    /// While true, the runtime cannot be asked (its instances are unknown).
    runtime_down: bool,
    /// While true, the router can be neither asked nor changed.
    router_down: bool,
    deployed: HashSet<(String, String)>,
    /// Per environment: the route as the router serves it (decided by `Route::decide`, the
    /// rule the proxy and the simulator carry out).
    weights: HashMap<String, Route>,
    /// Counters since the current rollout started (or its segment stage changed), per env:
    /// (canary release, canary, stable, counting the segment's requests).
    counters: HashMap<(String, String), (String, Counts, Counts, bool)>,
    pushes: Vec<String>,
    requested: Vec<String>,
    finished: Vec<(String, BuildOutcome)>,
    building: Vec<String>,
    plans: Vec<Plan>,
}

const HEALTHY_ERRORS: f64 = 0.005;

impl World {
    fn new(seed: u64) -> World {
        World::with_spec(seed, spec())
    }

    fn with_spec(seed: u64, spec: PlanSpec) -> World {
        World {
            spec,
            state: ServiceState::default(),
            overrides: Overrides::default(),
            now: Time::from_secs(1_796_025_600), // 2026-11-30T08:00:00Z, a Monday
            rng: ChaCha8Rng::seed_from_u64(seed),
            rate: 200,
            errors: HashMap::new(),
            crash_at_deploy: HashSet::new(),
            blackout: false,
            runtime_down: false,
            router_down: false,
            deployed: HashSet::new(),
            weights: HashMap::new(),
            counters: HashMap::new(),
            pushes: Vec::new(),
            requested: Vec::new(),
            finished: Vec::new(),
            building: Vec::new(),
            plans: Vec::new(),
        }
    }

    fn push(&mut self, commit: &str) {
        self.pushes.push(commit.to_owned());
    }

    fn request(&mut self, commit: &str) {
        self.requested.push(commit.to_owned());
    }

    fn env(&self, name: &str) -> &EnvState {
        &self.state.environments[name]
    }

    fn phase(&self, env: &str) -> Option<&Phase> {
        self.state
            .environments
            .get(env)?
            .rollout
            .as_ref()
            .map(|r| &r.phase)
    }

    /// Generates traffic for `secs` seconds and reads the counters.
    fn readings(&mut self, secs: u64) -> BTreeMap<(String, String), Reading> {
        let mut out = BTreeMap::new();
        for env in self
            .spec
            .environments
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
        {
            let Some((stable, canary, weight, mirror, segment)) = self
                .weights
                .get(&env)
                .and_then(|r| arms(r, self.state.environments.get(&env)))
            else {
                continue;
            };
            let n = self.rate * secs;
            let (nc, nb) = match segment {
                // an A/B segment: a tenth of the callers, split by its share; the proxy counts
                // them apart, and only they are read while the canary serves the segment
                Some(share) => {
                    let ns = Binomial::new(n, 0.1).unwrap().sample(&mut self.rng);
                    let nc = Binomial::new(ns, share).unwrap().sample(&mut self.rng);
                    (nc, ns - nc)
                }
                None => {
                    let nc = Binomial::new(n, f64::from(weight.0) / 100.0)
                        .unwrap()
                        .sample(&mut self.rng);
                    (nc, n - nc)
                }
            };
            // copies of stable's requests: the canary's evidence, served to no user
            let nm = Binomial::new(nb, mirror).unwrap().sample(&mut self.rng);
            for objective in ["errors", "latency"] {
                let key = (env.clone(), objective.to_owned());
                let fresh = (
                    canary.clone(),
                    Counts::default(),
                    Counts::default(),
                    segment.is_some(),
                );
                let entry = self.counters.entry(key.clone()).or_insert_with(|| fresh.clone());
                if entry.0 != canary || entry.3 != segment.is_some() {
                    *entry = fresh;
                }
                let pc = self.errors.get(&canary).copied().unwrap_or(HEALTHY_ERRORS);
                let pb = stable
                    .as_ref()
                    .and_then(|s| self.errors.get(s))
                    .copied()
                    .unwrap_or(HEALTHY_ERRORS);
                entry.1.total += nc + nm;
                entry.1.bad += Binomial::new(nc + nm, pc).unwrap().sample(&mut self.rng);
                entry.2.total += nb;
                entry.2.bad += Binomial::new(nb, pb).unwrap().sample(&mut self.rng);
                let reading = if self.blackout {
                    Reading::default()
                } else {
                    Reading::of(Some(entry.1), Some(entry.2))
                };
                out.insert(key, reading);
            }
        }
        out
    }

    /// One tick: observe, plan, carry out. Returns the plan.
    fn tick(&mut self, secs: u64) -> Plan {
        self.now = self.now.plus(std::time::Duration::from_secs(secs));
        let readings = self.readings(secs);
        let readiness = self
            .deployed
            .iter()
            .map(|(e, r)| {
                let failed = self.crash_at_deploy.contains(r);
                (
                    (e.clone(), r.clone()),
                    Readiness {
                        ready: if failed { 0 } else { 1 },
                        desired: 1,
                        failed,
                        reason: failed.then(|| "pod p-1, container app: CrashLoopBackOff".to_owned()),
                    },
                )
            })
            .collect();
        let routes = self
            .weights
            .iter()
            .map(|(env, route)| (env.clone(), route.weights()))
            .collect();
        let observed = Observed {
            state: self.state.clone(),
            readiness: (!self.runtime_down).then_some(readiness),
            routes: (!self.router_down).then_some(routes),
            readings,
            pushes: std::mem::take(&mut self.pushes),
            finished_builds: std::mem::take(&mut self.finished),
            requested_builds: std::mem::take(&mut self.requested),
        };
        let p = plan(&self.spec, &observed, &self.overrides, self.now);
        check_invariants(&observed, &p);
        // the same inputs give the same plan
        assert_eq!(p, plan(&self.spec, &observed, &self.overrides, self.now));
        for commit in self.building.drain(..) {
            let release = Release {
                id: format!("r-{commit}"),
                commit: commit.clone(),
                digest: format!("sha256:{commit:0>64}"),
            };
            self.finished.push((commit, BuildOutcome::Built(release)));
        }
        for action in &p.actions {
            match action {
                Action::StartBuild { commit, .. } => self.building.push(commit.clone()),
                Action::Deploy { environment, release } => {
                    self.deployed.insert((environment.clone(), release.clone()));
                }
                Action::SetWeights { .. } if self.router_down => {}
                Action::SetWeights {
                    environment,
                    stable,
                    canary,
                    canary_weight,
                    preview,
                } => {
                    let route = Route::decide(stable.as_deref(), canary, *canary_weight, preview.as_ref());
                    self.weights.insert(environment.clone(), route);
                }
                Action::Retire { environment, release } => {
                    self.deployed.remove(&(environment.clone(), release.clone()));
                }
            }
        }
        self.overrides.consume(&p.consumed);
        // counters count from the start of each rollout
        for t in p.transitions.iter().filter(|t| t.from.is_none()) {
            self.counters.retain(|(env, _), _| *env != t.environment);
        }
        self.state = p.state.clone();
        self.plans.push(p.clone());
        p
    }

    /// Ticks every `secs` until `done` or `limit` ticks.
    fn run_until(&mut self, secs: u64, limit: usize, done: impl Fn(&World) -> bool) -> bool {
        for _ in 0..limit {
            if done(self) {
                return true;
            }
            self.tick(secs);
        }
        done(self)
    }

    /// The transition that started the first rollback.
    fn first_rollback(&self) -> Transition {
        self.transitions()
            .into_iter()
            .find(|t| t.to == "rolling-back")
            .expect("a rollback")
            .clone()
    }

    fn transitions(&self) -> Vec<&Transition> {
        self.plans.iter().flat_map(|p| &p.transitions).collect()
    }

    /// An approval for prod from an sre.
    fn approve(&mut self, release: &str) {
        self.overrides.approvals.push(Approval {
            release: release.into(),
            environment: "prod".into(),
            by: "sam".into(),
            groups: vec!["sre".into()],
            at: self.now,
        });
    }

    fn ov(&mut self, env: &str) -> &mut EnvOverrides {
        self.overrides.environments.entry(env.to_owned()).or_default()
    }
}

fn actor() -> Actor {
    Actor {
        who: "ann".into(),
        reason: "testing".into(),
    }
}

/// The invariants that must hold after every plan: the simulator's checker.
fn check_invariants(observed: &Observed, p: &Plan) {
    let tick = autopilot::control::driver::Tick {
        observed: observed.clone(),
        plan: p.clone(),
        failures: Vec::new(),
        unobserved: Vec::new(),
    };
    if let Err(e) = autopilot::sim::check_invariants(&tick) {
        panic!("invariant violated: {e}");
    }
}

#[test]
fn a_healthy_release_walks_dev_staging_prod_as_the_same_digest() {
    let mut w = World::new(1);
    // the first release becomes stable everywhere without a canary (nothing to compare)
    w.push("c1");
    w.approve("r-c1");
    assert!(w.run_until(10, 500, |w| {
        w.state
            .environments
            .get("prod")
            .is_some_and(|e| e.stable.as_deref() == Some("r-c1"))
    }));
    // a second release goes through canaries in each environment
    w.push("c2");
    assert!(w.run_until(10, 2000, |w| {
        w.state
            .environments
            .get("staging")
            .is_some_and(|e| e.stable.as_deref() == Some("r-c2"))
    }));
    // prod waits for an approval from sre
    w.run_until(10, 60, |_| false);
    assert!(
        matches!(w.phase("prod"), Some(Phase::Waiting { on, .. }) if on.contains("approval")),
        "{:?}",
        w.phase("prod")
    );
    w.approve("r-c2");
    assert!(w.run_until(10, 2000, |w| w.env("prod").stable.as_deref() == Some("r-c2")));
    // one build per commit: promotion never builds anew
    let builds = w
        .plans
        .iter()
        .flat_map(|p| &p.actions)
        .filter(|a| matches!(a, Action::StartBuild { .. }))
        .count();
    assert_eq!(builds, 2);
    // each environment saw r-c2 go canary → promoting → promoted, each for a reason
    for env in ["dev", "staging", "prod"] {
        let path: Vec<&str> = w
            .transitions()
            .into_iter()
            .filter(|t| t.environment == env && t.release == "r-c2")
            .map(|t| t.to.as_str())
            .collect();
        assert_eq!(path.first(), Some(&"waiting"), "{env}: {path:?}");
        assert!(
            path.contains(&"canary") && path.ends_with(&["promoting", "promoted"]),
            "{env}: {path:?}"
        );
    }
    let promote = w
        .transitions()
        .into_iter()
        .find(|t| t.environment == "prod" && t.to == "promoting" && t.release == "r-c2")
        .unwrap();
    assert!(
        matches!(&promote.cause, Cause::Evidence { explanation, .. } if explanation.contains("within target")),
        "{promote:?}"
    );
}

fn with_stable(seed: u64) -> World {
    let mut w = World::new(seed);
    w.push("c1");
    w.approve("r-c1");
    assert!(w.run_until(10, 500, |w| {
        w.state
            .environments
            .get("prod")
            .is_some_and(|e| e.stable.is_some())
    }));
    w.plans.clear();
    w
}

/// Pushes `r-bad`, failing 10% of requests, and waits for dev to roll it back for its errors.
fn roll_back_a_bad_release_in_dev(w: &mut World) {
    w.errors.insert("r-bad".into(), 0.10);
    w.push("bad");
    assert!(w.run_until(10, 300, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    let t = w.first_rollback();
    assert!(
        matches!(&t.cause, Cause::Regressed { objective, .. } if objective == "errors"),
        "{t:?}"
    );
}

#[test]
fn an_error_regression_is_rolled_back_and_the_environment_pinned_until_a_newer_release() {
    let mut w = with_stable(2);
    roll_back_a_bad_release_in_dev(&mut w);
    assert_eq!(w.env("dev").blocked.as_deref(), Some("r-bad"));
    assert_eq!(w.env("dev").stable.as_deref(), Some("r-c1"));
    // staging never saw it
    assert!(w.transitions().iter().all(|t| t.environment == "dev"));
    // the rolled-back release does not start again; a newer one does
    w.run_until(10, 30, |_| false);
    assert!(matches!(w.phase("dev"), Some(Phase::RolledBack { .. })));
    w.push("fix");
    assert!(w.run_until(10, 500, |w| w.env("dev").stable.as_deref() == Some("r-fix")));
}

#[test]
fn a_crash_at_deploy_is_rolled_back_without_traffic() {
    let mut w = with_stable(3);
    w.crash_at_deploy.insert("r-crash".into());
    w.push("crash");
    assert!(w.run_until(10, 50, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    let t = w.first_rollback();
    // the runtime's reason is the rollout's, for the people reading it
    assert!(
        matches!(&t.cause, Cause::DeployFailed { reason } if reason == "instances cannot start: pod p-1, container app: CrashLoopBackOff"),
        "{t:?}"
    );
    assert!(!w.transitions().iter().any(|t| t.to == "canary"));
}

#[test]
fn an_unknown_runtime_holds_a_deploy_instead_of_failing_it() {
    // guards against taking "the runtime could not be asked" for "not ready"
    let mut w = with_stable(3);
    w.crash_at_deploy.insert("r-crash".into());
    w.runtime_down = true;
    w.push("crash");
    assert!(w.run_until(10, 20, |w| matches!(
        w.phase("dev"),
        Some(Phase::Deploying { .. })
    )));
    // far past the progress deadline (15m): still deploying, nothing rolled back
    for _ in 0..120 {
        w.tick(10);
    }
    assert!(
        matches!(w.phase("dev"), Some(Phase::Deploying { .. })),
        "{:?}",
        w.phase("dev")
    );
    assert!(!w.transitions().iter().any(|t| t.to == "rolling-back"));
    w.runtime_down = false;
    assert!(w.run_until(10, 5, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    let t = w.first_rollback();
    assert!(matches!(t.cause, Cause::DeployFailed { .. }), "{t:?}");
}

#[test]
fn a_release_is_retired_only_once_the_router_took_its_traffic_away() {
    // guards against retiring a release that a failed SetWeights(0) left with traffic
    let mut w = with_stable(5);
    w.errors.insert("r-bad".into(), 0.2);
    w.push("bad");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    w.router_down = true;
    assert!(w.run_until(10, 60, |w| matches!(
        w.phase("dev"),
        Some(Phase::RollingBack { .. })
    )));
    for _ in 0..10 {
        let p = w.tick(10);
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::Retire { .. })),
            "retired while the router still routes: {:?}",
            p.actions
        );
        // the weight change is asked for again each time
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::SetWeights { canary_weight, .. } if canary_weight.0 == 0))
        );
    }
    assert!(matches!(w.phase("dev"), Some(Phase::RollingBack { .. })));
    assert!(w.deployed.contains(&("dev".to_owned(), "r-bad".to_owned())));
    w.router_down = false;
    assert!(w.run_until(10, 3, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    assert!(!w.deployed.contains(&("dev".to_owned(), "r-bad".to_owned())));
}

#[test]
fn missing_data_holds_the_weight_then_rolls_back_after_the_hold() {
    let mut w = with_stable(4);
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    let Some(Phase::Canary { weight, .. }) = w.phase("dev").cloned() else {
        unreachable!()
    };
    w.blackout = true;
    // 50 s of silence: held, same weight
    for _ in 0..5 {
        w.tick(10);
    }
    assert!(matches!(w.phase("dev"), Some(Phase::Canary { weight: held, .. }) if *held == weight));
    w.run_until(10, 3, |w| {
        matches!(w.phase("dev"), Some(Phase::RolledBack { .. }))
    });
    assert!(
        matches!(w.phase("dev"), Some(Phase::RolledBack { .. })),
        "{:?}",
        w.phase("dev")
    );
    let t = w.first_rollback();
    assert!(matches!(t.cause, Cause::MissingData { .. }), "{t:?}");
}

/// Regression: a sticky `Safe` verdict once let the ramp jump ahead during a data gap.
#[test]
fn a_gap_after_safe_evidence_still_holds_the_weight() {
    use autopilot::control::judge::{JudgeState, observe};
    let mut w = with_stable(10);
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(
        w.phase("dev"),
        Some(Phase::Canary {
            weight: Weight(5),
            ..
        })
    )));
    // the judges of dev's canary have already found it safe …
    let dev = w.state.environments.get_mut("dev").unwrap();
    let rollout = dev.rollout.as_mut().unwrap();
    for o in &w.spec.environments[0].objectives {
        let mut judge = JudgeState::default();
        for i in 1..=100u64 {
            let reading = Reading::of(
                Some(Counts::new(i, i * 1000)),
                Some(Counts::new(i * 10, i * 10_000)),
            );
            judge = observe(&judge, reading, &o.judge, w.now).0;
        }
        let (_, j) = observe(
            &judge,
            Reading::of(
                Some(Counts::new(100, 100_000)),
                Some(Counts::new(1000, 1_000_000)),
            ),
            &o.judge,
            w.now,
        );
        assert_eq!(j.verdict, Verdict::Safe);
        rollout.judges.insert(o.name.clone(), judge);
    }
    // … and then the data stops: the weight must hold
    w.blackout = true;
    for _ in 0..5 {
        let p = w.tick(10);
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::SetWeights { .. })),
            "{:?}",
            p.actions
        );
        assert!(
            matches!(
                w.phase("dev"),
                Some(Phase::Canary {
                    weight: Weight(5),
                    ..
                })
            ),
            "{:?}",
            w.phase("dev")
        );
    }
}

#[test]
fn the_first_step_is_capped_by_the_blast_radius_budget() {
    let mut w = with_stable(5);
    // lots of traffic: a canary failing every request at the first step (5%) would spend the
    // 500-request budget in one 10 s interval many times over
    w.rate = 20_000;
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    assert!(
        matches!(
            w.phase("dev"),
            Some(Phase::Canary {
                weight: Weight(1),
                ..
            })
        ),
        "{:?}",
        w.phase("dev")
    );
    assert!(
        w.plans
            .iter()
            .flat_map(|p| &p.notes)
            .any(|n| n.contains("starts at 1% in dev instead of 5%"))
    );
    // with ordinary traffic the first step is the policy's
    let mut w = with_stable(5);
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    assert!(matches!(
        w.phase("dev"),
        Some(Phase::Canary {
            weight: Weight(5),
            ..
        })
    ));
}

#[test]
fn operators_pause_set_the_weight_resume_promote_and_roll_back() {
    let mut w = with_stable(6);
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    // pause: the weight stays while paused, whatever the evidence
    w.ov("dev").pause = Some(actor());
    w.tick(10);
    let Some(Phase::Paused {
        weight,
        by_operator: true,
        ..
    }) = w.phase("dev").cloned()
    else {
        panic!("{:?}", w.phase("dev"))
    };
    for _ in 0..20 {
        w.tick(10);
    }
    assert!(matches!(w.phase("dev"), Some(Phase::Paused { weight: held, .. }) if *held == weight));
    // lift the pause, hold the weight at 40
    w.ov("dev").pause = None;
    w.ov("dev").weight = Some((Weight(40), actor()));
    w.tick(10);
    w.tick(10);
    assert!(
        matches!(
            w.phase("dev"),
            Some(Phase::Canary {
                weight: Weight(40),
                ..
            })
        ),
        "{:?}",
        w.phase("dev")
    );
    for _ in 0..30 {
        w.tick(10);
    }
    assert!(
        matches!(
            w.phase("dev"),
            Some(Phase::Canary {
                weight: Weight(40),
                ..
            })
        ),
        "an override wins until lifted"
    );
    // promote now
    w.ov("dev").weight = None;
    w.ov("dev").promote = Some(actor());
    w.tick(10);
    w.tick(1);
    assert_eq!(w.env("dev").stable.as_deref(), Some("r-c2"));
    assert!(
        w.overrides.environments["dev"].promote.is_none(),
        "one-shot override cleared"
    );
    let t = w
        .transitions()
        .into_iter()
        .find(|t| t.to == "promoting")
        .unwrap()
        .clone();
    assert!(
        matches!(&t.cause, Cause::Operator { action, actor } if *action == OperatorStep::Promote && actor.who == "ann")
    );
    // roll back now, in staging
    assert!(w.run_until(10, 200, |w| matches!(
        w.phase("staging"),
        Some(Phase::Canary { .. })
    )));
    w.ov("staging").rollback = Some(actor());
    w.tick(10);
    w.tick(1);
    assert!(matches!(w.phase("staging"), Some(Phase::RolledBack { .. })));
}

#[test]
fn a_frozen_environment_starts_nothing_and_a_waiting_release_is_superseded() {
    let mut w = with_stable(7);
    w.ov("dev").freeze = Some(actor());
    w.push("c2");
    w.run_until(10, 5, |_| false);
    assert!(matches!(w.phase("dev"), Some(Phase::Waiting { on, .. }) if on.contains("frozen")));
    w.push("c3");
    w.run_until(10, 5, |_| false);
    let superseded = w
        .transitions()
        .into_iter()
        .find(|t| t.to == "superseded")
        .cloned()
        .unwrap();
    assert_eq!(superseded.release, "r-c2");
    w.ov("dev").freeze = None;
    assert!(w.run_until(10, 500, |w| w.env("dev").stable.as_deref() == Some("r-c3")));
}

#[test]
fn a_rollback_block_is_lifted_by_an_operator_and_a_pin_holds_the_environment() {
    let mut w = with_stable(8);
    w.errors.insert("r-c2".into(), 0.10);
    w.push("c2");
    assert!(w.run_until(10, 300, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    // an operator decides the sensor was wrong and lifts the block: r-c2 is tried again
    w.errors.remove("r-c2");
    w.ov("dev").resume = Some(actor());
    assert!(w.run_until(10, 500, |w| w.env("dev").stable.as_deref() == Some("r-c2")));
    assert!(w.overrides.environments["dev"].resume.is_none());
    // a pin keeps dev on r-c2: a newer release does not start there (but does not wait either)
    w.ov("dev").pin = Some(("r-c2".into(), actor()));
    w.push("c3");
    w.run_until(10, 60, |_| false);
    assert_eq!(w.env("dev").stable.as_deref(), Some("r-c2"));
    assert!(
        !w.transitions()
            .iter()
            .any(|t| t.environment == "dev" && t.release == "r-c3")
    );
    // pinning an older release takes the environment back to it, through a canary
    w.ov("dev").pin = Some(("r-c1".into(), actor()));
    assert!(w.run_until(10, 500, |w| w.env("dev").stable.as_deref() == Some("r-c1")));
    w.ov("dev").pin = None;
    assert!(w.run_until(10, 500, |w| w.env("dev").stable.as_deref() == Some("r-c3")));
}

/// A canary exactly at the tolerance: neither verdict can come. At the deadline it is held at
/// its weight for a person (a deadline passed is no evidence against it) — or rolled back, when
/// the policy says `onDeadline: rollback`.
#[test]
fn an_undecidable_canary_is_held_at_the_progress_deadline_unless_the_policy_rolls_back() {
    for policy in [StopAction::Pause, StopAction::Rollback] {
        let mut w = with_stable(9);
        for env in &mut w.spec.environments {
            env.controller.rollback.on_deadline = policy;
        }
        w.rate = 20; // little traffic, so the blast-radius budget lasts beyond the deadline
        // 1.5 times stable's errors: exactly the tolerance, so neither verdict can be reached
        w.errors.insert("r-c2".into(), HEALTHY_ERRORS * 1.5);
        w.push("c2");
        let stopped = |w: &World| {
            matches!(
                w.phase("dev"),
                Some(Phase::RolledBack { .. } | Phase::Paused { .. })
            )
        };
        assert!(w.run_until(10, 1000, stopped), "{policy:?}");
        let t = w
            .transitions()
            .into_iter()
            .find(|t| t.environment == "dev" && matches!(t.cause, Cause::Deadline))
            .expect("stopped by the deadline");
        let expected = match policy {
            StopAction::Pause => "paused",
            StopAction::Rollback => "rolling-back",
        };
        assert_eq!(t.to, expected, "{policy:?}");
        let started = w
            .transitions()
            .into_iter()
            .find(|t| t.from.is_none() && t.environment == "dev")
            .unwrap()
            .at;
        let after = t.at.since(started).as_secs();
        assert!((7200..7230).contains(&after), "{policy:?}: {after} s");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever the canary does, whatever goes missing, whatever operators do: the invariants
    /// hold after every plan (checked inside `tick`).
    #[test]
    fn invariants_hold_under_random_worlds(
        seed in 0u64..1000,
        canary_errors in prop::sample::select(vec![0.005, 0.01, 0.03, 0.2, 1.0]),
        events in prop::collection::vec(0u8..8, 40),
    ) {
        let mut w = with_stable(seed);
        w.errors.insert("r-c2".into(), canary_errors);
        w.push("c2");
        for e in events {
            match e {
                0 => w.blackout = !w.blackout,
                1 => w.ov("dev").pause = Some(actor()),
                2 => w.ov("dev").pause = None,
                3 => w.ov("dev").weight = Some((Weight(30), actor())),
                4 => w.ov("dev").weight = None,
                5 => w.ov("staging").freeze = Some(actor()),
                _ => {}
            }
            for _ in 0..5 {
                w.tick(10);
            }
        }
    }
}

#[test]
fn a_requested_build_of_any_commit_becomes_a_release_and_a_repeated_request_builds_nothing() {
    let mut w = with_stable(7);
    // a hotfix commit on another branch: asked for, not pushed to main
    w.request("hotfix1");
    assert!(w.run_until(10, 100, |w| {
        w.state.releases.iter().any(|r| r.commit == "hotfix1")
    }));
    let starts = |w: &World| {
        w.plans
            .iter()
            .flat_map(|p| &p.actions)
            .filter(|a| matches!(a, Action::StartBuild { commit, .. } if commit == "hotfix1"))
            .count()
    };
    assert_eq!(starts(&w), 1);
    w.request("hotfix1");
    w.run_until(10, 20, |_| false);
    assert_eq!(starts(&w), 1, "a built commit is not built again");
    assert!(
        w.plans
            .iter()
            .flat_map(|p| &p.notes)
            .any(|n| n.contains("hotfix1 asked for: it is already built"))
    );
}

/// Guards against a resume that outlived the pause it lifted: it used to stay set, and then
/// resumed the next policy pause (deadline, missing data) at once.
#[test]
fn a_resume_that_lifts_an_operators_pause_is_used_up_and_named_in_the_transition() {
    let mut w = with_stable(8);
    w.push("c2");
    assert!(w.run_until(10, 100, |w| matches!(w.phase("dev"), Some(Phase::Canary { .. }))));
    w.ov("dev").pause = Some(actor());
    w.tick(10);
    assert!(matches!(
        w.phase("dev"),
        Some(Phase::Paused {
            by_operator: true,
            ..
        })
    ));
    // what the API's resume does: the pause goes, a resume one-shot comes
    w.ov("dev").pause = None;
    w.ov("dev").resume = Some(Actor {
        who: "bob".into(),
        reason: "graphs are fine".into(),
    });
    w.tick(10);
    assert!(
        matches!(w.phase("dev"), Some(Phase::Canary { .. })),
        "{:?}",
        w.phase("dev")
    );
    let t = w
        .transitions()
        .into_iter()
        .rev()
        .find(|t| t.from == Some(PhaseKind::Paused))
        .unwrap()
        .clone();
    assert!(
        matches!(&t.cause, Cause::Operator { action, actor } if *action == OperatorStep::Resume && actor.who == "bob"),
        "{:?}",
        t.cause
    );
    assert!(
        w.overrides.environments["dev"].resume.is_none(),
        "the resume lingers"
    );
}

/// The shop with strategies: dev judges on copies first (`shadow`), prod switches blue/green
/// (no gates, so a test need not approve).
fn strategies_spec(rollback_window: &str) -> PlanSpec {
    let service = SERVICE
        .replace(
            "{name: prod, controller: gated}",
            "{name: prod, controller: switch}",
        )
        .replace(
            "{name: dev, controller: quick}",
            "{name: dev, controller: copies}",
        );
    let copies = controller("copies", "strategy: {shadow: {mirror: {share: 50%}}}");
    let switch = format!(
        r#"
apiVersion: autopilot/v1
kind: Controller
name: switch
strategy: {{blueGreen: {{mirror: {{share: 100%}}, rollbackWindow: {rollback_window}}}}}
analysis: {{interval: 10s, falseRollbackRate: 1%, tolerance: 50%, minEvidence: {{requests: 500}}}}
progressDeadline: 2h
blastRadius: {{budget: 500}}
missingData: {{hold: 1m, then: rollback}}
"#
    );
    let steady = controller("steady", "");
    shop(&service, &[&copies, &steady, &switch])
}

fn strategies_with_stable(seed: u64, rollback_window: &str) -> World {
    let mut w = World::with_spec(seed, strategies_spec(rollback_window));
    w.push("c1");
    assert!(w.run_until(10, 500, |w| {
        w.state
            .environments
            .get("prod")
            .is_some_and(|e| e.stable.as_deref() == Some("r-c1"))
    }));
    w.plans.clear();
    w
}

/// The weights `release` was given in `env`, in order, each with the preview it was held at.
fn given(w: &World, env: &str, release: &str) -> Vec<(u8, Option<Preview>)> {
    w.plans
        .iter()
        .flat_map(|p| &p.actions)
        .filter_map(|a| match a {
            Action::SetWeights {
                environment,
                canary,
                canary_weight,
                preview,
                ..
            } if environment == env && canary == release => Some((canary_weight.0, preview.clone())),
            _ => None,
        })
        .collect()
}

/// [`given`], with whether it was held at its preview, and the mirror's share then.
fn weights_of(w: &World, env: &str, release: &str) -> Vec<(u8, Option<f64>)> {
    given(w, env, release)
        .into_iter()
        .map(|(weight, p)| (weight, p.map(|p| p.mirror.map_or(0.0, |m| m.share.fraction()))))
        .collect()
}

/// The transition in dev that took `release` from its held stage to the ramp (5%), the most
/// canary requests judged while it was held, and those judged at the ramp's first look.
fn left_the_held_stage(w: &World, release: &str) -> (Transition, u64, u64) {
    let ramped = w
        .transitions()
        .into_iter()
        .find(|t| t.environment == "dev" && t.release == release && t.weight.0 == 5)
        .unwrap()
        .clone();
    let judged = |weight: u8| {
        w.plans
            .iter()
            .flat_map(|p| &p.evidence)
            .filter(move |e| e.environment == "dev" && e.release == release && e.weight == weight)
            .map(|e| e.judgement.evidence.canary.total)
    };
    (ramped, judged(0).max().unwrap(), judged(5).next().unwrap())
}

#[test]
fn shadow_rolls_back_a_bad_release_on_copies_alone_and_ramps_a_good_one_judged_afresh() {
    let mut w = strategies_with_stable(31, "30m");
    roll_back_a_bad_release_in_dev(&mut w);
    // no user ever met it: held at its preview with half of stable's requests copied, then out
    let weights = weights_of(&w, "dev", "r-bad");
    assert_eq!(weights.first(), Some(&(0, Some(0.5))), "{weights:?}");
    assert!(weights.iter().all(|(weight, _)| *weight == 0), "{weights:?}");
    assert_eq!(
        weights.last(),
        Some(&(0, None)),
        "taken out of the route: {weights:?}"
    );

    w.plans.clear();
    w.push("good");
    assert!(w.run_until(10, 1000, |w| w.env("dev").stable.as_deref() == Some("r-good")));
    let weights = weights_of(&w, "dev", "r-good");
    assert_eq!(weights.first(), Some(&(0, Some(0.5))), "{weights:?}");
    assert!(
        weights.iter().any(|(weight, p)| *weight == 5 && p.is_none()),
        "then the ramp: {weights:?}"
    );
    let (afresh, promoted, first_live) = left_the_held_stage(&w, "r-good");
    assert!(
        matches!(&afresh.cause, Cause::SafeOnCopies { explanation, objectives } if explanation.contains("errors") && objectives.iter().all(|o| o.verdict == "safe")),
        "{afresh:?}"
    );
    // the users' evidence starts at the ramp: the judge that promoted it counted no copies
    assert!(
        first_live < promoted,
        "judged afresh: {first_live} live requests vs {promoted} copies"
    );
}

/// The strategies' shop with `r-c2` pushed and switched to in prod.
fn switched_to_c2(seed: u64, rollback_window: &str) -> World {
    let mut w = strategies_with_stable(seed, rollback_window);
    w.push("c2");
    assert!(w.run_until(10, 2000, |w| w.env("prod").stable.as_deref() == Some("r-c2")));
    w
}

/// Was `release` retired in prod by any plan so far?
fn retired_in_prod(w: &World, release: &str) -> bool {
    w.plans.iter().flat_map(|p| &p.actions).any(
        |a| matches!(a, Action::Retire { environment, release: r } if environment == "prod" && r == release),
    )
}

#[test]
fn blue_green_switches_at_once_keeps_the_previous_release_and_switches_back_in_one_step() {
    let mut w = switched_to_c2(32, "30m");
    // prod: held at its preview with every request copied, then all traffic at once
    let weights = weights_of(&w, "prod", "r-c2");
    assert_eq!(weights.first(), Some(&(0, Some(1.0))), "{weights:?}");
    assert!(
        weights.iter().all(|(weight, _)| *weight == 0 || *weight == 100),
        "no ramp: {weights:?}"
    );
    // the previous release still runs, for the rollback window
    assert!(!retired_in_prod(&w, "r-c1"));
    let kept = w.env("prod").previous.clone().expect("r-c1 kept");
    assert_eq!(kept.release, "r-c1");

    // an operator's rollback inside the window: one step back to r-c1
    w.run_until(10, 30, |_| false);
    w.ov("prod").rollback = Some(actor());
    let p = w.tick(10);
    let back = p
        .actions
        .iter()
        .find_map(|a| match a {
            Action::SetWeights {
                environment,
                stable,
                canary,
                canary_weight,
                ..
            } if environment == "prod" => Some((stable.clone(), canary.clone(), canary_weight.0)),
            _ => None,
        })
        .expect("the switch back");
    assert_eq!(
        back,
        (Some("r-c1".into()), "r-c2".into(), 0),
        "all traffic to r-c1 at once"
    );
    assert_eq!(w.env("prod").stable.as_deref(), Some("r-c1"));
    assert!(w.run_until(10, 20, |w| matches!(
        w.phase("prod"),
        Some(Phase::RolledBack { .. })
    )));
    assert!(retired_in_prod(&w, "r-c2") && !retired_in_prod(&w, "r-c1"));
    assert_eq!(w.env("prod").blocked.as_deref(), Some("r-c2"));
    assert!(
        w.overrides.environments["prod"].rollback.is_none(),
        "the one-shot is used up"
    );
}

#[test]
fn blue_green_retires_the_previous_release_when_its_window_ends() {
    let mut w = switched_to_c2(33, "5m");
    let switched = w.now;
    assert!(w.run_until(10, 100, |w| w.env("prod").previous.is_none()));
    assert!(w.now.since(switched) >= std::time::Duration::from_secs(300));
    assert!(retired_in_prod(&w, "r-c1"), "r-c1 retired after its window");
    // with the window over, a rollback has nothing to switch back to: refused up front
    let err = autopilot::control::overrides::apply(
        &w.state,
        &mut w.overrides.clone(),
        "prod",
        &autopilot::control::overrides::OverrideAction::Rollback,
        actor(),
        w.now,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no rollout in progress"), "{err}");
}

/// The shop with an A/B policy in dev: a tenth of the callers (the world's segment), half of
/// them to the release first; then the ramp, or (`ramp: false`) all traffic at once.
fn ab_with_stable(seed: u64, budget: u64, ramp: bool) -> World {
    let service = SERVICE.replace(
        "{name: dev, controller: quick}",
        "{name: dev, controller: staff-first}",
    );
    let staff_first = controller(
        "staff-first",
        "strategy: {abTest: {segment: {name: staff, match: [{header: {name: x-staff, value: '1'}}], share: 50%}}}",
    )
    .replace("blastRadius: {budget: 500}", &format!("blastRadius: {{budget: {budget}}}"));
    let staff_first = if ramp {
        staff_first
    } else {
        staff_first.replace("ramp: {steps: [5, 25, 50]}\n", "")
    };
    let steady = controller("steady", "");
    let gated = controller("gated", "");
    let mut w = World::with_spec(seed, shop(&service, &[&staff_first, &steady, &gated]));
    w.push("c1");
    assert!(w.run_until(10, 500, |w| {
        w.state
            .environments
            .get("prod")
            .is_some_and(|e| e.stable.as_deref() == Some("r-c1"))
    }));
    w.plans.clear();
    w
}

/// [`given`], with the segment's name and share (`None`: no segment).
fn segments_of(w: &World, env: &str, release: &str) -> Vec<(u8, Option<(String, f64)>)> {
    given(w, env, release)
        .into_iter()
        .map(|(weight, p)| {
            (
                weight,
                p.and_then(|p| p.segment).map(|s| (s.name, s.share.fraction())),
            )
        })
        .collect()
}

#[test]
fn ab_test_serves_its_segment_first_judged_against_the_segment_then_ramps_judged_anew() {
    let mut w = ab_with_stable(41, 500, true);
    w.push("good");
    assert!(w.run_until(10, 1000, |w| w.env("dev").stable.as_deref() == Some("r-good")));
    let given = segments_of(&w, "dev", "r-good");
    assert_eq!(
        given.first(),
        Some(&(0, Some(("staff".to_owned(), 0.5)))),
        "the segment first, at weight 0: {given:?}"
    );
    assert!(
        given.iter().any(|(weight, s)| *weight == 5 && s.is_none()),
        "then the ramp, for everyone: {given:?}"
    );
    let (ramped, in_segment, first_ramp) = left_the_held_stage(&w, "r-good");
    assert!(
        matches!(&ramped.cause, Cause::SafeInSegment { segment, objectives, .. } if segment == "staff" && objectives.iter().all(|o| o.verdict == "safe")),
        "{ramped:?}"
    );
    // judged anew on the ramp: the segment's evidence is not carried into everyone's
    assert!(
        first_ramp < in_segment,
        "judged anew: {first_ramp} requests on the ramp vs {in_segment} in the segment"
    );
}

#[test]
fn ab_test_rolls_back_a_bad_release_while_only_its_segment_meets_it() {
    let mut w = ab_with_stable(42, 500, true);
    roll_back_a_bad_release_in_dev(&mut w);
    let given = segments_of(&w, "dev", "r-bad");
    assert!(given.iter().all(|(weight, _)| *weight == 0), "{given:?}");
    assert_eq!(given.first().map(|g| g.1.is_some()), Some(true), "{given:?}");
    assert_eq!(
        given.last(),
        Some(&(0, None)),
        "taken out of the route: {given:?}"
    );
}

#[test]
fn ab_test_s_budget_counts_what_the_segment_was_served() {
    // a release twice as bad as stable, with a budget of 3 bad requests beyond stable's: the
    // segment's users are served, so the brake stops it at weight 0
    let mut w = ab_with_stable(43, 3, true);
    w.errors.insert("r-worse".into(), 2.0 * HEALTHY_ERRORS);
    w.push("worse");
    assert!(w.run_until(10, 300, |w| matches!(
        w.phase("dev"),
        Some(Phase::RolledBack { .. })
    )));
    let t = w.first_rollback();
    assert!(matches!(&t.cause, Cause::BlastRadius { budget: 3, .. }), "{t:?}");
    assert_eq!(t.weight.0, 0, "{t:?}");
}

#[test]
fn ab_test_without_a_ramp_switches_everyone_from_the_segment_at_once() {
    let mut w = ab_with_stable(44, 500, false);
    w.push("good");
    assert!(w.run_until(10, 1000, |w| w.env("dev").stable.as_deref() == Some("r-good")));
    let given = segments_of(&w, "dev", "r-good");
    assert!(
        given.iter().all(|(weight, _)| *weight == 0 || *weight == 100),
        "no ramp: {given:?}"
    );
    let switched = w
        .transitions()
        .into_iter()
        .find(|t| t.environment == "dev" && t.release == "r-good" && t.to == "promoting")
        .unwrap()
        .clone();
    assert!(
        matches!(&switched.cause, Cause::SafeInSegment { segment, .. } if segment == "staff"),
        "{switched:?}"
    );
}

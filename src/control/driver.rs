//! The driver: `sense -> plan -> actuate -> record`, and nothing else.
//!
//! One pass ticks *every* service: load each state, read every service's sensors in one call,
//! observe instances, routes and source events, `plan` each service, make one attempt at each
//! action, record the tick against the version loaded, and only then acknowledge the events
//! it used. Production plugs in real adapters; the simulator plugs in simulated ones, so a
//! replay runs exactly the code that runs in production.
//!
//! # Guarantees
//! - A failed observation is unknown (`None`) in [`Observed`], never zero or "not ready", and
//!   its error is in [`Tick::unobserved`] for the loop to say.
//! - Events are acknowledged only after the tick is recorded: a failed write loses nothing.
//! - The executor makes one attempt per action; `plan` is level-triggered, so the next tick
//!   plans again from what is observed and retries what is still needed.

use super::plan::{PlanSpec, plan};
pub use super::ports::PortError;
use super::ports::World;
use super::rollout::*;
use super::route::Route;
use super::time::Time;
use std::collections::BTreeMap;
use tracing::Instrument;

/// What one tick did for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub observed: Observed,
    pub plan: Plan,
    pub failures: Vec<(Action, PortError)>,
    /// What could not be observed this tick (the runtime's instances, the routes, the source
    /// events): unknown to `plan`, which holds on it, and said once by the loop while it lasts.
    pub unobserved: Vec<PortError>,
}

/// Runs one tick for every service. A service whose state cannot be loaded or recorded gets
/// its error; the others carry on.
pub async fn tick_all<W: World>(
    specs: &[PlanSpec],
    world: &mut W,
    now: Time,
) -> Vec<(String, Result<Tick, PortError>)> {
    // sense: the stored state of each service first (the sensors need the rollouts)
    let mut loaded = Vec::new();
    let mut out = Vec::new();
    for spec in specs {
        match world.load(&spec.service).await {
            Ok(l) => loaded.push((spec, l)),
            Err(e) => out.push((spec.service.clone(), Err(e))),
        }
    }
    let wanted: Vec<_> = loaded.iter().map(|(s, l)| (*s, &l.state)).collect();
    let mut readings = world.read(&wanted, now).await;
    for (spec, l) in loaded {
        let service = spec.service.as_str();
        let readings = readings.remove(service).unwrap_or_default();
        let span = tracing::info_span!("service", service = %service);
        let result = one_service(spec, l, readings, world, now).instrument(span).await;
        out.push((service.to_owned(), result));
    }
    out
}

/// Observes, plans, actuates and records one service whose state and readings are in hand.
async fn one_service<W: World>(
    spec: &PlanSpec,
    l: super::ports::Loaded,
    readings: super::ports::Readings,
    world: &mut W,
    now: Time,
) -> Result<Tick, PortError> {
    let service = spec.service.as_str();
    let mut unobserved = Vec::new();
    let readiness = world
        .instances(service)
        .await
        .map_err(|e| unobserved.push(e))
        .ok();
    let routes = world.routes(service).await.map_err(|e| unobserved.push(e)).ok();
    let events = world
        .events(service)
        .await
        .map_err(|e| unobserved.push(e))
        .unwrap_or_default();
    let observed = Observed {
        state: l.state,
        readiness,
        routes,
        readings,
        pushes: events.pushes,
        finished_builds: events.finished,
        requested_builds: events.requested,
    };
    // plan
    let plan = plan(spec, &observed, &l.overrides, now);
    // actuate
    let failures = execute(service, &plan, world).await;
    // record, then acknowledge what was used
    world.record(service, l.version, &plan, &failures).await?;
    if !events.cursor.is_empty() {
        // a failed ack only means the events come again (builds are idempotent)
        let _ = world.ack(service, &events.cursor).await;
    }
    Ok(Tick {
        observed,
        plan,
        failures,
        unobserved,
    })
}

/// Runs one tick for one service.
pub async fn tick<W: World>(spec: &PlanSpec, world: &mut W, now: Time) -> Result<Tick, PortError> {
    let mut results = tick_all(std::slice::from_ref(spec), world, now).await;
    results.pop().map_or_else(
        || Err(PortError::fatal("driver", "no service ticked")),
        |(_, r)| r,
    )
}

/// Makes one attempt at each action; returns the ones that failed.
pub async fn execute<W: World>(service: &str, plan: &Plan, world: &mut W) -> Vec<(Action, PortError)> {
    let releases: BTreeMap<&str, &Release> = plan.state.releases.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut failures = Vec::new();
    for action in &plan.actions {
        let result = match action {
            Action::StartBuild { commit, skipped } => world.start_build(service, commit, skipped).await,
            Action::Deploy { environment, release } => match releases.get(release.as_str()) {
                Some(r) => world.deploy(service, environment, r).await,
                None => Err(PortError::fatal(
                    "runtime",
                    format!("release `{release}` is not built"),
                )),
            },
            Action::SetWeights {
                environment,
                stable,
                canary,
                canary_weight,
                preview,
            } => {
                let route = Route::decide(stable.as_deref(), canary, *canary_weight, preview.as_ref());
                world.set_route(service, environment, &route).await
            }
            Action::Retire { environment, release } => world.retire(service, environment, release).await,
        };
        if let Err(e) = result {
            failures.push((action.clone(), e));
        }
    }
    failures
}

//! The driver: `sense -> plan -> actuate -> record`, and nothing else.
//!
//! Everything outside is behind [`Ports`]: the store (state, overrides, records), the sensors,
//! the runtime, the builder and the traffic router. Production plugs in real adapters; the
//! simulator plugs in simulated ones, so a replay runs exactly the code that runs in production.
//!
//! The executor makes one attempt per action and reports failures; since `plan` is
//! level-triggered, the next tick plans again from what is observed and retries what is still
//! needed.

use super::judge::Reading;
use super::plan::{PlanSpec, plan};
use super::rollout::*;
use super::time::Time;
use crate::spec::units::Weight;
use std::collections::BTreeMap;

/// Why a port could not do what was asked. `retryable` errors are tried again on the next tick.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{port}: {message}")]
pub struct PortError {
    pub port: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// Everything the driver needs from the outside world.
pub trait Ports {
    /// The service's stored state and the operators' overrides.
    fn load(&mut self, service: &str) -> Result<(ServiceState, Overrides), PortError>;
    /// Sensor readings for each environment's current rollout, per (environment, objective).
    fn read_sensors(
        &mut self,
        spec: &PlanSpec,
        state: &ServiceState,
        now: Time,
    ) -> BTreeMap<(String, String), Reading>;
    /// Instances per (environment, release).
    fn readiness(&mut self, service: &str) -> BTreeMap<(String, String), Readiness>;
    /// New pushes and finished builds since the last call.
    fn source_events(&mut self, service: &str) -> (Vec<String>, Vec<(String, BuildOutcome)>);

    fn start_build(&mut self, service: &str, commit: &str) -> Result<(), PortError>;
    fn deploy(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError>;
    fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError>;
    fn set_weights(
        &mut self,
        service: &str,
        environment: &str,
        stable: Option<&str>,
        canary: &str,
        canary_weight: Weight,
    ) -> Result<(), PortError>;
    fn clear_override(&mut self, service: &str, environment: &str, which: OneShot) -> Result<(), PortError>;

    /// Stores the new state and records the plan (transitions, evidence, actions, failures).
    fn record(
        &mut self,
        service: &str,
        plan: &Plan,
        failures: &[(Action, PortError)],
    ) -> Result<(), PortError>;
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub observed: Observed,
    pub plan: Plan,
    pub failures: Vec<(Action, PortError)>,
}

/// Runs one tick for one service.
pub fn tick<P: Ports + ?Sized>(spec: &PlanSpec, ports: &mut P, now: Time) -> Result<Tick, PortError> {
    let service = spec.service.as_str();
    // sense
    let (state, overrides) = ports.load(service)?;
    let readings = ports.read_sensors(spec, &state, now);
    let readiness = ports.readiness(service);
    let (pushes, finished_builds) = ports.source_events(service);
    let observed = Observed {
        state,
        readiness,
        readings,
        pushes,
        finished_builds,
    };
    // plan
    let plan = plan(spec, &observed, &overrides, now);
    // actuate
    let failures = execute(service, &plan.actions, ports);
    // record
    ports.record(service, &plan, &failures)?;
    Ok(Tick {
        observed,
        plan,
        failures,
    })
}

/// Makes one attempt at each action; returns the ones that failed.
pub fn execute<P: Ports + ?Sized>(
    service: &str,
    actions: &[Action],
    ports: &mut P,
) -> Vec<(Action, PortError)> {
    let mut failures = Vec::new();
    for action in actions {
        let result = match action {
            Action::StartBuild { commit } => ports.start_build(service, commit),
            Action::Deploy { environment, release } => ports.deploy(service, environment, release),
            Action::SetWeights {
                environment,
                stable,
                canary,
                canary_weight,
            } => ports.set_weights(service, environment, stable.as_deref(), canary, *canary_weight),
            Action::Retire { environment, release } => ports.retire(service, environment, release),
            Action::ClearOverride { environment, which } => {
                ports.clear_override(service, environment, *which)
            }
        };
        if let Err(e) = result {
            failures.push((action.clone(), e));
        }
    }
    failures
}

//! The ports: every outside thing the driver talks to, one small async trait per concern.
//!
//! | port | asks | answers |
//! |---|---|---|
//! | [`Store`] | load a service's state + overrides; record a tick in one transaction | state, version |
//! | [`Sensors`] | read every service's windows at once | counts, or missing (`None`) |
//! | [`Builder`] | what was pushed and built since the cursor; start a build | events, cursor |
//! | [`Runtime`] | ensure a release runs; retire it; its instances | readiness |
//! | [`Router`] | set an environment's weights; read back what is routed | routes |
//!
//! Real adapters live outside `control` (store, release, runtime, live); the simulator
//! implements every port on its virtual clock. Rules every adapter keeps:
//! - an observation can fail, and a failed one is *unknown* (`Err`, or `None` counts) — never
//!   zero requests, never "not ready"; `plan` holds on unknown;
//! - the world is observed, not remembered: [`Router::routes`] and [`Runtime::instances`]
//!   report what *is*, not what was asked for;
//! - events are acknowledged ([`Builder::ack`]) only after the tick that used them is recorded;
//! - [`Store::record`] takes the version [`Store::load`] returned and refuses another, so two
//!   writers never interleave.
//!
//! The traits use plain `async fn` (no boxing): the driver is generic over them and runs on one
//! task, so the futures need not be `Send`.
#![allow(async_fn_in_trait)]

use super::judge::Reading;
use super::rollout::*;
use super::spec::PlanSpec;
use super::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a port could not do what was asked. `retryable` errors are tried again on the next tick.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{port}: {message}")]
pub struct PortError {
    pub port: String,
    pub message: String,
    pub retryable: bool,
}

impl PortError {
    /// A failure worth trying again on the next tick.
    pub fn retry(port: &str, message: impl Into<String>) -> PortError {
        PortError {
            port: port.to_owned(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will not go away by itself.
    pub fn fatal(port: &str, message: impl Into<String>) -> PortError {
        PortError {
            port: port.to_owned(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// A service's stored state, overrides, and the version a [`Store::record`] must name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Loaded {
    pub state: ServiceState,
    pub overrides: Overrides,
    pub version: u64,
}

/// Pushes and finished builds since the last acknowledged cursor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceEvents {
    /// Commits pushed to the branch, oldest first.
    pub pushes: Vec<String>,
    /// Builds that ended, by commit.
    pub finished: Vec<(String, BuildOutcome)>,
    /// Commits an operator asked to build (a hotfix on another branch, a rebuild), in order.
    pub requested: Vec<String>,
    /// Acknowledge this once the tick is recorded; the same events come again until then.
    pub cursor: String,
}

/// Readiness per (environment, release).
pub type Instances = BTreeMap<(String, String), Readiness>;

/// Sensor readings per (environment, objective).
pub type Readings = BTreeMap<(String, String), Reading>;

/// The store: state that must survive a crash.
pub trait Store {
    /// The service's state, overrides and version (a new service: empty state, version 0).
    async fn load(&mut self, service: &str) -> Result<Loaded, PortError>;
    /// Records one tick in one transaction: the new state, the transitions, the evidence, the
    /// actions' failures, and the lifting of the one-shot overrides the plan carried out
    /// ([`Plan::consumed`]). Refused (not retryable) if the stored version is not `version`:
    /// another writer got there first, and nothing of the plan is kept, the operator's
    /// one-shot request included.
    async fn record(
        &mut self,
        service: &str,
        version: u64,
        plan: &Plan,
        failures: &[(Action, PortError)],
    ) -> Result<(), PortError>;
}

/// The sensors: every service's readings in one call, so an adapter can batch its queries.
pub trait Sensors {
    /// Readings for each service's environments and objectives (the canary and stable of each
    /// environment's current rollout, cumulative since the rollout started). A reading that
    /// could not be taken has `None` arms; it is never zero.
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        now: Time,
    ) -> BTreeMap<String, Readings>;
}

/// The builder: what was pushed, and builds of commits into releases.
pub trait Builder {
    /// Pushes and finished builds since the last acknowledged cursor.
    async fn events(&mut self, service: &str) -> Result<SourceEvents, PortError>;
    /// Marks the events up to `cursor` as used.
    async fn ack(&mut self, service: &str, cursor: &str) -> Result<(), PortError>;
    /// Starts a build of `commit` (a no-op if it is built or building already); `skipped` are
    /// the pushed commits it makes moot, for its history.
    async fn start_build(&mut self, service: &str, commit: &str, skipped: &[String])
    -> Result<(), PortError>;
}

/// The runtime: instances of releases.
pub trait Runtime {
    /// The instances of every release of the service, as they are now.
    async fn instances(&mut self, service: &str) -> Result<Instances, PortError>;
    /// Ensures `release` runs in `environment` (idempotent).
    async fn deploy(&mut self, service: &str, environment: &str, release: &Release) -> Result<(), PortError>;
    /// Stops `release` in `environment` (idempotent).
    async fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError>;
}

pub use super::route::{Route, RouteWeights};

/// The traffic router.
pub trait Router {
    /// What each environment of the service routes now.
    async fn routes(&mut self, service: &str) -> Result<BTreeMap<String, RouteWeights>, PortError>;
    /// Serves `route` in the environment (decided by [`Route::decide`]; the router carries it
    /// out as it is).
    async fn set_route(&mut self, service: &str, environment: &str, route: &Route) -> Result<(), PortError>;
}

/// One adapter per port, bundled: the driver's view of the world.
#[derive(Debug)]
pub struct Ports<St, Se, Bu, Ru, Ro> {
    pub store: St,
    pub sensors: Se,
    pub builder: Bu,
    pub runtime: Ru,
    pub router: Ro,
}

/// Everything the driver needs, as one bound.
pub trait World: Store + Sensors + Builder + Runtime + Router {}
impl<T: Store + Sensors + Builder + Runtime + Router> World for T {}

impl<St: Store, Se, Bu, Ru, Ro> Store for Ports<St, Se, Bu, Ru, Ro> {
    async fn load(&mut self, service: &str) -> Result<Loaded, PortError> {
        self.store.load(service).await
    }
    async fn record(
        &mut self,
        service: &str,
        version: u64,
        plan: &Plan,
        failures: &[(Action, PortError)],
    ) -> Result<(), PortError> {
        self.store.record(service, version, plan, failures).await
    }
}

impl<St, Se: Sensors, Bu, Ru, Ro> Sensors for Ports<St, Se, Bu, Ru, Ro> {
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        now: Time,
    ) -> BTreeMap<String, Readings> {
        self.sensors.read(services, now).await
    }
}

impl<St, Se, Bu: Builder, Ru, Ro> Builder for Ports<St, Se, Bu, Ru, Ro> {
    async fn events(&mut self, service: &str) -> Result<SourceEvents, PortError> {
        self.builder.events(service).await
    }
    async fn ack(&mut self, service: &str, cursor: &str) -> Result<(), PortError> {
        self.builder.ack(service, cursor).await
    }
    async fn start_build(
        &mut self,
        service: &str,
        commit: &str,
        skipped: &[String],
    ) -> Result<(), PortError> {
        self.builder.start_build(service, commit, skipped).await
    }
}

impl<St, Se, Bu, Ru: Runtime, Ro> Runtime for Ports<St, Se, Bu, Ru, Ro> {
    async fn instances(&mut self, service: &str) -> Result<Instances, PortError> {
        self.runtime.instances(service).await
    }
    async fn deploy(&mut self, service: &str, environment: &str, release: &Release) -> Result<(), PortError> {
        self.runtime.deploy(service, environment, release).await
    }
    async fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        self.runtime.retire(service, environment, release).await
    }
}

impl<St, Se, Bu, Ru, Ro: Router> Router for Ports<St, Se, Bu, Ru, Ro> {
    async fn routes(&mut self, service: &str) -> Result<BTreeMap<String, RouteWeights>, PortError> {
        self.router.routes(service).await
    }
    async fn set_route(&mut self, service: &str, environment: &str, route: &Route) -> Result<(), PortError> {
        self.router.set_route(service, environment, route).await
    }
}

//! The pure core: the canary judge, the rollout state machine and `plan`.
//!
//! `plan(spec, observed, overrides, now) -> Plan` decides; it performs no I/O, reads no clock
//! and draws no unseeded random numbers. Adapters (sensors, proxy, runtime, store) feed it
//! observations and carry out the `Plan` it returns. Nothing here imports an adapter.

pub mod announce;
pub mod builds;
pub mod counters;
pub mod driver;
pub mod gates;
pub mod judge;
pub mod overrides;
pub mod plan;
pub mod ports;
pub mod ramp;
pub mod rollout;
pub mod route;
pub mod spec;
pub mod time;
pub mod traffic;
pub mod wake;
pub mod watch;

pub use plan::{PlanSpec, plan};
pub use rollout::{Action, Observed, Overrides, Phase, Plan};

//! autopilot: a progressive-delivery autopilot.
//!
//! Teams declare in YAML what a healthy service looks like (objectives), how to observe it
//! (sensors) and how changes may move (controllers); autopilot builds, pins, rolls out, judges
//! and promotes or rolls back on its own.
//!
//! # Layout
//! Dependencies point one way, toward the pure core:
//! - [`spec`]: the ground floor. The YAML language (objectives, sensors, controllers), its
//!   units, its JSON Schemas, and the loader that reports every mistake with `file:line:column`.
//! - `control` (judge, plan, route, wake, announce): every decision, pure, on top of `spec`;
//!   no I/O, no clock. Production and the simulator call the same functions.
//! - `report`: the words and the chart both worlds show; `clock`: the wall clock for adapters.
//! - adapters (proxy, sensors, store, runtime, release, api, sim) sit above and do the I/O;
//!   `app` puts the API and the pages on one listener; `live` wires the real ports for `up`.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod control;
pub mod live;
pub mod net;
pub mod prom;
pub mod proxy;
pub mod release;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod spec;
pub mod store;
pub mod terminal;
pub mod web;

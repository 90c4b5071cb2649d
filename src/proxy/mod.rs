//! The reverse proxy: routes `{service}.{environment}.{domain}` (and
//! `{release}.{service}.{environment}.{domain}`) to the right release by weight, header match
//! and stickiness, only to ready upstreams, with forwarding headers and per-release metrics.
//!
//! - [`routes`]: the routing snapshot and the split decision (pure, unit-tested).
//! - [`metrics`]: per-release counters, Prometheus text, in-process sensor counts.
//! - [`server`]: the Pingora service, the readiness prober, routes-file reloading and the admin
//!   listener, started on their own threads with a shutdown handle.

pub mod admin;
pub mod auth;
pub mod floor;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod tls;

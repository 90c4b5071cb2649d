//! The reverse proxy: routes `{service}.{environment}.{domain}` (and
//! `{release}.{service}.{environment}.{domain}`) to the right release by weight, header match
//! and stickiness, only to ready upstreams, with forwarding headers and per-release metrics.
//!
//! - [`routes`]: the routing snapshot and the split decision (pure, unit-tested).
//! - [`metrics`]: per-release counters, Prometheus text, in-process sensor counts.
//! - [`server`]: the lifecycle: the Pingora service and the admin listener started on their own
//!   threads, and stopped through one handle.
//! - [`state`]: what the request path, the admin API and the background loops share.
//! - [`request`]: the request path, with the forwarding-header rules as a pure function.
//! - [`background`]: the readiness prober, the JWKS fetcher, the routes-file reloader.
//! - [`mirror`]: shadow traffic: copies of live requests sent to a release that serves no one.

pub mod admin;
pub mod auth;
pub mod background;
pub mod metrics;
pub mod mirror;
pub mod request;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;

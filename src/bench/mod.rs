//! The benchmarks (`autopilot bench …`, BENCHMARKS.md): part of the command line, not of the
//! product's library. Each measures the product through its public interface next to a
//! reference measured in the same run, and writes its figures under `target/bench/`.
//!
//! - [`detection`]: the judge against its peers on seeded streams (§1).
//! - [`prom`]: the control loop at scale with a real Prometheus (§3).
//! - [`api`]: the API's latency on both stores.
//! - [`release`]: a large artifact through a real registry, and the build webhook.
//! - [`load`]: an open-loop HTTP load generator (the proxy benchmark's fixed rates).
//! - [`pingora_floor`]: bare Pingora, the proxy benchmark's reference.

pub mod api;
pub mod detection;
pub mod load;
pub mod pingora_floor;
pub mod prom;
pub mod release;

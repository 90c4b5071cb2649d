//! `autopilot sensors check`: a dry run of the analysis. Per objective and per live release of
//! one environment, the bad and total counts and the rate autopilot reads from Prometheus right
//! now, the PromQL it ran, and — when something is missing — the reason. Nothing starts,
//! nothing is written. (Flagger and Argo Rollouts users ask for exactly this: try the
//! analysis without a rollout.)

use super::{PromSensors, PromSettings};
use crate::control::judge::{Counts, Missing};
use crate::control::plan::PlanSpec;
use crate::control::ports::Sensors;
use crate::control::rollout::{EnvState, Phase, Rollout, ServiceState};
use crate::control::time::Time;
use crate::spec::Catalog;
use crate::spec::sensors::SensorSource;
use crate::spec::units::Weight;
use serde::Serialize;
use std::fmt::Write as _;

/// Which releases to read, and since when.
#[derive(Debug, Clone)]
pub struct Releases {
    /// The canary (none: only stable is read).
    pub canary: Option<String>,
    pub stable: Option<String>,
    /// Counts start here (the rollout's start).
    pub since: Time,
    /// Where these came from, for people ("the store's rollout", "--canary").
    pub origin: String,
}

impl Releases {
    /// The environment's live rollout in the store's state, if any; else its stable release.
    pub fn from_state(state: &ServiceState, env: &str, fallback_since: Time) -> Option<Releases> {
        let st = state.environments.get(env)?;
        match st.rollout.as_ref().filter(|r| !r.phase.is_finished()) {
            Some(r) => Some(Releases {
                canary: Some(r.release.clone()),
                stable: st.stable.clone().filter(|s| *s != r.release),
                since: r.started_at,
                origin: format!("the store: a rollout {} since {}", r.phase.name(), r.started_at),
            }),
            None => st.stable.as_ref().map(|s| Releases {
                canary: None,
                stable: Some(s.clone()),
                since: fallback_since,
                origin: "the store: no rollout runs; stable only".into(),
            }),
        }
    }
}

/// One arm of one objective.
#[derive(Debug, Clone, Serialize)]
pub struct ArmRow {
    pub arm: &'static str,
    pub release: String,
    pub counts: Option<Counts>,
    /// bad/total, when there is a total.
    pub rate: Option<f64>,
    pub missing: Option<String>,
}

/// One objective.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectiveRow {
    pub objective: String,
    pub sensor: String,
    pub target: String,
    pub arms: Vec<ArmRow>,
    /// The PromQL run for it this time (for batched sensors, shared with every objective using
    /// the same sensor).
    pub promql: Vec<String>,
    /// Why it was not read here.
    pub note: Option<String>,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub service: String,
    pub environment: String,
    pub prometheus: String,
    pub since: String,
    pub origin: String,
    pub objectives: Vec<ObjectiveRow>,
    pub queries: usize,
}

impl CheckReport {
    /// Whether every objective read by Prometheus had data for every arm.
    pub fn complete(&self) -> bool {
        self.objectives
            .iter()
            .filter(|o| o.note.is_none())
            .all(|o| o.arms.iter().all(|a| a.counts.is_some()))
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} · {} · counted since {} ({})\nPrometheus {} · {} quer{} this read\n",
            self.service,
            self.environment,
            self.since,
            self.origin,
            self.prometheus,
            self.queries,
            if self.queries == 1 { "y" } else { "ies" }
        );
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:<7} {:<14} {:>10} {:>12} {:>9}",
            "OBJECTIVE", "SENSOR", "ARM", "RELEASE", "BAD", "TOTAL", "RATE"
        );
        for o in &self.objectives {
            if let Some(note) = &o.note {
                let _ = writeln!(out, "{:<16} {:<20} {note}", o.objective, o.sensor);
                continue;
            }
            for (i, a) in o.arms.iter().enumerate() {
                let (obj, sensor) = if i == 0 {
                    (o.objective.as_str(), o.sensor.as_str())
                } else {
                    ("", "")
                };
                match (&a.counts, &a.missing) {
                    (Some(c), _) => {
                        let rate = a.rate.map_or("-".to_owned(), |r| format!("{:.3}%", 100.0 * r));
                        let _ = writeln!(
                            out,
                            "{obj:<16} {sensor:<20} {:<7} {:<14} {:>10} {:>12} {:>9}",
                            a.arm, a.release, c.bad, c.total, rate
                        );
                    }
                    (None, why) => {
                        let _ = writeln!(
                            out,
                            "{obj:<16} {sensor:<20} {:<7} {:<14} missing: {}",
                            a.arm,
                            a.release,
                            why.as_deref().unwrap_or("unknown")
                        );
                    }
                }
            }
        }
        let mut shown = std::collections::BTreeSet::new();
        let _ = writeln!(out, "\nPromQL:");
        for o in &self.objectives {
            for q in &o.promql {
                if shown.insert(q.clone()) {
                    let _ = writeln!(out, "  [{}] {q}", o.sensor);
                }
            }
        }
        out
    }
}

/// Reads every objective of `service` in `environment` once.
pub async fn check(
    catalog: &Catalog,
    service: &str,
    environment: &str,
    settings: &PromSettings,
    releases: &Releases,
    now: Time,
) -> Result<CheckReport, String> {
    let spec =
        PlanSpec::resolve(catalog, service).ok_or_else(|| format!("no service `{service}` in the specs"))?;
    let svc = &catalog.services[service];
    let mut sensors = PromSensors::new(settings, catalog)?;
    // the releases as a rollout, so the adapter reads them exactly as the loop would
    let (release, stable) = match (&releases.canary, &releases.stable) {
        (Some(c), s) => (c.clone(), s.clone()),
        (None, Some(s)) => (s.clone(), None),
        (None, None) => {
            return Err(format!(
                "nothing runs in {environment}: name a release with --canary"
            ));
        }
    };
    let mut state = ServiceState::default();
    state.environments.insert(
        environment.to_owned(),
        EnvState {
            stable: stable.clone(),
            stable_since: None,
            rollout: Some(Rollout {
                release: release.clone(),
                phase: Phase::Canary {
                    step: 0,
                    weight: Weight(0),
                    since: releases.since,
                },
                started_at: releases.since,
                judges: Default::default(),
                watches: Default::default(),
                excess_bad: 0.0,
            }),
            blocked: None,
            previous: None,
        },
    );
    let readings = sensors.read(&[(&spec, &state)], now).await;
    let readings = readings.get(service).cloned().unwrap_or_default();
    let first_arm = if releases.canary.is_some() {
        "canary"
    } else {
        "stable"
    };
    let mut objectives = Vec::new();
    for o in &svc.objectives {
        let source = catalog.sensors.get(&o.sensor).map(|s| &s.source);
        let note = match source {
            Some(SensorSource::Proxy(_)) => Some(
                "the proxy's own counters: read by `autopilot up` in process, not from Prometheus".to_owned(),
            ),
            None => Some("unknown sensor".to_owned()),
            _ => None,
        };
        let promql: Vec<String> = sensors
            .last_queries
            .iter()
            .filter(|q| q.sensor == o.sensor || q.sensor == o.name)
            .map(|q| match &q.outcome {
                Ok(n) => format!("{}  → {n} series", q.promql),
                Err(e) => format!("{}  → error: {e}", q.promql),
            })
            .collect();
        let reading = readings.get(&(environment.to_owned(), o.name.clone())).copied();
        let mut arms = Vec::new();
        if note.is_none() {
            let reading = reading.unwrap_or_default();
            let row = |arm: &'static str, release: &str, c: Option<Counts>| {
                let own = sensors
                    .last_arms
                    .get(&(
                        service.to_owned(),
                        environment.to_owned(),
                        o.name.clone(),
                        release.to_owned(),
                    ))
                    .and_then(|r| r.err());
                ArmRow {
                    arm,
                    release: release.to_owned(),
                    counts: c,
                    rate: c.filter(|c| c.total > 0).map(|c| c.bad as f64 / c.total as f64),
                    missing: c
                        .is_none()
                        .then(|| own.or(reading.missing).unwrap_or(Missing::QueryError).to_string()),
                }
            };
            arms.push(row(first_arm, &release, reading.canary));
            if let Some(s) = &stable {
                arms.push(row("stable", s, reading.stable));
            }
        }
        objectives.push(ObjectiveRow {
            objective: o.name.clone(),
            sensor: o.sensor.clone(),
            target: o.target.to_string(),
            arms,
            promql,
            note,
        });
    }
    Ok(CheckReport {
        service: service.to_owned(),
        environment: environment.to_owned(),
        prometheus: settings.url.clone(),
        since: releases.since.to_string(),
        origin: releases.origin.clone(),
        objectives,
        queries: sensors.queries_total as usize,
    })
}

/// Finds the service a command names: a service file (`objectives/checkout.yaml`) or a name.
pub fn service_named(catalog: &Catalog, given: &str) -> Result<String, String> {
    if catalog.services.contains_key(given) {
        return Ok(given.to_owned());
    }
    let wanted = std::fs::canonicalize(given).ok();
    for (name, file) in &catalog.service_files {
        if wanted.is_some() && std::fs::canonicalize(file).ok() == wanted {
            return Ok(name.clone());
        }
    }
    let names: Vec<&str> = catalog.services.keys().map(String::as_str).collect();
    Err(format!(
        "`{given}` is neither a service file in the specs nor a service name (services: {})",
        names.join(", ")
    ))
}

/// Checks the environment exists; says which do when it does not.
pub fn environment_of(catalog: &Catalog, service: &str, env: &str) -> Result<(), String> {
    let svc = &catalog.services[service];
    if svc.environments.iter().any(|e| e.name == env) {
        return Ok(());
    }
    let names: Vec<&str> = svc.environments.iter().map(|e| e.name.as_str()).collect();
    let hint = crate::spec::yaml::closest(env, names.iter().copied())
        .map(|c| format!("did you mean `{c}`? "))
        .unwrap_or_default();
    Err(format!(
        "{service} has no environment `{env}`: {hint}(environments: {})",
        names.join(", ")
    ))
}

//! What to announce: the notifications a tick's plan calls for, decided from typed transitions
//! (a rollback, a promotion, a rollout stuck past its deadline) and from the state (a release
//! waiting for approval, announced once). Sending them is an adapter's work (`live::notify`);
//! deciding them is here, so the simulator and production announce the same things.

use super::rollout::{Cause, Phase, PhaseKind, Plan};
use super::time::Time;
use crate::spec::units::Weight;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationEvent {
    Rollback,
    Promotion,
    Approval,
    Stuck,
}

impl NotificationEvent {
    pub fn name(&self) -> &'static str {
        match self {
            NotificationEvent::Rollback => "rollback",
            NotificationEvent::Promotion => "promotion",
            NotificationEvent::Approval => "approval",
            NotificationEvent::Stuck => "stuck",
        }
    }
}

/// What happened, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: NotificationEvent,
    pub service: String,
    pub environment: String,
    pub release: String,
    /// The canary's weight after the transition (a stuck rollout's paused weight).
    pub weight: Weight,
    /// Why (a rollback's cause).
    pub cause: Option<Cause>,
    /// What an approval waits on (the gate's words).
    pub waiting_on: Option<String>,
    pub at: Time,
}

/// The events in one tick's plan. `seen` remembers approvals already announced.
pub fn events(service: &str, plan: &Plan, seen: &mut HashSet<(String, String, String)>) -> Vec<Event> {
    let mut out = Vec::new();
    for t in &plan.transitions {
        let kind = match (t.to, &t.cause) {
            (PhaseKind::RolledBack, _) => NotificationEvent::Rollback,
            (PhaseKind::Promoted, _) => NotificationEvent::Promotion,
            (PhaseKind::Paused, Cause::Deadline) => NotificationEvent::Stuck,
            _ => continue,
        };
        out.push(Event {
            kind,
            service: service.to_owned(),
            environment: t.environment.clone(),
            release: t.release.clone(),
            weight: t.weight,
            cause: Some(t.cause.clone()),
            waiting_on: None,
            at: t.at,
        });
    }
    for (env, st) in &plan.state.environments {
        if let Some(r) = &st.rollout
            && let Phase::Waiting { on, since } = &r.phase
            && on.contains("approval")
            && seen.insert((service.to_owned(), env.clone(), r.release.clone()))
        {
            out.push(Event {
                kind: NotificationEvent::Approval,
                service: service.to_owned(),
                environment: env.clone(),
                release: r.release.clone(),
                weight: r.phase.weight(),
                cause: None,
                waiting_on: Some(on.clone()),
                at: *since,
            });
        }
    }
    out
}

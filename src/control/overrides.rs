//! Operator actions on a service's [`Overrides`]: what each one changes, and when it makes no
//! sense (a conflict the API answers with 409). Pure: the API and the simulator apply actions
//! through here, and `plan` reads the result.
//!
//! Standing actions (pause, weight, pin, freeze) win over the controller until lifted (resume,
//! clear weight, unpin, unfreeze); one-shots (promote, rollback, resume) are cleared by `plan`
//! once carried out. Applying the same standing action twice changes nothing the second time.

use super::gates::Approval;
use super::rollout::{Actor, EnvState, Overrides, Phase, ServiceState};
use super::time::Time;
use crate::spec::units::Weight;
use serde::{Deserialize, Serialize};

/// One operator action on one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OverrideAction {
    /// Hold the ramp where it is; a regression or a spent budget still stops the rollout.
    Pause,
    /// Hold the canary even through a regression or a spent budget (said loudly every look).
    PauseRegardless,
    /// Lift a pause (an operator's or a policy's), or the block a rollback left.
    Resume,
    Promote,
    Rollback,
    /// Hold the canary at this weight.
    Weight(Weight),
    /// Stop holding the weight.
    ClearWeight,
    /// Keep the environment on this release.
    Pin(String),
    Unpin,
    Freeze,
    Unfreeze,
    /// Approve a release (the one waiting, when `None`) as a member of these groups.
    Approve {
        release: Option<String>,
        groups: Vec<String>,
    },
}

impl OverrideAction {
    /// The action's name in records and the API.
    pub fn name(&self) -> &'static str {
        match self {
            OverrideAction::Pause => "pause",
            OverrideAction::PauseRegardless => "pause-regardless",
            OverrideAction::Resume => "resume",
            OverrideAction::Promote => "promote",
            OverrideAction::Rollback => "rollback",
            OverrideAction::Weight(_) => "weight",
            OverrideAction::ClearWeight => "clear-weight",
            OverrideAction::Pin(_) => "pin",
            OverrideAction::Unpin => "unpin",
            OverrideAction::Freeze => "freeze",
            OverrideAction::Unfreeze => "unfreeze",
            OverrideAction::Approve { .. } => "approve",
        }
    }
}

/// Why an action cannot be applied now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The action contradicts the environment's state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The action names a release the service never built (HTTP 404).
    #[error("release `{0}` is not a release of this service")]
    UnknownRelease(String),
}

/// What applying an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The release the action concerns, if any (for the audit trail).
    pub release: Option<String>,
    /// False when the override was already in place (a repeated standing action).
    pub changed: bool,
}

fn active(env: &EnvState) -> Option<(&str, &Phase)> {
    env.rollout
        .as_ref()
        .filter(|r| !r.phase.is_finished())
        .map(|r| (r.release.as_str(), &r.phase))
}

/// Applies `action` to `environment`'s overrides after checking it against the state; nothing
/// changes when it is refused.
pub fn apply(
    state: &ServiceState,
    overrides: &mut Overrides,
    environment: &str,
    action: &OverrideAction,
    actor: Actor,
    now: Time,
) -> Result<Applied, Refused> {
    let mut next = overrides.clone();
    let applied = apply_to(state, &mut next, environment, action, actor, now)?;
    *overrides = next;
    Ok(applied)
}

/// After a blue/green switch, within its rollback window: the previous release still runs,
/// and the switched-to one is stable by the last rollout.
pub fn can_switch_back(env: &EnvState) -> bool {
    env.previous.is_some()
        && env.rollout.as_ref().is_some_and(|r| {
            matches!(r.phase, Phase::Promoted { .. }) && env.stable.as_deref() == Some(r.release.as_str())
        })
}

fn apply_to(
    state: &ServiceState,
    overrides: &mut Overrides,
    environment: &str,
    action: &OverrideAction,
    actor: Actor,
    now: Time,
) -> Result<Applied, Refused> {
    let none = EnvState::default();
    let env = state.environments.get(environment).unwrap_or(&none);
    let rollout = active(env);
    let last = env.rollout.as_ref().map(|r| (r.release.as_str(), r.phase.name()));
    let nothing = |what: &str| {
        Refused::Conflict(match last {
            Some((release, phase)) => format!(
                "no rollout in progress in {environment} to {what} (the last one, {release}, is {phase})"
            ),
            None => format!("no rollout in progress in {environment} to {what}"),
        })
    };
    let release = rollout.map(|(r, _)| r.to_owned());
    let o = overrides.environments.entry(environment.to_owned()).or_default();
    let changed = match action {
        OverrideAction::Pause | OverrideAction::PauseRegardless => {
            rollout.ok_or_else(|| nothing("pause"))?;
            let regardless = *action == OverrideAction::PauseRegardless;
            let changed = o.pause.is_none() || o.pause_regardless != regardless;
            o.pause.get_or_insert(actor);
            o.pause_regardless = regardless;
            changed
        }
        OverrideAction::Resume => {
            let policy_paused = matches!(rollout, Some((_, Phase::Paused { .. })));
            let blocked = rollout.is_none() && env.blocked.is_some();
            if o.pause.is_none() && !policy_paused && !blocked {
                return Err(Refused::Conflict(format!(
                    "nothing to resume in {environment}: no rollout is paused and no rollback blocks it"
                )));
            }
            let changed = o.pause.is_some() || o.resume.is_none();
            o.pause = None;
            o.pause_regardless = false;
            o.resume.get_or_insert(actor);
            changed
        }
        OverrideAction::Rollback if rollout.is_none() && can_switch_back(env) => {
            // blue/green, within its rollback window: all traffic back to the previous release
            if let Some(a) = &o.promote {
                return Err(Refused::Conflict(format!(
                    "a promote by {} is already waiting to be carried out in {environment}",
                    a.who
                )));
            }
            let changed = o.rollback.is_none();
            o.rollback.get_or_insert(actor);
            changed
        }
        OverrideAction::Promote | OverrideAction::Rollback => {
            let verb = action.name();
            let (_, phase) = rollout.ok_or_else(|| nothing(verb))?;
            if !matches!(
                phase,
                Phase::Deploying { .. } | Phase::Canary { .. } | Phase::Paused { .. }
            ) {
                return Err(Refused::Conflict(format!(
                    "the rollout of {} in {environment} is {}: only a deploying, canary or paused rollout can be {}",
                    release.as_deref().unwrap_or_default(),
                    phase.name(),
                    if verb == "promote" {
                        "promoted"
                    } else {
                        "rolled back"
                    }
                )));
            }
            let other = if verb == "promote" {
                &o.rollback
            } else {
                &o.promote
            };
            if let Some(a) = other {
                return Err(Refused::Conflict(format!(
                    "a {} by {} is already waiting to be carried out in {environment}",
                    if verb == "promote" { "rollback" } else { "promote" },
                    a.who
                )));
            }
            let slot = if verb == "promote" {
                &mut o.promote
            } else {
                &mut o.rollback
            };
            let changed = slot.is_none();
            slot.get_or_insert(actor);
            changed
        }
        OverrideAction::Weight(w) => {
            rollout.ok_or_else(|| nothing("hold at a weight"))?;
            let changed = o.weight.as_ref().map(|(x, _)| x) != Some(w);
            o.weight = Some((*w, actor));
            changed
        }
        OverrideAction::ClearWeight => o.weight.take().is_some(),
        OverrideAction::Pin(r) => {
            if state.order(r).is_none() {
                return Err(Refused::UnknownRelease(r.clone()));
            }
            let changed = o.pin.as_ref().map(|(x, _)| x) != Some(r);
            o.pin = Some((r.clone(), actor));
            return Ok(Applied {
                release: Some(r.clone()),
                changed,
            });
        }
        OverrideAction::Unpin => o.pin.take().is_some(),
        OverrideAction::Freeze => {
            let changed = o.freeze.is_none();
            o.freeze.get_or_insert(actor);
            changed
        }
        OverrideAction::Unfreeze => o.freeze.take().is_some(),
        OverrideAction::Approve {
            release: named,
            groups,
        } => {
            let waiting = match rollout {
                Some((r, Phase::Waiting { .. })) => Some(r.to_owned()),
                _ => None,
            };
            let target = match (named, waiting) {
                (Some(r), _) => {
                    if state.order(r).is_none() {
                        return Err(Refused::UnknownRelease(r.clone()));
                    }
                    r.clone()
                }
                (None, Some(w)) => w,
                (None, None) => {
                    return Err(Refused::Conflict(format!(
                        "nothing waits for approval in {environment}; name the release to approve ahead"
                    )));
                }
            };
            let already = overrides
                .approvals
                .iter()
                .any(|a| a.release == target && a.environment == environment && a.by == actor.who);
            if !already {
                overrides.approvals.push(Approval {
                    release: target.clone(),
                    environment: environment.to_owned(),
                    by: actor.who,
                    groups: groups.clone(),
                    at: now,
                });
            }
            return Ok(Applied {
                release: Some(target),
                changed: !already,
            });
        }
    };
    Ok(Applied { release, changed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{Release, Rollout};

    fn actor() -> Actor {
        Actor {
            who: "ann".into(),
            reason: "test".into(),
        }
    }

    fn state(phase: Option<Phase>) -> ServiceState {
        let mut s = ServiceState::default();
        for id in ["r1", "r2"] {
            s.releases.push(Release {
                id: id.into(),
                commit: format!("c{id}"),
                digest: format!("sha256:{id}"),
            });
        }
        let env = s.environments.entry("prod".into()).or_default();
        env.stable = Some("r1".into());
        env.rollout = phase.map(|phase| Rollout::new("r2", phase, Time::ZERO));
        s
    }

    fn canary() -> Phase {
        Phase::Canary {
            step: 0,
            weight: Weight(10),
            since: Time::ZERO,
        }
    }

    #[test]
    fn promoting_a_rolled_back_release_is_a_conflict_and_changes_nothing() {
        let s = state(Some(Phase::RolledBack {
            reason: "bad".into(),
            at: Time::ZERO,
        }));
        let mut o = Overrides::default();
        let err = apply(&s, &mut o, "prod", &OverrideAction::Promote, actor(), Time::ZERO).unwrap_err();
        assert!(err.to_string().contains("r2, is rolled-back"), "{err}");
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn resuming_what_is_not_paused_is_a_conflict() {
        let s = state(Some(canary()));
        let mut o = Overrides::default();
        let err = apply(&s, &mut o, "prod", &OverrideAction::Resume, actor(), Time::ZERO).unwrap_err();
        assert!(matches!(err, Refused::Conflict(_)));
        apply(&s, &mut o, "prod", &OverrideAction::Pause, actor(), Time::ZERO).unwrap();
        let applied = apply(&s, &mut o, "prod", &OverrideAction::Resume, actor(), Time::ZERO).unwrap();
        assert!(applied.changed);
        assert!(o.environments["prod"].pause.is_none());
        assert!(o.environments["prod"].resume.is_some());
    }

    #[test]
    fn a_repeated_pause_changes_nothing_the_second_time() {
        let s = state(Some(canary()));
        let mut o = Overrides::default();
        assert!(
            apply(&s, &mut o, "prod", &OverrideAction::Pause, actor(), Time::ZERO)
                .unwrap()
                .changed
        );
        let before = o.clone();
        assert!(
            !apply(&s, &mut o, "prod", &OverrideAction::Pause, actor(), Time::ZERO)
                .unwrap()
                .changed
        );
        assert_eq!(o, before);
    }

    #[test]
    fn a_pause_regardless_is_its_own_choice_and_a_resume_lifts_it() {
        let s = state(Some(canary()));
        let mut o = Overrides::default();
        apply(&s, &mut o, "prod", &OverrideAction::Pause, actor(), Time::ZERO).unwrap();
        assert!(!o.environments["prod"].pause_regardless);
        // making the pause regardless is a change; making it plain again too
        let r = OverrideAction::PauseRegardless;
        assert!(
            apply(&s, &mut o, "prod", &r, actor(), Time::ZERO)
                .unwrap()
                .changed
        );
        assert!(o.environments["prod"].pause_regardless);
        assert!(
            !apply(&s, &mut o, "prod", &r, actor(), Time::ZERO)
                .unwrap()
                .changed
        );
        assert!(
            apply(&s, &mut o, "prod", &OverrideAction::Pause, actor(), Time::ZERO)
                .unwrap()
                .changed
        );
        apply(&s, &mut o, "prod", &r, actor(), Time::ZERO).unwrap();
        apply(&s, &mut o, "prod", &OverrideAction::Resume, actor(), Time::ZERO).unwrap();
        let env = &o.environments["prod"];
        assert!(env.pause.is_none() && !env.pause_regardless);
    }

    #[test]
    fn pinning_an_unknown_release_is_refused() {
        let s = state(None);
        let mut o = Overrides::default();
        let err = apply(
            &s,
            &mut o,
            "prod",
            &OverrideAction::Pin("r9".into()),
            actor(),
            Time::ZERO,
        )
        .unwrap_err();
        assert_eq!(err, Refused::UnknownRelease("r9".into()));
        apply(
            &s,
            &mut o,
            "prod",
            &OverrideAction::Pin("r1".into()),
            actor(),
            Time::ZERO,
        )
        .unwrap();
        assert_eq!(o.environments["prod"].pin.as_ref().unwrap().0, "r1");
    }

    #[test]
    fn approval_goes_to_the_waiting_release_unless_one_is_named() {
        let s = state(Some(Phase::Waiting {
            since: Time::ZERO,
            on: "approval".into(),
        }));
        let mut o = Overrides::default();
        let action = OverrideAction::Approve {
            release: None,
            groups: vec!["sre".into()],
        };
        let applied = apply(&s, &mut o, "prod", &action, actor(), Time::from_secs(3)).unwrap();
        assert_eq!(applied.release.as_deref(), Some("r2"));
        assert_eq!(o.approvals.len(), 1);
        assert_eq!(o.approvals[0].groups, ["sre"]);
        let err = apply(&state(None), &mut o, "prod", &action, actor(), Time::ZERO).unwrap_err();
        assert!(matches!(err, Refused::Conflict(_)));
    }

    #[test]
    fn a_promote_and_a_rollback_cannot_both_wait() {
        let s = state(Some(canary()));
        let mut o = Overrides::default();
        apply(&s, &mut o, "prod", &OverrideAction::Rollback, actor(), Time::ZERO).unwrap();
        let err = apply(&s, &mut o, "prod", &OverrideAction::Promote, actor(), Time::ZERO).unwrap_err();
        assert!(err.to_string().contains("rollback by ann"), "{err}");
    }
}

//! `plan(spec, observed, overrides, now) -> Plan`: the whole decision, as a pure function.
//!
//! Per tick, for one service: fold finished builds and new pushes into the state and decide
//! which build to start; then walk the environments in order. Each environment's candidate is
//! the newest release (first environment) or what the previous environment promoted; a rollout
//! steps through its phases driven by readiness, the judge's verdicts on every objective, the
//! progress deadline, the blast-radius budget and operator overrides. An override wins over the
//! controller until it is lifted; every transition records its cause.
//!
//! # Guarantees
//! - No I/O, no clock, no randomness: the same inputs give the same `Plan`.
//! - Nothing is promoted by the controller while any objective is `Regressed`, and never on
//!   missing data; missing data only holds, and after the policy's deadline rolls back or
//!   pauses.
//! - The canary's weight never decreases except by rollback or an operator.

use super::builds::{self, BuildState};
use super::gates::{self, GateInput, GateStatus};
use super::judge::{self, Counts, Verdict};
use super::ramp;
use super::rollout::*;
use super::time::Time;
use super::watch::{self, WatchConfig};
use crate::spec::MissingData;
use crate::spec::controllers::{ControllerSpec, StopAction, Strategy};
use crate::spec::units::Weight;
use std::time::Duration;

/// With nothing in progress, look again this often anyway (level-triggered re-check).
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// While traffic moves (promoting, rolling back) the routes are read again this soon: the
/// router answers in milliseconds, so waiting a whole analysis interval would only delay.
const ROUTE_RECHECK: Duration = Duration::from_secs(1);

pub use super::spec::{EnvPlan, ObjectivePlan, PlanSpec};

mod canary;
mod ending;
mod starting;
#[cfg(test)]
mod tests;

use canary::*;
use ending::*;
use starting::*;

/// Collects the plan as it is built.
struct Out {
    actions: Vec<Action>,
    transitions: Vec<Transition>,
    evidence: Vec<ObjectiveEvidence>,
    notes: Vec<String>,
    next_check: Time,
    consumed: Vec<(String, OneShot)>,
}

impl Out {
    fn wake(&mut self, at: Time) {
        self.next_check = self.next_check.min(at);
    }
}

/// Decides what to do now. Pure.
pub fn plan(spec: &PlanSpec, observed: &Observed, overrides: &Overrides, now: Time) -> Plan {
    let mut state = observed.state.clone();
    let mut out = Out {
        actions: Vec::new(),
        transitions: Vec::new(),
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: now.plus(IDLE_RECHECK),
        consumed: Vec::new(),
    };
    plan_builds(spec, observed, &mut state, &mut out, now);
    for (i, env) in spec.environments.iter().enumerate() {
        let upstream = i
            .checked_sub(1)
            .and_then(|j| state.environments.get(&spec.environments[j].name))
            .cloned();
        let none = EnvOverrides::default();
        let ov = overrides.environments.get(&env.name).unwrap_or(&none);
        let mut env_state = state.environments.get(&env.name).cloned().unwrap_or_default();
        let ctx = EnvCtx {
            env,
            ov,
            approvals: &overrides.approvals,
            observed,
            now,
            releases: &state,
        };
        step_environment(&ctx, upstream.as_ref(), &mut env_state, &mut out);
        state.environments.insert(env.name.clone(), env_state);
    }
    Plan {
        state,
        actions: out.actions,
        transitions: out.transitions,
        evidence: out.evidence,
        notes: out.notes,
        next_check: out.next_check,
        consumed: out.consumed,
    }
}

fn plan_builds(spec: &PlanSpec, observed: &Observed, state: &mut ServiceState, out: &mut Out, now: Time) {
    let b: &mut BuildState = &mut state.builds;
    for (commit, outcome) in &observed.finished_builds {
        b.running.retain(|(c, _)| c != commit);
        match outcome {
            BuildOutcome::Built(release) => {
                if !state.releases.iter().any(|r| r.id == release.id) {
                    state.releases.push(release.clone());
                }
            }
            BuildOutcome::Failed { reason } => out.notes.push(format!("build of {commit} failed: {reason}")),
        }
    }
    let b = &mut state.builds;
    for commit in &observed.pushes {
        if !b.pending.contains(commit) && !b.running.iter().any(|(c, _)| c == commit) {
            b.pending.push(commit.clone());
        }
    }
    for commit in &observed.requested_builds {
        let released = state.releases.iter().any(|r| &r.commit == commit);
        if released || b.running.iter().any(|(c, _)| c == commit) {
            out.notes.push(format!(
                "build of {commit} asked for: it is already built or building"
            ));
        } else if !b.requested.contains(commit) {
            b.pending.retain(|c| c != commit);
            b.requested.push(commit.clone());
        }
    }
    let (decision, next) = builds::decide(&spec.build, b, now);
    *b = next;
    // the commits skipped go with the newest build started (the one that made them moot)
    let newest = decision.start.len().saturating_sub(1);
    for (i, commit) in decision.start.into_iter().enumerate() {
        let skipped = if i == newest {
            decision.skipped.clone()
        } else {
            Vec::new()
        };
        out.actions.push(Action::StartBuild { commit, skipped });
    }
    if !decision.skipped.is_empty() {
        out.notes.push(format!(
            "skipped builds of {} (a newer commit is built)",
            decision.skipped.join(", ")
        ));
    }
    if let Some(t) = decision.wait_until {
        out.notes.push(format!(
            "build limit of {} per hour reached; next build at {t}",
            spec.build.max_per_hour
        ));
        out.wake(t);
    }
}

struct EnvCtx<'a> {
    env: &'a EnvPlan,
    ov: &'a EnvOverrides,
    approvals: &'a [gates::Approval],
    observed: &'a Observed,
    now: Time,
    releases: &'a ServiceState,
}

impl EnvCtx<'_> {
    fn name(&self) -> String {
        self.env.name.clone()
    }

    fn ctl(&self) -> &ControllerSpec {
        &self.env.controller
    }

    fn interval(&self) -> Duration {
        self.ctl().analysis.interval.0
    }

    fn is_newer(&self, a: &str, than: &str) -> bool {
        match (self.releases.order(a), self.releases.order(than)) {
            (Some(x), Some(y)) => x > y,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// The release that should be rolled out here next, if any. An operator's pin keeps the
    /// environment on the pinned release (and may take it back to an older one); otherwise only
    /// releases newer than stable, and newer than a rolled-back one, are candidates.
    fn candidate(&self, upstream: Option<&EnvState>, env: &EnvState) -> Option<String> {
        let pinned = self.ov.pin.as_ref().map(|(p, _)| p);
        let candidate = match (pinned, upstream) {
            (Some(p), _) => {
                self.releases.order(p)?;
                p.clone()
            }
            (None, Some(up)) => up.stable.clone()?,
            (None, None) => self.releases.releases.last()?.id.clone(),
        };
        if env.stable.as_deref() == Some(candidate.as_str()) {
            return None;
        }
        if pinned.is_none()
            && let Some(stable) = &env.stable
            && !self.is_newer(&candidate, stable)
        {
            return None;
        }
        if let Some(blocked) = &env.blocked
            && !self.is_newer(&candidate, blocked)
        {
            return None;
        }
        Some(candidate)
    }
}

fn transition(ctx: &EnvCtx, out: &mut Out, rollout: &mut Rollout, to: Phase, cause: Cause) {
    out.transitions.push(Transition {
        environment: ctx.name(),
        release: rollout.release.clone(),
        from: Some(rollout.phase.kind()),
        to: to.kind(),
        weight: to.weight(),
        cause,
        at: ctx.now,
    });
    rollout.phase = to;
}

fn set_weight(ctx: &EnvCtx, out: &mut Out, env: &EnvState, release: &str, weight: Weight) {
    out.actions.push(Action::SetWeights {
        environment: ctx.name(),
        stable: env.stable.clone(),
        canary: release.to_owned(),
        canary_weight: weight,
        preview: None,
    });
}

/// Holds `release` at weight 0 while it is judged (blue/green, shadow, A/B): routed at its
/// preview URL, sent copies of live requests if the strategy mirrors, serving its segment's
/// share of callers if it has one.
fn hold_hidden(ctx: &EnvCtx, out: &mut Out, env: &EnvState, release: &str) {
    out.actions.push(Action::SetWeights {
        environment: ctx.name(),
        stable: env.stable.clone(),
        canary: release.to_owned(),
        canary_weight: Weight(0),
        preview: Some(Preview {
            mirror: ctx.ctl().strategy.mirror().cloned(),
            segment: ctx.ctl().strategy.segment().cloned(),
        }),
    });
}

/// Is a canary at `weight` in the hidden stage of its strategy (no public traffic, judged on
/// preview and mirrored requests)?
fn hidden(ctx: &EnvCtx, weight: Weight) -> bool {
    weight.0 == 0 && ctx.ctl().strategy.starts_hidden()
}

fn operator(action: OperatorStep, actor: &Actor) -> Cause {
    Cause::Operator {
        action,
        actor: actor.clone(),
    }
}

fn step_environment(ctx: &EnvCtx, upstream: Option<&EnvState>, env: &mut EnvState, out: &mut Out) {
    let active = |env: &EnvState| env.rollout.as_ref().is_some_and(|r| !r.phase.is_finished());
    keep_or_retire_previous(ctx, env, out);
    // an operator lifts the block a rollback left
    let mut lifted = false;
    if !active(env)
        && env.blocked.is_some()
        && let Some(actor) = &ctx.ov.resume
    {
        out.notes.push(format!(
            "{} lifted the rollback block on {} in {}: {}",
            actor.who,
            env.blocked.as_deref().unwrap_or_default(),
            ctx.env.name,
            actor.reason
        ));
        env.blocked = None;
        lifted = true;
        out.consumed.push((ctx.name(), OneShot::Resume));
    }
    let candidate = ctx.candidate(upstream, env);
    // a newer candidate supersedes a rollout still waiting at its gates
    if let (Some(c), Some(r)) = (&candidate, env.rollout.as_mut())
        && matches!(r.phase, Phase::Waiting { .. })
        && *c != r.release
        && (ctx.ctl().promotion.supersede || ctx.ov.pin.is_some())
    {
        let by = c.clone();
        transition(
            ctx,
            out,
            r,
            Phase::Superseded {
                by: by.clone(),
                at: ctx.now,
            },
            Cause::NewerRelease { release: by },
        );
    }
    if !active(env)
        && let Some(c) = candidate
    {
        let already_tried = env.rollout.as_ref().is_some_and(|r| r.release == c);
        if !already_tried || lifted {
            let phase = Phase::Waiting {
                since: ctx.now,
                on: "gates".into(),
            };
            out.transitions.push(Transition {
                environment: ctx.name(),
                release: c.clone(),
                from: None,
                to: phase.kind(),
                weight: Weight(0),
                cause: Cause::Candidate,
                at: ctx.now,
            });
            env.rollout = Some(Rollout {
                release: c,
                phase,
                started_at: ctx.now,
                judges: Default::default(),
                watches: Default::default(),
                excess_bad: 0.0,
            });
        }
    }
    let Some(mut rollout) = env.rollout.take() else {
        return;
    };
    if !rollout.phase.is_finished() {
        step_rollout(ctx, upstream, env, &mut rollout, out);
    }
    env.rollout = Some(rollout);
}

/// Blue/green: within the rollback window an operator's rollback switches all traffic back to
/// the previous release in one step (the switched-to release then leaves as a rolled-back
/// canary does); once the window ends the previous release is retired.
fn keep_or_retire_previous(ctx: &EnvCtx, env: &mut EnvState, out: &mut Out) {
    let Some(kept) = env.previous.clone() else {
        return;
    };
    if let Some(actor) = &ctx.ov.rollback
        && super::overrides::can_switch_back(env)
        && let Some(mut r) = env.rollout.take()
    {
        env.previous = None;
        env.stable = Some(kept.release.clone());
        env.stable_since = Some(ctx.now);
        let reason = format!("operator rollback: all traffic back to {}", kept.release);
        start_rollback(
            ctx,
            out,
            env,
            &mut r,
            reason,
            operator(OperatorStep::Rollback, actor),
        );
        out.consumed.push((ctx.name(), OneShot::Rollback));
        env.rollout = Some(r);
    } else if ctx.now >= kept.until {
        // (unless it serves again: an operator may have pinned the environment back to it)
        let in_use = env.stable.as_deref() == Some(kept.release.as_str())
            || env.rollout.as_ref().is_some_and(|r| r.release == kept.release);
        if !in_use {
            out.actions.push(Action::Retire {
                environment: ctx.name(),
                release: kept.release,
            });
        }
        env.previous = None;
    } else {
        out.wake(kept.until);
    }
}

/// One look at a rollout: an operator's one-shot first, then its phase's own step.
fn step_rollout(
    ctx: &EnvCtx,
    upstream: Option<&EnvState>,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
) {
    if operator_one_shot(ctx, env, r, out) {
        return;
    }
    match r.phase.clone() {
        Phase::Waiting { since, .. } => step_waiting(ctx, upstream, r, out, since),
        Phase::Deploying { .. } => step_deploying(ctx, env, r, out),
        Phase::Canary { step, weight, since } => step_canary(ctx, env, r, out, At { step, weight, since }),
        Phase::Paused {
            step,
            weight,
            since,
            reason,
            by_operator,
        } => step_paused(
            ctx,
            env,
            r,
            out,
            At { step, weight, since },
            Pause { reason, by_operator },
        ),
        Phase::Baking { weight, since } => step_baking(ctx, env, r, out, weight, since),
        Phase::Promoting { .. } => step_promoting(ctx, env, r, out),
        Phase::RollingBack { reason, .. } => step_rolling_back(ctx, env, r, out, reason),
        Phase::Promoted { .. } | Phase::RolledBack { .. } | Phase::Superseded { .. } => {}
    }
}

/// Where a rollout stands on its ramp.
#[derive(Debug, Clone, Copy)]
struct At {
    step: usize,
    weight: Weight,
    since: Time,
}

/// Why a rollout is paused.
struct Pause {
    reason: String,
    by_operator: bool,
}

/// An operator's rollback or promote, while the release is deploying, ramping or paused: it wins
/// over everything else and is used up. Returns whether one was carried out.
fn operator_one_shot(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out) -> bool {
    let allowed = matches!(
        r.phase,
        Phase::Deploying { .. } | Phase::Canary { .. } | Phase::Paused { .. } | Phase::Baking { .. }
    );
    if !allowed {
        return false;
    }
    if let Some(actor) = &ctx.ov.rollback {
        start_rollback(
            ctx,
            out,
            env,
            r,
            "operator rollback".into(),
            operator(OperatorStep::Rollback, actor),
        );
        out.consumed.push((ctx.name(), OneShot::Rollback));
        return true;
    }
    if let Some(actor) = &ctx.ov.promote {
        let release = r.release.clone();
        set_weight(ctx, out, env, &release, Weight::MAX);
        transition(
            ctx,
            out,
            r,
            Phase::Promoting { since: ctx.now },
            operator(OperatorStep::Promote, actor),
        );
        out.consumed.push((ctx.name(), OneShot::Promote));
        out.wake(ctx.now);
        return true;
    }
    false
}

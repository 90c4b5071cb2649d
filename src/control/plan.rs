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
use crate::spec::controllers::{ControllerSpec, StopAction, Strategy};
use crate::spec::units::Weight;
use crate::spec::MissingData;
use std::time::Duration;

/// With nothing in progress, look again this often anyway (level-triggered re-check).
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// While traffic moves (promoting, rolling back) the routes are read again this soon: the
/// router answers in milliseconds, so waiting a whole analysis interval would only delay.
const ROUTE_RECHECK: Duration = Duration::from_secs(1);

pub use super::spec::{EnvPlan, ObjectivePlan, PlanSpec};

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
        start_rollback(ctx, out, env, &mut r, reason, operator(OperatorStep::Rollback, actor));
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

/// Waiting for the environment's gates (and a freeze): deploy once every one is open, else say
/// what it waits on and wake when a gate opens by itself.
fn step_waiting(ctx: &EnvCtx, upstream: Option<&EnvState>, r: &mut Rollout, out: &mut Out, since: Time) {
    let now = ctx.now;
    let release = r.release.clone();
    let mut closed = Vec::new();
    if let Some(actor) = &ctx.ov.freeze {
        closed.push((
            format!("environment frozen by {}: {}", actor.who, actor.reason),
            None,
        ));
    }
    let input = GateInput {
        release: &release,
        environment: &ctx.env.name,
        stable_upstream_since: upstream.and_then(|u| u.stable_since),
        approvals: ctx.approvals,
        now,
    };
    for gate in &ctx.ctl().promotion.gates {
        if let GateStatus::Closed { why, until } = gates::evaluate(gate, &input) {
            closed.push((why, until));
        }
    }
    if closed.is_empty() {
        out.actions.push(Action::Deploy {
            environment: ctx.name(),
            release,
        });
        transition(ctx, out, r, Phase::Deploying { since: now }, Cause::GatesOpen);
        out.wake(now.plus(ctx.interval()));
        return;
    }
    let on = closed
        .iter()
        .map(|(w, _)| w.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    out.notes
        .push(format!("{} waits in {}: {on}", release, ctx.env.name));
    for until in closed.iter().filter_map(|(_, u)| *u) {
        out.wake(until);
    }
    r.phase = Phase::Waiting { since, on };
}

/// Instances starting: once all are ready, the first release takes everything, a held strategy
/// holds the release at weight 0, a canary starts its ramp; instances that cannot start are
/// rolled back; the deadline runs while it waits.
fn step_deploying(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out) {
    let now = ctx.now;
    let ctl = ctx.ctl();
    let release = r.release.clone();
    let Some(instances) = &ctx.observed.readiness else {
        // the runtime could not be asked: unknown is not "not ready", and no deadline runs out
        // on what cannot be seen
        out.notes.push(format!(
            "{release} in {}: the runtime's instances are unknown; holding",
            ctx.env.name
        ));
        out.wake(now.plus(ctx.interval()));
        return;
    };
    let Some(ready) = instances.get(&(ctx.env.name.clone(), release.clone())).cloned() else {
        // the runtime runs no instance of it: the deploy did not take; ask again
        out.actions.push(Action::Deploy {
            environment: ctx.name(),
            release,
        });
        out.wake(now.plus(ctx.interval()));
        return;
    };
    if ready.failed {
        let reason = match &ready.reason {
            Some(why) => format!("instances cannot start: {why}"),
            None => "instances cannot start".to_owned(),
        };
        start_rollback(ctx, out, env, r, reason.clone(), Cause::DeployFailed { reason });
    } else if ready.desired > 0 && ready.ready >= ready.desired {
        if env.stable.is_none() {
            set_weight(ctx, out, env, &release, Weight::MAX);
            transition(ctx, out, r, Phase::Promoting { since: now }, Cause::FirstRelease);
            out.wake(now);
        } else if ctl.strategy.starts_hidden() {
            // blue/green, shadow, A/B: no user, or only the segment's, until it is judged
            hold_hidden(ctx, out, env, &release);
            let held = Phase::Canary {
                step: 0,
                weight: Weight(0),
                since: now,
            };
            transition(ctx, out, r, held, Cause::Ready);
            out.wake(now.plus(ctx.interval()));
        } else {
            start_ramp(ctx, out, env, r, Cause::Ready);
            out.wake(now.plus(ctx.interval()));
        }
    } else if now.since(r.started_at) >= ctl.progress_deadline.0 {
        let how = Stop::deadline(ctl, "progress deadline passed while deploying");
        stop(ctx, out, env, r, how);
    } else {
        out.wake(now.plus(ctx.interval()));
    }
}

/// Paused: the judge keeps looking. A pause holds the ramp, not the brakes: a regression or a
/// spent budget still rolls back, unless the policy's answer to it is this pause, or the
/// operator paused regardless (then it is said loudly, every look). Lifted by a resume, or by
/// the removal of an operator's pause.
fn step_paused(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out, at: At, pause: Pause) {
    let release = r.release.clone();
    let Pause { reason, by_operator } = pause;
    let verdicts = judge_all(ctx, r, out);
    if let Some(how) = brakes(ctx, r, &verdicts) {
        let regardless = by_operator && ctx.ov.pause.is_some() && ctx.ov.pause_regardless;
        if regardless {
            // the same words every look while it lasts (the numbers are in the evidence)
            let what = match &how.cause {
                Cause::Regressed { objective, .. } => format!("{objective} regressed"),
                _ => "the blast-radius budget is spent".into(),
            };
            out.notes.push(format!(
                "{release} in {}: {what}, and is NOT rolled back: held by a pause regardless ({reason})",
                ctx.env.name
            ));
        } else if how.action == StopAction::Rollback {
            stop(ctx, out, env, r, how);
            return;
        }
    }
    let resume = if by_operator {
        // lifted: by a resume (whose one-shot is used up here, so it cannot resume a later
        // pause), or by the pause's removal alone
        ctx.ov.pause.is_none().then(|| match &ctx.ov.resume {
            Some(a) => {
                out.consumed.push((ctx.name(), OneShot::Resume));
                operator(OperatorStep::Resume, a)
            }
            None => Cause::Operator {
                action: OperatorStep::LiftPause,
                actor: Actor {
                    who: "operator".into(),
                    reason: format!("pause lifted ({reason})"),
                },
            },
        })
    } else {
        ctx.ov.resume.as_ref().map(|a| {
            out.consumed.push((ctx.name(), OneShot::Resume));
            operator(OperatorStep::Resume, a)
        })
    };
    if let Some(cause) = resume {
        let to = Phase::Canary {
            step: at.step,
            weight: at.weight,
            since: ctx.now,
        };
        transition(ctx, out, r, to, cause);
    }
    out.wake(ctx.now.plus(ctx.interval()));
}

/// Promoting: promoted once the router serves the release everything (observed, not assumed).
/// The release it replaces is retired, or, under blue/green, kept for its rollback window.
fn step_promoting(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out) {
    let now = ctx.now;
    let release = r.release.clone();
    if routed_share(ctx, &release) != Some(100) {
        set_weight(ctx, out, env, &release, Weight::MAX);
        out.notes.push(format!(
            "{release} in {}: waiting for the router to serve it all traffic",
            ctx.env.name
        ));
        out.wake(now.plus(ROUTE_RECHECK));
        return;
    }
    let old = env.stable.replace(release.clone());
    env.stable_since = Some(now);
    env.blocked = None;
    // blue/green keeps the release it switched from for its rollback window; a release kept
    // from an earlier switch goes now
    let kept = match &ctx.ctl().strategy {
        Strategy::BlueGreen(bg) => old.clone().map(|old| Kept {
            release: old,
            until: now.plus(bg.rollback_window.0),
        }),
        Strategy::Canary | Strategy::Shadow(_) | Strategy::AbTest(_) => None,
    };
    let retired = match &kept {
        Some(_) => env.previous.take().map(|k| k.release),
        None => old,
    };
    if let Some(k) = &kept {
        out.wake(k.until);
        env.previous = kept;
    }
    if let Some(old) = retired.filter(|r| *r != release) {
        out.actions.push(Action::Retire {
            environment: ctx.name(),
            release: old,
        });
    }
    transition(ctx, out, r, Phase::Promoted { at: now }, Cause::Completed);
    out.wake(now);
}

/// Rolling back: retired once the router sends it nothing (a failed weight change is asked
/// again), and the environment pinned against it if the policy says so.
fn step_rolling_back(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out, reason: String) {
    let release = r.release.clone();
    if routed_share(ctx, &release) != Some(0) {
        set_weight(ctx, out, env, &release, Weight(0));
        out.notes.push(format!(
            "{release} in {}: waiting for the router to take its traffic away",
            ctx.env.name
        ));
        out.wake(ctx.now.plus(ROUTE_RECHECK));
        return;
    }
    out.actions.push(Action::Retire {
        environment: ctx.name(),
        release: release.clone(),
    });
    if ctx.ctl().rollback.pin_previous {
        env.blocked = Some(release);
    }
    let to = Phase::RolledBack { reason, at: ctx.now };
    transition(ctx, out, r, to, Cause::Completed);
}

/// Starts the ramp: the first public weight (see [`first_exposure`]), routed and recorded.
fn start_ramp(ctx: &EnvCtx, out: &mut Out, env: &EnvState, r: &mut Rollout, cause: Cause) {
    let weight = first_exposure(ctx, r, out);
    let release = r.release.clone();
    set_weight(ctx, out, env, &release, weight);
    let to = Phase::Canary {
        step: 0,
        weight,
        since: ctx.now,
    };
    transition(ctx, out, r, to, cause);
}

/// The first public weight of a rollout: the ramp's first, capped so that a canary as bad as
/// can be (nothing is known of its public traffic yet: every request bad) at stable's observed
/// traffic stays within the blast-radius budget, but at least 1%.
fn first_exposure(ctx: &EnvCtx, r: &Rollout, out: &mut Out) -> Weight {
    let arms: Vec<_> = ctx
        .env
        .objectives
        .iter()
        .filter_map(|o| ctx.observed.readings.get(&(ctx.env.name.clone(), o.name.clone())))
        .filter_map(|reading| reading.stable)
        .map(|s| (1.0, Counts::default(), s))
        .collect();
    let wanted = ramp::first_weight(ctx.ctl().ramp.as_ref());
    let weight = Weight(wanted.0.min(weight_cap(ctx, r, &arms).0.max(1)));
    if weight < wanted {
        out.notes.push(format!(
            "{} starts at {}% in {} instead of {}%: the blast-radius budget caps it",
            r.release, weight.0, ctx.env.name, wanted.0
        ));
    }
    weight
}

/// The share of the environment's traffic the router gives `release` now (`None`: unknown).
fn routed_share(ctx: &EnvCtx, release: &str) -> Option<u8> {
    let routes = ctx.observed.routes.as_ref()?;
    Some(routes.get(&ctx.env.name).map_or(0, |r| r.share_of(release)))
}

/// Feeds this tick's readings to every objective's judge; returns the verdicts.
fn judge_all(ctx: &EnvCtx, r: &mut Rollout, out: &mut Out) -> Vec<(String, judge::Judgement, MissingData)> {
    let mut results = Vec::new();
    for o in &ctx.env.objectives {
        let reading = ctx
            .observed
            .readings
            .get(&(ctx.env.name.clone(), o.name.clone()))
            .copied()
            .unwrap_or_default();
        let state = r.judges.get(&o.name).cloned().unwrap_or_default();
        let (next, mut judgement) = judge::observe(&state, reading, &o.judge, ctx.now);
        // once judged safe, a change watch looks for a bug that starts later (the judge's own
        // regression test would first have to pay back all the evidence of health so far)
        if judgement.verdict == Verdict::Safe {
            match r.watches.get(&o.name) {
                Some(w) => {
                    let (w, seen) = watch::observe(w, reading, &watch_config(ctx, &o.judge), ctx.now);
                    if seen.verdict == Verdict::Regressed {
                        judgement = seen;
                    }
                    r.watches.insert(o.name.clone(), w);
                }
                None => {
                    r.watches.insert(o.name.clone(), watch::WatchState::after(&next));
                }
            }
        }
        r.judges.insert(o.name.clone(), next);
        out.evidence.push(ObjectiveEvidence {
            environment: ctx.name(),
            release: r.release.clone(),
            objective: o.name.clone(),
            judgement: judgement.clone(),
            weight: r.phase.weight().0,
            at: ctx.now,
        });
        results.push((o.name.clone(), judgement, o.missing_data.clone()));
    }
    results
}

/// Every objective's judgement at one look, with its missing-data policy.
type Verdicts = [(String, judge::Judgement, MissingData)];

/// A canary, or a release held at weight 0 by its strategy. Its route is kept as planned, the
/// judge looks, then in order: the brakes and an operator's pause, missing data, the deadline
/// and an operator's weight, the end of the held stage, promotion at the ramp's end, the next
/// step.
fn step_canary(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out, at: At) {
    reassert_route(ctx, out, env, &r.release, at.weight);
    let verdicts = judge_all(ctx, r, out);
    out.wake(ctx.now.plus(ctx.interval()));
    if brake_or_pause(ctx, env, r, out, &verdicts, at) {
        return;
    }
    let gap = missing_data(ctx, env, r, out, &verdicts);
    if gap == Gap::Stopped {
        return;
    }
    if ctx.now.since(r.started_at) >= ctx.ctl().progress_deadline.0 {
        stop(
            ctx,
            out,
            env,
            r,
            Stop::deadline(ctx.ctl(), "progress deadline passed"),
        );
        return;
    }
    if operator_weight(ctx, env, r, out, at) || gap == Gap::Holding {
        return;
    }
    let all_safe = verdicts.iter().all(|(_, j, _)| j.verdict == Verdict::Safe);
    let last = ramp::final_weight(ctx.ctl().ramp.as_ref());
    if all_safe && hidden(ctx, at.weight) && ctx.ctl().ramp.is_some() {
        leave_the_held_stage(ctx, env, r, out, &verdicts);
    } else if all_safe && at.weight >= last {
        promote_when_evidence_suffices(ctx, env, r, out, &verdicts, at);
    } else if ctx.now.since(at.since) >= ctx.interval() && !hidden(ctx, at.weight) {
        // (held: only the judge's word ends the held stage)
        raise_weight(ctx, env, r, out, &verdicts, at, all_safe);
    }
}

/// Level-triggered: a weight change that did not take (the router failed) is asked again.
fn reassert_route(ctx: &EnvCtx, out: &mut Out, env: &EnvState, release: &str, weight: Weight) {
    if hidden(ctx, weight) {
        let routed = ctx
            .observed
            .routes
            .as_ref()
            .map(|routes| routes.get(&ctx.env.name).and_then(|r| r.canary.as_deref()) == Some(release));
        if routed == Some(false) {
            hold_hidden(ctx, out, env, release);
        }
    } else if routed_share(ctx, release).is_some_and(|share| share != weight.0) {
        set_weight(ctx, out, env, release, weight);
    }
}

/// The brakes stop the rollout; an operator's pause holds it (a pause holds the ramp, not the
/// brakes: a regression found now still stops it, unless paused regardless). Returns whether
/// the rollout left the canary phase.
fn brake_or_pause(
    ctx: &EnvCtx,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
    verdicts: &Verdicts,
    at: At,
) -> bool {
    let stopping = brakes(ctx, r, verdicts);
    if let Some(actor) = &ctx.ov.pause {
        if let Some(how) = stopping.filter(|_| !ctx.ov.pause_regardless) {
            stop(ctx, out, env, r, how);
            return true;
        }
        let to = Phase::Paused {
            step: at.step,
            weight: at.weight,
            since: ctx.now,
            reason: format!("paused by {}: {}", actor.who, actor.reason),
            by_operator: true,
        };
        transition(ctx, out, r, to, operator(OperatorStep::Pause, actor));
        return true;
    }
    match stopping {
        Some(how) => {
            stop(ctx, out, env, r, how);
            true
        }
        None => false,
    }
}

/// Whether an objective's data is missing, and what came of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    None,
    /// Held at this weight until the data returns or the objective's hold runs out.
    Holding,
    /// The hold ran out: the policy's action was taken.
    Stopped,
}

/// Missing data holds the weight; past the objective's hold, its policy acts (whatever the
/// verdict: a canary found safe earlier may have died since).
fn missing_data(
    ctx: &EnvCtx,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
    verdicts: &Verdicts,
) -> Gap {
    let mut gap = Gap::None;
    for (objective, _, md) in verdicts {
        let Some(missing) = r.judges[objective].missing_since else {
            continue;
        };
        gap = Gap::Holding;
        if ctx.now.since(missing) >= md.hold.0 {
            let cause = Cause::MissingData {
                objective: objective.clone(),
                since: missing,
            };
            let reason = match r.judges[objective].missing_reason {
                Some(why) => format!("no data for {objective} since {missing}: {why}"),
                None => format!("no data for {objective} since {missing}"),
            };
            let how = Stop {
                action: md.then,
                reason,
                cause,
            };
            stop(ctx, out, env, r, how);
            return Gap::Stopped;
        }
        out.wake(missing.plus(md.hold.0));
    }
    gap
}

/// An operator's weight holds the canary there (set once). Returns whether one is in force.
fn operator_weight(ctx: &EnvCtx, env: &EnvState, r: &mut Rollout, out: &mut Out, at: At) -> bool {
    let Some((w, actor)) = &ctx.ov.weight else {
        return false;
    };
    if *w != at.weight {
        let release = r.release.clone();
        set_weight(ctx, out, env, &release, *w);
        let to = Phase::Canary {
            step: at.step,
            weight: *w,
            since: ctx.now,
        };
        transition(ctx, out, r, to, operator(OperatorStep::SetWeight, actor));
    }
    true
}

/// Safe on copies (shadow) or in its segment (A/B): now everyone, by the ramp, judged afresh.
fn leave_the_held_stage(ctx: &EnvCtx, env: &EnvState, r: &mut Rollout, out: &mut Out, verdicts: &Verdicts) {
    let cause = safe_cause(ctx, verdicts, true, |explanation, objectives| {
        Cause::SafeOnCopies {
            explanation,
            objectives,
        }
    });
    let strategy = &ctx.ctl().strategy;
    // copies: the same series go on, counting users now; a segment: the arms become all of
    // each release's requests, counted anew, and what its users were served badly stays spent
    let segment = strategy.held_serves_users();
    for judge in r.judges.values_mut() {
        *judge = if segment { judge.anew() } else { judge.afresh() };
    }
    // judged afresh: so is the change watch, from the judge's next word
    r.watches.clear();
    if !segment {
        r.excess_bad = 0.0;
    }
    start_ramp(ctx, out, env, r, cause);
}

/// Safe at the ramp's end (or, with no ramp, in the held stage): promoted once `minEvidence` is
/// met, else woken when its duration will be.
fn promote_when_evidence_suffices(
    ctx: &EnvCtx,
    env: &EnvState,
    r: &mut Rollout,
    out: &mut Out,
    verdicts: &Verdicts,
    at: At,
) {
    let now = ctx.now;
    let min = &ctx.ctl().analysis.min_evidence;
    let canary_requests = verdicts
        .iter()
        .map(|(_, j, _)| j.evidence.canary.total)
        .min()
        .unwrap_or(0);
    let long_enough = min.duration.is_none_or(|d| now.since(at.since) >= d.0);
    if canary_requests < min.requests || !long_enough {
        if let Some(d) = min.duration {
            out.wake(at.since.plus(d.0));
        }
        return;
    }
    // (A/B without a ramp: from the segment to everyone at once)
    let cause = safe_cause(
        ctx,
        verdicts,
        hidden(ctx, at.weight),
        |explanation, objectives| Cause::Evidence {
            explanation,
            objectives,
            capped: None,
        },
    );
    let release = r.release.clone();
    match bake_weight(ctx) {
        Some(weight) => {
            set_weight(ctx, out, env, &release, weight);
            // the watch that began when the judge found it safe goes on (one watch, one α,
            // from that word to the bake's end)
            for (o, j) in &r.judges {
                r.watches
                    .entry(o.clone())
                    .or_insert_with(|| watch::WatchState::after(j));
            }
            transition(ctx, out, r, Phase::Baking { weight, since: now }, cause);
        }
        None => {
            set_weight(ctx, out, env, &release, Weight::MAX);
            transition(ctx, out, r, Phase::Promoting { since: now }, cause);
        }
    }
    out.wake(now);
}

/// The release's weight while it bakes (all but the baseline), when the policy bakes.
fn bake_weight(ctx: &EnvCtx) -> Option<Weight> {
    let bake = ctx.ctl().bake.as_ref()?;
    if let Strategy::BlueGreen(_) = ctx.ctl().strategy {
        return None;
    }
    let baseline = (100.0 * bake.baseline.fraction()).round().clamp(1.0, 99.0) as u8;
    Some(Weight(100 - baseline))
}

/// Baking: the release serves all but the baseline, each objective's watch looks for a late
/// change against the previous release (at the same moments), and the release is promoted
/// once the bake's time has passed with none seen. A change rolls it back (the previous
/// release is still deployed and serving); data missing past an objective's hold gets its
/// policy, as for a canary. An operator's pause holds the promotion, never the watch.
fn step_baking(
    ctx: &EnvCtx,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
    weight: Weight,
    since: Time,
) {
    let Some(bake) = ctx.ctl().bake else {
        // the policy lost its bake while this one baked: promote as without one
        let release = r.release.clone();
        set_weight(ctx, out, env, &release, Weight::MAX);
        transition(
            ctx,
            out,
            r,
            Phase::Promoting { since: ctx.now },
            Cause::Baked { looks: 0 },
        );
        out.wake(ctx.now);
        return;
    };
    reassert_route(ctx, out, env, &r.release, weight);
    let mut verdicts = Vec::new();
    for o in &ctx.env.objectives {
        let reading = ctx
            .observed
            .readings
            .get(&(ctx.env.name.clone(), o.name.clone()))
            .copied()
            .unwrap_or_default();
        let cfg = watch_config(ctx, &o.judge);
        let state = r.watches.get(&o.name).cloned().unwrap_or_default();
        let (next, judgement) = watch::observe(&state, reading, &cfg, ctx.now);
        r.watches.insert(o.name.clone(), next);
        out.evidence.push(ObjectiveEvidence {
            environment: ctx.name(),
            release: r.release.clone(),
            objective: o.name.clone(),
            judgement: judgement.clone(),
            weight: weight.0,
            at: ctx.now,
        });
        verdicts.push((o.name.clone(), judgement, o.missing_data.clone()));
    }
    out.wake(ctx.now.plus(ctx.interval()));
    if let Some((objective, j, _)) = verdicts.iter().find(|(_, j, _)| j.verdict == Verdict::Regressed) {
        let how = Stop {
            action: ctx.ctl().rollback.on_regression,
            reason: format!("{objective} changed while baking: {}", j.evidence.explanation),
            cause: Cause::Regressed {
                objective: objective.clone(),
                explanation: j.evidence.explanation.clone(),
                objectives: in_words(&verdicts),
            },
        };
        stop(ctx, out, env, r, how);
        return;
    }
    for (objective, _, md) in &verdicts {
        let Some(missing) = r.watches[objective].missing_since else {
            continue;
        };
        if ctx.now.since(missing) >= md.hold.0 {
            let how = Stop {
                action: md.then,
                reason: format!("no data for {objective} since {missing} while baking"),
                cause: Cause::MissingData {
                    objective: objective.clone(),
                    since: missing,
                },
            };
            stop(ctx, out, env, r, how);
            return;
        }
        // (missing data is never evidence: the bake does not end on it)
        out.wake(missing.plus(md.hold.0));
        return;
    }
    let ends = since.plus(bake.duration.0);
    if ctx.now < ends {
        out.wake(ends);
        return;
    }
    if let Some(actor) = &ctx.ov.pause {
        out.notes.push(format!(
            "{} baked in {}; its promotion waits for {}'s pause: {}",
            r.release, ctx.env.name, actor.who, actor.reason
        ));
        return;
    }
    let looks = r.watches.values().map(|w| w.looks).min().unwrap_or(0);
    let release = r.release.clone();
    set_weight(ctx, out, env, &release, Weight::MAX);
    transition(
        ctx,
        out,
        r,
        Phase::Promoting { since: ctx.now },
        Cause::Baked { looks },
    );
    out.wake(ctx.now);
}

/// The change watch's settings for an objective: from the judge's word that the release is
/// safe, through the rest of the canary (at most the progress deadline) and the bake, a look
/// per interval; its union bound covers every one of those looks.
fn watch_config(ctx: &EnvCtx, judge: &judge::JudgeConfig) -> WatchConfig {
    let bake = ctx.ctl().bake.map_or(std::time::Duration::ZERO, |b| b.duration.0);
    WatchConfig::for_judge(judge, ctx.ctl().progress_deadline.0 + bake, ctx.interval())
}

/// The cause of a decision that every objective is safe: `SafeInSegment` when an A/B release
/// leaves its segment (`held`), else what `other` makes of the judge's words.
fn safe_cause(
    ctx: &EnvCtx,
    verdicts: &Verdicts,
    held: bool,
    other: impl FnOnce(String, Vec<ObjectiveWords>) -> Cause,
) -> Cause {
    let (explanation, objectives) = (summary(verdicts), in_words(verdicts));
    match ctx.ctl().strategy.segment() {
        Some(segment) if held => Cause::SafeInSegment {
            segment: segment.name.clone(),
            explanation,
            objectives,
        },
        _ => other(explanation, objectives),
    }
}

/// Raises the weight: to the ramp's end on strong evidence, else one step; capped so that a
/// canary as bad as the evidence still allows stays within the remaining budget.
fn raise_weight(
    ctx: &EnvCtx,
    env: &EnvState,
    r: &mut Rollout,
    out: &mut Out,
    verdicts: &Verdicts,
    at: At,
    all_safe: bool,
) {
    let ctl = ctx.ctl();
    let ramp_spec = ctl.ramp.as_ref();
    let wanted = if all_safe {
        let last = ramp::final_weight(ramp_spec);
        Some((ramp::step_of(ramp_spec, last, at.step), last))
    } else {
        ramp::next_step(ramp_spec, at.step, at.weight)
    };
    let Some((next_step_index, wanted_w)) = wanted else {
        return;
    };
    let cap = weight_cap(ctx, r, &evidence_arms(verdicts));
    let new_w = Weight(wanted_w.0.min(cap.0).max(at.weight.0));
    if new_w <= at.weight {
        return;
    }
    let capped = (new_w < wanted_w).then(|| Capped {
        wanted: wanted_w,
        left: (ctl.blast_radius.budget as f64 - r.excess_bad).max(0.0),
        budget: ctl.blast_radius.budget,
    });
    let explanation = match capped {
        Some(c) => format!(
            "{}; step capped at {}% (the ramp asked for {}%) by the blast-radius budget",
            summary(verdicts),
            new_w.0,
            c.wanted.0
        ),
        None => summary(verdicts),
    };
    let new_step = if new_w == wanted_w {
        next_step_index
    } else {
        ramp::step_of(ramp_spec, new_w, at.step)
    };
    let release = r.release.clone();
    set_weight(ctx, out, env, &release, new_w);
    let to = Phase::Canary {
        step: new_step,
        weight: new_w,
        since: ctx.now,
    };
    let cause = Cause::Evidence {
        explanation,
        objectives: in_words(verdicts),
        capped,
    };
    transition(ctx, out, r, to, cause);
}

/// Every objective's judgement, for people.
fn in_words(verdicts: &[(String, judge::Judgement, MissingData)]) -> Vec<ObjectiveWords> {
    verdicts
        .iter()
        .map(|(o, j, _)| ObjectiveWords {
            objective: o.clone(),
            verdict: match j.verdict {
                Verdict::Regressed => "regressed",
                Verdict::Safe => "safe",
                Verdict::NotYet(judge::Waiting::MoreEvidence) => "not yet sure",
                Verdict::NotYet(_) => "no data",
            }
            .into(),
            words: j.evidence.words.clone(),
            explanation: j.evidence.explanation.clone(),
        })
        .collect()
}

fn summary(verdicts: &[(String, judge::Judgement, MissingData)]) -> String {
    verdicts
        .iter()
        .map(|(o, j, _)| format!("{o}: {}", j.evidence.explanation))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The largest weight at which a canary as bad as the evidence still allows would serve at
/// most the remaining budget of excess bad requests before the next look. `arms` holds, per
/// objective, the canary's upper bound and the counts since the rollout started.
fn weight_cap(ctx: &EnvCtx, r: &Rollout, arms: &[(f64, Counts, Counts)]) -> Weight {
    let budget = ramp::Budget {
        remaining: ctx.ctl().blast_radius.budget as f64 - r.excess_bad,
        elapsed_secs: ctx.now.since(r.started_at).as_secs_f64(),
        interval_secs: ctx.interval().as_secs_f64(),
    };
    ramp::budget_cap(budget, arms)
}

fn evidence_arms(verdicts: &[(String, judge::Judgement, MissingData)]) -> Vec<(f64, Counts, Counts)> {
    verdicts
        .iter()
        .map(|(_, j, _)| (j.evidence.canary_upper, j.evidence.canary, j.evidence.stable))
        .collect()
}

/// Why and how a rollout must stop.
struct Stop {
    action: StopAction,
    reason: String,
    cause: Cause,
}

impl Stop {
    /// The progress deadline passed: the policy's `onDeadline`.
    fn deadline(ctl: &ControllerSpec, reason: &str) -> Stop {
        Stop {
            action: ctl.rollback.on_deadline,
            reason: reason.to_owned(),
            cause: Cause::Deadline,
        }
    }
}

/// The brakes: a regression, or the blast-radius budget spent (bad canary requests beyond
/// stable's, worst objective, counted per look). Updates the rollout's excess count.
fn brakes(ctx: &EnvCtx, r: &mut Rollout, verdicts: &Verdicts) -> Option<Stop> {
    let ctl = ctx.ctl();
    r.excess_bad = ctx
        .env
        .objectives
        .iter()
        .filter_map(|o| r.judges.get(&o.name))
        .map(|j| j.excess_bad.max(0.0))
        .fold(0.0, f64::max);
    let regressed = verdicts.iter().find(|(_, j, _)| j.verdict == Verdict::Regressed);
    match regressed {
        Some((objective, j, _)) => Some(Stop {
            action: ctl.rollback.on_regression,
            reason: format!("{objective} regressed: {}", j.evidence.explanation),
            cause: Cause::Regressed {
                objective: objective.clone(),
                explanation: j.evidence.explanation.clone(),
                objectives: in_words(verdicts),
            },
        }),
        // the budget counts bad requests users were served: at weight 0 none (preview, mirror),
        // unless a segment of users is (A/B)
        None if r.excess_bad >= ctl.blast_radius.budget as f64
            && (r.phase.weight().0 > 0 || ctl.strategy.held_serves_users()) =>
        {
            Some(Stop {
                action: ctl.rollback.on_regression,
                reason: format!(
                    "blast-radius budget spent: {:.0} bad requests ≥ {}",
                    r.excess_bad, ctl.blast_radius.budget
                ),
                cause: Cause::BlastRadius {
                    excess: r.excess_bad,
                    budget: ctl.blast_radius.budget,
                },
            })
        }
        None => None,
    }
}

/// Stops a rollout the way the policy says: roll back, or pause (at the current weight) for an
/// operator.
fn stop(ctx: &EnvCtx, out: &mut Out, env: &EnvState, r: &mut Rollout, how: Stop) {
    match how.action {
        StopAction::Rollback => start_rollback(ctx, out, env, r, how.reason, how.cause),
        StopAction::Pause => {
            // every phase named: a new phase must say what its step is
            let step = match r.phase {
                Phase::Canary { step, .. } | Phase::Paused { step, .. } => step,
                Phase::Waiting { .. }
                | Phase::Deploying { .. }
                | Phase::Baking { .. }
                | Phase::Promoting { .. }
                | Phase::Promoted { .. }
                | Phase::RollingBack { .. }
                | Phase::RolledBack { .. }
                | Phase::Superseded { .. } => 0,
            };
            let to = Phase::Paused {
                step,
                weight: r.phase.weight(),
                since: ctx.now,
                reason: how.reason,
                by_operator: false,
            };
            transition(ctx, out, r, to, how.cause);
        }
    }
}

fn start_rollback(
    ctx: &EnvCtx,
    out: &mut Out,
    env: &EnvState,
    r: &mut Rollout,
    reason: String,
    cause: Cause,
) {
    let release = r.release.clone();
    set_weight(ctx, out, env, &release, Weight(0));
    transition(
        ctx,
        out,
        r,
        Phase::RollingBack {
            reason,
            since: ctx.now,
        },
        cause,
    );
    out.wake(ctx.now);
}

/// Each phase's step function, one look at a time, on a hand-made observation.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ports::RouteWeights;
    use std::collections::BTreeMap;

    const SERVICE: &str = "apiVersion: autopilot/v1\nkind: Service\nname: shop\nrun: {command: bin/shop, image: registry.example.test/shop}\nenvironments:\n  - {name: prod}\ncontroller: steady\nobjectives:\n  - {name: errors, sensor: proxy.errors, target: \"< 1%\"}\n";
    const SENSORS: &str = "apiVersion: autopilot/v1\nkind: Sensors\nsensors:\n  - {name: proxy.errors, source: {proxy: errors}, missingData: {hold: 1m, then: rollback}}\n";

    fn env_plan(extra: &str) -> EnvPlan {
        let steady = format!(
            "apiVersion: autopilot/v1\nkind: Controller\nname: steady\nramp: {{steps: [5, 50]}}\nanalysis: {{interval: 10s, falseRollbackRate: 1%, tolerance: 50%}}\nprogressDeadline: 1h\nblastRadius: {{budget: 100}}\nmissingData: {{hold: 1m, then: rollback}}\nrollback: {{pinPrevious: true}}\n{extra}"
        );
        let catalog = crate::spec::load_texts(&[
            ("shop.yaml", SERVICE),
            ("s.yaml", SENSORS),
            ("steady.yaml", &steady),
        ])
        .unwrap_or_else(|r| panic!("{}", r.render_text()));
        PlanSpec::resolve(&catalog, "shop")
            .unwrap()
            .environments
            .remove(0)
    }

    fn now() -> Time {
        Time::from_secs(10_000)
    }

    fn out() -> Out {
        Out {
            actions: Vec::new(),
            transitions: Vec::new(),
            evidence: Vec::new(),
            notes: Vec::new(),
            next_check: now().plus(IDLE_RECHECK),
            consumed: Vec::new(),
        }
    }

    fn rollout(phase: Phase) -> Rollout {
        Rollout {
            release: "v2".into(),
            phase,
            started_at: Time::from_secs(9_000),
            judges: BTreeMap::new(),
            watches: BTreeMap::new(),
            excess_bad: 0.0,
        }
    }

    fn stable_v1() -> EnvState {
        EnvState {
            stable: Some("v1".into()),
            stable_since: Some(Time::ZERO),
            rollout: None,
            blocked: None,
            previous: None,
        }
    }

    /// What the router serves: v2 at `weight`.
    fn routed(weight: u8) -> Option<BTreeMap<String, RouteWeights>> {
        let w = RouteWeights {
            stable: Some("v1".into()),
            canary: Some("v2".into()),
            weight: Weight(weight),
        };
        Some(BTreeMap::from([("prod".to_owned(), w)]))
    }

    fn ready(failed: bool) -> Option<BTreeMap<(String, String), Readiness>> {
        let r = Readiness {
            ready: u32::from(!failed),
            desired: 1,
            failed,
            reason: failed.then(|| "CrashLoopBackOff".to_owned()),
        };
        Some(BTreeMap::from([(("prod".to_owned(), "v2".to_owned()), r)]))
    }

    struct Fixture {
        env: EnvPlan,
        ov: EnvOverrides,
        observed: Observed,
        state: ServiceState,
    }

    impl Fixture {
        fn new(extra: &str) -> Fixture {
            Fixture {
                env: env_plan(extra),
                ov: EnvOverrides::default(),
                observed: Observed::default(),
                state: ServiceState::default(),
            }
        }

        fn ctx(&self) -> EnvCtx<'_> {
            EnvCtx {
                env: &self.env,
                ov: &self.ov,
                approvals: &[],
                observed: &self.observed,
                now: now(),
                releases: &self.state,
            }
        }
    }

    fn operator_said(reason: &str) -> Actor {
        Actor {
            who: "ann".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn waiting_says_what_it_waits_on_and_deploys_when_every_gate_is_open() {
        let f = Fixture::new("promotion: {gates: [{soak: 610s}]}");
        let upstream = EnvState {
            stable_since: Some(Time::from_secs(9_400)),
            ..stable_v1()
        };
        let since = Time::from_secs(9_000);
        let mut r = rollout(Phase::Waiting {
            since,
            on: String::new(),
        });
        let mut o = out();
        step_waiting(&f.ctx(), Some(&upstream), &mut r, &mut o, since);
        assert!(o.actions.is_empty(), "{:?}", o.actions);
        assert!(o.notes[0].contains("v2 waits in prod: soaking"), "{:?}", o.notes);
        assert_eq!(o.next_check, Time::from_secs(10_010), "woken when the soak ends");
        assert!(
            matches!(&r.phase, Phase::Waiting { on, .. } if on.contains("soak")),
            "{:?}",
            r.phase
        );

        let f = Fixture::new("");
        let mut o = out();
        step_waiting(&f.ctx(), Some(&upstream), &mut r, &mut o, since);
        assert_eq!(
            o.actions,
            [Action::Deploy {
                environment: "prod".into(),
                release: "v2".into()
            }]
        );
        assert!(matches!(r.phase, Phase::Deploying { .. }));
    }

    #[test]
    fn deploying_holds_on_the_unknown_asks_again_rolls_back_a_crash_and_starts_the_ramp() {
        let mut f = Fixture::new("");
        let deploying = || {
            rollout(Phase::Deploying {
                since: Time::from_secs(9_500),
            })
        };
        // the runtime could not be asked: held, nothing decided
        let (mut env, mut r, mut o) = (stable_v1(), deploying(), out());
        step_deploying(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(
            o.actions.is_empty() && o.notes[0].contains("unknown; holding"),
            "{:?}",
            o.notes
        );
        // no instance of it: deployed again
        f.observed.readiness = Some(BTreeMap::new());
        let mut o = out();
        step_deploying(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(
            matches!(o.actions[..], [Action::Deploy { .. }]),
            "{:?}",
            o.actions
        );
        // it cannot start: rolled back, with the runtime's reason
        f.observed.readiness = ready(true);
        let mut o = out();
        step_deploying(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(
            matches!(&r.phase, Phase::RollingBack { reason, .. } if reason.contains("CrashLoopBackOff")),
            "{:?}",
            r.phase
        );
        // ready: the ramp's first step
        f.observed.readiness = ready(false);
        let (mut r, mut o) = (deploying(), out());
        step_deploying(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(
            matches!(
                r.phase,
                Phase::Canary {
                    weight: Weight(5),
                    ..
                }
            ),
            "{:?}",
            r.phase
        );
        // the environment's first release takes everything at once
        let (mut empty, mut r, mut o) = (EnvState::default(), deploying(), out());
        step_deploying(&f.ctx(), &mut empty, &mut r, &mut o);
        assert!(matches!(r.phase, Phase::Promoting { .. }), "{:?}", r.phase);
    }

    #[test]
    fn a_held_strategy_starts_at_weight_0_with_its_preview() {
        let mut f = Fixture::new("strategy: {shadow: {mirror: {share: 25%}}}");
        f.observed.readiness = ready(false);
        let (mut env, mut r, mut o) = (stable_v1(), rollout(Phase::Deploying { since: now() }), out());
        step_deploying(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(
            matches!(
                r.phase,
                Phase::Canary {
                    weight: Weight(0),
                    ..
                }
            ),
            "{:?}",
            r.phase
        );
        assert!(
            matches!(&o.actions[..], [Action::SetWeights { canary_weight: Weight(0), preview: Some(p), .. }] if p.mirror.is_some()),
            "{:?}",
            o.actions
        );
    }

    #[test]
    fn an_operator_weight_holds_the_canary_where_it_was_set() {
        let mut f = Fixture::new("");
        f.ov.weight = Some((Weight(30), operator_said("more traffic")));
        f.observed.routes = routed(5);
        let at = At {
            step: 0,
            weight: Weight(5),
            since: Time::from_secs(9_900),
        };
        let (mut env, mut r, mut o) = (
            stable_v1(),
            rollout(Phase::Canary {
                step: 0,
                weight: Weight(5),
                since: at.since,
            }),
            out(),
        );
        step_canary(&f.ctx(), &mut env, &mut r, &mut o, at);
        assert!(
            matches!(
                r.phase,
                Phase::Canary {
                    weight: Weight(30),
                    ..
                }
            ),
            "{:?}",
            r.phase
        );
        assert!(o.actions.iter().any(|a| matches!(
            a,
            Action::SetWeights {
                canary_weight: Weight(30),
                ..
            }
        )));
        assert!(matches!(&o.transitions[0].cause, Cause::Operator { action, .. } if *action == OperatorStep::SetWeight));
    }

    #[test]
    fn paused_resumes_on_a_resume_which_is_used_up() {
        let mut f = Fixture::new("");
        f.ov.resume = Some(operator_said("looked fine"));
        let at = At {
            step: 1,
            weight: Weight(50),
            since: Time::from_secs(9_000),
        };
        let pause = Pause {
            reason: "progress deadline passed".into(),
            by_operator: false,
        };
        let (mut env, mut r, mut o) = (stable_v1(), rollout(Phase::Deploying { since: now() }), out());
        step_paused(&f.ctx(), &mut env, &mut r, &mut o, at, pause);
        assert!(
            matches!(
                r.phase,
                Phase::Canary {
                    step: 1,
                    weight: Weight(50),
                    ..
                }
            ),
            "{:?}",
            r.phase
        );
        assert_eq!(o.consumed, [("prod".to_owned(), OneShot::Resume)]);
    }

    #[test]
    fn promoting_waits_for_the_router_then_retires_the_old_release() {
        let mut f = Fixture::new("");
        f.observed.routes = routed(50);
        let (mut env, mut r, mut o) = (stable_v1(), rollout(Phase::Promoting { since: now() }), out());
        step_promoting(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(matches!(r.phase, Phase::Promoting { .. }));
        assert!(
            matches!(
                o.actions[..],
                [Action::SetWeights {
                    canary_weight: Weight::MAX,
                    ..
                }]
            ),
            "{:?}",
            o.actions
        );
        f.observed.routes = routed(100);
        let mut o = out();
        step_promoting(&f.ctx(), &mut env, &mut r, &mut o);
        assert!(matches!(r.phase, Phase::Promoted { .. }));
        assert_eq!(env.stable.as_deref(), Some("v2"));
        assert_eq!(
            o.actions,
            [Action::Retire {
                environment: "prod".into(),
                release: "v1".into()
            }]
        );
    }

    #[test]
    fn rolling_back_waits_for_the_router_then_retires_and_pins() {
        let mut f = Fixture::new("");
        f.observed.routes = routed(5);
        let phase = || Phase::RollingBack {
            reason: "errors regressed".into(),
            since: now(),
        };
        let (mut env, mut r, mut o) = (stable_v1(), rollout(phase()), out());
        step_rolling_back(&f.ctx(), &mut env, &mut r, &mut o, "errors regressed".into());
        assert!(
            matches!(
                o.actions[..],
                [Action::SetWeights {
                    canary_weight: Weight(0),
                    ..
                }]
            ),
            "{:?}",
            o.actions
        );
        f.observed.routes = routed(0);
        let mut o = out();
        step_rolling_back(&f.ctx(), &mut env, &mut r, &mut o, "errors regressed".into());
        assert!(matches!(r.phase, Phase::RolledBack { .. }));
        assert_eq!(
            o.actions,
            [Action::Retire {
                environment: "prod".into(),
                release: "v2".into()
            }]
        );
        assert_eq!(
            env.blocked.as_deref(),
            Some("v2"),
            "pinned: only a newer release starts"
        );
    }

    /// Looks at `r` every 10 s from `now()`, `looks` times or until it leaves `r`'s phase: per
    /// look v2 serves `v2_per_look` requests with `v2_bad(look)` bad, v1 `v1_per_look` with one
    /// bad per 200. `step` is the phase's step function. Returns the last look's plan.
    fn look_at(
        f: &mut Fixture,
        r: &mut Rollout,
        looks: u64,
        (v2_per_look, v1_per_look): (u64, u64),
        v2_bad: impl Fn(u64) -> u64,
        step: impl Fn(&EnvCtx, &mut EnvState, &mut Rollout, &mut Out),
    ) -> Out {
        let phase = r.phase.name();
        let (mut v2, mut v1) = (judge::Counts::default(), judge::Counts::default());
        let mut last = out();
        for k in 1..=looks {
            v2 = v2 + judge::Counts::new(v2_bad(k), v2_per_look);
            v1 = v1
                + judge::Counts::new(
                    (k * v1_per_look) / 200 - ((k - 1) * v1_per_look) / 200,
                    v1_per_look,
                );
            let reading = judge::Reading::of(Some(v2), Some(v1));
            f.observed.readings = BTreeMap::from([(("prod".to_owned(), "errors".to_owned()), reading)]);
            let mut ctx = f.ctx();
            ctx.now = now().plus(Duration::from_secs(10 * k));
            let (mut env, mut o) = (stable_v1(), out());
            step(&ctx, &mut env, r, &mut o);
            last = o;
            if r.phase.name() != phase {
                break;
            }
        }
        last
    }

    /// Asserts that `r` is rolling back, started `secs` after `now()`, for a reason that says `why`.
    fn rolled_back_within(r: &Rollout, secs: std::ops::RangeInclusive<u64>, why: &str) {
        let Phase::RollingBack { reason, since } = &r.phase else {
            panic!("rolled back: {:?}", r.phase);
        };
        let at = since.since(now()).as_secs();
        assert!(
            secs.contains(&at),
            "rolled back at {at} s, expected within {secs:?}"
        );
        assert!(reason.contains(why), "{reason}");
    }

    /// Bakes v2 (at 90%, v1 keeping 10%: 900 and 100 requests per look) for `looks` looks.
    fn bake(f: &mut Fixture, looks: u64, v2_bad: impl Fn(u64) -> u64) -> (Rollout, Out) {
        let since = now();
        let mut r = rollout(Phase::Baking {
            weight: Weight(90),
            since,
        });
        f.observed.routes = routed(90);
        let o = look_at(f, &mut r, looks, (900, 100), v2_bad, |ctx, env, r, o| {
            step_baking(ctx, env, r, o, Weight(90), since)
        });
        (r, o)
    }

    #[test]
    fn a_canary_judged_safe_is_still_watched_for_a_change_while_it_waits_for_promotion() {
        let mut f = Fixture::new("");
        // held at 10% by an operator: the judge's word does not promote it
        f.ov.weight = Some((Weight(10), operator_said("watch it at 10% for a while")));
        f.observed.routes = routed(10);
        let at = At {
            step: 0,
            weight: Weight(10),
            since: now(),
        };
        let mut r = rollout(Phase::Canary {
            step: 0,
            weight: Weight(10),
            since: now(),
        });
        // 0.5% bad like v1 for 40 minutes, then 10% bad
        let o = look_at(
            &mut f,
            &mut r,
            300,
            (200, 1800),
            |k| if k > 240 { 20 } else { 1 },
            |ctx, env, r, o| step_canary(ctx, env, r, o, at),
        );
        let judge = &r.judges["errors"];
        assert!(
            judge.safe_absolute.is_some() && judge.safe_relative.is_some(),
            "judged safe on the way"
        );
        assert!(
            judge.regressed.is_none(),
            "the judge's own regression test has not seen it yet: the watch did"
        );
        // caught within 30 s of the change
        rolled_back_within(&r, 2400..=2430, "watching after the judge's word");
        assert!(
            matches!(
                o.transitions[..],
                [Transition {
                    cause: Cause::Regressed { .. },
                    ..
                }]
            ),
            "{:?}",
            o.transitions
        );
    }

    #[test]
    fn baking_promotes_a_release_that_stays_as_good_as_the_previous_one_once_its_time_is_up() {
        let mut f = Fixture::new("bake: {for: 10m, baseline: 10%}\n");
        // 0.5% bad on both sides: nothing changes
        let (r, _) = bake(&mut f, 59, |k| if k % 2 == 0 { 9 } else { 0 });
        assert!(
            matches!(r.phase, Phase::Baking { .. }),
            "not before its time: {:?}",
            r.phase
        );
        let (r, o) = bake(&mut f, 60, |k| if k % 2 == 0 { 9 } else { 0 });
        assert!(matches!(r.phase, Phase::Promoting { .. }), "{:?}", r.phase);
        assert!(
            matches!(o.transitions[..], [Transition { cause: Cause::Baked { looks }, .. }] if looks >= 25),
            "{:?}",
            o.transitions
        );
        assert!(
            matches!(
                o.actions[..],
                [Action::SetWeights {
                    canary_weight: Weight::MAX,
                    ..
                }]
            ),
            "{:?}",
            o.actions
        );
        assert_eq!(o.evidence.len(), 1, "the watch's look is recorded");
    }

    #[test]
    fn baking_rolls_back_a_release_that_changes_for_the_worse_late() {
        let mut f = Fixture::new("bake: {for: 30m, baseline: 10%}\n");
        // as good as v1 for 20 minutes, then 10% bad
        let (r, o) = bake(&mut f, 180, |k| {
            if k > 120 {
                90
            } else if k % 2 == 0 {
                9
            } else {
                0
            }
        });
        // caught within 100 s of the change
        rolled_back_within(&r, 1200..=1300, "changed while baking");
        assert!(
            matches!(
                o.actions[..],
                [Action::SetWeights {
                    canary_weight: Weight(0),
                    ..
                }]
            ),
            "the previous release takes all traffic back: {:?}",
            o.actions
        );
    }

    #[test]
    fn baking_never_ends_on_missing_data_and_acts_on_its_hold() {
        let mut f = Fixture::new("bake: {for: 1m, baseline: 10%}\n");
        let since = now();
        let mut r = rollout(Phase::Baking {
            weight: Weight(90),
            since,
        });
        f.observed.routes = routed(90);
        for k in 1..=12u64 {
            let mut ctx = f.ctx();
            ctx.now = since.plus(Duration::from_secs(10 * k));
            let (mut env, mut o) = (stable_v1(), out());
            step_baking(&ctx, &mut env, &mut r, &mut o, Weight(90), since);
            if !matches!(r.phase, Phase::Baking { .. }) {
                break;
            }
            if k < 7 {
                assert!(matches!(r.phase, Phase::Baking { .. }), "look {k}: {:?}", r.phase);
            }
        }
        // the sensor's hold is 1 minute, then rollback: the bake's end did not promote it
        assert!(
            matches!(&r.phase, Phase::RollingBack { reason, .. } if reason.contains("no data")),
            "{:?}",
            r.phase
        );
    }
}

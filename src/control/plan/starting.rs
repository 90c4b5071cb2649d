//! A rollout from its candidacy to its first traffic: waiting at the gates, deploying, and the
//! first step of the ramp (capped by the blast-radius budget).

use super::*;

/// Waiting for the environment's gates (and a freeze): deploy once every one is open, else say
/// what it waits on and wake when a gate opens by itself.
pub(super) fn step_waiting(
    ctx: &EnvCtx,
    upstream: Option<&EnvState>,
    r: &mut Rollout,
    out: &mut Out,
    since: Time,
) {
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
pub(super) fn step_deploying(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out) {
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

/// Starts the ramp: the first public weight (see [`first_exposure`]), routed and recorded.
pub(super) fn start_ramp(ctx: &EnvCtx, out: &mut Out, env: &EnvState, r: &mut Rollout, cause: Cause) {
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
pub(super) fn first_exposure(ctx: &EnvCtx, r: &Rollout, out: &mut Out) -> Weight {
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

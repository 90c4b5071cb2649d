//! How a rollout ends or holds: paused, baking (a late-change watch), promoting, and stopping
//! (the brakes, a rollback, a pause for a person).

use super::*;

/// Paused: the judge keeps looking. A pause holds the ramp, not the brakes: a regression or a
/// spent budget still rolls back, unless the policy's answer to it is this pause, or the
/// operator paused regardless (then it is said loudly, every look). Lifted by a resume, or by
/// the removal of an operator's pause.
pub(super) fn step_paused(
    ctx: &EnvCtx,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
    at: At,
    pause: Pause,
) {
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
pub(super) fn step_promoting(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out) {
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
pub(super) fn step_rolling_back(
    ctx: &EnvCtx,
    env: &mut EnvState,
    r: &mut Rollout,
    out: &mut Out,
    reason: String,
) {
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

/// The release's weight while it bakes (all but the baseline), when the policy bakes.
pub(super) fn bake_weight(ctx: &EnvCtx) -> Option<Weight> {
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
pub(super) fn step_baking(
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
pub(super) fn watch_config(ctx: &EnvCtx, judge: &judge::JudgeConfig) -> WatchConfig {
    let bake = ctx.ctl().bake.map_or(std::time::Duration::ZERO, |b| b.duration.0);
    WatchConfig::for_judge(judge, ctx.ctl().progress_deadline.0 + bake, ctx.interval())
}

/// Why and how a rollout must stop.
pub(super) struct Stop {
    pub(super) action: StopAction,
    pub(super) reason: String,
    pub(super) cause: Cause,
}

impl Stop {
    /// The progress deadline passed: the policy's `onDeadline`.
    pub(super) fn deadline(ctl: &ControllerSpec, reason: &str) -> Stop {
        Stop {
            action: ctl.rollback.on_deadline,
            reason: reason.to_owned(),
            cause: Cause::Deadline,
        }
    }
}

/// The brakes: a regression, or the blast-radius budget spent (bad canary requests beyond
/// stable's, worst objective, counted per look). Updates the rollout's excess count.
pub(super) fn brakes(ctx: &EnvCtx, r: &mut Rollout, verdicts: &Verdicts) -> Option<Stop> {
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
pub(super) fn stop(ctx: &EnvCtx, out: &mut Out, env: &EnvState, r: &mut Rollout, how: Stop) {
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

pub(super) fn start_rollback(
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

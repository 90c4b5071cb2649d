//! A canary, or a release held at weight 0 by its strategy: the judge looks at every objective,
//! then the brakes, missing data, an operator's weight, the end of the held stage, promotion at
//! the ramp's end, or the next step.

use super::*;

/// The share of the environment's traffic the router gives `release` now (`None`: unknown).
pub(super) fn routed_share(ctx: &EnvCtx, release: &str) -> Option<u8> {
    let routes = ctx.observed.routes.as_ref()?;
    Some(routes.get(&ctx.env.name).map_or(0, |r| r.share_of(release)))
}

/// Feeds this tick's readings to every objective's judge; returns the verdicts.
pub(super) fn judge_all(
    ctx: &EnvCtx,
    r: &mut Rollout,
    out: &mut Out,
) -> Vec<(String, judge::Judgement, MissingData)> {
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
pub(super) type Verdicts = [(String, judge::Judgement, MissingData)];

/// A canary, or a release held at weight 0 by its strategy. Its route is kept as planned, the
/// judge looks, then in order: the brakes and an operator's pause, missing data, the deadline
/// and an operator's weight, the end of the held stage, promotion at the ramp's end, the next
/// step.
pub(super) fn step_canary(ctx: &EnvCtx, env: &mut EnvState, r: &mut Rollout, out: &mut Out, at: At) {
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
pub(super) fn reassert_route(ctx: &EnvCtx, out: &mut Out, env: &EnvState, release: &str, weight: Weight) {
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
pub(super) fn brake_or_pause(
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
pub(super) enum Gap {
    None,
    /// Held at this weight until the data returns or the objective's hold runs out.
    Holding,
    /// The hold ran out: the policy's action was taken.
    Stopped,
}

/// Missing data holds the weight; past the objective's hold, its policy acts (whatever the
/// verdict: a canary found safe earlier may have died since).
pub(super) fn missing_data(
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
pub(super) fn operator_weight(ctx: &EnvCtx, env: &EnvState, r: &mut Rollout, out: &mut Out, at: At) -> bool {
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
pub(super) fn leave_the_held_stage(
    ctx: &EnvCtx,
    env: &EnvState,
    r: &mut Rollout,
    out: &mut Out,
    verdicts: &Verdicts,
) {
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
pub(super) fn promote_when_evidence_suffices(
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

/// The cause of a decision that every objective is safe: `SafeInSegment` when an A/B release
/// leaves its segment (`held`), else what `other` makes of the judge's words.
pub(super) fn safe_cause(
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
pub(super) fn raise_weight(
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
pub(super) fn in_words(verdicts: &[(String, judge::Judgement, MissingData)]) -> Vec<ObjectiveWords> {
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

pub(super) fn summary(verdicts: &[(String, judge::Judgement, MissingData)]) -> String {
    verdicts
        .iter()
        .map(|(o, j, _)| format!("{o}: {}", j.evidence.explanation))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The largest weight at which a canary as bad as the evidence still allows would serve at
/// most the remaining budget of excess bad requests before the next look. `arms` holds, per
/// objective, the canary's upper bound and the counts since the rollout started.
pub(super) fn weight_cap(ctx: &EnvCtx, r: &Rollout, arms: &[(f64, Counts, Counts)]) -> Weight {
    let budget = ramp::Budget {
        remaining: ctx.ctl().blast_radius.budget as f64 - r.excess_bad,
        elapsed_secs: ctx.now.since(r.started_at).as_secs_f64(),
        interval_secs: ctx.interval().as_secs_f64(),
    };
    ramp::budget_cap(budget, arms)
}

pub(super) fn evidence_arms(
    verdicts: &[(String, judge::Judgement, MissingData)],
) -> Vec<(f64, Counts, Counts)> {
    verdicts
        .iter()
        .map(|(_, j, _)| (j.evidence.canary_upper, j.evidence.canary, j.evidence.stable))
        .collect()
}

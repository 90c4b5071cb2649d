//! `plan` as a pure function: each rule of the state machine, one situation at a time.

/// Each phase's step function, one look at a time, on a hand-made observation.
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
    assert!(
        matches!(&o.transitions[0].cause, Cause::Operator { action, .. } if *action == OperatorStep::SetWeight)
    );
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

//! The store suite, run on both backends: SQLite in a temporary directory and a real
//! PostgreSQL server started for this test binary on a free loopback port.

use autopilot::control::overrides::{self, OverrideAction};
use autopilot::control::ports::{PortError, Store};
use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::spec::units::Weight;
use autopilot::store::api::{AuditEntry, Effect, Idempotency, Mutated};
use autopilot::store::postgres::TempPostgres;
use autopilot::store::{Backend, SqlStore};

fn plan_with(state: ServiceState) -> Plan {
    Plan {
        state,
        actions: Vec::new(),
        transitions: Vec::new(),
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: Time::ZERO,
        consumed: Vec::new(),
    }
}

/// A tick that carried out `which` in `env`, recorded at the loaded version.
async fn record_consuming(s: &mut SqlStore, env: &str, which: OneShot) -> Result<(), PortError> {
    let l = s.load("svc").await?;
    let mut p = plan_with(l.state);
    p.consumed.push((env.to_owned(), which));
    s.record("svc", l.version, &p, &[]).await
}

fn canary_state() -> ServiceState {
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
    env.rollout = Some(Rollout {
        release: "r2".into(),
        phase: Phase::Canary {
            step: 0,
            weight: Weight(10),
            since: Time::ZERO,
        },
        started_at: Time::ZERO,
        judges: Default::default(),
        watches: Default::default(),
        excess_bad: 0.0,
    });
    s
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        environment: Some("prod".into()),
        release: Some("r2".into()),
        action: action.into(),
        detail: serde_json::json!({"action": action}),
        who: "ann".into(),
        reason: "testing".into(),
        origin: "127.0.0.1".into(),
        at: Time::from_secs(100),
    }
}

/// Applies an operator action the way the API does.
async fn operate(store: &SqlStore, action: OverrideAction, key: Option<&str>) -> Mutated<overrides::Refused> {
    let idem = key.map(|k| Idempotency {
        token: "tokenhash".into(),
        key: k.into(),
        request: format!("{action:?}"),
        now: Time::from_secs(100),
    });
    store
        .mutate(
            "svc",
            idem.as_ref(),
            |state, ov| {
                let actor = Actor {
                    who: "ann".into(),
                    reason: "testing".into(),
                };
                let applied = overrides::apply(state, ov, "prod", &action, actor, Time::from_secs(100))?;
                Ok(Effect {
                    audit: entry(action.name()),
                    overrides_changed: applied.changed,
                    build: None,
                    image: None,
                    fetch: false,
                    delivery: None,
                })
            },
            |id, _, ov| (200, serde_json::json!({"audit": id, "overrides": ov}).to_string()),
        )
        .await
        .unwrap()
}

async fn suite(open: impl AsyncFn() -> String) {
    a_stale_version_is_refused_and_nothing_of_it_is_written(&open().await).await;
    state_and_overrides_survive_a_reopen(&open().await).await;
    a_mutation_writes_its_audit_with_its_effect_and_a_refusal_writes_nothing(&open().await).await;
    an_idempotency_key_gives_the_first_answer_again(&open().await).await;
    the_loop_clearing_a_one_shot_never_loses_an_operators_write(&open().await).await;
    a_one_shot_outlives_a_tick_that_lost_the_version_race(&open().await).await;
    releases_page_newest_first_with_a_cursor(&open().await).await;
    tokens_are_stored_hashed(&open().await).await;
    the_chart_keeps_a_sample_every_few_seconds_and_one_at_each_transition(&open().await).await;
}

/// The judge's word on `objective` of r2 in prod at `secs`, with `total` canary requests.
fn evidence(objective: &str, secs: u64, total: u64) -> ObjectiveEvidence {
    use autopilot::control::judge::{Counts, Evidence, Judgement, Verdict};
    ObjectiveEvidence {
        environment: "prod".into(),
        release: "r2".into(),
        objective: objective.into(),
        judgement: Judgement {
            verdict: Verdict::Safe,
            evidence: Evidence {
                canary: Counts { bad: 0, total },
                stable: Counts {
                    bad: 0,
                    total: 10 * total,
                },
                regression_e: 1.0,
                regression_threshold: 200.0,
                safety_e: 1.0,
                safety_threshold: 120.0,
                canary_upper: 0.01,
                explanation: String::new(),
                words: String::new(),
            },
        },
        weight: 20,
        at: Time::from_secs(secs),
    }
}

async fn the_chart_keeps_a_sample_every_few_seconds_and_one_at_each_transition(url: &str) {
    let mut s = SqlStore::open(url).await.unwrap();
    // a look every second for 25 s; a transition at 13 s
    for (version, secs) in (0..25u64).enumerate() {
        let mut p = plan_with(canary_state());
        p.evidence = vec![
            evidence("errors", secs, secs * 10),
            evidence("latency", secs, secs * 10),
        ];
        if secs == 13 {
            p.transitions.push(Transition {
                environment: "prod".into(),
                release: "r2".into(),
                from: Some(PhaseKind::Canary),
                to: PhaseKind::Canary,
                weight: Weight(50),
                cause: Cause::Ready,
                at: Time::from_secs(secs),
            });
        }
        s.record("svc", version as u64, &p, &[]).await.unwrap();
    }
    let samples = s.release_samples("svc", "r2").await.unwrap();
    let times = |o: &str| -> Vec<u64> {
        samples
            .iter()
            .filter(|x| x.objective == o)
            .map(|x| x.at.millis() / 1000)
            .collect()
    };
    assert_eq!(
        times("errors"),
        vec![0, 10, 13, 23],
        "every 10 s after the last, and at the transition"
    );
    assert_eq!(times("latency"), times("errors"));
    assert_eq!(samples[0].canary.total, 0);
    assert_eq!(samples.last().unwrap().canary.total, 230);
}

async fn a_stale_version_is_refused_and_nothing_of_it_is_written(url: &str) {
    let mut a = SqlStore::open(url).await.unwrap();
    let mut b = SqlStore::open(url).await.unwrap();
    let loaded_a = a.load("svc").await.unwrap();
    let loaded_b = b.load("svc").await.unwrap();
    assert_eq!(loaded_a.version, 0);
    let mut p = plan_with(ServiceState::default());
    p.transitions.push(Transition {
        environment: "dev".into(),
        release: "r1".into(),
        from: None,
        to: PhaseKind::Waiting,
        weight: Weight(0),
        cause: Cause::Candidate,
        at: Time::from_secs(5),
    });
    a.record("svc", loaded_a.version, &p, &[]).await.unwrap();
    // b loaded the same version before a wrote: refused, and its transition not kept
    let err = b.record("svc", loaded_b.version, &p, &[]).await.unwrap_err();
    assert!(err.message.contains("another writer"), "{err}");
    assert_eq!(a.transitions(Some("svc")).await.unwrap().len(), 1);
    let again = b.load("svc").await.unwrap();
    assert_eq!(again.version, 1);
    b.record("svc", again.version, &plan_with(ServiceState::default()), &[])
        .await
        .unwrap();
    assert_eq!(a.load("svc").await.unwrap().version, 2);
    a.close().await;
    b.close().await;
}

async fn state_and_overrides_survive_a_reopen(url: &str) {
    let state = canary_state();
    {
        let mut s = SqlStore::open(url).await.unwrap();
        s.record("svc", 0, &plan_with(state.clone()), &[]).await.unwrap();
        let mut ov = Overrides::default();
        ov.environments.entry("dev".into()).or_default().promote = Some(Actor {
            who: "ann".into(),
            reason: "hotfix".into(),
        });
        s.set_overrides("svc", &ov).await.unwrap();
        s.close().await;
    }
    let mut s = SqlStore::open(url).await.unwrap();
    let loaded = s.load("svc").await.unwrap();
    assert_eq!(loaded.state, state);
    assert!(loaded.overrides.environments["dev"].promote.is_some());
    record_consuming(&mut s, "dev", OneShot::Promote).await.unwrap();
    assert!(
        s.load("svc").await.unwrap().overrides.environments["dev"]
            .promote
            .is_none()
    );
    s.close().await;
}

async fn a_mutation_writes_its_audit_with_its_effect_and_a_refusal_writes_nothing(url: &str) {
    let mut s = SqlStore::open(url).await.unwrap();
    s.record("svc", 0, &plan_with(canary_state()), &[]).await.unwrap();
    let Mutated::Done { status, body } = operate(&s, OverrideAction::Pause, None).await else {
        panic!("pause refused")
    };
    assert_eq!(status, 200);
    assert!(body.contains("\"pause\""), "{body}");
    assert!(
        s.load("svc").await.unwrap().overrides.environments["prod"]
            .pause
            .is_some()
    );
    let audit = s.audit(Some("svc"), None, None, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].action.as_str(), audit[0].who.as_str()),
        ("pause", "ann")
    );
    // resume is fine, a second resume is a conflict: no audit record, no change
    assert!(matches!(
        operate(&s, OverrideAction::Resume, None).await,
        Mutated::Done { .. }
    ));
    let before = s.load("svc").await.unwrap().overrides;
    let refused = operate(&s, OverrideAction::Resume, None).await;
    assert!(
        matches!(refused, Mutated::Refused(overrides::Refused::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(s.load("svc").await.unwrap().overrides, before);
    assert_eq!(s.audit(Some("svc"), None, None, 10).await.unwrap().len(), 2);
    s.close().await;
}

async fn an_idempotency_key_gives_the_first_answer_again(url: &str) {
    let mut s = SqlStore::open(url).await.unwrap();
    s.record("svc", 0, &plan_with(canary_state()), &[]).await.unwrap();
    let first = operate(&s, OverrideAction::Weight(Weight(30)), Some("k1")).await;
    let again = operate(&s, OverrideAction::Weight(Weight(30)), Some("k1")).await;
    let (Mutated::Done { body: a, .. }, Mutated::Done { body: b, .. }) = (first, again) else {
        panic!("not done")
    };
    assert_eq!(a, b);
    assert_eq!(
        s.audit(Some("svc"), None, None, 10).await.unwrap().len(),
        1,
        "a retry is not a second action"
    );
    // the same key for another request is refused
    let other = operate(&s, OverrideAction::Weight(Weight(50)), Some("k1")).await;
    assert!(matches!(other, Mutated::KeyReused), "{other:?}");
    // a day later the key is forgotten: the same key is a new request
    let later = Idempotency {
        token: "tokenhash".into(),
        key: "k1".into(),
        request: "another".into(),
        now: Time::from_secs(100 + 25 * 3600),
    };
    let next_day = s
        .mutate(
            "svc",
            Some(&later),
            |_, _| {
                let mut audit = entry("freeze");
                audit.at = Time::from_secs(100 + 25 * 3600);
                Ok::<_, ()>(Effect {
                    audit,
                    overrides_changed: false,
                    build: None,
                    image: None,
                    fetch: false,
                    delivery: None,
                })
            },
            |_, _, _| (200, "{}".into()),
        )
        .await
        .unwrap();
    assert!(matches!(next_day, Mutated::Done { .. }), "{next_day:?}");
    s.close().await;
}

async fn the_loop_clearing_a_one_shot_never_loses_an_operators_write(url: &str) {
    let mut s = SqlStore::open(url).await.unwrap();
    s.record("svc", 0, &plan_with(canary_state()), &[]).await.unwrap();
    let mut ov = Overrides::default();
    ov.environments.entry("prod".into()).or_default().promote = Some(Actor {
        who: "bob".into(),
        reason: "now".into(),
    });
    s.set_overrides("svc", &ov).await.unwrap();
    // forty clears from the loop's side, and three operators freezing and unfreezing at once
    let mut loop_side = s.clone();
    let clears = tokio::spawn(async move {
        for _ in 0..40 {
            record_consuming(&mut loop_side, "prod", OneShot::Promote)
                .await
                .unwrap();
        }
    });
    let operators: Vec<_> = (0..3)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    let action = if i % 2 == 0 {
                        OverrideAction::Freeze
                    } else {
                        OverrideAction::Unfreeze
                    };
                    assert!(matches!(operate(&s, action, None).await, Mutated::Done { .. }));
                }
            })
        })
        .collect();
    for o in operators {
        o.await.unwrap();
    }
    operate(&s, OverrideAction::Freeze, None).await;
    clears.await.unwrap();
    let o = s.load("svc").await.unwrap().overrides;
    assert!(
        o.environments["prod"].freeze.is_some(),
        "the operator's last freeze was lost"
    );
    assert!(o.environments["prod"].promote.is_none());
    s.close().await;
}

/// Guards against the one-shot being lifted in a transaction of its own before the tick was
/// recorded: when the record then lost a version race, the operator's promote was gone and
/// nothing had happened.
async fn a_one_shot_outlives_a_tick_that_lost_the_version_race(url: &str) {
    let mut s = SqlStore::open(url).await.unwrap();
    s.record("svc", 0, &plan_with(canary_state()), &[]).await.unwrap();
    let mut ov = Overrides::default();
    ov.environments.entry("prod".into()).or_default().promote = Some(Actor {
        who: "bob".into(),
        reason: "now".into(),
    });
    s.set_overrides("svc", &ov).await.unwrap();
    let mut other = SqlStore::open(url).await.unwrap();
    let loaded = s.load("svc").await.unwrap();
    // another controller records first
    let theirs = other.load("svc").await.unwrap();
    other
        .record("svc", theirs.version, &plan_with(theirs.state), &[])
        .await
        .unwrap();
    let mut p = plan_with(loaded.state);
    p.consumed.push(("prod".into(), OneShot::Promote));
    let err = s.record("svc", loaded.version, &p, &[]).await.unwrap_err();
    assert!(err.message.contains("another writer"), "{err}");
    assert!(
        s.load("svc").await.unwrap().overrides.environments["prod"]
            .promote
            .is_some(),
        "the operator's promote was lost with the refused tick"
    );
    // the next tick carries it out, and lifts it with its record
    record_consuming(&mut s, "prod", OneShot::Promote).await.unwrap();
    assert!(
        s.load("svc").await.unwrap().overrides.environments["prod"]
            .promote
            .is_none()
    );
    other.close().await;
    s.close().await;
}

async fn releases_page_newest_first_with_a_cursor(url: &str) {
    let s = SqlStore::open(url).await.unwrap();
    for i in 0..25 {
        sqlx::query(
            "INSERT INTO builds (service, commit_sha, status, started_at, finished_at, digest, release, output) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind("svc")
        .bind(format!("c{i:02}"))
        // every fifth build failed: not a release
        .bind(if i % 5 == 4 { "failed" } else { "built" })
        .bind(i as i64)
        .bind(i as i64 + 1)
        .bind(format!("sha256:{i:02}"))
        .bind(format!("r{i:02}"))
        .bind("output")
        .execute(s.pool())
        .await
        .unwrap();
    }
    let page1 = s.releases("svc", None, 8).await.unwrap();
    let ids: Vec<_> = page1.iter().map(|b| b.release.clone().unwrap()).collect();
    assert_eq!(ids, ["r23", "r22", "r21", "r20", "r18", "r17", "r16", "r15"]);
    assert!(page1.iter().all(|b| b.output.is_empty()), "lists carry no output");
    let page2 = s
        .releases("svc", Some(page1.last().unwrap().seq), 8)
        .await
        .unwrap();
    assert_eq!(page2[0].release.as_deref(), Some("r13"));
    let full = s.release("r13").await.unwrap().unwrap();
    assert_eq!(full.output, "output");
    assert!(
        s.release("r14").await.unwrap().is_none(),
        "a failed build is no release"
    );
    s.close().await;
}

async fn tokens_are_stored_hashed(url: &str) {
    let s = SqlStore::open(url).await.unwrap();
    let secret = s.create_token("ann", "operator", &["sre".into()]).await.unwrap();
    let info = s.token(&secret).await.unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.role.as_str()), ("ann", "operator"));
    assert_eq!(info.groups, ["sre"]);
    assert!(s.token("ap_wrong").await.unwrap().is_none());
    let stored: Vec<String> = sqlx::query_scalar("SELECT hash FROM tokens")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert!(
        !stored.iter().any(|h| h.contains(&secret[3..])),
        "the secret itself is stored"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    suite(async || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("sqlite://{}", dir.path().join(format!("s{i}.db")).display());
        assert_eq!(Backend::of(&url), Some(Backend::Sqlite));
        url
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_suite_on_postgres() {
    let pg = TempPostgres::start().expect("PostgreSQL starts (scripts/test installs it)");
    suite(async || {
        let url = pg.database().await.unwrap();
        assert_eq!(Backend::of(&url), Some(Backend::Postgres));
        url
    })
    .await;
}

#[tokio::test]
async fn a_url_that_is_no_store_says_what_to_write() {
    let err = SqlStore::open("mysql://x@localhost/db").await.unwrap_err();
    assert!(err.to_string().contains("write `sqlite://PATH`"), "{err}");
    let err = SqlStore::open("postgres://ann:secret@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "the password leaks: {err}");
}

//! Notifications to real HTTP endpoints on loopback: a Slack-compatible one, a generic JSON one
//! that fails twice before it takes the message, and a dead one; every outcome recorded.

use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::live::config::{NotificationEvent, NotificationKind};
use autopilot::live::notify::{self, Notifier, Sink};
use autopilot::spec::units::Weight;
use autopilot::store::SqlStore;
use axum::extract::State;
use axum::http::StatusCode;
use sqlx::Row;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Capture {
    bodies: Arc<Mutex<Vec<String>>>,
    /// Answer 500 to this many requests first.
    failures: Arc<Mutex<u32>>,
}

async fn receiver(c: Capture) -> String {
    async fn take(State(c): State<Capture>, body: String) -> StatusCode {
        let mut f = c.failures.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        c.bodies.lock().unwrap().push(body);
        StatusCode::OK
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state(c);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn plan() -> Plan {
    let mut state = ServiceState::default();
    let env = state.environments.entry("prod".into()).or_default();
    env.rollout = Some(Rollout {
        release: "r3".into(),
        phase: Phase::Waiting {
            since: Time::from_secs(9),
            on: "approval by sre".into(),
        },
        started_at: Time::from_secs(9),
        judges: Default::default(),
        watches: Default::default(),
        excess_bad: 0.0,
    });
    Plan {
        state,
        actions: Vec::new(),
        transitions: vec![
            Transition {
                environment: "staging".into(),
                release: "r2".into(),
                from: Some(PhaseKind::RollingBack),
                to: PhaseKind::RolledBack,
                weight: Weight(0),
                cause: Cause::Completed,
                at: Time::from_secs(10),
            },
            Transition {
                environment: "dev".into(),
                release: "r3".into(),
                from: Some(PhaseKind::Promoting),
                to: PhaseKind::Promoted,
                weight: Weight(100),
                cause: Cause::Completed,
                at: Time::from_secs(10),
            },
            Transition {
                environment: "dev".into(),
                release: "r4".into(),
                from: Some(PhaseKind::Canary),
                to: PhaseKind::Paused,
                weight: Weight(20),
                cause: Cause::Deadline,
                at: Time::from_secs(10),
            },
        ],
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: Time::ZERO,
        consumed: Vec::new(),
    }
}

#[test]
fn a_tick_becomes_rollback_promotion_stuck_and_approval_events_once_each() {
    let mut seen = Default::default();
    let kinds: Vec<_> = notify::events("shop", &plan(), &mut seen)
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            NotificationEvent::Rollback,
            NotificationEvent::Promotion,
            NotificationEvent::Stuck,
            NotificationEvent::Approval
        ]
    );
    // the same approval still waiting at the next tick is not announced again
    let mut again = plan();
    again.transitions.clear();
    assert!(notify::events("shop", &again, &mut seen).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_retried_and_every_outcome_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_dir(dir.path()).await.unwrap();
    let slack = Capture::default();
    let hook = Capture::default();
    *hook.failures.lock().unwrap() = 2;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone", l.local_addr().unwrap())
    };
    let sinks = vec![
        Sink {
            kind: NotificationKind::Slack,
            name: "slack:test".into(),
            url: receiver(slack.clone()).await,
            events: vec![NotificationEvent::Rollback],
        },
        Sink {
            kind: NotificationKind::Webhook,
            name: "webhook:test".into(),
            url: receiver(hook.clone()).await,
            events: Vec::new(),
        },
        Sink {
            kind: NotificationKind::Webhook,
            name: "webhook:dead".into(),
            url: dead,
            events: vec![NotificationEvent::Promotion],
        },
    ];
    let notifier = Notifier::start(
        sinks,
        store.clone(),
        "http://127.0.0.1:7070".into(),
        Some(Duration::from_millis(5)),
    )
    .unwrap();
    let mut seen = Default::default();
    notifier.send(notify::events("shop", &plan(), &mut seen));
    // 1 to slack (rollback only), 4 to the webhook, 1 to the dead one
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = sqlx::query(
            "SELECT sink, event, payload, attempts, delivered, error FROM notifications ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        if rows.len() == 6 {
            break rows;
        }
        assert!(Instant::now() < deadline, "{} of 6 recorded", rows.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let slack_bodies = slack.bodies.lock().unwrap().clone();
    assert_eq!(slack_bodies.len(), 1);
    let text: serde_json::Value = serde_json::from_str(&slack_bodies[0]).unwrap();
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .contains("r2 rolled back in staging"),
        "{text}"
    );
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .contains("http://127.0.0.1:7070/v1/releases/r2")
    );
    let hook_bodies = hook.bodies.lock().unwrap().clone();
    assert_eq!(
        hook_bodies.len(),
        4,
        "every event reaches the webhook after its failures"
    );
    let events: Vec<serde_json::Value> = hook_bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "approval" && e["release"] == "r3" && e["environment"] == "prod")
    );
    assert!(events.iter().all(|e| {
        e["links"]["api"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:7070/v1/releases/")
    }));
    // deliveries run side by side: the two 500s fell on some of them, which tried again
    let hook_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<String, _>("sink") == "webhook:test")
        .collect();
    assert!(hook_rows.iter().all(|r| r.get::<i64, _>("delivered") == 1));
    let attempts: i64 = hook_rows.iter().map(|r| r.get::<i64, _>("attempts")).sum();
    assert_eq!(attempts, 4 + 2, "two 500s, each tried again");
    let dead: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<String, _>("sink") == "webhook:dead")
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<i64, _>("delivered"), 0);
    assert_eq!(dead[0].get::<i64, _>("attempts"), 5);
    assert!(dead[0].get::<Option<String>, _>("error").is_some());
}

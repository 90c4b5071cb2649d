//! Notifications: a Slack-compatible incoming webhook and a generic JSON webhook, told of a
//! rollback, a promotion, a release waiting for approval, and a rollout stuck past its
//! deadline. Each payload carries the link to the release in the API.
//!
//! # Guarantees
//! - Never blocks the loop: events go into a bounded queue (`try_send`); a full queue drops
//!   the event and records that it did.
//! - Each delivery is retried with exponential backoff, and its outcome (attempts, delivered or
//!   the last error) is recorded in the store's `notifications` table.
//! - One slow or dead sink never delays another: each delivery runs on its own task.

use super::config::{NotificationEvent, NotificationKind, NotificationSink};
pub use crate::control::announce::{Event, events};
use crate::store::SqlStore;
use serde_json::json;
use std::time::Duration;

/// How many events may wait for delivery before new ones are dropped (a burst of rollbacks
/// across many services fits; a dead sink cannot grow memory without bound).
const QUEUE: usize = 1024;
/// Attempts per delivery, and the first wait between them (doubling).
const ATTEMPTS: u32 = 5;
const BACKOFF: Duration = Duration::from_secs(1);
/// The longest one attempt may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The bodies a sink receives.
pub fn payload(kind: NotificationKind, e: &Event, api_base: &str) -> serde_json::Value {
    let api = format!("{api_base}/v1/releases/{}", e.release);
    let summary = crate::report::announcement(e);
    match kind {
        NotificationKind::Slack => json!({ "text": format!("{summary} — {api}") }),
        NotificationKind::Webhook => json!({
            "event": e.kind,
            "service": e.service,
            "environment": e.environment,
            "release": e.release,
            "summary": summary,
            "at": e.at.to_string(),
            "links": { "api": api },
        }),
    }
}

/// Sends events to the configured sinks in the background.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Option<tokio::sync::mpsc::Sender<Event>>,
    store: SqlStore,
}

/// One sink, resolved (its URL read from the environment).
#[derive(Debug, Clone)]
pub struct Sink {
    pub kind: NotificationKind,
    /// How the records name it (`slack:VARIABLE`).
    pub name: String,
    pub url: String,
    /// The events it wants (empty: all).
    pub events: Vec<NotificationEvent>,
}

/// Reads each sink's URL from its environment variable.
pub fn resolve(sinks: &[NotificationSink]) -> Result<Vec<Sink>, String> {
    let mut resolved = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        let url = std::env::var(&s.url_variable).map_err(|_| {
            format!(
                "notifications[{i}]: the environment variable {} is not set",
                s.url_variable
            )
        })?;
        let parsed = url::Url::parse(&url)
            .map_err(|e| format!("notifications[{i}]: {} holds no URL: {e}", s.url_variable))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "notifications[{i}]: {} is not an http(s) URL",
                s.url_variable
            ));
        }
        resolved.push(Sink {
            kind: s.kind,
            name: format!("{}:{}", s.kind.name(), s.url_variable),
            url,
            events: s.events.clone(),
        });
    }
    Ok(resolved)
}

impl Notifier {
    /// Starts the delivery task (none without sinks). `backoff` is the first wait between
    /// attempts (tests shorten it).
    pub fn start(
        resolved: Vec<Sink>,
        store: SqlStore,
        api_base: String,
        backoff: Option<Duration>,
    ) -> Result<Notifier, String> {
        if resolved.is_empty() {
            return Ok(Notifier { tx: None, store });
        }
        // reqwest is built without a default TLS provider (see DEPENDENCIES.md)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let backoff = backoff.unwrap_or(BACKOFF);
        let store2 = store.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                for sink in resolved
                    .iter()
                    .filter(|s| s.events.is_empty() || s.events.contains(&e.kind))
                {
                    let body = payload(sink.kind, &e, &api_base);
                    tokio::spawn(deliver(
                        client.clone(),
                        store2.clone(),
                        sink.clone(),
                        e.clone(),
                        body,
                        backoff,
                    ));
                }
            }
        });
        Ok(Notifier { tx: Some(tx), store })
    }

    /// Queues events; never waits.
    pub fn send(&self, events: Vec<Event>) {
        let Some(tx) = &self.tx else { return };
        for e in events {
            if let Err(err) = tx.try_send(e) {
                let e = match err {
                    tokio::sync::mpsc::error::TrySendError::Full(e)
                    | tokio::sync::mpsc::error::TrySendError::Closed(e) => e,
                };
                tracing::warn!(service = %e.service, event = e.kind.name(), "notification dropped: the queue is full");
                let store = self.store.clone();
                tokio::spawn(async move {
                    record(
                        &store,
                        "queue",
                        &e,
                        &json!({}),
                        0,
                        false,
                        Some("dropped: the queue was full"),
                    )
                    .await;
                });
            }
        }
    }
}

async fn record(
    store: &SqlStore,
    sink: &str,
    e: &Event,
    body: &serde_json::Value,
    attempts: u32,
    delivered: bool,
    error: Option<&str>,
) {
    let _ = sqlx::query(
        "INSERT INTO notifications (sink, event, payload, attempts, delivered, error, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(sink)
    .bind(e.kind.name())
    .bind(body.to_string())
    .bind(i64::from(attempts))
    .bind(i64::from(delivered))
    .bind(error)
    .bind(e.at.millis() as i64)
    .execute(store.pool())
    .await;
}

async fn deliver(
    client: reqwest::Client,
    store: SqlStore,
    sink: Sink,
    e: Event,
    body: serde_json::Value,
    backoff: Duration,
) {
    let mut wait = backoff;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(&sink.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                record(&store, &sink.name, &e, &body, attempt, true, None).await;
                return;
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(err) => last = err.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    tracing::warn!(sink = %sink.name, event = e.kind.name(), service = %e.service, "notification not delivered: {last}");
    record(&store, &sink.name, &e, &body, ATTEMPTS, false, Some(&last)).await;
}

//! Live updates as server-sent events (`GET /v1/events`): the web pages and `autopilot watch`
//! follow rollouts without polling the whole API.
//!
//! The stream reads the store, not the loop's memory, so it works the same behind `autopilot
//! up`, `autopilot api` alone, and several API processes on one PostgreSQL. Once a second it
//! sends every transition recorded since the last (`event: transition`, with the transition's
//! number as the event id, so a client that reconnects with `Last-Event-ID` misses none), then
//! `event: change` if anything a display shows changed (a state, an override, an audit record,
//! a build, a look by the judge).

use super::views::{ErrorBody, TransitionView, transition_view};
use super::{ApiError, ApiState, Role};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use utoipa::ToSchema;

/// How often the stream looks at the store.
pub const EVENTS_POLL: Duration = Duration::from_secs(1);
/// The most transitions one look sends (the rest follow at the next).
const BATCH: i64 = 200;
/// The most event streams one token may hold open at once: a person's tabs and terminals fit
/// many times over, while a leaked or looping client cannot hold the API's sockets (each
/// stream is one connection and one look at the store a second).
pub const MAX_STREAMS_PER_TOKEN: usize = 16;

/// The event streams open now, per token (by its hash; anonymous readers share one count).
#[derive(Debug, Clone, Default)]
pub struct Streams(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

impl Streams {
    /// A place for one more stream of `token`, held until the stream ends; `None` when the
    /// token holds [`MAX_STREAMS_PER_TOKEN`] already.
    fn open(&self, token: &str) -> Option<StreamSlot> {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(token.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: self.clone(),
            token: token.to_owned(),
        })
    }

    /// How many streams `token` holds open now.
    pub fn open_for(&self, token: &str) -> usize {
        let open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.get(token).copied().unwrap_or(0)
    }
}

/// One open stream's place; given back when the stream is dropped (ended or disconnected).
#[derive(Debug)]
struct StreamSlot {
    streams: Streams,
    token: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only this service's events.
    service: Option<String>,
}

/// Set when the server stops: every stream ends.
#[derive(Debug, Clone)]
pub struct Closing(pub tokio::sync::watch::Receiver<bool>);

/// A transition, as `event: transition` carries it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransitionEvent {
    /// The transition's number (also the event's id).
    pub id: i64,
    pub service: String,
    pub environment: String,
    pub release: String,
    #[serde(flatten)]
    pub transition: TransitionView,
}

/// Rollouts as they move: `transition` events (id: the transition's number; resume with
/// `Last-Event-ID`) and `change` events (something shown changed; read the views again). The
/// stream ends when the server stops or the token is revoked (checked at every look); a
/// comment every 15 s keeps idle connections open. One token holds at most 16 streams at once.
#[utoipa::path(get, path = "/v1/events", tag = "read",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "The last transition seen: the stream starts after it")),
    responses((status = 200, description = "Server-sent events: `ready`, `transition` (a TransitionEvent) and `change`", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "This token holds as many streams as it may"), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn events(
    State(api): State<ApiState>,
    closing: Option<axum::Extension<Closing>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let caller = api.authorize(&headers, Role::Viewer).await?;
    let Query(q) = query?;
    if let Some(s) = &q.service {
        api.spec(s)?;
    }
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request("Last-Event-ID is not an event id this API gave")
                        .field("header.Last-Event-ID")
                })?,
        ),
    };
    let marks = api
        .store
        .change_marks(q.service.as_deref())
        .await
        .map_err(ApiError::store)?;
    let slot = api.streams.open(&caller.token).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "{} holds {MAX_STREAMS_PER_TOKEN} event streams already: close one first",
                caller.name
            ),
        )
    })?;
    // a new client starts now; a returning one where it left off
    let after = resume.unwrap_or(marks[0]);
    let start = Follow {
        token: caller.token,
        _slot: slot,
        api,
        service: q.service,
        after,
        marks,
        first: true,
        closing: closing.map(|c| c.0.0),
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        let events = f.next().await?;
        Some((futures_util::stream::iter(events.into_iter().map(Ok)), f))
    });
    use futures_util::StreamExt as _;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One client's place in the stream.
struct Follow {
    api: ApiState,
    /// The hash of the token the stream was opened with (empty: an anonymous reader): the
    /// stream ends at the first look after it is revoked.
    token: String,
    _slot: StreamSlot,
    service: Option<String>,
    /// The last transition sent.
    after: i64,
    marks: [i64; 6],
    first: bool,
    /// The server is stopping (absent when served without a socket, as in tests).
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Follow {
    /// The next look's events (after waiting for it, but for the first); `None` when the
    /// server stops.
    async fn next(&mut self) -> Option<Vec<Event>> {
        if std::mem::take(&mut self.first) {
            return Some(vec![
                Event::default()
                    .event("ready")
                    .data(format!("{{\"after\":{}}}", self.after)),
            ]);
        }
        match &mut self.closing {
            Some(closing) => {
                tokio::select! {
                    _ = tokio::time::sleep(EVENTS_POLL) => {}
                    _ = closing.wait_for(|c| *c) => return None,
                }
            }
            None => tokio::time::sleep(EVENTS_POLL).await,
        }
        let store = &self.api.store;
        // a revoked token's streams end with it (a store that cannot be reached: look again)
        if !self.token.is_empty() && matches!(store.token_hashed(&self.token).await, Ok(None)) {
            return None;
        }
        let mut out = Vec::new();
        let service = self.service.as_deref();
        // a store that cannot be reached now may be back at the next look: say nothing
        match store.transitions_after(service, self.after, BATCH).await {
            Ok(ts) => {
                for (id, stored) in ts {
                    self.after = id;
                    let t = &stored.transition;
                    let e = TransitionEvent {
                        id,
                        service: stored.service.clone(),
                        environment: t.environment.clone(),
                        release: t.release.clone(),
                        transition: transition_view(t),
                    };
                    out.push(
                        Event::default()
                            .event("transition")
                            .id(id.to_string())
                            .data(serde_json::to_string(&e).expect("serialises")),
                    );
                }
            }
            Err(e) => tracing::warn!("events: {e}"),
        }
        match store.change_marks(service).await {
            Ok(marks) if marks != self.marks => {
                self.marks = marks;
                out.push(Event::default().event("change").data("{}"));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("events: {e}"),
        }
        Some(out)
    }
}

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
use axum::http::HeaderMap;
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
/// stream does not end; a comment every 15 s keeps idle connections open.
#[utoipa::path(get, path = "/v1/events", tag = "read",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "The last transition seen: the stream starts after it")),
    responses((status = 200, description = "Server-sent events: `ready`, `transition` (a TransitionEvent) and `change`", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn events(
    State(api): State<ApiState>,
    closing: Option<axum::Extension<Closing>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
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
    // a new client starts now; a returning one where it left off
    let after = resume.unwrap_or(marks[0]);
    let start = Follow {
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
        let mut out = Vec::new();
        let store = &self.api.store;
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

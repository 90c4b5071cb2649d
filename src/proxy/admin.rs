//! The admin listener: `/metrics` for Prometheus, and the control API through which the
//! controller (or a person) sets routes, weights and upstreams at run time. Every `/routes`
//! call needs `Authorization: Bearer <token>`; errors are JSON and never leak internals.

use super::routes::{RouteSpec, RoutesFile};
use super::state::Shared;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    token: Arc<str>,
}

/// The admin API's one error type.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    BadRequest(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required".to_owned(),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // constant-time comparison: the token must not leak through timing
    let (a, b) = (given.as_bytes(), state.token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same && !b.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The admin router.
pub fn router(shared: Arc<Shared>, token: String) -> Router {
    let state = AdminState {
        shared,
        token: token.into(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/routes", get(get_routes).put(put_routes))
        .route("/routes/{service}/{environment}", put(put_route))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.shared.registry.render(),
    )
}

async fn get_routes(State(s): State<AdminState>, headers: HeaderMap) -> Result<Json<RoutesFile>, ApiError> {
    authorize(&s, &headers)?;
    Ok(Json(
        s.shared
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    ))
}

async fn put_routes(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: String,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers)?;
    let routes: RoutesFile = crate::spec::parse_document("request body", &body)
        .map_err(|r| ApiError::BadRequest(r.render_text()))?;
    s.shared.set_routes(routes).map_err(ApiError::BadRequest)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_route(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((service, environment)): Path<(String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers)?;
    let route: RouteSpec = crate::spec::parse_document("request body", &body)
        .map_err(|r| ApiError::BadRequest(r.render_text()))?;
    if route.service != service || route.environment != environment {
        return Err(ApiError::BadRequest(format!(
            "the body is for {}/{}, the path for {service}/{environment}",
            route.service, route.environment
        )));
    }
    if let (Some(c), false) = (
        &route.canary,
        route
            .releases
            .contains_key(route.canary.as_deref().unwrap_or_default()),
    ) {
        return Err(ApiError::BadRequest(format!(
            "canary `{c}` has no upstreams in `releases`"
        )));
    }
    s.shared.set_route(route).map_err(ApiError::BadRequest)?;
    Ok(StatusCode::NO_CONTENT)
}

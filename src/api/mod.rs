//! The HTTP API (`/v1/…`, axum): read every service, release and audit record; act on
//! rollouts (pause, resume, promote, roll back, weight, pin, freeze, approve); ask for builds;
//! receive push webhooks. `autopilot up` serves it, and `autopilot api` serves it alone on
//! the same store. The CLI and the web pages use it with the same tokens.
//!
//! # Guarantees
//! - Every request is authenticated by a bearer token with a role (`viewer` < `operator` <
//!   `admin`); tokens are stored hashed. Reads may be opened by configuration.
//! - A mutation writes its effect, its audit record (who, what, why, when, from where) and its
//!   idempotency record in one transaction; a refused one writes nothing.
//! - Every error is JSON with a stable `code`, a message, and the field at fault; internals
//!   (SQL, paths) never leak.
//! - The OpenAPI document (`/v1/openapi.json`) is generated from the handlers and types.
//!
//! This module decides nothing about rollouts: actions go through
//! [`crate::control::overrides`], and the controller acts on them at its next look.

pub mod discovery;
pub mod events;
pub mod session;
pub mod views;
mod webhook;

use crate::control::overrides::{self, OverrideAction, Refused};
use crate::control::plan::PlanSpec;
use crate::control::rollout::{Actor, Overrides, ServiceState};
use crate::control::time::Time;
use crate::spec::Catalog;
use crate::spec::units::Weight;
use crate::store::SqlStore;
use crate::store::api::{AuditEntry, Effect, Idempotency, Mutated, Revoked, TokenError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use views::*;

/// The largest request body accepted (actions and webhooks are small; GitHub caps push
/// payloads at 25 MB, but only the first commits matter and a larger one is refused whole).
pub const BODY_LIMIT: usize = 1 << 20;
/// The most items one page holds, and how many when the caller does not say.
const PAGE_MAX: i64 = 200;
const PAGE_DEFAULT: i64 = 50;
/// The longest accepted `Idempotency-Key`.
const KEY_MAX: usize = 200;

/// An API error, answered as [`ErrorBody`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn store(e: crate::control::ports::PortError) -> Self {
        // the store's own words stay in the log
        tracing::error!("api: store: {e}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the store cannot be reached; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(ErrorBody {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text()).field("path")
    }
}
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text()).field("query")
    }
}
impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::bad_request(r.body_text()).field("body")
        }
    }
}

/// Parses a JSON body, naming the field at fault.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // a syntax error has no field: the body is at fault
        let field = if path == "." || e.inner().is_syntax() || e.inner().is_eof() || path.contains('?') {
            "body".to_owned()
        } else {
            format!("body.{path}")
        };
        ApiError::bad_request(format!("invalid body: {}", e.inner())).field(field)
    })
}

/// The API's settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Reads need no token.
    pub open_reads: bool,
    /// The secret push webhooks are signed with (HMAC-SHA256; GitLab: the token itself).
    /// None: every push webhook is refused.
    pub webhook_secret: Option<String>,
    /// Where that secret is configured (an environment variable's name), for the messages that
    /// say how to turn push webhooks on.
    pub webhook_secret_variable: String,
    /// How environments are reached: `{scheme}://{service}.{env}.{domain}{port}`.
    pub domain: String,
    pub public_port: Option<u16>,
    pub scheme: &'static str,
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: SqlStore,
    pub catalog: Arc<Catalog>,
    pub specs: Arc<Vec<PlanSpec>>,
    pub settings: Arc<ApiSettings>,
    /// The clock (injected, so tests say when things happen).
    pub clock: Arc<dyn Fn() -> Time + Send + Sync>,
    /// Where releases answer (the runtime of `autopilot up`); none: discovery is unavailable.
    pub discovery: Option<Arc<dyn crate::runtime::Discovery>>,
    /// The event streams open now, per token.
    pub streams: events::Streams,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiState")
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    /// The token's hash, which scopes idempotency keys.
    pub token: String,
}

impl ApiState {
    fn url(&self, service: &str, env: &str, release: Option<&str>) -> String {
        let s = &self.settings;
        let port = s.public_port.map(|p| format!(":{p}")).unwrap_or_default();
        match release {
            Some(r) => format!("{}://{r}.{service}.{env}.{}{port}/", s.scheme, s.domain),
            None => format!("{}://{service}.{env}.{}{port}/", s.scheme, s.domain),
        }
    }

    /// Refuses (409) a build asked of a service whose releases are built elsewhere.
    fn builds_its_own(&self, service: &str) -> Result<(), ApiError> {
        if self
            .catalog
            .services
            .get(service)
            .is_some_and(|s| s.build.is_none())
        {
            return Err(ApiError::conflict(format!(
                "{service} has no `build`: its releases are built elsewhere and announced (POST /v1/services/{service}/releases)"
            )));
        }
        Ok(())
    }

    fn spec(&self, service: &str) -> Result<&PlanSpec, ApiError> {
        self.specs
            .iter()
            .find(|s| s.service == service)
            .ok_or_else(|| ApiError::not_found(format!("no service `{service}`")).field("path.service"))
    }

    /// Checks the bearer token against the store; `need` is the least role allowed. Reads also
    /// take a sign-in session from the `autopilot_session` cookie the sign-in sets (a browser's
    /// `EventSource` and page loads cannot send a header); actions never do, so a page of
    /// another site cannot act with a signed-in user's cookie.
    pub(crate) async fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Caller, ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let session = (need == Role::Viewer)
            .then(|| session::session_cookie(headers))
            .flatten()
            .filter(|s| !s.is_empty());
        let (info, token) = match (bearer, session) {
            (Some(secret), _) => {
                let info = self
                    .store
                    .token(secret)
                    .await
                    .map_err(ApiError::store)?
                    .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
                (info, crate::store::api::token_hash(secret))
            }
            (None, Some(session)) => self
                .store
                .session(session, (self.clock)())
                .await
                .map_err(ApiError::store)?
                .ok_or_else(|| ApiError::unauthorized("the session has ended: sign in again"))?,
            (None, None) => {
                if need == Role::Viewer && self.settings.open_reads {
                    return Ok(Caller {
                        name: "anonymous".into(),
                        role: Role::Viewer,
                        groups: Vec::new(),
                        token: String::new(),
                    });
                }
                return Err(ApiError::unauthorized(
                    "a bearer token is needed (Authorization: Bearer …)",
                ));
            }
        };
        let role = Role::parse(&info.role).unwrap_or(Role::Viewer);
        if role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{} is {} {}; this needs {} {} token",
                    info.name,
                    article(role.name()),
                    role.name(),
                    article(need.name()),
                    need.name()
                ),
            ));
        }
        Ok(Caller {
            name: info.name,
            role,
            groups: info.groups,
            token,
        })
    }

    async fn state_of(&self, service: &str) -> Result<(ServiceState, Overrides), ApiError> {
        let mut store = self.store.clone();
        let loaded = crate::control::ports::Store::load(&mut store, service)
            .await
            .map_err(ApiError::store)?;
        Ok((loaded.state, loaded.overrides))
    }
}

/// "a" or "an", as the word needs.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The client's address, when served over a socket.
#[derive(Debug, Clone)]
pub struct Origin(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Origin(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "local".to_owned(), |c| c.0.ip().to_string()),
        ))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "autopilot",
        description = "Progressive delivery: services, releases, rollouts, operator actions and their audit trail.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&Security),
    tags((name = "read", description = "What runs where, and why"), (name = "act", description = "Operator actions, audited"))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes and its OpenAPI document, from the same list.
fn parts() -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_services))
        .routes(routes!(get_service))
        .routes(routes!(list_releases))
        .routes(routes!(get_release))
        .routes(routes!(release_logs))
        .routes(routes!(list_builds))
        .routes(routes!(build_logs))
        .routes(routes!(list_audit))
        .routes(routes!(act))
        .routes(routes!(request_build))
        .routes(routes!(announce_release))
        .routes(routes!(create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(session::sign_in, session::sign_out))
        .routes(routes!(webhook::push))
        .routes(routes!(webhook::registry))
        .routes(routes!(events::events))
        .routes(routes!(discovery::environment))
        .routes(routes!(discovery::release))
        .split_for_parts()
}

/// The OpenAPI document, as served and as checked in (`src/api/openapi.json`).
pub fn openapi_json() -> String {
    let mut text = parts().1.to_pretty_json().expect("the document serialises");
    text.push('\n');
    text
}

/// The API as a router (no socket: tests call it with `oneshot`).
pub fn router(state: ApiState) -> axum::Router {
    router_with(state, axum::Router::new())
}

/// The API and `more` routes (the web pages) as one router, with the API's fallbacks, body
/// limit and security headers over all of them.
pub fn router_with(state: ApiState, more: axum::Router<ApiState>) -> axum::Router {
    let doc = openapi_json();
    parts()
        .0
        .merge(more)
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(session::security_headers))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// How many (1–200, default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn page(q: &PageQuery) -> Result<(i64, Option<i64>), ApiError> {
    let limit = q.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1–{PAGE_MAX}")).field("query.limit"));
    }
    let cursor =
        match &q.cursor {
            None => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                ApiError::bad_request("cursor is not one this API gave").field("query.cursor")
            })?),
        };
    Ok((limit, cursor))
}

/// Every service and where each environment stands.
#[utoipa::path(get, path = "/v1/services", tag = "read",
    responses((status = 200, body = ServiceList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_services(
    State(api): State<ApiState>,
    headers: HeaderMap,
) -> Result<axum::Json<ServiceList>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    Ok(axum::Json(services_view(&api).await?))
}

/// Every service and where each environment stands (the API's and the pages' view).
pub(crate) async fn services_view(api: &ApiState) -> Result<ServiceList, ApiError> {
    let mut services = Vec::new();
    for spec in api.specs.iter() {
        services.push(one_service_view(api, spec).await?);
    }
    let s = &api.settings;
    let push_webhooks = PushWebhooks {
        accepted: s.webhook_secret.is_some(),
        note: match s.webhook_secret {
            Some(_) => "accepted when signed with the webhook secret; each delivery once".into(),
            None => format!(
                "refused: no webhook secret is configured (set {} where autopilot runs)",
                s.webhook_secret_variable
            ),
        },
    };
    Ok(ServiceList {
        services,
        push_webhooks,
    })
}

async fn one_service_view(api: &ApiState, spec: &PlanSpec) -> Result<ServiceView, ApiError> {
    let (state, overrides) = api.state_of(&spec.service).await?;
    let evidence = api
        .store
        .latest_evidence_of(&spec.service)
        .await
        .map_err(ApiError::store)?;
    Ok(service_view(
        spec,
        description(api, &spec.service),
        &state,
        &overrides,
        &evidence,
        |env| api.url(&spec.service, env, None),
    ))
}

fn description(api: &ApiState, service: &str) -> Option<String> {
    api.catalog
        .services
        .get(service)
        .and_then(|s| s.description.clone())
}

/// One service.
#[utoipa::path(get, path = "/v1/services/{service}", tag = "read",
    params(("service" = String, Path, description = "The service's name")),
    responses((status = 200, body = ServiceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_service(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<ServiceView>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path(service) = path?;
    let spec = api.spec(&service)?;
    Ok(axum::Json(one_service_view(&api, spec).await?))
}

/// A service's releases, newest first.
#[utoipa::path(get, path = "/v1/services/{service}/releases", tag = "read",
    params(("service" = String, Path, description = "The service's name"), PageQuery),
    responses((status = 200, body = ReleasePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_releases(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<axum::Json<ReleasePage>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path(service) = path?;
    let Query(q) = query?;
    let (limit, before) = page(&q)?;
    Ok(axum::Json(releases_page(&api, &service, limit, before).await?))
}

/// A page of a service's releases, newest first, older than `before` (a build number).
pub(crate) async fn releases_page(
    api: &ApiState,
    service: &str,
    limit: i64,
    before: Option<i64>,
) -> Result<ReleasePage, ApiError> {
    api.spec(service)?;
    let builds = api
        .store
        .releases(service, before, limit + 1)
        .await
        .map_err(ApiError::store)?;
    let (state, _) = api.state_of(service).await?;
    let more = builds.len() as i64 > limit;
    let items: Vec<_> = builds
        .iter()
        .take(limit as usize)
        .map(|b| release_summary(b, &state))
        .collect();
    let next_cursor = more.then(|| items.last().map(|r| r.build.to_string())).flatten();
    Ok(ReleasePage { items, next_cursor })
}

/// A service's builds of every outcome (failed ones too), newest first.
#[utoipa::path(get, path = "/v1/services/{service}/builds", tag = "read",
    params(("service" = String, Path, description = "The service's name"), PageQuery),
    responses((status = 200, body = BuildPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_builds(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<axum::Json<BuildPage>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path(service) = path?;
    let Query(q) = query?;
    let (limit, before) = page(&q)?;
    Ok(axum::Json(builds_page(&api, &service, limit, before).await?))
}

/// A page of a service's builds, newest first, older than `before` (a build number).
pub(crate) async fn builds_page(
    api: &ApiState,
    service: &str,
    limit: i64,
    before: Option<i64>,
) -> Result<BuildPage, ApiError> {
    api.spec(service)?;
    let builds = api
        .store
        .builds_page(service, before, limit + 1)
        .await
        .map_err(ApiError::store)?;
    let more = builds.len() as i64 > limit;
    let items: Vec<_> = builds.iter().take(limit as usize).map(build_summary).collect();
    let next_cursor = more.then(|| items.last().map(|b| b.number.to_string())).flatten();
    Ok(BuildPage { items, next_cursor })
}

/// A build's output as text, as far as it has come (a running build's grows each second).
#[utoipa::path(get, path = "/v1/services/{service}/builds/{number}/logs", tag = "read",
    params(("service" = String, Path, description = "The service's name"), ("number" = i64, Path, description = "The build's number")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn build_logs(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path((service, number)) = path?;
    api.spec(&service)?;
    let b = api
        .store
        .build(&service, number)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::not_found(format!("`{service}` has no build {number}")).field("path.number")
        })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b.output).into_response())
}

/// A release's whole story: config, build, deployments, verdicts, actions, URLs.
#[utoipa::path(get, path = "/v1/releases/{release}", tag = "read",
    params(("release" = String, Path, description = "The release's id")),
    responses((status = 200, body = ReleaseView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_release(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<ReleaseView>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path(id) = path?;
    Ok(axum::Json(release_view(&api, &id).await?.0))
}

/// A release's whole story, and its build as stored (with the full output).
pub(crate) async fn release_view(
    api: &ApiState,
    id: &str,
) -> Result<(ReleaseView, crate::store::StoredBuild), ApiError> {
    let id = id.to_owned();
    let b = find_release(api, &id).await?;
    let service = b.service.clone();
    let (state, _) = api.state_of(&service).await?;
    let transitions = api
        .store
        .release_transitions(&service, &id)
        .await
        .map_err(ApiError::store)?;
    let mut deployments: Vec<DeploymentView> = Vec::new();
    for t in transitions {
        let t = t.transition;
        let new_attempt = t.from.is_none() || !deployments.iter().any(|d| d.environment == t.environment);
        if new_attempt {
            let attempt = deployments
                .iter()
                .filter(|d| d.environment == t.environment)
                .count() as u32
                + 1;
            deployments.push(DeploymentView {
                environment: t.environment.clone(),
                attempt,
                started_at: t.at.to_string(),
                state: t.to,
                transitions: Vec::new(),
            });
        }
        let d = deployments
            .iter_mut()
            .rev()
            .find(|d| d.environment == t.environment)
            .expect("pushed above");
        d.state = t.to;
        d.transitions.push(transition_view(&t));
    }
    let verdicts = api
        .store
        .release_evidence(&service, &id)
        .await
        .map_err(ApiError::store)?
        .into_iter()
        .map(|(e, at)| {
            let j = &e.judgement;
            VerdictView {
                environment: e.environment,
                objective: e.objective,
                verdict: verdict_name(&j.verdict).to_owned(),
                explanation: j.evidence.explanation.clone(),
                canary_bad: j.evidence.canary.bad,
                canary_total: j.evidence.canary.total,
                stable_bad: j.evidence.stable.bad,
                stable_total: j.evidence.stable.total,
                at: at.map(|t| t.to_string()),
            }
        })
        .collect();
    let actions = api
        .store
        .audit(Some(&service), Some(&id), None, PAGE_MAX)
        .await
        .map_err(ApiError::store)?
        .into_iter()
        .map(audit_view)
        .collect();
    let mut urls = Vec::new();
    for (env, st) in &state.environments {
        let serves = st.stable.as_deref() == Some(id.as_str())
            || st
                .rollout
                .as_ref()
                .is_some_and(|r| r.release == id && !r.phase.is_finished() && r.phase.weight().0 > 0);
        let routed = serves
            || st
                .rollout
                .as_ref()
                .is_some_and(|r| r.release == id && !r.phase.is_finished());
        if serves {
            urls.push(UrlView {
                kind: "environment".into(),
                environment: env.clone(),
                url: api.url(&service, env, None),
            });
        }
        if routed {
            urls.push(UrlView {
                kind: "preview".into(),
                environment: env.clone(),
                url: api.url(&service, env, Some(&id)),
            });
        }
    }
    let digest = b.digest.clone().unwrap_or_default();
    let view = ReleaseView {
        artifact: b
            .artifact
            .clone()
            .unwrap_or_else(|| format!("oci-layout:artifacts@{digest} (autopilot's data directory)")),
        size: b.size.map(|s| s as u64),
        id: id.clone(),
        service,
        commit: b.commit.clone(),
        digest,
        source: b.source.clone(),
        config: b.config.clone(),
        build: BuildView {
            number: b.seq,
            commit: b.commit.clone(),
            status: b.status.clone(),
            started_at: b.started_at.to_string(),
            finished_at: b.finished_at.map(|t| t.to_string()),
            output_bytes: b.output.len() as u64,
            logs: format!("/v1/releases/{id}/logs"),
        },
        deployments,
        verdicts,
        actions,
        urls,
    };
    Ok((view, b))
}

async fn find_release(api: &ApiState, id: &str) -> Result<crate::store::StoredBuild, ApiError> {
    api.store
        .release(id)
        .await
        .map_err(ApiError::store)?
        .filter(|b| api.specs.iter().any(|s| s.service == b.service))
        .ok_or_else(|| ApiError::not_found(format!("no release `{id}`")).field("path.release"))
}

/// A release's full build output, as text.
#[utoipa::path(get, path = "/v1/releases/{release}/logs", tag = "read",
    params(("release" = String, Path, description = "The release's id")),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn release_logs(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path(id) = path?;
    let b = find_release(&api, &id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b.output).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this service's records.
    service: Option<String>,
    /// Only this release's records.
    release: Option<String>,
    /// How many (1–200, default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "read",
    params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_audit(
    State(api): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Query(q) = query?;
    let (limit, before) = page(&PageQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
    })?;
    let records = api
        .store
        .audit(q.service.as_deref(), q.release.as_deref(), before, limit + 1)
        .await
        .map_err(ApiError::store)?;
    let more = records.len() as i64 > limit;
    let items: Vec<_> = records.into_iter().take(limit as usize).map(audit_view).collect();
    let next_cursor = more.then(|| items.last().map(|a| a.id.to_string())).flatten();
    Ok(axum::Json(AuditPage { items, next_cursor }))
}

fn idempotency(
    headers: &HeaderMap,
    caller: &Caller,
    request: String,
    now: Time,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= KEY_MAX)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1–{KEY_MAX} visible ASCII characters"
            ))
            .field("header.Idempotency-Key")
        })?;
    Ok(Some(Idempotency {
        token: caller.token.clone(),
        key: key.to_owned(),
        request: crate::store::api::token_hash(&request),
        now,
    }))
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(
            ApiError::bad_request("say why: the reason is kept in the audit trail").field("body.reason"),
        );
    }
    if reason.chars().count() > 1000 {
        return Err(ApiError::bad_request("the reason is longer than 1000 characters").field("body.reason"));
    }
    Ok(())
}

fn mutated(m: Mutated<ApiError>) -> Result<Response, ApiError> {
    match m {
        Mutated::Done { status, body } => Ok((
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()),
        Mutated::Refused(e) => Err(e),
        Mutated::KeyReused => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
        .field("header.Idempotency-Key")),
        Mutated::Repeated => Err(ApiError::new(
            StatusCode::CONFLICT,
            "delivery_repeated",
            "this webhook delivery was received before: a repeated delivery is refused",
        )),
    }
}

/// Act on one environment: pause, resume, promote, roll back, hold a weight, pin, freeze,
/// approve. The action wins over the controller until lifted, and is audited.
#[utoipa::path(post, path = "/v1/services/{service}/environments/{environment}/actions", tag = "act",
    params(("service" = String, Path, description = "The service's name"), ("environment" = String, Path, description = "The environment's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (within 24 hours) gets the first answer and changes nothing")),
    request_body = ActionRequest,
    responses((status = 200, body = ActionResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn act(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = api.authorize(&headers, Role::Operator).await?;
    let Path((service, environment)) = path?;
    let spec = api.spec(&service)?;
    if !spec.environments.iter().any(|e| e.name == environment) {
        return Err(
            ApiError::not_found(format!("`{service}` has no environment `{environment}`"))
                .field("path.environment"),
        );
    }
    let body = body?;
    let req: ActionRequest = parse_body(&body)?;
    check_reason(&req.reason)?;
    let evidence = api
        .store
        .latest_evidence_of(&service)
        .await
        .map_err(ApiError::store)?;
    if req.regardless && req.action != ActionName::Pause {
        return Err(ApiError::bad_request("`regardless` goes with `pause` only").field("body.regardless"));
    }
    let action = match req.action {
        ActionName::Pause if req.regardless => OverrideAction::PauseRegardless,
        ActionName::Pause => OverrideAction::Pause,
        ActionName::Resume => OverrideAction::Resume,
        ActionName::Promote => OverrideAction::Promote,
        ActionName::Rollback => OverrideAction::Rollback,
        ActionName::Weight => match req.percent {
            Some(p) if p <= 100 => OverrideAction::Weight(Weight(p)),
            Some(_) => return Err(ApiError::bad_request("percent must be 0–100").field("body.percent")),
            None => return Err(ApiError::bad_request("`weight` needs `percent`").field("body.percent")),
        },
        ActionName::ClearWeight => OverrideAction::ClearWeight,
        ActionName::Pin => match &req.release {
            Some(r) => OverrideAction::Pin(r.clone()),
            None => return Err(ApiError::bad_request("`pin` needs `release`").field("body.release")),
        },
        ActionName::Unpin => OverrideAction::Unpin,
        ActionName::Freeze => OverrideAction::Freeze,
        ActionName::Unfreeze => OverrideAction::Unfreeze,
        ActionName::Approve => OverrideAction::Approve {
            release: req.release.clone(),
            groups: caller.groups.clone(),
        },
    };
    let now = (api.clock)();
    let idem = idempotency(
        &headers,
        &caller,
        format!("act {service} {environment} {}", String::from_utf8_lossy(&body)),
        now,
    )?;
    let actor = Actor {
        who: caller.name.clone(),
        reason: req.reason.clone(),
    };
    let changed_flag = std::sync::atomic::AtomicBool::new(false);
    let detail = serde_json::to_value(&req).unwrap_or_default();
    let m = api
        .store
        .mutate(
            &service,
            idem.as_ref(),
            |state, ov| {
                let applied = overrides::apply(state, ov, &environment, &action, actor.clone(), now)
                    .map_err(|e| match e {
                        Refused::Conflict(m) => ApiError::conflict(m),
                        Refused::UnknownRelease(_) => {
                            ApiError::not_found(e.to_string()).field("body.release")
                        }
                    })?;
                changed_flag.store(applied.changed, std::sync::atomic::Ordering::Relaxed);
                Ok(Effect {
                    audit: AuditEntry {
                        environment: Some(environment.clone()),
                        release: applied.release,
                        action: action.name().to_owned(),
                        detail: detail.clone(),
                        who: caller.name.clone(),
                        reason: req.reason.clone(),
                        origin: origin.clone(),
                        at: now,
                    },
                    overrides_changed: applied.changed,
                    build: None,
                    image: None,
                    fetch: false,
                    delivery: None,
                })
            },
            |audit_id, state, ov| {
                let view = environment_view(
                    &environment,
                    api.url(&service, &environment, None),
                    state.environments.get(&environment),
                    ov.environments.get(&environment),
                    ov,
                    &evidence,
                );
                let result = ActionResult {
                    audit_id,
                    action: req.action,
                    changed: changed_flag.load(std::sync::atomic::Ordering::Relaxed),
                    environment: view,
                };
                (200, serde_json::to_string(&result).expect("serialises"))
            },
        )
        .await
        .map_err(ApiError::store)?;
    if changed_flag.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(%service, %environment, action = action.name(), who = %caller.name, reason = %req.reason, "operator action");
    }
    mutated(m)
}

/// Build a commit of the service's repository (a hotfix, a cherry-pick). It becomes a release
/// like any other, marked with who asked.
#[utoipa::path(post, path = "/v1/services/{service}/builds", tag = "act",
    params(("service" = String, Path, description = "The service's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (within 24 hours) gets the first answer and changes nothing")),
    request_body = BuildRequest,
    responses((status = 202, body = BuildAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn request_build(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = api.authorize(&headers, Role::Operator).await?;
    let Path(service) = path?;
    api.spec(&service)?;
    let body = body?;
    let req: BuildRequest = parse_body(&body)?;
    check_reason(&req.reason)?;
    api.builds_its_own(&service)?;
    let commit = req.commit.trim().to_ascii_lowercase();
    if !(4..=64).contains(&commit.len()) || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("a commit is 4–64 hexadecimal characters").field("body.commit"));
    }
    let now = (api.clock)();
    let idem = idempotency(
        &headers,
        &caller,
        format!("build {service} {}", String::from_utf8_lossy(&body)),
        now,
    )?;
    let m = api
        .store
        .mutate(
            &service,
            idem.as_ref(),
            |_, _| {
                Ok::<_, ApiError>(Effect::build(
                    AuditEntry {
                        environment: None,
                        release: None,
                        action: "build".into(),
                        detail: serde_json::json!({ "commit": commit }),
                        who: caller.name.clone(),
                        reason: req.reason.clone(),
                        origin: origin.clone(),
                        at: now,
                    },
                    commit.clone(),
                ))
            },
            |audit_id, _, _| {
                let body = BuildAccepted {
                    audit_id,
                    service: service.clone(),
                    commit: commit.clone(),
                };
                (202, serde_json::to_string(&body).expect("serialises"))
            },
        )
        .await
        .map_err(ApiError::store)?;
    mutated(m)
}

/// Announce a release built elsewhere (a service without `build`): an image pinned by digest in
/// the service's repository. Autopilot pulls it (verifying every byte against its digest) and
/// rolls it out like a release it built.
#[utoipa::path(post, path = "/v1/services/{service}/releases", tag = "act",
    params(("service" = String, Path, description = "The service's name"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (within 24 hours) gets the first answer and changes nothing")),
    request_body = ReleaseAnnouncement,
    responses((status = 202, body = ReleaseAccepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn announce_release(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = api.authorize(&headers, Role::Operator).await?;
    let Path(service) = path?;
    api.spec(&service)?;
    let body = body?;
    let req: ReleaseAnnouncement = parse_body(&body)?;
    check_reason(&req.reason)?;
    let spec = api.catalog.services.get(&service);
    let repository = match spec {
        Some(s) if s.build.is_some() => {
            return Err(ApiError::conflict(format!(
                "{service} builds its own releases (it has `build`): push to its repository, or ask for a build of a commit (POST /v1/services/{service}/builds)"
            )));
        }
        Some(s) => s.run.image.clone().unwrap_or_default(),
        None => String::new(),
    };
    let image = req.image.trim().to_owned();
    let Some((from, digest)) = image.split_once('@') else {
        return Err(ApiError::bad_request(format!(
            "`{image}` names no digest: announce `{repository}@sha256:…` (a tag may move)"
        ))
        .field("body.image"));
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::bad_request(format!(
            "`{digest}` is not a sha256 digest (`sha256:` and 64 lowercase hexadecimal digits)"
        ))
        .field("body.image"));
    }
    if from != repository {
        return Err(ApiError::bad_request(format!(
            "`{from}` is not {service}'s repository `{repository}` (run.image)"
        ))
        .field("body.image"));
    }
    let commit = match &req.commit {
        Some(c) => {
            let c = c.trim().to_ascii_lowercase();
            if !(4..=64).contains(&c.len()) || !c.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(
                    ApiError::bad_request("a commit is 4–64 hexadecimal characters").field("body.commit")
                );
            }
            Some(c)
        }
        None => None,
    };
    let release = crate::release::release_id(digest);
    let now = (api.clock)();
    let idem = idempotency(
        &headers,
        &caller,
        format!("release {service} {}", String::from_utf8_lossy(&body)),
        now,
    )?;
    let m = api
        .store
        .mutate(
            &service,
            idem.as_ref(),
            |_, _| {
                Ok::<_, ApiError>(Effect::release(
                    announcement(
                        &release,
                        serde_json::json!({ "image": image, "commit": commit }),
                        &caller,
                        req.reason.clone(),
                        &origin,
                        now,
                    ),
                    image.clone(),
                    commit.clone(),
                ))
            },
            |audit_id, _, _| {
                let body = ReleaseAccepted {
                    audit_id,
                    service: service.clone(),
                    image: image.clone(),
                    release: release.clone(),
                };
                (202, serde_json::to_string(&body).expect("serialises"))
            },
        )
        .await
        .map_err(ApiError::store)?;
    mutated(m)
}

/// The audit entry of a release announced (from the API or a registry's notification).
pub(crate) fn announcement(
    release: &str,
    detail: serde_json::Value,
    caller: &Caller,
    reason: String,
    origin: &str,
    at: Time,
) -> AuditEntry {
    AuditEntry {
        environment: None,
        release: Some(release.to_owned()),
        action: "announce".into(),
        detail,
        who: caller.name.clone(),
        reason,
        origin: origin.to_owned(),
        at,
    }
}

/// Revoke a token: it stops working at once. Needs an admin token.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "act",
    params(("name" = String, Path, description = "The token's name")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The last admin token: make another first"), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn revoke_token(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let caller = api.authorize(&headers, Role::Admin).await?;
    let Path(name) = path?;
    match api.store.revoke_token(&name).await.map_err(ApiError::store)? {
        Revoked::Done => {
            tracing::info!(token = %name, by = %caller.name, "token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Revoked::NoSuchToken => Err(ApiError::not_found(format!("no token `{name}`")).field("path.name")),
        Revoked::LastAdmin => Err(ApiError::conflict(format!(
            "`{name}` is the last admin token and a restart makes none: make another admin token first \
             (autopilot token create NAME --role admin), then revoke this one"
        ))
        .field("path.name")),
    }
}

/// Make (or replace) a token. Needs an admin token.
#[utoipa::path(post, path = "/v1/tokens", tag = "act",
    request_body = TokenRequest,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_token(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Admin).await?;
    let req: TokenRequest = parse_body(&body?)?;
    let name = req.name.trim();
    // a name is shown in audits, terminals and pages: letters, digits and a few marks only
    let fits = |c: char| c.is_alphanumeric() || "._@+-".contains(c);
    if name.is_empty() || name.chars().count() > 100 || !name.chars().all(fits) {
        return Err(ApiError::bad_request(
            "a token's name is 1–100 letters, digits, `.`, `_`, `@`, `+` or `-`",
        )
        .field("body.name"));
    }
    if let Some(g) = req.groups.iter().find(|g| g.is_empty() || g.contains(',')) {
        return Err(
            ApiError::bad_request(format!("group `{g}`: no empty names, no commas")).field("body.groups"),
        );
    }
    let token = api
        .store
        .create_token(name, req.role.name(), &req.groups)
        .await
        .map_err(|e| match e {
            TokenError::LastAdmin { .. } => ApiError::conflict(e.to_string()).field("body.role"),
            TokenError::Store(e) => ApiError::store(e),
        })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenCreated {
            name: name.to_owned(),
            role: req.role,
            token,
        }),
    )
        .into_response())
}

//! Service discovery: where each release of an environment answers, from the runtime — the
//! same source the proxy's upstreams come from — whatever the runtime (local processes, or
//! Kubernetes' EndpointSlices).

use super::views::Role;
use super::{ApiError, ApiState, ErrorBody, one_service_view};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One release in one environment, and where it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseEndpoints {
    pub release: String,
    /// `stable`, `canary` (it shares the public traffic) or `idle` (running, no public
    /// traffic: deploying, waiting to be retired).
    pub role: String,
    /// Its share of the environment's public traffic, in percent.
    pub weight: u8,
    /// Its own address through the proxy (a preview, whatever its share).
    pub url: String,
    /// Its ready instances (`ip:port`), as the runtime sees them now; the proxy routes to
    /// these.
    pub endpoints: Vec<String>,
}

/// An environment of a service: its public URL and the releases running in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Discovered {
    pub service: String,
    pub environment: String,
    /// Where callers reach the environment (through the proxy).
    pub url: String,
    /// Stable first, then the canary, then any other release still running.
    pub releases: Vec<ReleaseEndpoints>,
}

async fn discover(api: &ApiState, service: &str, environment: &str) -> Result<Discovered, ApiError> {
    let spec = api.spec(service)?;
    let view = one_service_view(api, spec).await?;
    let env = view
        .environments
        .iter()
        .find(|e| e.name == environment)
        .ok_or_else(|| {
            ApiError::not_found(format!("{service} has no environment `{environment}`"))
                .field("path.environment")
        })?;
    let Some(discovery) = &api.discovery else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "discovery is served by `autopilot up` (it asks the runtime); this API runs without one",
        ));
    };
    let canary = env
        .rollout
        .as_ref()
        .filter(|r| matches!(r.state.as_str(), "canary" | "paused" | "promoting"))
        .map(|r| (r.release.clone(), r.weight.min(100)));
    let running = discovery.ready(service, environment);
    let role_of = |release: &str| -> (&'static str, u8, u8) {
        match (&env.stable, &canary) {
            (_, Some((c, w))) if c == release => ("canary", *w, 1),
            (Some(s), Some((_, w))) if s == release => ("stable", 100 - *w, 0),
            (Some(s), None) if s == release => ("stable", 100, 0),
            _ => ("idle", 0, 2),
        }
    };
    let mut releases: Vec<(u8, ReleaseEndpoints)> = running
        .into_iter()
        .map(|(release, ready)| {
            let (role, weight, order) = role_of(&release);
            let url = api.url(service, environment, Some(&release));
            (
                order,
                ReleaseEndpoints {
                    role: role.to_owned(),
                    weight,
                    url,
                    endpoints: ready.iter().map(|a| a.to_string()).collect(),
                    release,
                },
            )
        })
        .collect();
    releases.sort_by(|a, b| (a.0, &a.1.release).cmp(&(b.0, &b.1.release)));
    Ok(Discovered {
        service: service.to_owned(),
        environment: environment.to_owned(),
        url: env.url.clone(),
        releases: releases.into_iter().map(|(_, r)| r).collect(),
    })
}

/// Where an environment's releases answer: its public URL, and each running release's role,
/// share and ready endpoints.
#[utoipa::path(get, path = "/v1/discovery/{service}/{environment}", tag = "read",
    params(("service" = String, Path, description = "The service's name"),
           ("environment" = String, Path, description = "The environment's name")),
    responses((status = 200, body = Discovered), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn environment(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<axum::Json<Discovered>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path((service, environment)) = path?;
    Ok(axum::Json(discover(&api, &service, &environment).await?))
}

/// Where one release answers in one environment (404 if it does not run there).
#[utoipa::path(get, path = "/v1/discovery/{service}/{environment}/{release}", tag = "read",
    params(("service" = String, Path, description = "The service's name"),
           ("environment" = String, Path, description = "The environment's name"),
           ("release" = String, Path, description = "The release's id")),
    responses((status = 200, body = ReleaseEndpoints), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn release(
    State(api): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<axum::Json<ReleaseEndpoints>, ApiError> {
    api.authorize(&headers, Role::Viewer).await?;
    let Path((service, environment, release)) = path?;
    let d = discover(&api, &service, &environment).await?;
    d.releases
        .into_iter()
        .find(|r| r.release == release)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("{release} does not run in {service}/{environment}"))
                .field("path.release")
        })
}

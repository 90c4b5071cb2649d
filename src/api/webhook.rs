//! The push webhook: GitHub, GitLab and Gitea tell autopilot a branch moved, and autopilot
//! fetches the branch at once (instead of at the next poll) and builds the tip it finds.
//!
//! # Guarantees
//! - No secret configured: every push is refused (403), and `up` and `autopilot status` say so.
//! - A payload is accepted only if signed with the secret: GitHub and Gitea
//!   `X-Hub-Signature-256: sha256=HMAC`, Gitea `X-Gitea-Signature: HMAC`, GitLab
//!   `X-Gitlab-Token: SECRET`; compared in constant time.
//! - A push is a *hint to fetch*, never an order to build: the commit named in the body is
//!   recorded as the sender's claim and nothing else; the builder fetches the branch from the
//!   service's own remote and builds the tip it finds, so neither a forged body nor a replayed
//!   old delivery can put a commit that is not the branch's tip in front of users.
//! - Each delivery counts once: its id (`X-GitHub-Delivery`, `X-Gitea-Delivery`,
//!   `X-Gitlab-Event-UUID`) is required, remembered for a week, and refused (409) when repeated.
//! - Pushes to other branches, deletions and pings fetch nothing. Errors name no server path.

use super::views::{ErrorBody, PushAccepted, RegistryEventsAccepted, ReleaseAccepted, Role};
use super::{ApiError, ApiState, Origin, parse_body};
use crate::store::api::{AuditEntry, Effect};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;

/// The fields of a push payload autopilot reads (the same names in all three).
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    /// GitHub and Gitea.
    #[serde(default)]
    pusher: Option<Pusher>,
    /// GitLab.
    #[serde(default)]
    user_username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Pusher {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of two strings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the payload's signature against the secret; which header counts depends on the
/// sender.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let expected = hex(&mac.finalize().into_bytes());
    let ok = if let Some(sig) = header(headers, "x-hub-signature-256") {
        same(sig, &format!("sha256={expected}"))
    } else if let Some(sig) = header(headers, "x-gitea-signature") {
        same(sig, &expected)
    } else if let Some(token) = header(headers, "x-gitlab-token") {
        same(token, secret)
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "the payload's signature does not match the configured secret",
        ))
    }
}

/// The headers a sender names its delivery with (Gitea also sends GitHub's).
const DELIVERY_HEADERS: &[&str] = &["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid"];

/// The delivery id a push carries: printable ASCII of a sane length (senders use UUIDs).
fn delivery(headers: &HeaderMap) -> Result<String, ApiError> {
    let id = DELIVERY_HEADERS
        .iter()
        .find_map(|h| header(headers, h))
        .ok_or_else(|| {
            ApiError::bad_request(
                "a push must carry its delivery id (X-GitHub-Delivery, X-Gitea-Delivery or X-Gitlab-Event-UUID)",
            )
            .field("header.X-GitHub-Delivery")
        })?;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            ApiError::bad_request("the delivery id is not 1 to 128 printable characters")
                .field("header.X-GitHub-Delivery"),
        );
    }
    Ok(id.to_owned())
}

/// A push to a service's repository: if signed and new, fetches the service's branch now, and
/// the builder builds the tip it finds.
#[utoipa::path(post, path = "/v1/webhooks/push/{service}", tag = "act",
    params(("service" = String, Path, description = "The service whose repository was pushed to"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery's id (or X-Gitea-Delivery, X-Gitlab-Event-UUID): required, and refused when repeated")),
    request_body(content = Object, description = "A GitHub, GitLab or Gitea push payload, signed with the webhook secret"),
    responses((status = 202, body = PushAccepted, description = "The branch is fetched; its tip will be built"), (status = 200, body = PushAccepted, description = "Nothing to fetch"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "No webhook secret is configured: push webhooks are off"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "A repeated delivery, or a service without `build`"), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn push(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(service) = path?;
    let body = body?;
    let Some(secret) = &api.settings.webhook_secret else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "webhooks_off",
            "push webhooks are off on this server: no webhook secret is configured",
        ));
    };
    verify(secret, &headers, &body)?;
    let spec = api.spec(&service)?;
    api.builds_its_own(&spec.service)?;
    let service_spec = api.catalog.services.get(&spec.service);
    let branch = service_spec
        .and_then(|s| s.source.as_ref())
        .map(|s| s.branch.clone())
        .unwrap_or_default();
    let (sender, event) = [
        ("github", "x-github-event"),
        ("gitea", "x-gitea-event"),
        ("gitlab", "x-gitlab-event"),
    ]
    .into_iter()
    .find_map(|(who, h)| header(&headers, h).map(|e| (who, e.to_owned())))
    .unwrap_or(("git", "push".to_owned()));
    let ignored = |why: String| {
        Ok((
            StatusCode::OK,
            axum::Json(PushAccepted {
                fetching: None,
                ignored: Some(why),
            }),
        )
            .into_response())
    };
    if event == "ping" {
        return ignored("ping".into());
    }
    if !(event == "push" || event == "Push Hook") {
        return ignored(format!("`{event}` events fetch nothing"));
    }
    let delivery = delivery(&headers)?;
    let p: Push = parse_body(&body)?;
    if p.git_ref != format!("refs/heads/{branch}") {
        return ignored(format!("{} is not {service}'s branch `{branch}`", p.git_ref));
    }
    let claimed = p.after.to_ascii_lowercase();
    if claimed.chars().all(|c| c == '0') {
        return ignored("the branch was deleted".into());
    }
    if !(4..=64).contains(&claimed.len()) || !claimed.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("`after` is not a commit id").field("body.after"));
    }
    let who = p
        .pusher
        .and_then(|u| u.login.or(u.username).or(u.name))
        .or(p.user_username)
        .unwrap_or_else(|| "unknown".into());
    let now = (api.clock)();
    let m = api
        .store
        .mutate(
            &service,
            None,
            |_, _| {
                Ok::<_, ApiError>(Effect::fetch(
                    AuditEntry {
                        environment: None,
                        release: None,
                        action: "push".into(),
                        // the sender's word for the commit, kept as a claim: the build is of
                        // the tip autopilot fetches
                        detail: serde_json::json!({ "claimed": claimed, "ref": p.git_ref, "sender": sender, "delivery": delivery }),
                        who: format!("{sender}:{who}"),
                        reason: format!("push to {branch}: fetch and build its tip"),
                        origin: origin.clone(),
                        at: now,
                    },
                    delivery.clone(),
                ))
            },
            |_, _, _| {
                let body = PushAccepted {
                    fetching: Some(branch.clone()),
                    ignored: None,
                };
                (202, serde_json::to_string(&body).expect("serialises"))
            },
        )
        .await
        .map_err(ApiError::store)?;
    super::mutated(m)
}

/// A registry's notification (the CNCF distribution's `notifications` envelope).
#[derive(Debug, Deserialize)]
struct RegistryEvents {
    events: Vec<RegistryEvent>,
}

#[derive(Debug, Deserialize)]
struct RegistryEvent {
    #[serde(default)]
    action: String,
    target: RegistryTarget,
    #[serde(default)]
    request: Option<RegistryRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistryTarget {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RegistryRequest {
    #[serde(default)]
    host: String,
}

/// The manifests a push of a tag may carry (an image, or a multi-platform index).
const PUSHED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A registry's push notification (docker-registry / CNCF distribution `notifications`, with an
/// operator token in its `Authorization` header): each push of a **tag** to the repository a
/// service without `build` names in `run.image` announces a release of that digest, as
/// `release create` would. Everything else is ignored, with the reason.
#[utoipa::path(post, path = "/v1/webhooks/registry", tag = "act",
    request_body(content = String, description = "The registry's event envelope (`{\"events\": [...]}`)", content_type = "application/vnd.docker.distribution.events.v1+json"),
    responses((status = 200, body = RegistryEventsAccepted, description = "Nothing announced (each event ignored, with why)"),
        (status = 202, body = RegistryEventsAccepted, description = "Releases announced"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn registry(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = api.authorize(&headers, Role::Operator).await?;
    let body = body?;
    let envelope: RegistryEvents = parse_body(&body)?;
    let mut announced = Vec::new();
    let mut ignored = Vec::new();
    for e in envelope.events {
        let t = &e.target;
        let what = format!("{} {}@{}", e.action, t.repository, t.digest);
        let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) else {
            ignored.push(format!("{what}: not a push of a tag"));
            continue;
        };
        if e.action != "push" || !PUSHED_MANIFESTS.contains(&t.media_type.as_str()) {
            ignored.push(format!("{what}: not a pushed image manifest"));
            continue;
        }
        let hex = t.digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            ignored.push(format!("{what}: not a sha256 digest"));
            continue;
        }
        // the registry as the URL it gives names it, or as the request reached it
        let url_host = t
            .url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let request_host = e.request.as_ref().map(|r| r.host.clone()).unwrap_or_default();
        let names = [
            format!("{url_host}/{}", t.repository),
            format!("{request_host}/{}", t.repository),
        ];
        let service = api
            .catalog
            .services
            .values()
            .find(|s| s.build.is_none() && s.run.image.as_ref().is_some_and(|i| names.contains(i)));
        let Some(service) = service else {
            ignored.push(format!(
                "{what}: no service without `build` takes releases from {}",
                names[0]
            ));
            continue;
        };
        let (service, repository) = (
            service.name.clone(),
            service.run.image.clone().unwrap_or_default(),
        );
        let image = format!("{repository}@{}", t.digest);
        let release = crate::release::release_id(&t.digest);
        let now = (api.clock)();
        let m = api
            .store
            .mutate(
                &service,
                None,
                |_, _| {
                    Ok::<_, ApiError>(Effect::release(
                        super::announcement(
                            &release,
                            serde_json::json!({ "image": image, "tag": tag, "by": "registry notification" }),
                            &caller,
                            format!("pushed to the registry as {tag}"),
                            &origin,
                            now,
                        ),
                        image.clone(),
                        None,
                    ))
                },
                |audit_id, _, _| (202, audit_id.to_string()),
            )
            .await
            .map_err(ApiError::store)?;
        if let crate::store::api::Mutated::Done { body, .. } = m {
            tracing::info!(%service, %image, %tag, "release announced by the registry");
            announced.push(ReleaseAccepted {
                audit_id: body.parse().unwrap_or_default(),
                service,
                image,
                release,
            });
        }
    }
    let status = if announced.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, axum::Json(RegistryEventsAccepted { announced, ignored })).into_response())
}

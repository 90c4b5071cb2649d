//! The push webhook: GitHub, GitLab and Gitea tell autopilot a branch moved, and the pushed
//! commit is built at once (instead of at the next poll).
//!
//! # Guarantees
//! - With a secret configured, a payload is accepted only if signed with it: GitHub and Gitea
//!   `X-Hub-Signature-256: sha256=HMAC`, Gitea `X-Gitea-Signature: HMAC`, GitLab
//!   `X-Gitlab-Token: SECRET`; compared in constant time. Without one, the endpoint only asks
//!   for a build of the service's own branch tip, which polling would build anyway.
//! - Pushes to other branches, deletions and pings build nothing.

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

/// A push to a service's repository: builds the pushed commit if it is the service's branch.
#[utoipa::path(post, path = "/v1/webhooks/push/{service}", tag = "act",
    params(("service" = String, Path, description = "The service whose repository was pushed to")),
    request_body(content = Object, description = "A GitHub, GitLab or Gitea push payload"),
    responses((status = 202, body = PushAccepted), (status = 200, body = PushAccepted, description = "Nothing to build"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn push(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Origin(origin): Origin,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(service) = path?;
    let body = body?;
    if let Some(secret) = &api.settings.webhook_secret {
        verify(secret, &headers, &body)?;
    }
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
                commit: None,
                ignored: Some(why),
            }),
        )
            .into_response())
    };
    if event == "ping" {
        return ignored("ping".into());
    }
    if !(event == "push" || event == "Push Hook") {
        return ignored(format!("`{event}` events build nothing"));
    }
    let p: Push = parse_body(&body)?;
    if p.git_ref != format!("refs/heads/{branch}") {
        return ignored(format!("{} is not {service}'s branch `{branch}`", p.git_ref));
    }
    let commit = p.after.to_ascii_lowercase();
    if commit.chars().all(|c| c == '0') {
        return ignored("the branch was deleted".into());
    }
    if !(4..=64).contains(&commit.len()) || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
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
                Ok::<_, ApiError>(Effect::build(
                    AuditEntry {
                        environment: None,
                        release: None,
                        action: "push".into(),
                        detail: serde_json::json!({ "commit": commit, "ref": p.git_ref, "sender": sender }),
                        who: format!("{sender}:{who}"),
                        reason: format!("push to {branch}"),
                        origin: origin.clone(),
                        at: now,
                    },
                    commit.clone(),
                ))
            },
            |_, _, _| {
                let body = PushAccepted {
                    commit: Some(commit.clone()),
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

//! Signing in to the web pages, and the headers every answer carries.
//!
//! # Guarantees
//! - The browser holds a random session id, never a token: in an `HttpOnly`, `SameSite=Strict`
//!   cookie (`Secure` behind HTTPS) that scripts cannot read and other sites cannot send. The
//!   session reads with its token's name, and ends at sign-out, after 12 hours, or with its token.
//! - Every answer, page or JSON, forbids scripts, styles and frames from elsewhere, framing by
//!   other sites, MIME sniffing and referrers.

use super::views::{ErrorBody, SessionRequest};
use super::{ApiError, ApiState, parse_body};
use crate::control::time::Time;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The cookie of a web sign-in session: a random id (never the token), HttpOnly, SameSite=Strict.
pub const SESSION_COOKIE: &str = "autopilot_session";

/// How long a sign-in session lasts: a working day; the token's revocation ends it sooner.
pub const SESSION_LIFETIME_MS: u64 = 12 * 3600 * 1000;

/// The session id in the `autopilot_session` cookie, if any.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(str::trim)
}

/// The request reached the user over HTTPS (a proxy in front says so): the cookie is `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|f| f.to_ascii_lowercase().contains("proto=https"));
    proto || forwarded
}

/// The session cookie's attributes: never readable by scripts, never sent by another site.
fn session_cookie_value(value: &str, max_age_s: u64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Sign in (the web pages): the token is checked and a session made; its id comes back in an
/// HttpOnly, SameSite=Strict cookie (Secure over HTTPS) that lets the pages and the event
/// stream read with the token's name. Actions still need the token itself, as a bearer.
#[utoipa::path(post, path = "/v1/session", tag = "read",
    request_body = SessionRequest,
    responses((status = 204, description = "Signed in: the session cookie is set"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn sign_in(
    State(api): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: SessionRequest = parse_body(&body?)?;
    let secret = req.token.trim();
    let info = api
        .store
        .token(secret)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
    let now = (api.clock)();
    let session = api
        .store
        .create_session(
            &crate::store::api::token_hash(secret),
            now,
            Time::from_millis(now.millis() + SESSION_LIFETIME_MS),
        )
        .await
        .map_err(ApiError::store)?;
    tracing::info!(token = %info.name, "signed in to the pages");
    let cookie = session_cookie_value(&session, SESSION_LIFETIME_MS / 1000, over_https(&headers));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// Sign out: the session ends and its cookie is cleared.
#[utoipa::path(delete, path = "/v1/session", tag = "read",
    responses((status = 204, description = "Signed out"), (status = 503, body = ErrorBody)))]
pub(super) async fn sign_out(State(api): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(session) = session_cookie(&headers) {
        api.store.end_session(session).await.map_err(ApiError::store)?;
    }
    let cookie = session_cookie_value("", 0, over_https(&headers));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// The headers every answer carries, pages and JSON alike: no script, style, frame or form
/// from anywhere but this server, no framing by other sites, no MIME sniffing, no referrer.
/// Inline `style` attributes are allowed (the weight bars); inline scripts are not.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

pub(super) async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    r
}

//! The request path: host → route → credentials → release → ready upstream, the forwarding
//! headers (a pure function, [`forwarding`]), retries on another upstream of the same release,
//! and the per-release metrics.

use super::auth::Identity;
use super::routes::parse_host;
use super::routes::{Decision, Families, ReleaseRoute, RequestFacts, RouteTable, Upstream};
use super::state::Shared;
use crate::spec::objectives::Auth;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Per-request state.
pub struct Ctx {
    identity: Option<Identity>,
    /// The credentials the proxy verified are removed before the request goes upstream (the
    /// route does not ask for them to be passed on).
    consumed: bool,
    release: Option<Arc<ReleaseRoute>>,
    upstream: Option<Arc<Upstream>>,
    tried: Vec<SocketAddr>,
    started: Instant,
    host: String,
    /// A copy of this request for the route's mirror, filled as the request passes and sent
    /// once it is answered.
    mirror: Option<super::mirror::Copy>,
    /// A request of the route's A/B segment is counted here instead of in its release's
    /// metrics.
    segment: Option<Arc<super::metrics::ReleaseMetrics>>,
}

/// The Pingora proxy.
pub struct AutopilotProxy {
    pub(super) shared: Arc<Shared>,
}

/// The request header forcing an arm: `x-canary: always|never`.
const CANARY_HEADER: http::HeaderName = http::HeaderName::from_static("x-canary");
/// The response header naming the release that served the request.
pub const RELEASE_HEADER: &str = "x-autopilot-release";

fn cookie(header: Option<&str>, name: &str) -> Option<String> {
    header?.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Is this a gRPC call?
fn is_grpc(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC caller gets a trailers-only answer: HTTP 200 with `grpc-status` (16 unauthenticated,
/// 5 not found, 14 unavailable) and no body.
async fn respond_grpc(session: &mut Session, status: u16) -> Result<bool> {
    let (code, message) = match status {
        401 => ("16", "unauthenticated"),
        404 => ("5", "not found"),
        _ => ("14", "unavailable"),
    };
    let mut h = ResponseHeader::build(200, Some(3))?;
    h.insert_header("content-type", "application/grpc")?;
    h.insert_header("grpc-status", code)?;
    h.insert_header("grpc-message", message)?;
    session.write_response_header(Box::new(h), true).await?;
    Ok(true)
}

async fn respond(session: &mut Session, status: u16, body: &'static str) -> Result<bool> {
    if is_grpc(session) {
        return respond_grpc(session, status).await;
    }
    let mut h = ResponseHeader::build(status, Some(3))?;
    if status == 401 {
        h.insert_header("www-authenticate", "Bearer")?;
    }
    h.insert_header("content-type", "text/plain; charset=utf-8")?;
    h.insert_header("content-length", body.len().to_string())?;
    if status == 503 {
        h.insert_header("retry-after", "1")?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}

/// What the proxy knows of a request's peer, for its forwarding headers.
pub struct Peer<'a> {
    pub client: Option<std::net::IpAddr>,
    /// The peer is a trusted proxy (`trustedProxies`): its forwarding headers are extended.
    pub trusted: bool,
    pub https: bool,
    pub host: &'a str,
    /// The request's `X-Forwarded-For` and `Forwarded` as they came.
    pub prior_xff: Option<&'a str>,
    pub prior_forwarded: Option<&'a str>,
    /// The caller the proxy verified, if any.
    pub identity: Option<&'a Identity>,
    /// The families to set.
    pub families: Families,
}

/// The forwarding headers of a request sent upstream: the headers to remove, then the ones to
/// set (each replacing whatever the client sent under that name). From any peer the families
/// set are rebuilt, and those not set are removed; a trusted proxy's chain is extended (and the
/// families not set are passed on as it sent them), anyone else's is replaced. Identity headers
/// are set only from a verified identity: a client's own are removed (a trusted proxy's are
/// passed on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    pub strip: Cow<'static, [&'static str]>,
    pub set: Vec<(&'static str, String)>,
}

/// Every header a request may have removed, in an order in which each common removal is one
/// run: identity, then `Forwarded`, then the `X-Forwarded` family.
const STRIPPABLE: [&str; 6] = [
    "x-autopilot-user",
    "x-autopilot-app",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

pub fn forwarding(p: &Peer) -> Forwarding {
    // the families set replace a client's; what is not set, from anyone but a trusted proxy,
    // is removed
    let untrusted = !p.trusted;
    let identity = untrusted && p.identity.is_none();
    let forwarded = untrusted && !p.families.forwarded;
    let x_forwarded = untrusted && !p.families.x_forwarded;
    let strip = match (identity, forwarded, x_forwarded) {
        (false, false, false) => Cow::Borrowed(&[][..]),
        (true, false, false) => Cow::Borrowed(&STRIPPABLE[0..2]),
        (true, true, false) => Cow::Borrowed(&STRIPPABLE[0..3]),
        (true, true, true) => Cow::Borrowed(&STRIPPABLE[..]),
        (false, true, false) => Cow::Borrowed(&STRIPPABLE[2..3]),
        (false, true, true) => Cow::Borrowed(&STRIPPABLE[2..6]),
        (false, false, true) => Cow::Borrowed(&STRIPPABLE[3..6]),
        (true, false, true) => Cow::Owned([&STRIPPABLE[0..2], &STRIPPABLE[3..6]].concat()),
    };
    let mut set = Vec::with_capacity(6);
    let ip = p.client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let proto = if p.https { "https" } else { "http" };
    if p.families.forwarded {
        let node = match p.client {
            Some(std::net::IpAddr::V6(v6)) => format!("\"[{v6}]\""),
            _ => ip.clone(),
        };
        let quoted = p.host.replace('"', "");
        let element = format!("for={node};proto={proto};host=\"{quoted}\"");
        let forwarded = match (p.trusted, p.prior_forwarded) {
            (true, Some(prior)) => format!("{prior}, {element}"),
            _ => element,
        };
        set.push(("forwarded", forwarded));
    }
    if p.families.x_forwarded {
        let xff = match (p.trusted, p.prior_xff) {
            (true, Some(prior)) => format!("{prior}, {ip}"),
            _ => ip,
        };
        set.push(("x-forwarded-for", xff));
        set.push(("x-forwarded-proto", proto.to_owned()));
        set.push(("x-forwarded-host", p.host.to_owned()));
    }
    if let Some(id) = p.identity {
        set.push(("x-autopilot-user", id.user.to_string()));
        set.push(("x-autopilot-app", id.app.to_string()));
    }
    Forwarding { strip, set }
}

#[async_trait]
impl ProxyHttp for AutopilotProxy {
    type CTX = Ctx;

    /// No downstream modules: Pingora's default adds a (disabled) response compression module
    /// that would still run on every request; the proxy passes bodies through untouched.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            identity: None,
            consumed: false,
            release: None,
            upstream: None,
            tried: Vec::new(),
            started: Instant::now(),
            host: String::new(),
            mirror: None,
            segment: None,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(copy) = &mut ctx.mirror
            && !copy.push(body.as_ref(), end_of_stream)
        {
            ctx.mirror = None;
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // decided on the borrowed request (no copy of its headers), answered afterwards
        let (status, body) = match self.route(session.req_header(), ctx) {
            Ok(()) => return Ok(false),
            Err(answer) => answer,
        };
        respond(session, status, body).await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let release = ctx
            .release
            .as_ref()
            .ok_or_else(|| Error::explain(HTTPStatus(500), "no release chosen"))?;
        let upstream = release
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(HTTPStatus(503), "no ready upstream left for the release"))?;
        let mut peer = HttpPeer::new(upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        // a silent upstream fails the request (504, counted against the release) in time
        peer.options.read_timeout = Some(release.timeout);
        // gRPC needs HTTP/2 end to end (cleartext, prior knowledge to the upstream); every other
        // caller, HTTP/2 browsers included, reaches the upstream over HTTP/1.1, which every
        // upstream speaks (Pingora translates)
        if is_grpc(session) {
            peer.options.set_http_version(2, 2);
        }
        ctx.upstream = Some(upstream);
        Ok(Box::new(peer))
    }

    /// As Pingora's default, but a timeout on the upstream answers 504 (Gateway Timeout), as
    /// nginx does, rather than 502.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        let code = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => *code,
            (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => 504,
            (_, ErrorSource::Upstream) => 502,
            (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
            (_, ErrorSource::Downstream) => 400,
            (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
        };
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(u) = ctx.upstream.take() {
            u.failures.fetch_add(1, Ordering::Relaxed);
            ctx.tried.push(u.addr);
        }
        // another ready upstream of the same release may take it (the request never left)
        let more = ctx.release.as_ref().is_some_and(|r| {
            r.upstreams
                .iter()
                .any(|u| u.usable() && !ctx.tried.contains(&u.addr))
        });
        let _ = peer;
        if more {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let table = self.shared.table.load();
        let trusted = client.is_some_and(|ip| table.trusted_proxies.contains(&ip));
        let https = session
            .as_downstream()
            .digest()
            .is_some_and(|d| d.ssl_digest.is_some());
        // a chain to extend comes only from a trusted proxy: nobody else's is looked at
        let header = |name: &str| {
            trusted
                .then(|| upstream.headers.get(name))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let f = forwarding(&Peer {
            client,
            trusted,
            https,
            host: &ctx.host,
            prior_xff: header("x-forwarded-for").as_deref(),
            prior_forwarded: header("forwarded").as_deref(),
            identity: ctx.identity.as_ref(),
            families: table.forwarding,
        });
        for h in f.strip.iter() {
            upstream.remove_header(*h);
        }
        // the caller's key and token stay here: no release, a canary least of all, holds them
        if ctx.consumed
            && let Some(a) = &table.authenticator
        {
            upstream.remove_header(a.api_key_header());
            upstream.remove_header(a.client_token_header());
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        for (name, value) in f.set {
            upstream.insert_header(name, value)?;
        }
        // the copy carries what the release would have been sent, forwarding headers included
        if let Some(copy) = &mut ctx.mirror {
            copy.headers = upstream.headers.clone();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(r) = &ctx.release {
            response.insert_header(RELEASE_HEADER, r.header_value.clone())?;
        }
        if let Some(u) = &ctx.upstream {
            u.failures.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        // the live request is answered: now its copy may go (a request cut short is not copied)
        if let Some(copy) = ctx.mirror.take().filter(|c| c.complete) {
            self.shared.mirror.send(copy);
        }
        let Some(release) = &ctx.release else { return };
        let upstream_failed =
            e.is_some_and(|e| *e.esource() == ErrorSource::Upstream) || ctx.upstream.is_none();
        let status = if upstream_failed {
            None
        } else {
            session.response_written().map(|r| r.status.as_u16())
        };
        let metrics = ctx.segment.as_ref().unwrap_or(&release.metrics);
        metrics.record(status, ctx.started.elapsed());
    }
}

impl AutopilotProxy {
    /// Authenticates and routes one request: the release goes into `ctx`, or the answer to
    /// give instead (status and body).
    fn route(&self, req: &RequestHeader, ctx: &mut Ctx) -> std::result::Result<(), (u16, &'static str)> {
        // the fixed names are parsed once (a look-up by name text parses it every time)
        let known = |name: &http::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let owned = |name: &str| header(name).map(str::to_owned);
        let host = known(&http::header::HOST)
            .or_else(|| req.uri.host())
            .unwrap_or_default();
        let cookies = known(&http::header::COOKIE);
        let cookie_fn = |name: &str| cookie(cookies, name);
        let table = self.shared.table.load();
        // credentials first wherever the environment is not public, so that existence never
        // leaks: no valid credentials → the same 401 for every host; valid but not allowed →
        // the same 404 as an environment that does not exist
        let target = parse_host(host, &table.domain);
        let route = target.as_ref().and_then(|t| table.route(t));
        if route.is_none_or(|r| r.auth == Auth::Required) {
            let verified = table.authenticator.as_ref().map(|a| {
                a.verify_with_client(
                    known(a.api_key_header()),
                    known(a.client_token_header()),
                    known(&http::header::AUTHORIZATION),
                )
            });
            let identity = match verified {
                Some(Ok(id)) => id,
                Some(Err(_)) | None => return Err((401, "unauthorized\n")),
            };
            match route {
                Some(r) if r.allow.admits(&identity) => {
                    ctx.consumed = !r.pass_credentials;
                    ctx.identity = Some(identity);
                }
                _ => return Err((404, "not found\n")),
            }
        }
        let (Some(target), Some(route)) = (target.as_ref(), route) else {
            return Err((404, "not found\n"));
        };
        let identity = ctx.identity.as_ref();
        let claim = |name: &str| identity.and_then(|id| id.claims.get(name).cloned());
        let decision = RouteTable::choose_in(
            target,
            route,
            &RequestFacts {
                host,
                canary_header: known(&CANARY_HEADER),
                header: &owned,
                cookie: &cookie_fn,
                claim: &claim,
                draw: self.shared.draw(),
            },
        );
        ctx.host = host.to_owned();
        match decision {
            Decision::Release { release, segment } => {
                ctx.segment = segment;
                if target.release().is_none()
                    && let Some(m) = &route.mirror
                    && !Arc::ptr_eq(&m.to, &release)
                    && self.shared.draw() < m.below
                {
                    ctx.mirror = copy_of(req, m);
                }
                ctx.release = Some(release);
                Ok(())
            }
            Decision::NotFound => Err((404, "not found\n")),
            Decision::Unavailable { .. } => {
                Err((503, "no ready instance of this release; try again shortly\n"))
            }
        }
    }
}

/// A copy of a live request for a mirror, if the request may be copied (its body, if any,
/// comes as it passes).
fn copy_of(req: &RequestHeader, m: &super::routes::MirrorRoute) -> Option<super::mirror::Copy> {
    let length = super::mirror::eligible(&req.method, &req.headers, &m.methods, m.max_body).ok()?;
    Some(super::mirror::Copy {
        to: m.to.clone(),
        method: req.method.clone(),
        path_and_query: req
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        headers: req.headers.clone(),
        body: bytes::BytesMut::with_capacity(length as usize),
        max_body: m.max_body,
        complete: length == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::routes::ForwardingHeaders;

    fn peer<'a>(client: &str, trusted: bool, xff: Option<&'a str>, fwd: Option<&'a str>) -> Peer<'a> {
        Peer {
            client: Some(client.parse().unwrap()),
            trusted,
            https: false,
            host: "shop.prod.example.test",
            prior_xff: xff,
            prior_forwarded: fwd,
            identity: None,
            families: Families {
                x_forwarded: true,
                forwarded: true,
            },
        }
    }

    fn value(f: &Forwarding, name: &str) -> String {
        f.set
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    #[test]
    fn an_untrusted_peer_s_forwarding_headers_are_replaced_and_its_identity_headers_removed() {
        let f = forwarding(&peer(
            "203.0.113.9",
            false,
            Some("10.0.0.1"),
            Some("for=10.0.0.1"),
        ));
        assert_eq!(
            value(&f, "x-forwarded-for"),
            "203.0.113.9",
            "a spoofed chain is dropped"
        );
        assert_eq!(
            value(&f, "forwarded"),
            "for=203.0.113.9;proto=http;host=\"shop.prod.example.test\""
        );
        assert!(f.strip.contains(&"x-autopilot-user") && f.strip.contains(&"x-autopilot-app"));
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert!(
                f.set.iter().any(|(n, _)| *n == name),
                "{name} is always set, replacing the client's"
            );
        }
        assert!(
            !f.set.iter().any(|(n, _)| n.starts_with("x-autopilot")),
            "no identity without a verified caller"
        );
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended() {
        let f = forwarding(&peer(
            "10.0.0.2",
            true,
            Some("198.51.100.7"),
            Some("for=198.51.100.7"),
        ));
        assert_eq!(value(&f, "x-forwarded-for"), "198.51.100.7, 10.0.0.2");
        assert_eq!(
            value(&f, "forwarded"),
            "for=198.51.100.7, for=10.0.0.2;proto=http;host=\"shop.prod.example.test\""
        );
        assert!(
            !f.strip.contains(&"x-autopilot-user"),
            "a trusted proxy may pass identity on"
        );
    }

    #[test]
    fn ipv6_is_quoted_a_quote_in_the_host_cannot_break_out_and_https_is_said() {
        let mut p = peer("2001:db8::1", false, None, None);
        p.host = "evil\";for=1.2.3.4";
        p.https = true;
        let f = forwarding(&p);
        assert_eq!(
            value(&f, "forwarded"),
            "for=\"[2001:db8::1]\";proto=https;host=\"evil;for=1.2.3.4\""
        );
        assert_eq!(value(&f, "x-forwarded-proto"), "https");
    }

    #[test]
    fn a_family_not_set_is_removed_from_a_client_and_passed_on_from_a_trusted_proxy() {
        // the default: the x-forwarded family only
        let mut p = peer("203.0.113.9", false, Some("10.0.0.1"), Some("for=10.0.0.1"));
        p.families = Families::default();
        let f = forwarding(&p);
        assert_eq!(value(&f, "x-forwarded-for"), "203.0.113.9");
        assert!(!f.set.iter().any(|(n, _)| *n == "forwarded"));
        assert_eq!(
            &f.strip[..],
            ["x-autopilot-user", "x-autopilot-app", "forwarded"],
            "a client's own Forwarded never reaches the upstream"
        );
        p.trusted = true;
        assert!(
            forwarding(&p).strip.is_empty(),
            "a trusted proxy's Forwarded and identity go on as it sent them"
        );
        // Forwarded only, and an identity: the x-forwarded family is removed, identity set
        let id = Identity {
            user: "ann".into(),
            app: "web".into(),
            groups: Arc::new(vec![]),
            claims: Default::default(),
        };
        let mut p = peer("203.0.113.9", false, Some("10.0.0.1"), None);
        p.families = Families::of(&[ForwardingHeaders::Forwarded]);
        p.identity = Some(&id);
        let f = forwarding(&p);
        assert_eq!(
            &f.strip[..],
            ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        );
        let names: Vec<&str> = f.set.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["forwarded", "x-autopilot-user", "x-autopilot-app"]);
        // no family at all: every forwarding header a client sends is removed
        let mut p = peer("203.0.113.9", false, None, None);
        p.families = Families::of(&[]);
        let f = forwarding(&p);
        assert_eq!(&f.strip[..], STRIPPABLE);
        assert!(f.set.is_empty());
        // the one set of removals that is not a run of the constant
        p.families = Families::of(&[ForwardingHeaders::Forwarded]);
        assert_eq!(
            &forwarding(&p).strip[..],
            [
                "x-autopilot-user",
                "x-autopilot-app",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host"
            ]
        );
    }

    #[test]
    fn a_verified_identity_is_passed_on() {
        let id = Identity {
            user: "ann".into(),
            app: "web".into(),
            groups: Arc::new(vec![]),
            claims: Default::default(),
        };
        let mut p = peer("203.0.113.9", false, None, None);
        p.identity = Some(&id);
        let f = forwarding(&p);
        assert_eq!(value(&f, "x-autopilot-user"), "ann");
        assert_eq!(value(&f, "x-autopilot-app"), "web");
    }
}

//! The running proxy: a Pingora HTTP service on its own OS thread (Pingora builds its own
//! runtimes), a readiness prober, a routes-file reloader, and the admin listener (metrics and the
//! control API the controller drives), all stopped through one [`ProxyHandle`].
//!
//! # Guarantees
//! - A request reads the current route snapshot without a lock; a swap never drops requests in
//!   flight (they keep the snapshot they started with).
//! - Only ready upstreams get traffic; a connection failure is retried on another ready upstream
//!   of the *same* release; with none ready the answer is a clear 503, never a hang.
//! - Forwarding headers from untrusted peers are replaced, never trusted.

use super::auth::{Authenticator, Identity, JwksSource};
use super::metrics::Registry;
use super::routes::parse_host;
use super::routes::{Decision, ReleaseRoute, RequestFacts, RouteSpec, RouteTable, RoutesFile, Upstream};
use crate::spec::objectives::Auth;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin listener (metrics, control API). Keep it on loopback.
    pub admin: SocketAddr,
    /// Bearer token required by the control API.
    pub admin_token: String,
    /// The routes file to load and watch, if any (else routes come only through the API).
    pub routes_file: Option<PathBuf>,
    /// How often upstreams are probed.
    pub probe_interval: Duration,
    /// The readiness path probed on every upstream.
    pub probe_path: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// One work-stealing runtime for all worker threads (`true`), or one single-threaded
    /// runtime per thread (`false`: about 15% more requests per core, measured with
    /// `scripts/bench-proxy`). Pingora 0.9 hands a no-steal runtime started after an earlier
    /// one shut down in the same process the dead runtime's handles (cloudflare/pingora#981),
    /// and cannot stop at once without hanging now and then (see [`ProxyHandle::stop`]), so
    /// only a process running one proxy for its whole life (the CLI) may use `false`.
    pub work_stealing: bool,
    /// Validated objectives whose environments' access rules override the routes'.
    pub access: Option<Arc<crate::spec::Catalog>>,
    /// An HTTPS listener, if any.
    pub tls: Option<TlsListen>,
    /// How long [`ProxyHandle::drain`] lets requests in flight finish (whole seconds; a
    /// fraction rounds up).
    pub drain: Duration,
}

/// The HTTPS listener: certificates from files and/or a local CA, chosen by SNI; ALPN offers
/// HTTP/2 and HTTP/1.1.
#[derive(Debug, Clone)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub certs: Vec<super::tls::CertFiles>,
    /// A folder for the local CA (made at the first start, reused), which signs a certificate for
    /// every environment's and preview's host pattern.
    pub local_ca: Option<PathBuf>,
}

/// State shared by the proxy, the prober, the reloader and the admin API.
pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    pub registry: Registry,
    /// The routes as last loaded or set (the source of the snapshot).
    pub routes: Mutex<RoutesFile>,
    /// Where paths in the routes file (the JWKS) start.
    base: PathBuf,
    /// Access rules from the objectives, applied to every routes change.
    access: Option<Arc<crate::spec::Catalog>>,
    draws: AtomicU64,
    /// The key set last fetched from a JWKS URL, with the URL.
    fetched_jwks: Mutex<Option<(String, JwkSet)>>,
    /// Raised when a token names a key the current set lacks.
    unknown_key: Arc<tokio::sync::Notify>,
}

impl Shared {
    pub fn new(
        mut routes: RoutesFile,
        base: PathBuf,
        access: Option<Arc<crate::spec::Catalog>>,
    ) -> Result<Arc<Shared>, String> {
        if let Some(catalog) = &access {
            for w in super::routes::apply_access(&mut routes, catalog) {
                tracing::warn!("{w}");
            }
        }
        let registry = Registry::default();
        routes.check()?;
        let unknown_key = Arc::new(tokio::sync::Notify::new());
        let mut table = RouteTable::build(&routes, None, &registry);
        table.authenticator = authenticator(&routes, &base, None, &unknown_key)?;
        Ok(Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            registry,
            routes: Mutex::new(routes),
            base,
            access,
            draws: AtomicU64::new(0x9e37_79b9),
            fetched_jwks: Mutex::new(None),
            unknown_key,
        }))
    }

    /// Replaces the routes and swaps in a new snapshot (health and metrics carried over). On
    /// an error (an unreadable JWKS) nothing changes.
    pub fn set_routes(&self, mut routes: RoutesFile) -> Result<(), String> {
        routes.check()?;
        if let Some(catalog) = &self.access {
            super::routes::apply_access(&mut routes, catalog);
        }
        let mut current = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.table.load_full();
        let mut table = RouteTable::build(&routes, Some(&previous), &self.registry);
        let fetched = self
            .fetched_jwks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fetched = fetched.as_ref().and_then(|(url, set)| {
            routes
                .auth
                .as_ref()
                .is_some_and(|a| &a.jwks == url)
                .then_some(set)
        });
        table.authenticator = authenticator(&routes, &self.base, fetched, &self.unknown_key)?;
        self.table.store(Arc::new(table));
        *current = routes;
        Ok(())
    }

    /// Rebuilds the snapshot from the current routes (after the JWKS changed).
    pub fn refresh(&self) -> Result<(), String> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.set_routes(routes)
    }

    /// Upserts one service/environment route.
    pub fn set_route(&self, route: RouteSpec) -> Result<(), String> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        routes
            .routes
            .retain(|r| !(r.service == route.service && r.environment == route.environment));
        routes.routes.push(route);
        self.set_routes(routes)
    }

    /// The JWKS file the routes name, if any.
    fn jwks_path(&self) -> Option<PathBuf> {
        match self.jwks_source()? {
            JwksSource::File(path) => Some(path),
            JwksSource::Url(_) => None,
        }
    }

    fn jwks_source(&self) -> Option<JwksSource> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.auth.as_ref().map(|a| a.jwks_source(&self.base))
    }

    /// A cheap, well-mixed draw in `0..BUCKETS` (splitmix64 over a counter).
    fn draw(&self) -> u32 {
        let mut z = self.draws.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % u64::from(crate::control::traffic::BUCKETS)) as u32
    }
}

fn authenticator(
    routes: &RoutesFile,
    base: &std::path::Path,
    fetched: Option<&JwkSet>,
    unknown_key: &Arc<tokio::sync::Notify>,
) -> Result<Option<Arc<Authenticator>>, String> {
    match &routes.auth {
        None => Ok(None),
        Some(settings) => {
            let mut a = Authenticator::load(settings, base, fetched)?;
            a.unknown_key = Some(unknown_key.clone());
            Ok(Some(Arc::new(a)))
        }
    }
}

/// Per-request state.
pub struct Ctx {
    identity: Option<Identity>,
    release: Option<Arc<ReleaseRoute>>,
    upstream: Option<Arc<Upstream>>,
    tried: Vec<SocketAddr>,
    started: Instant,
    host: String,
}

/// The Pingora proxy.
pub struct AutopilotProxy {
    shared: Arc<Shared>,
}

/// Headers a client may not set: forwarding and identity.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];
const IDENTITY: [&str; 2] = ["x-autopilot-user", "x-autopilot-app"];
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
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
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

#[async_trait]
impl ProxyHttp for AutopilotProxy {
    type CTX = Ctx;

    /// No downstream modules: Pingora's default adds a (disabled) response compression module
    /// that would still run on every request; the proxy passes bodies through untouched.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            identity: None,
            release: None,
            upstream: None,
            tried: Vec::new(),
            started: Instant::now(),
            host: String::new(),
        }
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
        let trusted = client.is_some_and(|ip| self.shared.table.load().trusted_proxies.contains(&ip));
        let prior_xff = upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let prior_fwd = upstream
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        for h in FORWARDING.iter().chain(IDENTITY.iter()) {
            if (!trusted || FORWARDING.contains(h)) && upstream.headers.contains_key(*h) {
                upstream.remove_header(*h);
            }
        }
        let ip = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        let xff = match (trusted, prior_xff) {
            (true, Some(prior)) => format!("{prior}, {ip}"),
            _ => ip.clone(),
        };
        let node = match client {
            Some(std::net::IpAddr::V6(v6)) => format!("\"[{v6}]\""),
            _ => ip.clone(),
        };
        let proto = if session
            .as_downstream()
            .digest()
            .is_some_and(|d| d.ssl_digest.is_some())
        {
            "https"
        } else {
            "http"
        };
        let quoted = if ctx.host.contains('"') {
            std::borrow::Cow::Owned(ctx.host.replace('"', ""))
        } else {
            std::borrow::Cow::Borrowed(ctx.host.as_str())
        };
        let element = format!("for={node};proto={proto};host=\"{quoted}\"");
        let forwarded = match (trusted, prior_fwd) {
            (true, Some(prior)) => format!("{prior}, {element}"),
            _ => element,
        };
        upstream.insert_header("x-forwarded-for", xff)?;
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-host", ctx.host.clone())?;
        upstream.insert_header("forwarded", forwarded)?;
        if let Some(id) = &ctx.identity {
            upstream.insert_header("x-autopilot-user", &*id.user)?;
            upstream.insert_header("x-autopilot-app", &*id.app)?;
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
        let Some(release) = &ctx.release else { return };
        let upstream_failed =
            e.is_some_and(|e| *e.esource() == ErrorSource::Upstream) || ctx.upstream.is_none();
        let status = if upstream_failed {
            None
        } else {
            session.response_written().map(|r| r.status.as_u16())
        };
        release.metrics.record(status, ctx.started.elapsed());
    }
}

impl AutopilotProxy {
    /// Authenticates and routes one request: the release goes into `ctx`, or the answer to
    /// give instead (status and body).
    fn route(&self, req: &RequestHeader, ctx: &mut Ctx) -> std::result::Result<(), (u16, &'static str)> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let owned = |name: &str| header(name).map(str::to_owned);
        let host = header("host").or_else(|| req.uri.host()).unwrap_or_default();
        let cookies = header("cookie");
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
                    header(a.api_key_header()),
                    header(a.client_token_header()),
                    header("authorization"),
                )
            });
            let identity = match verified {
                Some(Ok(id)) => id,
                Some(Err(_)) | None => return Err((401, "unauthorized\n")),
            };
            match route {
                Some(r) if r.allow.admits(&identity) => ctx.identity = Some(identity),
                _ => return Err((404, "not found\n")),
            }
        }
        let (Some(target), Some(route)) = (target.as_ref(), route) else {
            return Err((404, "not found\n"));
        };
        let decision = RouteTable::choose_in(
            target,
            route,
            &RequestFacts {
                host,
                canary_header: header("x-canary"),
                header: &owned,
                cookie: &cookie_fn,
                draw: self.shared.draw(),
            },
        );
        ctx.host = host.to_owned();
        match decision {
            Decision::Release { release } => {
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

/// Signals Pingora to stop: at once, or (draining) by closing the listeners and letting
/// requests in flight finish for the configured drain period.
struct StopSignal {
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Arc<std::sync::atomic::AtomicBool>,
    /// Pingora's quick shutdown is safe only on one work-stealing runtime (see [`ProxyHandle::stop`]).
    quick: bool,
}

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.stop.clone();
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        if self.drain.load(Ordering::SeqCst) || !self.quick {
            ShutdownSignal::GracefulTerminate
        } else {
            ShutdownSignal::FastShutdown
        }
    }
}

/// A running proxy. Dropping it does not stop it; call [`ProxyHandle::stop`].
pub struct ProxyHandle {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    drain: Arc<std::sync::atomic::AtomicBool>,
    work_stealing: bool,
    /// The admin thread (listener, prober, reloader, JWKS).
    background: std::thread::JoinHandle<()>,
    /// Pingora's thread.
    pingora: std::thread::JoinHandle<()>,
}

impl ProxyHandle {
    /// Stops every part at once (requests in flight are cut) and waits for them.
    ///
    /// With [`ProxyConfig::work_stealing`] `false` it waits for the admin thread only. Pingora
    /// 0.9's quick shutdown stops its per-thread runtimes one after the other while the accept
    /// loops still run, and an accept loop whose listener was registered with a runtime
    /// already stopped gets "a Tokio context … being shutdown" from every `accept()` at once
    /// and loops on it without yielding, so its thread never takes its own stop (seen: the
    /// CLI hung until its 5 s bound, about one stop in ten). There the stop closes the
    /// listeners (Pingora's graceful stop, which ends the accept loops first) and leaves
    /// Pingora's thread, sleeping its grace period, to the process's exit: the one use of
    /// `false` is a process that exits right after (the CLI).
    pub fn stop(self) {
        self.finish(false);
    }

    /// Stops taking connections, lets requests in flight finish for the configured
    /// [`ProxyConfig::drain`] period, then stops every part (what a supervisor's SIGTERM asks).
    pub fn drain(self) {
        self.drain.store(true, Ordering::SeqCst);
        self.finish(true);
    }

    fn finish(self, drain: bool) {
        let _ = self.stop.send(true);
        let _ = self.background.join();
        if drain || self.work_stealing {
            let _ = self.pingora.join();
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("auth: {0}")]
    Auth(String),
    #[error("tls: {0}")]
    Tls(#[from] super::tls::TlsError),
}

/// How long the admin listener may finish its requests after a stop.
const ADMIN_STOP: Duration = Duration::from_secs(1);

/// Starts the proxy, the prober, the reloader and the admin listener.
pub fn start(config: ProxyConfig, routes: RoutesFile) -> Result<ProxyHandle, StartError> {
    let base = config
        .routes_file
        .as_ref()
        .and_then(|f| f.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let shared = Shared::new(routes, base, config.access.clone()).map_err(StartError::Auth)?;
    let resolver = match &config.tls {
        Some(t) => Some(tls_resolver(t, &shared)?),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (first_fetch_tx, first_fetch_rx) = std::sync::mpsc::channel::<()>();

    // the admin listener and the background tasks share one small runtime
    let admin_listener = std::net::TcpListener::bind(config.admin).map_err(|source| StartError::Admin {
        addr: config.admin,
        source,
    })?;
    admin_listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Admin {
            addr: config.admin,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Admin {
        addr: config.admin,
        source,
    })?;
    // the runtime and the listener are made here, so a resource error is the caller's error
    // (made in the thread, a failure would silently stop the prober, reloader and admin API)
    let admin_error = |source| StartError::Admin {
        addr: config.admin,
        source,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(admin_error)?;
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(admin_listener).map_err(admin_error)?
    };
    let background = {
        let shared = shared.clone();
        let config = config.clone();
        let stop_rx = stop_rx.clone();
        std::thread::spawn(move || {
            rt.block_on(async move {
                let app = super::admin::router(shared.clone(), config.admin_token.clone());
                let mut stop_admin = stop_rx.clone();
                let mut stop_wait = stop_rx.clone();
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop_admin.wait_for(|s| *s).await;
                });
                // a stop is prompt: connections still open a second after it are dropped
                let admin = async move {
                    tokio::select! {
                        _ = serve.into_future() => {}
                        _ = async {
                            let _ = stop_wait.wait_for(|s| *s).await;
                            tokio::time::sleep(ADMIN_STOP).await;
                        } => {}
                    }
                };
                let prober = probe_loop(
                    shared.clone(),
                    config.probe_interval,
                    config.probe_path.clone(),
                    stop_rx.clone(),
                );
                let reloader = reload_loop(shared.clone(), config.routes_file.clone(), stop_rx.clone());
                let jwks = jwks_loop(shared.clone(), first_fetch_tx, stop_rx.clone());
                let _ = tokio::join!(admin, prober, reloader, jwks);
            });
        })
    };
    // with a JWKS URL, serve with keys from the first request on: wait (bounded) for the first
    // fetch; if it fails, start anyway, refusing tokens until a fetch succeeds
    if matches!(shared.jwks_source(), Some(JwksSource::Url(_))) {
        let _ = first_fetch_rx.recv_timeout(FIRST_FETCH_WAIT);
    }

    // Pingora on its own thread, with its own runtimes
    let conf = ServerConf {
        // with a drain, Pingora closes the listeners and waits this long before it stops
        grace_period_seconds: Some(config.drain.as_secs() + u64::from(config.drain.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        threads: config.threads.max(1),
        work_stealing: config.work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        AutopilotProxy {
            shared: shared.clone(),
        },
    );
    if let Some(app) = service.app_logic_mut() {
        // HTTP/2 over cleartext (prior knowledge) next to HTTP/1.1 on the same port
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    if let (Some(t), Some(resolver)) = (&config.tls, resolver) {
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
            .map_err(|e| StartError::Tls(super::tls::TlsError::Certificate(e.to_string())))?;
        settings.set_cert_resolver(Arc::new(resolver));
        settings.enable_h2();
        service.add_tls_with_settings(&t.listen.to_string(), None, settings);
    }
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);
    let drain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain_flag = drain.clone();
    let quick = config.work_stealing;
    let pingora = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(StopSignal {
                stop: stop_rx,
                drain: drain_flag,
                quick,
            }),
        });
    });
    Ok(ProxyHandle {
        listen: config.listen,
        admin: admin_addr,
        shared,
        stop: stop_tx,
        drain,
        work_stealing: config.work_stealing,
        background,
        pingora,
    })
}

fn tls_resolver(t: &TlsListen, shared: &Arc<Shared>) -> Result<super::tls::SniResolver, StartError> {
    use super::tls::{LocalCa, OnDemand, SniResolver, certified_key, host_patterns};
    let mut resolver = SniResolver::from_files(&t.certs)?;
    if let Some(dir) = &t.local_ca {
        let ca = LocalCa::load_or_create(dir)?;
        // one certificate for the routes known now; the CA signs for hosts added later on demand
        let names = host_patterns(&shared.routes.lock().unwrap_or_else(PoisonError::into_inner));
        let (cert, key) = ca.issue(&names)?;
        let entries = vec![(names, Arc::new(certified_key(&cert, &key)?))];
        let table = shared.clone();
        let on_demand = OnDemand::new(ca, Box::new(move || table.table.load().domain.clone()));
        resolver = SniResolver::new(entries)
            .with_on_demand(on_demand)
            .merged_after(resolver);
    }
    Ok(resolver)
}

/// Probes one upstream's readiness path: a 2xx within the timeout is ready.
/// One readiness probe over HTTP/1.1 (hyper's client): 2xx within 800 ms is ready.
async fn probe(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "autopilot-probe")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        // the connection is driven beside the request, and dropped with it (no task outlives a
        // probe of an upstream that never answers); if it ends first (an upstream that answers
        // and closes), the answer it read is still there to take
        let response = sender.send_request(request);
        tokio::pin!(response);
        let response = tokio::select! {
            response = &mut response => response,
            _ = conn => response.await,
        };
        Some(response.ok()?.status().is_success())
    };
    tokio::time::timeout(Duration::from_millis(800), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn probe_loop(
    shared: Arc<Shared>,
    every: Duration,
    path: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let targets = shared.table.load().probe_targets(&path);
        let upstreams: Vec<_> = targets.iter().map(|(u, _)| u.clone()).collect();
        // probed together, so one dead upstream does not delay the others
        let mut probes = tokio::task::JoinSet::new();
        for (i, (u, path)) in targets.into_iter().enumerate() {
            let addr = u.addr;
            probes.spawn(async move { (i, probe(addr, &path).await) });
        }
        while let Some(Ok((i, ok))) = probes.join_next().await {
            upstreams[i].ready.store(ok, Ordering::Relaxed);
            if ok {
                upstreams[i].failures.store(0, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reloads the routes file when it changes; a broken file is reported and the old routes stay.
/// How long a start waits for the first fetch of a JWKS URL.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(10);
/// A token naming an unknown key fetches the JWKS again at most this often.
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(10);

/// Keeps a JWKS URL's keys fresh: fetched at start, every `jwksRefresh`, at once when the URL
/// changes, and (rate-limited) when a token names a key the set lacks. A failure keeps the
/// last good keys and retries with a doubling delay (1 s up to the refresh period).
async fn jwks_loop(
    shared: Arc<Shared>,
    first: std::sync::mpsc::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut first = Some(first);
    let mut next = Instant::now();
    let mut last = None::<Instant>;
    // the URL last tried: a new one (a routes change) is fetched at once
    let mut tried: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    let mut unknown_key = false;
    // one HTTP client (and its connection pool) for every fetch, rebuilt when the CA changes
    let mut client: Option<JwksClient> = None;
    loop {
        let settings = shared
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .auth
            .clone();
        let url = settings.as_ref().and_then(|a| match a.jwks_source(&shared.base) {
            JwksSource::Url(u) => Some(u),
            JwksSource::File(_) => None,
        });
        if let (Some(settings), Some(url)) = (settings, url) {
            let rotated = unknown_key && last.is_none_or(|l| l.elapsed() >= UNKNOWN_KEY_REFETCH);
            if tried.as_ref() != Some(&url) || Instant::now() >= next || rotated {
                unknown_key = false;
                last = Some(Instant::now());
                tried = Some(url.clone());
                match fetch_jwks(&settings, &shared.base, &url, &mut client).await {
                    Ok(set) => {
                        shared.registry.jwks_fetched.fetch_add(1, Ordering::Relaxed);
                        backoff = Duration::from_secs(1);
                        next = Instant::now() + settings.jwks_refresh.0;
                        let changed = shared
                            .fetched_jwks
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .as_ref()
                            .is_none_or(|(u, old)| u != &url || old != &set);
                        if changed {
                            *shared.fetched_jwks.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some((url, set));
                            if let Err(e) = shared.refresh() {
                                tracing::warn!("keeping the current keys: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        shared.registry.jwks_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "JWKS {url}: {e}; keeping the keys last fetched, again in {} s",
                            backoff.as_secs()
                        );
                        next = Instant::now() + backoff;
                        backoff = (backoff * 2).min(settings.jwks_refresh.0.max(Duration::from_secs(1)));
                    }
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = shared.unknown_key.notified() => unknown_key = true,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One fetch of a JWKS URL: a 200 with a key set the authenticator accepts, within 5 s and
/// 1 MiB.
/// The JWKS fetcher's HTTP client, with the CA bundle it trusts (`None`: the system roots).
struct JwksClient {
    ca: Option<Vec<u8>>,
    client: reqwest::Client,
}

async fn fetch_jwks(
    settings: &super::auth::AuthSettings,
    base: &std::path::Path,
    url: &str,
    cached: &mut Option<JwksClient>,
) -> Result<JwkSet, String> {
    // the process-wide TLS crypto provider (ring, as Pingora's rustls uses); set once
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = match &settings.jwks_ca {
        Some(ca) => {
            let path = base.join(ca);
            Some(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let client = match cached {
        Some(c) if c.ca == ca => c.client.clone(),
        _ => {
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = &ca {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    format!(
                        "{}: not PEM certificates: {e}",
                        settings.jwks_ca.as_deref().unwrap_or_default()
                    )
                })?;
                builder = builder.tls_certs_only(certs);
            }
            let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
            *cached = Some(JwksClient {
                ca,
                client: client.clone(),
            });
            client
        }
    };
    let mut resp = client.get(url).send().await.map_err(|e| format!("{e}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            return Err("larger than 1 MiB".into());
        }
    }
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
    Authenticator::new(settings, &set)?;
    Ok(set)
}

async fn reload_loop(
    shared: Arc<Shared>,
    file: Option<PathBuf>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = file else {
        let _ = stop.wait_for(|s| *s).await;
        return;
    };
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut seen_jwks = shared.jwks_path().and_then(|p| modified(&p));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = modified(&path);
        if now != seen {
            seen = now;
            let result = load_routes(&path).and_then(|routes| shared.set_routes(routes));
            if let Err(e) = result {
                tracing::warn!("keeping the current routes: {e}");
            }
        }
        let jwks_now = shared.jwks_path().and_then(|p| modified(&p));
        if jwks_now != seen_jwks {
            seen_jwks = jwks_now;
            if let Err(e) = shared.refresh() {
                tracing::warn!("keeping the current keys: {e}");
            }
        }
    }
}

/// Reads and validates a routes file.
pub fn load_routes(path: &std::path::Path) -> Result<RoutesFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let routes = crate::spec::parse_document::<RoutesFile>(&path.display().to_string(), &text)
        .map_err(|r| r.render_text())?;
    routes.check().map_err(|e| {
        e.lines()
            .map(|l| format!("{}: error: {l}\n", path.display()))
            .collect::<String>()
    })?;
    Ok(routes)
}

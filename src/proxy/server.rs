//! The running proxy's lifecycle: the Pingora HTTP service on its own OS thread (Pingora builds
//! its own runtimes; the request path is in [`super::request`]), and the admin listener with the
//! background loops ([`super::background`]) on a second thread, all stopped through one
//! [`ProxyHandle`].
//!
//! # Guarantees
//! - A request reads the current route snapshot without a lock; a swap never drops requests in
//!   flight (they keep the snapshot they started with).
//! - Only ready upstreams get traffic; a connection failure is retried on another ready upstream
//!   of the *same* release; with none ready the answer is a clear 503, never a hang.
//! - Forwarding headers from untrusted peers are replaced, never trusted.

use super::auth::JwksSource;
use super::routes::RoutesFile;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

pub use super::background::load_routes;
use super::background::{FIRST_FETCH_WAIT, jwks_loop, probe_loop, reload_loop};
pub use super::request::{AutopilotProxy, Ctx, RELEASE_HEADER};
pub use super::state::Shared;

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
    /// Where the proxy listens (a port 0 asked for resolved).
    pub listen: SocketAddr,
    /// Where its HTTPS listener listens, if it has one.
    pub tls_listen: Option<SocketAddr>,
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
    /// A listener's port is taken (or its address is not this machine's), or Pingora did not
    /// listen on it in time.
    #[error("listen {addr}: {source}")]
    Listen {
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

/// How long [`start`] waits for Pingora to accept connections on its listener (it binds on its
/// own thread; the port is held for it meanwhile, see [`Reserved`]).
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// A listener's port, held from [`start`]'s first step until Pingora listens on it. Pingora 0.9
/// binds its listeners itself, on its own thread, and cannot be handed a bound socket (only
/// through its upgrade socket, a second's wait); where the port is taken it retries for 30 s
/// and then serves nothing while the process runs on. So the port is bound here, exclusively
/// (a port someone listens on or an address not of this machine fails at once, with where and
/// what; port 0 gets a free port), and then marked `SO_REUSEPORT`, which lets Pingora's own socket (also
/// `SO_REUSEPORT`, same user) bind beside it while no one else can: not another listener, and
/// not an outgoing connection choosing a local port. The held socket never listens, so every
/// connection goes to Pingora's; it is closed once Pingora accepts.
struct Reserved {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl Reserved {
    fn bind(addr: SocketAddr) -> Result<Reserved, StartError> {
        let fail = |source| StartError::Listen { addr, source };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(fail)?;
        // as every server: connections of a stopped process lingering in TIME_WAIT do not
        // hold the port, a listener does
        socket.set_reuse_address(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        socket.set_reuse_port(true).map_err(fail)?;
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| fail(std::io::Error::other("no local address after bind")))?;
        Ok(Reserved {
            _socket: socket,
            addr,
        })
    }
}

/// Pingora's socket options for a [`Reserved`] address.
fn beside_reserved() -> pingora::listeners::TcpSocketOptions {
    let mut options = pingora::listeners::TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    options
}

/// Where a client on this machine reaches a listener on `addr` (an unspecified address is
/// reached on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Blocks (at most [`LISTEN_WAIT`]) until a connection to `addr` is accepted.
fn wait_listening(addr: SocketAddr, pingora: &std::thread::JoinHandle<()>) -> Result<(), StartError> {
    let target = reachable(addr);
    let deadline = std::time::Instant::now() + LISTEN_WAIT;
    loop {
        if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        let late = std::time::Instant::now() >= deadline;
        if late || pingora.is_finished() {
            let why = if late {
                format!("Pingora did not listen within {LISTEN_WAIT:?} (is the port taken?)")
            } else {
                "Pingora stopped before it listened".to_owned()
            };
            return Err(StartError::Listen {
                addr,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, why),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the proxy, the prober, the reloader and the admin listener; returns once the proxy
/// accepts connections (its HTTPS listener, if any, is bound before its plain one). A listener's
/// port 0 is a free port, told in [`ProxyHandle::listen`] and [`ProxyHandle::tls_listen`].
pub fn start(config: ProxyConfig, routes: RoutesFile) -> Result<ProxyHandle, StartError> {
    // held until Pingora listens (and closed on every way out of here)
    let plain = Reserved::bind(config.listen)?;
    let tls = config
        .tls
        .as_ref()
        .map(|t| Reserved::bind(t.listen))
        .transpose()?;
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
        let addr = tls.as_ref().map_or(t.listen, |r| r.addr);
        service.add_tls_with_settings(&addr.to_string(), Some(beside_reserved()), settings);
    }
    service.add_tcp_with_settings(&plain.addr.to_string(), beside_reserved());
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
    let handle = ProxyHandle {
        listen: plain.addr,
        tls_listen: tls.as_ref().map(|r| r.addr),
        admin: admin_addr,
        shared,
        stop: stop_tx,
        drain,
        work_stealing: config.work_stealing,
        background,
        pingora,
    };
    // the plain listener is built last, so once it accepts, every listener is bound
    if let Err(e) = wait_listening(plain.addr, &handle.pingora) {
        handle.stop();
        return Err(e);
    }
    Ok(handle)
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

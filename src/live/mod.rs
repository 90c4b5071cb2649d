//! The live loop on one machine: `autopilot up` wires the real adapters into the driver and
//! ticks every service until it is stopped.
//!
//! - [`config`] — `autopilot.yaml`.
//! - [`ProxyRouter`] — the [`Router`] port on the in-process proxy's route snapshot (the same
//!   API its admin endpoint uses); upstreams come from the runtime.
//! - [`ProxySensors`] — the built-in sensors `proxy.errors` / `proxy.latency`, read from the
//!   proxy's per-release counters in process, counted from each rollout's start.
//! - [`Up`] — start (store, builder, runtime, proxy), restore what the store says should run,
//!   tick, stop cleanly.
//! - [`demo`] — `autopilot demo`, a sample service taken through the whole loop.
//!
//! Nothing here decides: every decision is `plan`'s, through [`crate::control::driver`].

pub mod config;
pub mod demo;
pub mod metrics;
pub mod notify;

use crate::clock::wall_clock;
use crate::control::counters::since_base;
use crate::control::driver::{self, Tick};
use crate::control::judge::{Counts, Reading};
use crate::control::plan::PlanSpec;
use crate::control::ports::{PortError, Ports, Readings, Route, RouteWeights, Router, Runtime, Sensors};
use crate::control::rollout::{Phase, ServiceState};
use crate::control::time::Time;
use crate::control::wake::{self, Rhythm};
use crate::proxy::routes::{RouteSpec, RoutesFile};
use crate::proxy::server::{ProxyConfig, ProxyHandle, Shared, TlsListen};
use crate::release::LocalBuilder;
use crate::runtime::{AnyRuntime, LocalRuntime};
use crate::spec::Catalog;
use crate::spec::sensors::{ProxySignal, SensorSource};
use crate::spec::units::{Target, Weight};
use crate::store::SqlStore;
use config::{AutopilotConfig, RuntimeConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The router port on the in-process proxy.
#[derive(Clone)]
pub struct ProxyRouter {
    shared: Arc<Shared>,
    runtime: AnyRuntime,
    /// Each service's readiness path (`run.readiness`), probed by the proxy too.
    readiness: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for ProxyRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyRouter")
    }
}

impl ProxyRouter {
    pub fn new(shared: Arc<Shared>, runtime: AnyRuntime, catalog: &Catalog) -> Self {
        let readiness = catalog
            .services
            .iter()
            .map(|(name, s)| (name.clone(), s.run.readiness.clone()))
            .collect();
        ProxyRouter {
            shared,
            runtime,
            readiness: Arc::new(readiness),
        }
    }
}

impl Router for ProxyRouter {
    async fn routes(&mut self, service: &str) -> Result<BTreeMap<String, RouteWeights>, PortError> {
        let routes = self.shared.routes.lock().expect("routes lock");
        Ok(routes
            .routes
            .iter()
            .filter(|r| r.service == service)
            .map(|r| {
                let w = RouteWeights {
                    stable: r.stable.clone(),
                    canary: r.canary.clone(),
                    weight: r.weight,
                };
                (r.environment.clone(), w)
            })
            .collect())
    }

    async fn set_route(&mut self, service: &str, environment: &str, route: &Route) -> Result<(), PortError> {
        let mut releases = BTreeMap::new();
        for r in route.releases() {
            releases.insert(r.to_owned(), self.runtime.endpoints(service, environment, r));
        }
        let spec = RouteSpec {
            service: service.to_owned(),
            environment: environment.to_owned(),
            stable: route.stable.clone(),
            canary: route.canary.clone(),
            weight: route.weight,
            sticky: None,
            releases,
            auth: Default::default(),
            allow: None,
            pass_credentials: false,
            timeout: None,
            readiness: self.readiness.get(service).cloned(),
            mirror: route.mirror.clone(),
            segment: route.segment.clone(),
        };
        self.shared
            .set_route(spec)
            .map_err(|e| PortError::retry("router", e))?;
        self.mark_ready(service, environment, route.releases());
        Ok(())
    }
}

impl ProxyRouter {
    /// Upstreams new to the proxy start "not ready" until its own probe passes; the runtime has
    /// just seen these releases' ready instances pass the same probe, so they serve from the
    /// first request.
    fn mark_ready<'a>(&self, service: &str, environment: &str, releases: impl Iterator<Item = &'a str>) {
        let ready: Vec<_> = releases
            .flat_map(|r| self.runtime.ready_endpoints(service, environment, r))
            .collect();
        for u in self.shared.table.load().upstreams() {
            if ready.contains(&u.addr) {
                u.ready.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Brings every route's upstreams up to what the runtime reports now, keeping its weights:
    /// Kubernetes moves pods (a restart, a reschedule: new addresses) without a rollout step.
    /// Routes that already match are left alone. Returns how many routes changed.
    pub fn refresh_upstreams(&self) -> usize {
        let routes = self.shared.routes.lock().expect("routes lock").routes.clone();
        let mut changed = 0;
        for mut route in routes {
            let releases: BTreeMap<String, Vec<std::net::SocketAddr>> = route
                .releases
                .keys()
                .map(|r| {
                    (
                        r.clone(),
                        self.runtime.endpoints(&route.service, &route.environment, r),
                    )
                })
                .collect();
            if releases == route.releases {
                continue;
            }
            let names: Vec<String> = releases.keys().cloned().collect();
            route.releases = releases;
            let (service, environment) = (route.service.clone(), route.environment.clone());
            match self.shared.set_route(route) {
                Ok(()) => {
                    self.mark_ready(&service, &environment, names.iter().map(String::as_str));
                    changed += 1;
                }
                Err(e) => tracing::warn!(%service, %environment, "refreshing upstreams: {e}"),
            }
        }
        changed
    }
}

/// How one objective is read from the proxy.
#[derive(Debug, Clone, Copy)]
enum ProxyRead {
    Errors,
    SlowerThan(Duration),
    /// Not a proxy sensor (Prometheus comes with its own adapter): always missing.
    Unsupported,
}

/// (service, environment, objective, rollout, the A/B segment judged: empty outside one).
type RolloutObjective = (String, String, String, String, String);

/// The built-in sensors on the in-process proxy's counters.
pub struct ProxySensors {
    shared: Arc<Shared>,
    /// Per (service, objective): how to read it.
    reads: HashMap<(String, String), ProxyRead>,
    /// Per (service, environment, objective, rollout): the counters when the rollout started.
    baselines: HashMap<RolloutObjective, (Option<Counts>, Option<Counts>)>,
}

impl std::fmt::Debug for ProxySensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxySensors")
    }
}

impl ProxySensors {
    pub fn new(shared: Arc<Shared>, catalog: &Catalog) -> Self {
        let mut reads = HashMap::new();
        for (name, s) in &catalog.services {
            for o in &s.objectives {
                let read = match (catalog.sensors.get(&o.sensor).map(|s| &s.source), o.target) {
                    (Some(SensorSource::Proxy(ProxySignal::Errors)), _) => ProxyRead::Errors,
                    (Some(SensorSource::Proxy(ProxySignal::Latency)), Target::Latency { threshold, .. }) => {
                        ProxyRead::SlowerThan(threshold.0)
                    }
                    _ => ProxyRead::Unsupported,
                };
                reads.insert((name.clone(), o.name.clone()), read);
            }
        }
        ProxySensors {
            shared,
            reads,
            baselines: HashMap::new(),
        }
    }

    /// A release's counts: of one A/B segment's requests, or of all its requests.
    fn count(
        &self,
        service: &str,
        env: &str,
        release: &str,
        segment: Option<&str>,
        read: ProxyRead,
    ) -> Option<Counts> {
        let registry = &self.shared.registry;
        let series = match segment {
            Some(s) => registry
                .get_segment(service, env, release, s)
                .into_iter()
                .collect(),
            None => registry.all(service, env, release),
        };
        match read {
            ProxyRead::Errors => Some(
                series
                    .iter()
                    .map(|m| m.errors())
                    .fold(Counts::default(), |a, b| a + b),
            ),
            ProxyRead::SlowerThan(t) => series
                .iter()
                .try_fold(Counts::default(), |a, m| Some(a + m.slower_than(t)?)),
            ProxyRead::Unsupported => None,
        }
    }
}

impl Sensors for ProxySensors {
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        _now: Time,
    ) -> BTreeMap<String, Readings> {
        let mut out = BTreeMap::new();
        for (spec, state) in services {
            let mut readings = Readings::new();
            for env in &spec.environments {
                let Some(st) = state.environments.get(&env.name) else {
                    continue;
                };
                let Some(rollout) = st.rollout.as_ref().filter(|r| !r.phase.is_finished()) else {
                    continue;
                };
                let rollout_key = format!("{}@{}", rollout.release, rollout.started_at.millis());
                // A/B: while the release serves only its segment, both arms are the segment's
                // requests (like with like); after, all of each release's requests, counted
                // from the moment the stage changes (the judge starts afresh then too)
                let segment = env
                    .controller
                    .strategy
                    .segment()
                    .filter(|_| rollout.phase.held())
                    .map(|s| s.name.as_str());
                for o in &env.objectives {
                    let read = self
                        .reads
                        .get(&(spec.service.clone(), o.name.clone()))
                        .copied()
                        .unwrap_or(ProxyRead::Unsupported);
                    let canary = self.count(&spec.service, &env.name, &rollout.release, segment, read);
                    let stable = st
                        .stable
                        .as_deref()
                        .and_then(|s| self.count(&spec.service, &env.name, s, segment, read));
                    let key = (
                        spec.service.clone(),
                        env.name.clone(),
                        o.name.clone(),
                        rollout_key.clone(),
                        segment.unwrap_or_default().to_owned(),
                    );
                    let base = self.baselines.entry(key).or_default();
                    let mut reading =
                        Reading::of(since_base(&mut base.0, canary), since_base(&mut base.1, stable));
                    if matches!(read, ProxyRead::Unsupported) {
                        reading.missing = Some(crate::control::judge::Missing::Unsupported);
                    }
                    readings.insert((env.name.clone(), o.name.clone()), reading);
                }
            }
            out.insert(spec.service.clone(), readings);
        }
        // forget the baselines of rollouts no longer running
        let live: std::collections::HashSet<String> = services
            .iter()
            .flat_map(|(_, st)| st.environments.values())
            .filter_map(|e| e.rollout.as_ref())
            .map(|r| format!("{}@{}", r.release, r.started_at.millis()))
            .collect();
        self.baselines.retain(|k, _| live.contains(&k.3));
        out
    }
}

/// The sensors of the live loop: the proxy's own counters, and Prometheus when configured.
/// Each objective is read by the adapter its sensor names; one call reads every service.
pub struct LiveSensors {
    pub proxy: ProxySensors,
    pub prometheus: Option<crate::prom::PromSensors>,
}

impl std::fmt::Debug for LiveSensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSensors")
    }
}

impl Sensors for LiveSensors {
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        now: Time,
    ) -> BTreeMap<String, Readings> {
        let mut out = self.proxy.read(services, now).await;
        if let Some(p) = &mut self.prometheus {
            for (service, readings) in p.read(services, now).await {
                out.entry(service).or_default().extend(readings);
            }
        }
        out
    }
}

/// Why `autopilot up` cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Specs(String),
    #[error("the data directory {path} is not writable: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot listen on {addr} ({what}): {source} — is another autopilot or server using it?")]
    PortInUse {
        addr: std::net::SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] crate::store::OpenError),
    #[error("{0}")]
    Adapter(String),
    #[error("proxy: {0}")]
    Proxy(#[from] crate::proxy::server::StartError),
}

/// Opens the store the configuration names (default: SQLite in the data directory).
pub async fn open_store(config: &AutopilotConfig) -> Result<SqlStore, UpError> {
    Ok(match &config.store {
        Some(url) => SqlStore::open(url).await?,
        None => SqlStore::open_dir(&config.data_dir).await?,
    })
}

/// Makes sure someone can use the API: the token in `api.tokenVariable` is registered as the
/// `admin` token; with none set and no token stored, one is made and written (mode 0600) to
/// `admin.token` in the data directory. Returns that file when it was written.
pub async fn bootstrap_token(
    store: &SqlStore,
    config: &AutopilotConfig,
) -> Result<Option<std::path::PathBuf>, UpError> {
    let err = |e: crate::control::ports::PortError| UpError::Adapter(e.to_string());
    let token_err = |e: crate::store::api::TokenError| UpError::Adapter(e.to_string());
    if let Ok(secret) = std::env::var(&config.api.token_variable)
        && !secret.is_empty()
    {
        store
            .add_token("admin", "admin", &[], &secret)
            .await
            .map_err(token_err)?;
        return Ok(None);
    }
    if store.token_count().await.map_err(err)? > 0 {
        return Ok(None);
    }
    let secret = store
        .create_token("admin", "admin", &[])
        .await
        .map_err(token_err)?;
    let path = config.data_dir.join("admin.token");
    write_private(&path, &secret).map_err(|e| UpError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some(path))
}

/// Writes a secret to `path`, readable by its owner only (0600), making its folder if needed.
pub fn write_private(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // a file that existed keeps its mode through `open`: tighten it
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(secret.as_bytes())
}

/// The proxy admin token's file in the data directory.
pub const PROXY_ADMIN_TOKEN_FILE: &str = "proxy-admin.token";

/// The proxy admin API's bearer token of `up`: from `admin_token_variable` if set; otherwise the
/// one kept in the data directory's `proxy-admin.token` (0600), made there on the first start.
/// Never printed: the caller prints the file's path. Returns the token and, when it is kept in
/// the file, the file's path.
pub fn proxy_admin_token(config: &AutopilotConfig) -> Result<(String, Option<std::path::PathBuf>), UpError> {
    if let Ok(t) = std::env::var(&config.admin_token_variable)
        && !t.is_empty()
    {
        return Ok((t, None));
    }
    let path = config.data_dir.join(PROXY_ADMIN_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok((t.trim().to_owned(), Some(path)));
    }
    let token = random_token();
    write_private(&path, &token).map_err(|e| UpError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((token, Some(path)))
}

/// 128 random bits from the OS, hex.
pub fn random_token() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The API's shared state for this configuration.
pub fn api_state(
    config: &AutopilotConfig,
    catalog: Arc<Catalog>,
    specs: Vec<PlanSpec>,
    store: SqlStore,
) -> crate::api::ApiState {
    let (scheme, port) = match config.tls_listen {
        Some(t) => ("https", t.port()),
        None => ("http", config.listen.port()),
    };
    crate::api::ApiState {
        store,
        catalog,
        specs: Arc::new(specs),
        settings: Arc::new(crate::api::ApiSettings {
            open_reads: config.api.open_reads,
            webhook_secret: config.api.webhook_secret(),
            webhook_secret_variable: config.api.webhook_secret_variable.clone(),
            domain: config.domain.clone(),
            public_port: Some(port),
            scheme,
        }),
        clock: Arc::new(wall_clock),
        discovery: None,
        streams: Default::default(),
    }
}

/// The live ports.
pub type LivePorts = Ports<SqlStore, LiveSensors, LocalBuilder, AnyRuntime, ProxyRouter>;

/// A running autopilot.
pub struct Up {
    pub config: AutopilotConfig,
    pub catalog: Arc<Catalog>,
    pub specs: Vec<PlanSpec>,
    pub ports: LivePorts,
    pub proxy: Option<ProxyHandle>,
    /// The store, for reading (the ports hold the writing one).
    pub store: SqlStore,
    /// The API server, and how to stop it.
    api: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    /// Where a new admin token was written at start, if one was made.
    pub admin_token_file: Option<std::path::PathBuf>,
    notifier: notify::Notifier,
    /// Approvals already announced.
    announced: std::collections::HashSet<(String, String, String)>,
}

fn check_port(addr: std::net::SocketAddr, what: &'static str) -> Result<(), UpError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| UpError::PortInUse { addr, what, source })
}

impl Up {
    /// Validates the specs, opens the store, starts the proxy, the builder and the runtime,
    /// stops what a previous run left, and brings back what the store says should run.
    pub async fn start(config: AutopilotConfig, admin_token: String) -> Result<Up, UpError> {
        let catalog = crate::spec::load(&config.specs).map_err(|e| match e {
            crate::spec::LoadError::Invalid(r) => UpError::Specs(r.render_text()),
            crate::spec::LoadError::Usage(u) => UpError::Specs(u.to_string()),
        })?;
        if catalog.services.is_empty() {
            return Err(UpError::Specs(format!(
                "no service (`kind: Service`) in {}",
                config
                    .specs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let specs: Vec<PlanSpec> = catalog
            .services
            .keys()
            .filter_map(|s| PlanSpec::resolve(&catalog, s))
            .collect();
        let data = &config.data_dir;
        let writable = std::fs::create_dir_all(data)
            .and_then(|_| std::fs::write(data.join(".writable"), b"ok"))
            .and_then(|_| std::fs::remove_file(data.join(".writable")));
        if let Err(e) = writable {
            return Err(UpError::DataDir {
                path: data.display().to_string(),
                reason: e.to_string(),
            });
        }
        check_port(config.listen, "proxy")?;
        if let Some(t) = config.tls_listen {
            check_port(t, "proxy https")?;
        }
        check_port(config.admin, "admin")?;
        check_port(config.api.listen, "API")?;
        let store = open_store(&config).await?;
        let admin_token_file = bootstrap_token(&store, &config).await?;
        let notifier = notify::Notifier::start(
            notify::resolve(&config.notifications).map_err(UpError::Adapter)?,
            store.clone(),
            format!("http://{}", config.api.listen),
            None,
        )
        .map_err(UpError::Adapter)?;
        let services: Vec<_> = catalog.services.values().cloned().collect();
        // the specs' folder is where relative repository paths start
        let base = config
            .specs
            .first()
            .and_then(|p| p.parent())
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let registry = config
            .registry
            .as_ref()
            .map(|r| r.open())
            .transpose()
            .map_err(UpError::Adapter)?;
        let builder = LocalBuilder::with_registry(
            &services,
            &catalog.service_files,
            &base,
            data,
            store.clone(),
            registry,
        )
        .await
        .map_err(UpError::Adapter)?;
        let runtime = match &config.runtime {
            RuntimeConfig::Local => AnyRuntime::Local(
                LocalRuntime::new(&services, builder.layout().clone(), data, store.pool().clone())
                    .await
                    .map_err(UpError::Adapter)?,
            ),
            RuntimeConfig::Kubernetes(k) => {
                let registry = config
                    .registry
                    .as_ref()
                    .map(crate::cli::kubernetes::registry_prefix);
                for s in &services {
                    // what a deploy would refuse, refused before anything starts
                    let probe = crate::control::rollout::Release {
                        id: "r000000000000".into(),
                        commit: String::new(),
                        digest: format!("sha256:{}", "0".repeat(64)),
                    };
                    let repository = registry.as_ref().map(|r| format!("{r}/{}", s.name));
                    crate::runtime::manifests::workload(s, &probe, k, repository.as_deref())
                        .map_err(|e| UpError::Adapter(format!("runtime.kubernetes: {e}")))?;
                }
                AnyRuntime::Kubernetes(
                    crate::runtime::kubernetes::KubeRuntime::connect(&services, k.clone(), registry)
                        .await
                        .map_err(|e| UpError::Adapter(format!("runtime.kubernetes: {e}")))?,
                )
            }
        };
        let catalog = Arc::new(catalog);
        let mut routes = RoutesFile::new(&config.domain, Vec::new());
        routes.auth = config.auth.clone();
        let proxy_config = ProxyConfig {
            listen: config.listen,
            admin: config.admin,
            admin_token,
            routes_file: None,
            probe_interval: Duration::from_millis(250),
            // each route names its service's own readiness path
            probe_path: "/healthz".into(),
            threads: 2,
            work_stealing: true,
            access: Some(catalog.clone()),
            tls: config.tls_listen.map(|listen| TlsListen {
                listen,
                certs: Vec::new(),
                local_ca: Some(data.join("ca")),
            }),
            drain: Duration::from_secs(1),
        };
        // the start blocks until Pingora listens (on its own thread): off the runtime's workers
        let proxy = tokio::task::spawn_blocking(move || crate::proxy::server::start(proxy_config, routes))
            .await
            .map_err(|e| UpError::Adapter(format!("the proxy's start: {e}")))??;
        let shared = proxy.shared.clone();
        let prometheus = match &config.prometheus {
            Some(p) => Some(
                crate::prom::PromSensors::new(p, &catalog)
                    .map_err(|e| UpError::Adapter(format!("prometheus: {e}")))?,
            ),
            None => {
                let unread: Vec<String> = catalog
                    .services
                    .values()
                    .flat_map(|s| s.objectives.iter().map(move |o| (s, o)))
                    .filter(|(_, o)| {
                        catalog
                            .sensors
                            .get(&o.sensor)
                            .is_some_and(|x| !matches!(x.source, SensorSource::Proxy(_)))
                    })
                    .map(|(s, o)| format!("{}/{} ({})", s.name, o.name, o.sensor))
                    .collect();
                if !unread.is_empty() {
                    tracing::warn!(
                        "these objectives read Prometheus, and autopilot.yaml has no `prometheus:`; their data will be missing: {}",
                        unread.join(", ")
                    );
                }
                None
            }
        };
        let ports = Ports {
            store: store.clone(),
            sensors: LiveSensors {
                proxy: ProxySensors::new(shared.clone(), &catalog),
                prometheus,
            },
            builder,
            runtime: runtime.clone(),
            router: ProxyRouter::new(shared, runtime.clone(), &catalog),
        };
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| UpError::PortInUse {
                addr: config.api.listen,
                what: "API",
                source,
            })?;
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(crate::app::serve(
            listener,
            crate::api::ApiState {
                discovery: Some(Arc::new(runtime.clone())),
                ..api_state(&config, catalog.clone(), specs.clone(), store.clone())
            },
            async {
                let _ = api_stopped.await;
            },
        ));
        let mut up = Up {
            config,
            catalog,
            specs,
            ports,
            proxy: Some(proxy),
            store,
            api: Some((stop_api, api)),
            admin_token_file,
            notifier,
            announced: Default::default(),
        };
        up.restore().await?;
        Ok(up)
    }

    /// Brings back what the store says runs: each environment's stable release and any rollout
    /// in progress, and their routes (level-triggered: the world is made to match the record).
    async fn restore(&mut self) -> Result<(), UpError> {
        for (service, state) in self
            .store
            .states()
            .await
            .map_err(|e| UpError::Adapter(e.to_string()))?
        {
            let find = |id: &str| state.releases.iter().find(|r| r.id == id).cloned();
            for (env, st) in &state.environments {
                let active = st.rollout.as_ref().filter(|r| !r.phase.is_finished());
                let mut weight = None;
                // (a blue/green switch's previous release runs until its rollback window ends)
                let kept = st.previous.as_ref().map(|k| &k.release);
                for id in st.stable.iter().chain(active.map(|r| &r.release)).chain(kept) {
                    if let Some(release) = find(id) {
                        let _ = self.ports.runtime.deploy(&service, env, &release).await;
                    }
                }
                if let Some(r) = active {
                    weight = Some((r.release.clone(), r.phase.weight()));
                    if matches!(r.phase, Phase::RollingBack { .. }) {
                        weight = Some((r.release.clone(), Weight(0)));
                    }
                }
                let route = match (&st.stable, weight) {
                    (stable, Some((canary, w))) => Some(Route::decide(stable.as_deref(), &canary, w, None)),
                    (Some(stable), None) => Some(Route::decide(None, stable, Weight::MAX, None)),
                    (None, None) => None,
                };
                let result = match route {
                    Some(route) => self.ports.router.set_route(&service, env, &route).await,
                    None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(%service, %env, "restoring the route: {e}");
                }
                tracing::info!(%service, %env, stable = ?st.stable, rollout = ?active.map(|r| (&r.release, r.phase.name())), "restored");
            }
        }
        Ok(())
    }

    /// Ticks until `shutdown` resolves; `on_tick` sees every service's tick.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut on_tick: impl FnMut(&str, &Tick),
    ) -> Result<(), UpError> {
        tokio::pin!(shutdown);
        let mut latest: BTreeMap<String, crate::control::rollout::Plan> = BTreeMap::new();
        let mut stats = metrics::TickStats::default();
        let scrape = match &self.config.prometheus {
            Some(p)
                if self
                    .ports
                    .sensors
                    .prometheus
                    .as_ref()
                    .is_some_and(|s| s.reads_anything()) =>
            {
                Some(p.scrape_interval.0)
            }
            _ => None,
        };
        let rhythm = Rhythm::new(self.config.tick.0, scrape);
        // each service's notes of the last tick: a note is said when it first appears
        let mut noted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // each service's observations that failed at the last tick
        let mut unobserved: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let now = wall_clock();
            let span = tracing::info_span!("tick", at = %now);
            let started = std::time::Instant::now();
            let results =
                tracing::Instrument::instrument(driver::tick_all(&self.specs, &mut self.ports, now), span)
                    .await;
            let next = rhythm.next(now, results.iter().map(|(_, r)| r.as_ref().ok().map(|t| &t.plan)));
            for (service, result) in &results {
                match result {
                    Ok(tick) => {
                        for t in &tick.plan.transitions {
                            tracing::info!(
                                %service,
                                environment = %t.environment,
                                release = %t.release,
                                from = ?t.from,
                                to = %t.to,
                                weight = t.weight.0,
                                cause = ?t.cause,
                                "transition"
                            );
                        }
                        for (action, e) in &tick.failures {
                            tracing::warn!(%service, ?action, "action failed: {e}");
                        }
                        let before = noted.entry(service.clone()).or_default();
                        for note in tick.plan.notes.iter().filter(|n| !before.contains(n)) {
                            tracing::info!(%service, "{note}");
                        }
                        *before = tick.plan.notes.clone();
                        // an observation that fails is unknown to the plan (it holds); said
                        // once when it starts, and once when it is back
                        let now_failing: Vec<String> =
                            tick.unobserved.iter().map(|e| e.to_string()).collect();
                        let was = unobserved.entry(service.clone()).or_default();
                        for (e, text) in tick.unobserved.iter().zip(&now_failing) {
                            if !was.contains(text) {
                                let retry = if e.retryable { "; looking again" } else { "" };
                                tracing::warn!(%service, "cannot observe {}: {}{retry}", e.port, e.message);
                            }
                        }
                        for text in was.iter().filter(|t| !now_failing.contains(t)) {
                            tracing::info!(%service, "observed again after: {text}");
                        }
                        *was = now_failing;
                        self.notifier
                            .send(notify::events(service, &tick.plan, &mut self.announced));
                        on_tick(service, tick);
                    }
                    Err(e) => {
                        if e.retryable {
                            tracing::warn!(%service, "tick failed, looking again soon: {e}");
                        } else {
                            tracing::error!(%service, "tick failed: {e}");
                        }
                    }
                }
            }
            let took = started.elapsed().as_secs_f64();
            stats.ticks += 1;
            stats.last_seconds = took;
            stats.total_seconds += took;
            for (service, result) in results {
                if let Ok(tick) = result {
                    latest.insert(service, tick.plan);
                }
            }
            // pods move on Kubernetes; local instances keep their ports (nothing to do)
            if matches!(self.ports.runtime, AnyRuntime::Kubernetes(_)) {
                let changed = self.ports.router.refresh_upstreams();
                if changed > 0 {
                    tracing::info!(routes = changed, "upstreams follow the runtime's endpoints");
                }
            }
            if let Some(path) = self.config.prometheus.as_ref().and_then(|p| p.file_sd.as_ref()) {
                let text = crate::prom::file_sd::render(&self.ports.runtime.running());
                match crate::prom::file_sd::write(path, &text) {
                    Ok(true) => tracing::info!(path = %path.display(), "wrote Prometheus targets"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(path = %path.display(), "writing Prometheus targets: {e}"),
                }
            }
            if let Some(p) = &self.proxy {
                p.shared
                    .registry
                    .extra
                    .store(Arc::new(metrics::render(&latest, stats)));
            }
            tracing::debug!(took_ms = (took * 1000.0) as u64, "tick done");
            let wait =
                Duration::from_millis(next.millis().saturating_sub(wall_clock().millis())).max(wake::MIN_GAP);
            // an operator's action or a push webhook (through the API in this process) is acted
            // on at once, not at the next interval
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
                () = self.store.changed() => {}
            }
        }
    }

    /// Stops the services' processes and the proxy, and closes the store.
    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.api.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        self.ports.runtime.stop_all().await;
        if let Some(p) = self.proxy.take() {
            tokio::task::spawn_blocking(move || p.stop()).await.ok();
        }
        self.store.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{EnvState, Rollout};
    use std::path::PathBuf;

    fn examples() -> Catalog {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        crate::spec::load(&[
            root.join("objectives"),
            root.join("sensors"),
            root.join("controllers"),
        ])
        .map_err(|_| "the examples load")
        .unwrap()
    }

    fn in_prod(phase: Phase) -> ServiceState {
        let mut state = ServiceState::default();
        state.environments.insert(
            "prod".into(),
            EnvState {
                stable: Some("v1".into()),
                stable_since: Some(Time::ZERO),
                rollout: Some(Rollout {
                    release: "v2".into(),
                    phase,
                    started_at: Time::from_secs(100),
                    judges: BTreeMap::new(),
                    watches: BTreeMap::new(),
                    excess_bad: 0.0,
                }),
                blocked: None,
                previous: None,
            },
        );
        state
    }

    fn record(m: &crate::proxy::metrics::ReleaseMetrics, ok: u64, failed: u64) {
        for _ in 0..ok {
            m.record(Some(200), Duration::from_millis(5));
        }
        for _ in 0..failed {
            m.record(Some(503), Duration::from_millis(5));
        }
    }

    /// While an A/B release serves its segment, both arms are read from the segment's series
    /// (like with like); on the ramp, from all of each release's requests, counted from the
    /// stage's first read.
    #[tokio::test]
    async fn an_ab_segment_is_judged_on_its_own_series_and_the_ramp_on_everyone_s() {
        let catalog = examples();
        let spec = PlanSpec::resolve(&catalog, "storefront").unwrap();
        let shared = Shared::new(RoutesFile::new("example.test", vec![]), PathBuf::from("."), None).unwrap();
        let r = &shared.registry;
        let (v1, v2) = (
            r.release("storefront", "prod", "v1"),
            r.release("storefront", "prod", "v2"),
        );
        let (v1s, v2s) = (
            r.segment("storefront", "prod", "v1", "staff"),
            r.segment("storefront", "prod", "v2", "staff"),
        );
        let mut sensors = ProxySensors::new(shared.clone(), &catalog);
        let held = in_prod(Phase::Canary {
            step: 0,
            weight: Weight(0),
            since: Time::from_secs(120),
        });
        let errors =
            |out: &BTreeMap<String, Readings>| out["storefront"][&("prod".to_owned(), "errors".to_owned())];
        // the first read is the baseline
        record(&v1, 1000, 1);
        let out = sensors.read(&[(&spec, &held)], Time::from_secs(130)).await;
        assert_eq!(
            errors(&out),
            Reading::of(Some(Counts::new(0, 0)), Some(Counts::new(0, 0)))
        );
        // everyone else's requests are not the segment's
        record(&v1, 5000, 10);
        record(&v1s, 40, 2);
        record(&v2s, 30, 3);
        let out = sensors.read(&[(&spec, &held)], Time::from_secs(140)).await;
        assert_eq!(
            errors(&out),
            Reading::of(Some(Counts::new(3, 33)), Some(Counts::new(2, 42)))
        );

        // on the ramp: each release's requests, all of them, from the first read of the stage
        let ramp = in_prod(Phase::Canary {
            step: 0,
            weight: Weight(10),
            since: Time::from_secs(150),
        });
        let out = sensors.read(&[(&spec, &ramp)], Time::from_secs(150)).await;
        assert_eq!(
            errors(&out),
            Reading::of(Some(Counts::new(0, 0)), Some(Counts::new(0, 0)))
        );
        record(&v1, 900, 0);
        record(&v2, 99, 1);
        record(&v1s, 10, 0);
        let out = sensors.read(&[(&spec, &ramp)], Time::from_secs(160)).await;
        assert_eq!(
            errors(&out),
            Reading::of(Some(Counts::new(1, 100)), Some(Counts::new(0, 910)))
        );
    }
}

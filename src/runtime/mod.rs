//! The local runtime: releases as processes on this machine.
//!
//! `deploy` unpacks the release's artifact (by digest, from the OCI layout) into a folder of its
//! own and starts `run.command` there `replicas` times, each on a free loopback port passed in
//! `run.portVariable`, with `run.env`. A supervisor per instance restarts a process that exits,
//! with a doubling backoff; exits that follow one another without the instance ever becoming
//! ready are a crash loop, reported as `failed` (which `plan` rolls back). Readiness is the
//! HTTP probe `run.readiness` answering 2xx. `retire` sends SIGTERM to the instance's process
//! group, then SIGKILL after the grace period.
//!
//! # Guarantees
//! - Processes never outlive autopilot unnoticed: each is recorded (pid and a per-instance
//!   token in its environment) in the store; at start, [`LocalRuntime::new`] stops every
//!   recorded process that is still running and carries that token (a reused pid is left alone).
//! - `deploy` and `retire` are idempotent.
//! - An instance's port stays the same across restarts, so routes need not change.

pub mod kube_config;
pub mod kubernetes;
pub mod manifests;

use crate::clock::wall_clock;
use crate::control::ports::{Instances, PortError, Runtime};
use crate::control::rollout::{Readiness, Release};
use crate::release::oci::Layout;
use crate::spec::objectives::{Run, ServiceSpec};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Exits in a row without becoming ready that make a crash loop.
const CRASH_LOOP_EXITS: u32 = 3;
/// The first restart's delay; it doubles per exit in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the readiness probe runs.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The environment variable carrying an instance's token (for safe adoption after a crash).
pub const INSTANCE_VARIABLE: &str = "AUTOPILOT_INSTANCE";

/// One running instance.
#[derive(Debug)]
struct Instance {
    port: u16,
    ready: AtomicBool,
    /// Exits in a row without becoming ready.
    failed_exits: AtomicU32,
    pid: AtomicU32,
}

#[derive(Debug)]
struct Deployment {
    instances: Vec<Arc<Instance>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Key = (String, String, String);

/// The local-process runtime.
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    runs: Arc<BTreeMap<String, Run>>,
    layout: Layout,
    dir: PathBuf,
    pool: AnyPool,
    grace: Duration,
    deployments: Arc<Mutex<BTreeMap<Key, Deployment>>>,
    probe: reqwest::Client,
}

fn err(e: impl std::fmt::Display) -> PortError {
    PortError::retry("runtime", e.to_string())
}

/// Sends `signal` to a process group; false if it no longer exists.
fn signal_group(pid: u32, signal: Signal) -> bool {
    killpg(Pid::from_raw(pid as i32), signal).is_ok()
}

/// Whether `pid` runs and carries `token` in its environment.
fn carries(pid: u32, token: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv == format!("{INSTANCE_VARIABLE}={token}").as_bytes())
        })
        .unwrap_or(false)
}

/// Stops a process group: SIGTERM, then SIGKILL after `grace` if it is still there.
async fn terminate(pid: u32, grace: Duration) {
    if !signal_group(pid, Signal::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        // signal 0 only asks whether the group still exists
        if killpg(Pid::from_raw(pid as i32), None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pid, Signal::SIGKILL);
}

fn free_port() -> Result<u16, PortError> {
    crate::net::free_port(std::net::IpAddr::from([127, 0, 0, 1])).map_err(err)
}

impl LocalRuntime {
    /// A runtime for these services, keeping unpacked releases and logs under `data`. Stops
    /// every process a previous run left behind.
    pub async fn new(
        services: &[ServiceSpec],
        layout: Layout,
        data: &Path,
        pool: AnyPool,
    ) -> Result<Self, String> {
        let rows = sqlx::query("SELECT pid, token FROM processes")
            .fetch_all(&pool)
            .await
            .map_err(|e| e.to_string())?;
        let grace = Duration::from_secs(5);
        for r in rows {
            let (pid, token): (i64, String) = (r.get("pid"), r.get("token"));
            if carries(pid as u32, &token) {
                tracing::warn!(pid, "stopping a process left by the previous run");
                terminate(pid as u32, grace).await;
            }
        }
        sqlx::query("DELETE FROM processes")
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
        // reqwest is built without a default TLS provider; the proxy's (ring) serves every client
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(LocalRuntime {
            runs: Arc::new(services.iter().map(|s| (s.name.clone(), s.run.clone())).collect()),
            layout,
            dir: data.to_owned(),
            pool,
            grace,
            deployments: Arc::default(),
            probe: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    /// How long a stopped process may take before SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The ready instances' addresses of one release in one environment (for the router).
    pub fn endpoints(&self, service: &str, environment: &str, release: &str) -> Vec<SocketAddr> {
        let d = self.deployments.lock().expect("deployments lock");
        d.get(&(service.to_owned(), environment.to_owned(), release.to_owned()))
            .map(|d| {
                d.instances
                    .iter()
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every release running here, with its instances' addresses, in order.
    pub fn running(&self) -> Vec<(String, String, String, Vec<SocketAddr>)> {
        let d = self.deployments.lock().expect("deployments lock");
        let mut out: Vec<_> = d
            .iter()
            .map(|((s, e, r), d)| {
                let addrs = d
                    .instances
                    .iter()
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
                    .collect();
                (s.clone(), e.clone(), r.clone(), addrs)
            })
            .collect();
        out.sort();
        out
    }

    /// The addresses of the instances that pass their readiness probe now.
    pub fn ready_endpoints(&self, service: &str, environment: &str, release: &str) -> Vec<SocketAddr> {
        let d = self.deployments.lock().expect("deployments lock");
        d.get(&(service.to_owned(), environment.to_owned(), release.to_owned()))
            .map(|d| {
                d.instances
                    .iter()
                    .filter(|i| i.ready.load(Ordering::SeqCst))
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], i.port)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pids of every instance (for tests and the summary).
    pub fn pids(&self) -> Vec<u32> {
        let d = self.deployments.lock().expect("deployments lock");
        d.values()
            .flat_map(|d| d.instances.iter().map(|i| i.pid.load(Ordering::SeqCst)))
            .filter(|p| *p != 0)
            .collect()
    }

    /// Stops every instance (a clean shutdown of autopilot), all at once: a shutdown takes one
    /// grace period at most, not one per release (a supervisor's own stop timeout would otherwise
    /// run out first and leave the last releases' processes orphaned).
    pub async fn stop_all(&self) {
        let keys: Vec<Key> = self
            .deployments
            .lock()
            .expect("deployments lock")
            .keys()
            .cloned()
            .collect();
        let stops = keys.iter().map(|(s, e, r)| self.stop(s, e, r));
        futures_util::future::join_all(stops).await;
    }

    async fn stop(&self, service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        let key = (service.to_owned(), environment.to_owned(), release.to_owned());
        let Some(d) = self.deployments.lock().expect("deployments lock").remove(&key) else {
            return Ok(());
        };
        let _ = d.stop.send(true);
        for t in d.tasks {
            let _ = t.await;
        }
        Ok(())
    }

    fn release_dir(&self, service: &str, release: &Release) -> PathBuf {
        self.dir.join("releases").join(service).join(&release.id)
    }

    /// Unpacks the artifact once (a marker says it is complete).
    fn unpack(&self, service: &str, release: &Release) -> Result<PathBuf, PortError> {
        let dir = self.release_dir(service, release);
        let marker = dir.join(".autopilot-unpacked");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(release.digest.as_str()) {
            self.layout.unpack(&release.digest, &dir).map_err(err)?;
            std::fs::write(&marker, &release.digest).map_err(err)?;
        }
        Ok(dir)
    }
}

/// Everything one instance's supervisor needs.
struct Supervised {
    instance: Arc<Instance>,
    run: Run,
    dir: PathBuf,
    log: PathBuf,
    pool: AnyPool,
    key: Key,
    grace: Duration,
    probe: reqwest::Client,
}

impl Supervised {
    async fn start(&self, token: &str) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.run.command)
            .current_dir(&self.dir)
            .envs(&self.run.env)
            .env(&self.run.port_variable, self.instance.port.to_string())
            .env(INSTANCE_VARIABLE, token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        self.instance.pid.store(pid, Ordering::SeqCst);
        let _ = sqlx::query(
            "INSERT INTO processes (pid, service, environment, release, started_at, token) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT(pid) DO UPDATE SET service = excluded.service, \
             environment = excluded.environment, release = excluded.release, \
             started_at = excluded.started_at, token = excluded.token",
        )
        .bind(i64::from(pid))
        .bind(&self.key.0)
        .bind(&self.key.1)
        .bind(&self.key.2)
        .bind(wall_clock().millis() as i64)
        .bind(token)
        .execute(&self.pool)
        .await;
        Ok(child)
    }

    async fn forget(&self, pid: u32) {
        let _ = sqlx::query("DELETE FROM processes WHERE pid = $1")
            .bind(i64::from(pid))
            .execute(&self.pool)
            .await;
    }

    /// Runs, restarts and finally stops the instance.
    async fn supervise(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let token = format!(
            "{}-{}-{}-{}",
            self.key.0, self.key.1, self.key.2, self.instance.port
        );
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut child = match self.start(&token).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(instance = %token, "cannot start: {e}");
                    self.instance.failed_exits.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let pid = self.instance.pid.load(Ordering::SeqCst);
            let exited = tokio::select! {
                status = child.wait() => Some(status),
                _ = self.probe_until_exit(&mut stop) => None,
            };
            self.instance.ready.store(false, Ordering::SeqCst);
            match exited {
                None => {
                    terminate(pid, self.grace).await;
                    let _ = child.wait().await;
                    self.forget(pid).await;
                    return;
                }
                Some(status) => {
                    // the group may hold children of the shell: stop them too
                    signal_group(pid, Signal::SIGKILL);
                    self.forget(pid).await;
                    let exits = self.instance.failed_exits.fetch_add(1, Ordering::SeqCst) + 1;
                    tracing::warn!(instance = %token, ?status, exits, "instance exited; restarting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Probes readiness until a stop is asked (returns) — the caller races it with the exit.
    async fn probe_until_exit(&self, stop: &mut tokio::sync::watch::Receiver<bool>) {
        let url = format!("http://127.0.0.1:{}{}", self.instance.port, self.run.readiness);
        loop {
            let ok = self
                .probe
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            self.instance.ready.store(ok, Ordering::SeqCst);
            if ok {
                self.instance.failed_exits.store(0, Ordering::SeqCst);
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

impl Runtime for LocalRuntime {
    async fn instances(&mut self, service: &str) -> Result<Instances, PortError> {
        let d = self.deployments.lock().expect("deployments lock");
        Ok(d.iter()
            .filter(|((s, _, _), _)| s == service)
            .map(|((_, env, release), d)| {
                let ready = d
                    .instances
                    .iter()
                    .filter(|i| i.ready.load(Ordering::SeqCst))
                    .count() as u32;
                let failed = d
                    .instances
                    .iter()
                    .any(|i| i.failed_exits.load(Ordering::SeqCst) >= CRASH_LOOP_EXITS);
                (
                    (env.clone(), release.clone()),
                    Readiness {
                        ready,
                        desired: d.instances.len() as u32,
                        failed,
                        reason: failed
                            .then(|| format!("{CRASH_LOOP_EXITS} exits in a row without becoming ready")),
                    },
                )
            })
            .collect())
    }

    async fn deploy(&mut self, service: &str, environment: &str, release: &Release) -> Result<(), PortError> {
        let key = (service.to_owned(), environment.to_owned(), release.id.clone());
        if self
            .deployments
            .lock()
            .expect("deployments lock")
            .contains_key(&key)
        {
            return Ok(());
        }
        let run = self
            .runs
            .get(service)
            .ok_or_else(|| PortError::fatal("runtime", format!("no `run` for `{service}`")))?
            .clone();
        let dir = self.unpack(service, release)?;
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(err)?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut instances = Vec::new();
        let mut tasks = Vec::new();
        for n in 0..run.replicas.max(1) {
            let instance = Arc::new(Instance {
                port: free_port()?,
                ready: AtomicBool::new(false),
                failed_exits: AtomicU32::new(0),
                pid: AtomicU32::new(0),
            });
            let s = Supervised {
                instance: instance.clone(),
                run: run.clone(),
                dir: dir.clone(),
                log: logs.join(format!("{service}-{environment}-{}-{n}.log", release.id)),
                pool: self.pool.clone(),
                key: key.clone(),
                grace: self.grace,
                probe: self.probe.clone(),
            };
            tasks.push(tokio::spawn(s.supervise(stop_rx.clone())));
            instances.push(instance);
        }
        tracing::info!(%service, %environment, release = %release.id, replicas = run.replicas, "deployed");
        self.deployments.lock().expect("deployments lock").insert(
            key,
            Deployment {
                instances,
                stop,
                tasks,
            },
        );
        Ok(())
    }

    async fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        tracing::info!(%service, %environment, %release, "retiring");
        self.stop(service, environment, release).await
    }
}

/// The runtime `autopilot up` drives: local processes (the embedded default) or Kubernetes.
#[derive(Debug, Clone)]
pub enum AnyRuntime {
    Local(LocalRuntime),
    Kubernetes(kubernetes::KubeRuntime),
}

impl AnyRuntime {
    /// The addresses a release's route should name: every local instance (the proxy probes
    /// them itself), or the ready endpoints Kubernetes reports.
    pub fn endpoints(&self, service: &str, environment: &str, release: &str) -> Vec<SocketAddr> {
        match self {
            AnyRuntime::Local(l) => l.endpoints(service, environment, release),
            AnyRuntime::Kubernetes(k) => k.ready_endpoints(service, environment, release),
        }
    }

    /// The addresses that are ready now.
    pub fn ready_endpoints(&self, service: &str, environment: &str, release: &str) -> Vec<SocketAddr> {
        match self {
            AnyRuntime::Local(l) => l.ready_endpoints(service, environment, release),
            AnyRuntime::Kubernetes(k) => k.ready_endpoints(service, environment, release),
        }
    }

    /// Every release running, with its instances' addresses, in order.
    pub fn running(&self) -> Vec<(String, String, String, Vec<SocketAddr>)> {
        match self {
            AnyRuntime::Local(l) => l.running(),
            AnyRuntime::Kubernetes(k) => k.running(),
        }
    }

    /// Stops what autopilot itself runs: local processes. Releases on Kubernetes keep serving
    /// when autopilot stops (the cluster runs them, not autopilot).
    pub async fn stop_all(&self) {
        if let AnyRuntime::Local(l) = self {
            l.stop_all().await;
        }
    }
}

impl Runtime for AnyRuntime {
    async fn instances(&mut self, service: &str) -> Result<Instances, PortError> {
        match self {
            AnyRuntime::Local(l) => l.instances(service).await,
            AnyRuntime::Kubernetes(k) => k.instances(service).await,
        }
    }

    async fn deploy(&mut self, service: &str, environment: &str, release: &Release) -> Result<(), PortError> {
        match self {
            AnyRuntime::Local(l) => l.deploy(service, environment, release).await,
            AnyRuntime::Kubernetes(k) => k.deploy(service, environment, release).await,
        }
    }

    async fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        match self {
            AnyRuntime::Local(l) => l.retire(service, environment, release).await,
            AnyRuntime::Kubernetes(k) => k.retire(service, environment, release).await,
        }
    }
}

/// Where each release of an environment answers: what the discovery API serves, from the
/// same source as the proxy's upstreams.
pub trait Discovery: Send + Sync {
    /// The releases running in `environment` of `service`, each with its ready addresses.
    fn ready(&self, service: &str, environment: &str) -> Vec<(String, Vec<SocketAddr>)>;
}

impl Discovery for AnyRuntime {
    fn ready(&self, service: &str, environment: &str) -> Vec<(String, Vec<SocketAddr>)> {
        self.running()
            .into_iter()
            .filter(|(s, e, _, _)| s == service && e == environment)
            .map(|(_, _, r, _)| {
                let ready = self.ready_endpoints(service, environment, &r);
                (r, ready)
            })
            .collect()
    }
}

//! The Kubernetes runtime: each release of each service in each environment is a Deployment
//! pinned by digest and a Service ([`super::manifests`]), applied with **server-side apply**
//! (field manager `autopilot`).
//!
//! - `deploy` applies the environment's Namespace (not forced: a namespace is shared, and a
//!   conflict on it is reported, never taken), then the release's Service and Deployment
//!   (forced: autopilot is their controller, so a conflict on a field it sets — image, replicas,
//!   labels, probe — is taken back; fields it does not set, such as an operator's annotations,
//!   tolerations or sidecars, stay theirs).
//! - `instances` reads, per environment, the Deployments, Pods and EndpointSlices labelled with
//!   the service (at most once a second per service; a deploy or retire looks afresh): ready is the number of ready endpoints in the release Service's
//!   EndpointSlices (what can take traffic); a pod waiting in `CrashLoopBackOff`,
//!   `ImagePullBackOff` (and their kin) or a Deployment past its progress deadline is `failed`
//!   with that reason, which `plan` rolls back on. The ready endpoints are kept for the router
//!   and the discovery API until the next look.
//! - `retire` scales the release to zero and marks when; a retired release is deleted once
//!   `retention` has passed (checked at every look). Nothing is remembered in memory: after a
//!   restart everything is found again by its labels.
//! - Each environment may live in its own cluster (a kubeconfig context, or the in-cluster
//!   config): one autopilot promotes across clusters.

pub use super::kube_config::{Cluster, FilesOnKubernetes, KubernetesConfig, Placement};
use super::manifests::{
    self, ANNOTATION_RETIRED, FIELD_MANAGER, LABEL_ENVIRONMENT, LABEL_RELEASE, LABEL_SERVICE, Manifests,
};
use crate::control::ports::{Instances, PortError, Runtime};
use crate::control::rollout::{Readiness, Release};
use crate::control::time::Time;
use crate::spec::objectives::ServiceSpec;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// A port error from a Kubernetes error: refusals that will not change by themselves (a bad
/// object, no permission) are fatal; the rest (conflicts, throttling, the API down) retried.
fn port_error(what: &str, e: kube::Error) -> PortError {
    match &e {
        kube::Error::Api(status) if matches!(status.code, 400 | 401 | 403 | 404 | 422) => {
            PortError::fatal("runtime", format!("{what}: {} ({})", status.message, status.code))
        }
        _ => PortError::retry("runtime", format!("{what}: {e}")),
    }
}

/// Pod waiting reasons that mean the release cannot start.
const FAILING: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The least time between two lists of one service's objects.
const MIN_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Ready endpoints per (service, environment, release), as last seen.
type Endpoints = BTreeMap<(String, String, String), Vec<SocketAddr>>;

/// The Kubernetes runtime.
#[derive(Clone)]
pub struct KubeRuntime {
    services: Arc<BTreeMap<String, ServiceSpec>>,
    config: Arc<KubernetesConfig>,
    /// `host/namespace` of the registry files artifacts are pushed to.
    registry: Option<String>,
    /// A client per environment name.
    clients: Arc<BTreeMap<String, Client>>,
    endpoints: Arc<Mutex<Endpoints>>,
    clock: Arc<dyn Fn() -> Time + Send + Sync>,
    /// The last look at each service, reused for `min_look` (the live loop looks every 250 ms
    /// while a canary runs; the API server need not be listed that often).
    looked: Arc<Mutex<BTreeMap<String, (Time, Instances)>>>,
    min_look: std::time::Duration,
}

impl std::fmt::Debug for KubeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("environments", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// RFC 3339 of a time.
fn rfc3339(t: Time) -> String {
    jiff::Timestamp::from_millisecond(t.millis() as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn parse_rfc3339(s: &str) -> Option<Time> {
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(Time::from_millis(t.as_millisecond().max(0) as u64))
}

impl KubeRuntime {
    /// A runtime for `services`, connecting to each environment's cluster (one client per
    /// distinct cluster).
    pub async fn connect(
        services: &[ServiceSpec],
        config: KubernetesConfig,
        registry: Option<String>,
    ) -> Result<Self, String> {
        let mut by_cluster: BTreeMap<Cluster, Client> = BTreeMap::new();
        let mut clients = BTreeMap::new();
        for env in services.iter().flat_map(|s| &s.environments) {
            let cluster = config.cluster_of(&env.name);
            let client = match by_cluster.get(&cluster) {
                Some(c) => c.clone(),
                None => {
                    let c = cluster
                        .connect()
                        .await
                        .map_err(|e| format!("the cluster of `{}`: {e}", env.name))?;
                    by_cluster.insert(cluster, c.clone());
                    c
                }
            };
            clients.insert(env.name.clone(), client);
        }
        Ok(Self::with_clients(services, config, registry, clients))
    }

    /// A runtime talking through the given clients (per environment name): tests use kube's
    /// mock service here.
    pub fn with_clients(
        services: &[ServiceSpec],
        config: KubernetesConfig,
        registry: Option<String>,
        clients: BTreeMap<String, Client>,
    ) -> Self {
        KubeRuntime {
            services: Arc::new(services.iter().map(|s| (s.name.clone(), s.clone())).collect()),
            config: Arc::new(config),
            registry,
            clients: Arc::new(clients),
            endpoints: Arc::default(),
            clock: Arc::new(crate::clock::wall_clock),
            looked: Arc::default(),
            min_look: MIN_LOOK,
        }
    }

    /// Lists a service's objects at most once per `every` (a deploy or retire looks afresh).
    pub fn with_min_look(mut self, every: std::time::Duration) -> Self {
        self.min_look = every;
        self
    }

    fn forget_look(&self, service: &str) {
        self.looked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
    }

    /// Reads the time from `clock` (for retention) instead of the wall clock.
    pub fn with_clock(mut self, clock: impl Fn() -> Time + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn client(&self, environment: &str) -> Result<Client, PortError> {
        self.clients
            .get(environment)
            .cloned()
            .ok_or_else(|| PortError::fatal("runtime", format!("no cluster for environment `{environment}`")))
    }

    fn spec(&self, service: &str) -> Result<&ServiceSpec, PortError> {
        self.services
            .get(service)
            .ok_or_else(|| PortError::fatal("runtime", format!("no service `{service}`")))
    }

    /// The objects of a release, as they would be applied.
    pub fn manifests(
        &self,
        service: &str,
        environment: &str,
        release: &Release,
        retired_at: Option<&str>,
    ) -> Result<Manifests, PortError> {
        let spec = self.spec(service)?;
        let repository = self.registry.as_ref().map(|r| format!("{r}/{service}"));
        manifests::manifests(
            spec,
            environment,
            release,
            &self.config,
            repository.as_deref(),
            retired_at,
        )
        .map_err(|e| PortError::fatal("runtime", e))
    }

    /// The ready endpoints of a release, as of the last look.
    pub fn ready_endpoints(&self, service: &str, environment: &str, release: &str) -> Vec<SocketAddr> {
        let e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        e.get(&(service.to_owned(), environment.to_owned(), release.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every release seen running at the last look, with its ready endpoints.
    pub fn running(&self) -> Vec<(String, String, String, Vec<SocketAddr>)> {
        let e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        e.iter()
            .map(|((s, env, r), a)| (s.clone(), env.clone(), r.clone(), a.clone()))
            .collect()
    }

    async fn apply(&self, m: &Manifests, environment: &str) -> Result<(), PortError> {
        let client = self.client(environment)?;
        let ns = m.deployment.metadata.namespace.clone().unwrap_or_default();
        let name = m.deployment.metadata.name.clone().unwrap_or_default();
        let namespace_name = m.namespace.metadata.name.clone().unwrap_or_default();
        Api::<Namespace>::all(client.clone())
            .patch(
                &namespace_name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&m.namespace),
            )
            .await
            .map_err(|e| port_error(&format!("applying namespace {namespace_name}"), e))?;
        let forced = PatchParams::apply(FIELD_MANAGER).force();
        Api::<Service>::namespaced(client.clone(), &ns)
            .patch(&name, &forced, &Patch::Apply(&m.service))
            .await
            .map_err(|e| port_error(&format!("applying service {ns}/{name}"), e))?;
        Api::<Deployment>::namespaced(client, &ns)
            .patch(&name, &forced, &Patch::Apply(&m.deployment))
            .await
            .map_err(|e| port_error(&format!("applying deployment {ns}/{name}"), e))?;
        Ok(())
    }

    /// Deletes a retired release's Deployment and Service.
    async fn delete(&self, client: &Client, ns: &str, name: &str) -> Result<(), PortError> {
        let gone = |r: Result<(), kube::Error>| match r {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(port_error(&format!("deleting {ns}/{name}"), e)),
        };
        let dp = DeleteParams::background();
        gone(
            Api::<Deployment>::namespaced(client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(drop),
        )?;
        gone(
            Api::<Service>::namespaced(client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(drop),
        )
    }

    /// One environment's releases: readiness, and the ready endpoints seen.
    async fn look(
        &self,
        service: &str,
        environment: &str,
        out: &mut Instances,
        seen: &mut Endpoints,
    ) -> Result<(), PortError> {
        let client = self.client(environment)?;
        let ns = self.config.namespace_of(service, environment);
        let selector = format!("{LABEL_SERVICE}={service},{LABEL_ENVIRONMENT}={environment}");
        let lp = ListParams::default().labels(&selector);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(|e| port_error(&format!("listing deployments in {ns}"), e))?;
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(|e| port_error(&format!("listing pods in {ns}"), e))?;
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(|e| port_error(&format!("listing endpointslices in {ns}"), e))?;
        let now = (self.clock)();
        for d in deployments.items {
            let labels = d.metadata.labels.clone().unwrap_or_default();
            let Some(release) = labels.get(LABEL_RELEASE).cloned() else {
                continue;
            };
            let name = d.metadata.name.clone().unwrap_or_default();
            let desired = d.spec.replicas.unwrap_or(1).max(0) as u32;
            let retired = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_RETIRED))
                .and_then(|t| parse_rfc3339(t));
            if let Some(at) = retired {
                if now.millis() >= at.millis() + self.config.retention.0.as_millis() as u64 {
                    tracing::info!(
                        service,
                        environment,
                        release,
                        "deleting a release retired past its retention"
                    );
                    self.delete(&client, &ns, &name).await?;
                }
                continue;
            }
            let ready_addrs = ready_endpoints(&slices.items, &name);
            let mut reason = failing_reason(&pods.items, &release);
            if reason.is_none() {
                reason = stalled(&d);
            }
            out.insert(
                (environment.to_owned(), release.clone()),
                Readiness {
                    ready: (ready_addrs.len() as u32).min(desired),
                    desired,
                    failed: reason.is_some(),
                    reason,
                },
            );
            seen.insert((service.to_owned(), environment.to_owned(), release), ready_addrs);
        }
        Ok(())
    }
}

/// The ready addresses (on the `http` port) in the EndpointSlices of Service `name`.
fn ready_endpoints(slices: &[EndpointSlice], name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let of = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if of.map(String::as_str) != Some(name) {
            continue;
        }
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for e in s.endpoints.iter().flatten() {
            // absent `ready` means ready (the API's own rule)
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, port as u16));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Why a release's pods cannot start, if one of them says so.
fn failing_reason(pods: &[Pod], release: &str) -> Option<String> {
    for p in pods {
        if p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_RELEASE))
            .map(String::as_str)
            != Some(release)
        {
            continue;
        }
        let status = p.status.as_ref()?;
        let all = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in all {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let why = waiting.reason.as_deref().unwrap_or_default();
            if FAILING.contains(&why) {
                let pod = p.metadata.name.as_deref().unwrap_or("?");
                let message = waiting.message.as_deref().unwrap_or_default();
                return Some(
                    format!("pod {pod}, container {}: {why} {message}", c.name)
                        .trim_end()
                        .to_owned(),
                );
            }
        }
    }
    None
}

/// A Deployment past its progress deadline.
fn stalled(d: &Deployment) -> Option<String> {
    let conditions = d.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False"))
        .map(|c| {
            format!(
                "deployment {}: {} {}",
                d.metadata.name.as_deref().unwrap_or("?"),
                c.reason.as_deref().unwrap_or("not progressing"),
                c.message.as_deref().unwrap_or_default()
            )
            .trim_end()
            .to_owned()
        })
}

impl Runtime for KubeRuntime {
    async fn instances(&mut self, service: &str) -> Result<Instances, PortError> {
        let now = (self.clock)();
        if let Some((at, seen)) = self.looked.lock().unwrap_or_else(|p| p.into_inner()).get(service)
            && now.millis() < at.millis() + self.min_look.as_millis() as u64
        {
            return Ok(seen.clone());
        }
        let environments: Vec<String> = self
            .spec(service)?
            .environments
            .iter()
            .map(|e| e.name.clone())
            .collect();
        let mut out = Instances::new();
        let mut seen = Endpoints::new();
        for env in &environments {
            self.look(service, env, &mut out, &mut seen).await?;
        }
        let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(s, _, _), _| s != service);
        e.extend(seen);
        self.looked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_owned(), (now, out.clone()));
        Ok(out)
    }

    async fn deploy(&mut self, service: &str, environment: &str, release: &Release) -> Result<(), PortError> {
        let m = self.manifests(service, environment, release, None)?;
        self.forget_look(service);
        self.apply(&m, environment).await
    }

    async fn retire(&mut self, service: &str, environment: &str, release: &str) -> Result<(), PortError> {
        let client = self.client(environment)?;
        let ns = self.config.namespace_of(service, environment);
        let name = manifests::object_name(service, release);
        self.forget_look(service);
        // the digest and commit are the Deployment's own (annotations), so retiring needs
        // nothing remembered
        let d = match Api::<Deployment>::namespaced(client, &ns).get_opt(&name).await {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(()),
            Err(e) => return Err(port_error(&format!("reading deployment {ns}/{name}"), e)),
        };
        let annotations = d.metadata.annotations.unwrap_or_default();
        if annotations.contains_key(ANNOTATION_RETIRED) {
            return Ok(());
        }
        let r = Release {
            id: release.to_owned(),
            commit: annotations
                .get(manifests::ANNOTATION_COMMIT)
                .cloned()
                .unwrap_or_default(),
            digest: annotations
                .get(manifests::ANNOTATION_DIGEST)
                .cloned()
                .unwrap_or_default(),
        };
        let at = rfc3339((self.clock)());
        let m = self.manifests(service, environment, &r, Some(&at))?;
        self.apply(&m, environment).await?;
        let mut e = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        e.remove(&(service.to_owned(), environment.to_owned(), release.to_owned()));
        Ok(())
    }
}

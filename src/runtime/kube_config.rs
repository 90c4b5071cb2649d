//! `runtime.kubernetes` in `autopilot.yaml`: the clusters, namespaces and placements the
//! Kubernetes runtime and its manifests are made for, and how to reach each cluster.

use crate::spec::units::Duration;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `runtime.kubernetes` in `autopilot.yaml`: where releases run on Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The cluster of every environment that does not name its own.
    #[serde(default)]
    pub cluster: Cluster,
    /// Per environment (by name): its own cluster or namespace, e.g. prod in another cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, Placement>,
    /// Each environment's namespace; `{service}` and `{environment}` are replaced.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How long a retired release (scaled to zero) is kept before it is deleted.
    #[serde(default = "default_retention")]
    pub retention: Duration,
    /// How releases whose artifact is files run (needed only by such services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesOnKubernetes>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            cluster: Cluster::default(),
            environments: BTreeMap::new(),
            namespace: default_namespace(),
            retention: default_retention(),
            files: None,
        }
    }
}

fn default_namespace() -> String {
    "{service}-{environment}".into()
}
fn default_retention() -> Duration {
    Duration(std::time::Duration::from_secs(24 * 3600))
}

/// A cluster and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// A context of the kubeconfig. None: the in-cluster configuration when autopilot runs in
    /// a pod, else the kubeconfig's current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The kubeconfig file (default: `$KUBECONFIG`, then `~/.kube/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// One environment's place: its cluster (default: `cluster`) and namespace (default: the
/// `namespace` pattern).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// The kubeconfig context of this environment's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The kubeconfig file of this environment's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// This environment's namespace (instead of the `namespace` pattern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// How a files artifact runs on Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesOnKubernetes {
    /// The image the files run in (with a shell and what `run.command` calls), best pinned by
    /// digest; a service's `run.image` wins.
    pub image: String,
    /// An image with autopilot in it, whose `autopilot artifact pull REF --into DIR` (an init
    /// container) fetches the artifact by digest and verifies it.
    pub fetcher: String,
}

impl KubernetesConfig {
    /// The namespace of `service`'s `environment`.
    pub fn namespace_of(&self, service: &str, environment: &str) -> String {
        match self
            .environments
            .get(environment)
            .and_then(|p| p.namespace.clone())
        {
            Some(ns) => ns,
            None => self
                .namespace
                .replace("{service}", service)
                .replace("{environment}", environment),
        }
    }

    /// The cluster `environment` lives in.
    pub fn cluster_of(&self, environment: &str) -> Cluster {
        match self.environments.get(environment) {
            Some(p) if p.context.is_some() || p.kubeconfig.is_some() => Cluster {
                context: p.context.clone().or_else(|| self.cluster.context.clone()),
                kubeconfig: p.kubeconfig.clone().or_else(|| self.cluster.kubeconfig.clone()),
            },
            _ => self.cluster.clone(),
        }
    }

    /// Makes relative kubeconfig paths relative to `base` (the configuration's folder).
    pub fn rebase(&mut self, base: &std::path::Path) {
        let join = |p: &mut Option<PathBuf>| {
            if let Some(path) = p
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        };
        join(&mut self.cluster.kubeconfig);
        for p in self.environments.values_mut() {
            join(&mut p.kubeconfig);
        }
    }
}

impl Cluster {
    /// A client for this cluster.
    pub async fn connect(&self) -> Result<Client, String> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            (None, Some(context)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| format!("kubeconfig context `{context}`: {e}"))?,
            (None, None) => Config::infer().await.map_err(|e| e.to_string())?,
        };
        Client::try_from(config).map_err(|e| e.to_string())
    }
}

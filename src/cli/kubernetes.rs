//! The command line's Kubernetes side: `autopilot render kubernetes` (the manifests a release
//! would be applied as) and `autopilot artifact pull` (what a files release's init container
//! runs to fetch its artifact by digest).

use crate::control::rollout::Release;
use crate::live::config::{AutopilotConfig, RegistryConfig, RuntimeConfig};
use crate::release::oci::Layout;
use crate::release::registry::Registry;
use crate::runtime::manifests;
use crate::spec::objectives::ServiceSpec;
use std::path::Path;

/// The manifests (YAML) of `release` (a digest) of the service declared in `file`, in
/// `environment`, with the Kubernetes settings and registry of `config`.
pub fn render(
    file: &Path,
    environment: &str,
    digest: &str,
    commit: Option<&str>,
    config: &AutopilotConfig,
) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = file.display().to_string();
    // the file alone: its sensors and controllers do not change what runs
    let spec: ServiceSpec = crate::spec::parse_document(&name, &text).map_err(|r| r.render_text())?;
    if !manifests::is_digest(digest) {
        return Err(format!(
            "--release `{digest}` is not a digest: `sha256:` and 64 hex digits (a tag may move, so \
             autopilot runs releases by digest only)"
        ));
    }
    let kubernetes = match &config.runtime {
        RuntimeConfig::Kubernetes(k) => k.clone(),
        RuntimeConfig::Local => Default::default(),
    };
    let release = Release {
        id: crate::release::release_id(digest),
        commit: commit.unwrap_or_default().to_owned(),
        digest: digest.to_owned(),
    };
    let repository = config.registry.as_ref().map(|r| files_repository(r, &spec.name));
    let m = manifests::manifests(
        &spec,
        environment,
        &release,
        &kubernetes,
        repository.as_deref(),
        None,
    )?;
    manifests::to_yaml(&m)
}

/// Where a service's files artifacts are in the registry: `host/namespace/service`.
pub fn files_repository(registry: &RegistryConfig, service: &str) -> String {
    format!("{}/{service}", registry_prefix(registry))
}

/// The part of every service's repository before its name: `host/namespace` (or `host`).
pub fn registry_prefix(registry: &RegistryConfig) -> String {
    let namespace = registry.namespace.trim_matches('/');
    if namespace.is_empty() {
        registry.host.clone()
    } else {
        format!("{}/{namespace}", registry.host)
    }
}

/// Pulls `reference` (`host/repository@sha256:…`) and unpacks it into `into`, every byte
/// verified against its digest. Credentials come from the registry variables
/// (`AUTOPILOT_REGISTRY_TOKEN`, or `…_USERNAME` and `…_PASSWORD`). Returns the digest and size.
pub async fn artifact_pull(reference: &str, into: &Path) -> Result<(String, u64), String> {
    let host = reference
        .split_once('/')
        .map(|(h, _)| h)
        .ok_or_else(|| format!("`{reference}` is not `host/repository@sha256:…`"))?;
    let config: RegistryConfig =
        serde_json::from_value(serde_json::json!({ "host": host })).map_err(|e| e.to_string())?;
    let registry = config.open()?;
    let registry = Registry::for_reference(reference, Some(&registry))?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let layout = Layout::open(scratch.path()).map_err(|e| e.to_string())?;
    let (digest, size) = registry
        .pull(reference, &layout, "artifact")
        .await
        .map_err(|e| e.to_string())?;
    layout.unpack(&digest, into).map_err(|e| e.to_string())?;
    Ok((digest, size))
}

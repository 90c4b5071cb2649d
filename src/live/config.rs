//! `autopilot.yaml` (`kind: Autopilot`): where `autopilot up` keeps its data, where it listens,
//! which specs it reads and how often it looks. Secrets never live here: they come from
//! environment variables named in the file.

use crate::proxy::auth::AuthSettings;
use crate::spec::ApiVersion;
use crate::spec::units::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `kind` of an autopilot configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AutopilotKind {
    Autopilot,
}

/// How `autopilot up` runs on this machine. Every field has a default, so an empty
/// configuration (or none) runs the embedded defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "autopilot configuration")]
pub struct AutopilotConfig {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Autopilot`.
    pub kind: AutopilotKind,
    /// Where the store (`autopilot.db`), artifacts, checkouts, unpacked releases, logs and the
    /// local CA live (relative to this file).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Spec files or folders: objectives, sensors and controllers (relative to this file).
    #[serde(default = "default_specs")]
    pub specs: Vec<PathBuf>,
    /// The proxy's plain-HTTP listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The proxy's HTTPS listener (certificates from the local CA in the data directory);
    /// none: HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// autopilot's own listener: `/metrics` and the proxy's control API (keep it on loopback).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// The environment variable holding the proxy admin API's bearer token (none set: a random
    /// token kept in `proxy-admin.token` in the data directory, readable by its owner only; only
    /// the file's path is printed).
    #[serde(default = "default_admin_token_variable")]
    pub admin_token_variable: String,
    /// The base domain: `{service}.{environment}.{domain}`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The longest the controller waits between two looks (it looks sooner when a plan asks,
    /// and every second while a canary runs on the proxy's own sensors).
    #[serde(default = "default_tick")]
    pub tick: Duration,
    /// How callers of `auth: required` environments are verified (as in a routes file; paths
    /// relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSettings>,
    /// The store's URL: `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE` (the password
    /// from `PGPASSWORD`). Default: SQLite, `autopilot.db` in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The HTTP API (`/v1/…`) the CLI and the web pages use.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where to tell people of rollbacks, promotions, approvals waiting and stuck rollouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationSink>,
    /// The Prometheus that `counter`, `histogram` and `prometheus` sensors read (none: only the
    /// proxy's own sensors have data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<crate::prom::PromSettings>,
    /// The OCI registry every release's artifact is pushed to and pinned in by digest (none:
    /// artifacts stay in the data directory's OCI layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryConfig>,
    /// Where releases run: `local` (processes on this machine, the default) or
    /// `{kubernetes: {…}}` (Deployments pinned by digest, one namespace per environment, each
    /// environment in the cluster it names).
    #[serde(default, skip_serializing_if = "RuntimeConfig::is_local")]
    pub runtime: RuntimeConfig,
}

/// Where releases run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RuntimeConfig {
    /// Processes on this machine, with readiness checks.
    #[default]
    Local,
    /// Kubernetes: Deployments and Services applied with server-side apply.
    Kubernetes(crate::runtime::kubernetes::KubernetesConfig),
}

impl RuntimeConfig {
    pub fn is_local(&self) -> bool {
        matches!(self, RuntimeConfig::Local)
    }
}

/// An OCI registry, and how to sign in to it. Credentials come from the environment, never
/// from this file: a bearer token, or a username and password, or none (anonymous).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's host and port: `registry.example.com`, `ghcr.io`, `127.0.0.1:5000`
    /// (plain HTTP for loopback hosts only).
    pub host: String,
    /// Where under the host each service's repository goes: `{host}/{namespace}/{service}`.
    #[serde(default = "default_registry_namespace")]
    pub namespace: String,
    /// The environment variable holding the username (with `passwordVariable`).
    #[serde(default = "default_registry_username")]
    pub username_variable: String,
    #[serde(default = "default_registry_password")]
    pub password_variable: String,
    /// The environment variable holding a bearer token (wins over a username and password).
    #[serde(default = "default_registry_token")]
    pub token_variable: String,
}

fn default_registry_namespace() -> String {
    "autopilot".into()
}
fn default_registry_username() -> String {
    "AUTOPILOT_REGISTRY_USERNAME".into()
}
fn default_registry_password() -> String {
    "AUTOPILOT_REGISTRY_PASSWORD".into()
}
fn default_registry_token() -> String {
    "AUTOPILOT_REGISTRY_TOKEN".into()
}

impl RegistryConfig {
    /// The registry, signed in with what the environment holds.
    pub fn open(&self) -> Result<crate::release::registry::Registry, String> {
        use crate::release::registry::{Credentials, Registry};
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let credentials = match (
            var(&self.token_variable),
            var(&self.username_variable),
            var(&self.password_variable),
        ) {
            (Some(t), _, _) => Credentials::Bearer(t),
            (None, Some(username), Some(password)) => Credentials::Basic { username, password },
            (None, Some(_), None) => {
                return Err(format!(
                    "registry: {} is set but {} is not",
                    self.username_variable, self.password_variable
                ));
            }
            _ => Credentials::Anonymous,
        };
        Registry::new(&self.host, &self.namespace, credentials).map_err(|e| format!("registry: {e}"))
    }
}

/// A webhook told of what happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationSink {
    /// `slack` (a Slack-compatible incoming webhook: `{"text": …}`) or `webhook` (JSON with
    /// the event's fields and links).
    pub kind: NotificationKind,
    /// The environment variable holding the URL (it is a secret for Slack).
    pub url_variable: String,
    /// Which events (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotificationEvent>,
}

/// A notification sink's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Slack,
    Webhook,
}

impl NotificationKind {
    pub fn name(&self) -> &'static str {
        match self {
            NotificationKind::Slack => "slack",
            NotificationKind::Webhook => "webhook",
        }
    }
}

pub use crate::control::announce::NotificationEvent;

/// Where the API listens and who may use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// The API's listener.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Reads need no token (mutations always do).
    #[serde(default)]
    pub open_reads: bool,
    /// The environment variable holding an admin token to register at start (none set and no
    /// token in the store: one is made and written to `admin.token` in the data directory).
    #[serde(default = "default_api_token_variable")]
    pub token_variable: String,
    /// The environment variable holding the push webhooks' secret. Unset or empty: every push
    /// webhook is refused (a warning at start and in `autopilot status` says so). Set: a push
    /// must be signed with it and carry a delivery id never seen before, and it is only a hint to
    /// fetch the branch and build the tip found there.
    #[serde(default = "default_webhook_secret_variable")]
    pub webhook_secret_variable: String,
}

impl ApiConfig {
    /// The push webhooks' secret, read from its variable (unset or empty: none, and push
    /// webhooks are refused).
    pub fn webhook_secret(&self) -> Option<String> {
        std::env::var(&self.webhook_secret_variable)
            .ok()
            .filter(|s| !s.is_empty())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            open_reads: false,
            token_variable: default_api_token_variable(),
            webhook_secret_variable: default_webhook_secret_variable(),
        }
    }
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_api_token_variable() -> String {
    "AUTOPILOT_TOKEN".into()
}
fn default_webhook_secret_variable() -> String {
    "AUTOPILOT_WEBHOOK_SECRET".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".autopilot")
}
fn default_specs() -> Vec<PathBuf> {
    ["objectives", "sensors", "controllers"]
        .map(PathBuf::from)
        .to_vec()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_admin_token_variable() -> String {
    "AUTOPILOT_ADMIN_TOKEN".into()
}
fn default_domain() -> String {
    "localhost".into()
}
fn default_tick() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            api_version: ApiVersion::V1,
            kind: AutopilotKind::Autopilot,
            data_dir: default_data_dir(),
            specs: default_specs(),
            listen: default_listen(),
            tls_listen: None,
            admin: default_admin(),
            admin_token_variable: default_admin_token_variable(),
            domain: default_domain(),
            tick: default_tick(),
            auth: None,
            store: None,
            api: ApiConfig::default(),
            notifications: Vec::new(),
            prometheus: None,
            registry: None,
            runtime: RuntimeConfig::Local,
        }
    }
}

impl AutopilotConfig {
    /// Reads and validates a configuration file; every problem with file:line:column.
    pub fn load(path: &Path) -> Result<AutopilotConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.display().to_string();
        // what `autopilot validate` checks (the kind, cross-field rules), then the typed parse
        crate::spec::load_texts(&[(&name, &text)]).map_err(|r| r.render_text())?;
        let mut config: AutopilotConfig =
            crate::spec::parse_document(&name, &text).map_err(|r| r.render_text())?;
        // the folder as an absolute path: a relative one (`autopilot.yaml` given alone) would
        // leave relative paths behind, which builds, run in their own folders, cannot find
        let absolute = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        config.rebase(base);
        Ok(config)
    }

    /// The defaults, with relative paths resolved against the current folder, once, at start.
    pub fn default_here() -> Result<AutopilotConfig, String> {
        let here = std::env::current_dir().map_err(|e| format!("the current folder: {e}"))?;
        let mut config = AutopilotConfig::default();
        config.rebase(&here);
        Ok(config)
    }

    /// Makes relative paths relative to `base` (the configuration file's folder).
    pub fn rebase(&mut self, base: &Path) {
        let join = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        self.data_dir = join(&self.data_dir);
        self.specs = self.specs.iter().map(|p| join(p)).collect();
        if let Some(p) = &mut self.prometheus {
            p.file_sd = p.file_sd.as_deref().map(join);
            p.ca_file = p.ca_file.as_deref().map(join);
        }
        if let RuntimeConfig::Kubernetes(k) = &mut self.runtime {
            k.rebase(base);
        }
        if let Some(a) = &mut self.auth
            && !a.jwks.contains("://")
        {
            a.jwks = join(Path::new(&a.jwks)).display().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_in_the_config_is_reported_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autopilot.yaml");
        std::fs::write(
            &path,
            "apiVersion: autopilot/v1\nkind: Autopilot\ntick: 5 seconds\nlisten: 127.0.0.1:8080\ndomian: x\n",
        )
        .unwrap();
        let err = AutopilotConfig::load(&path).unwrap_err();
        assert!(err.contains("autopilot.yaml:3:"), "{err}");
        assert!(err.contains("autopilot.yaml:5:"), "{err}");
        assert!(err.contains("domain"), "a did-you-mean for `domian`: {err}");
        // a wildcard address overlapping a specific one on the same port (regression: passed,
        // then Pingora's listener thread panicked and `up` ran on with no proxy)
        std::fs::write(
            &path,
            "apiVersion: autopilot/v1\nkind: Autopilot\nlisten: 0.0.0.0:8080\nadmin: 127.0.0.1:8080\napi: {listen: \"[::]:8081\"}\ntlsListen: 127.0.0.1:8081\n",
        )
        .unwrap();
        let err = AutopilotConfig::load(&path).unwrap_err();
        assert!(
            err.contains("autopilot.yaml:4:") && err.contains("overlaps `listen` (0.0.0.0:8080)"),
            "{err}"
        );
        assert!(err.contains("overlaps `tlsListen`"), "{err}");
        // relative paths resolve against the configuration's folder, as an absolute path
        std::fs::write(
            &path,
            "apiVersion: autopilot/v1\nkind: Autopilot\ndataDir: .autopilot\n",
        )
        .unwrap();
        // named relative to the current folder, as `--config autopilot.yaml` names it
        // (regression: a relative dataDir stayed relative, and every build failed to start)
        let up = std::env::current_dir().unwrap().components().count() - 1;
        let relative: std::path::PathBuf = std::iter::repeat_n(std::path::Component::ParentDir, up)
            .map(|c| c.as_os_str().to_owned())
            .chain(path.strip_prefix("/").map(|p| p.as_os_str().to_owned()))
            .collect();
        assert!(relative.is_relative());
        let config = AutopilotConfig::load(&relative).unwrap();
        assert!(config.data_dir.is_absolute(), "{}", config.data_dir.display());
        assert_eq!(
            std::fs::canonicalize(config.data_dir.parent().unwrap()).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        // listeners sharing an address
        std::fs::write(
            &path,
            "apiVersion: autopilot/v1\nkind: Autopilot\nlisten: 127.0.0.1:8080\nadmin: 127.0.0.1:8080\n",
        )
        .unwrap();
        let err = AutopilotConfig::load(&path).unwrap_err();
        assert!(
            err.contains("autopilot.yaml:4:") && err.contains("already `listen`"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_config_is_the_embedded_default_with_paths_from_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autopilot.yaml");
        std::fs::write(&path, "apiVersion: autopilot/v1\nkind: Autopilot\n").unwrap();
        let c = AutopilotConfig::load(&path).unwrap();
        assert_eq!(c.data_dir, dir.path().join(".autopilot"));
        assert_eq!(c.specs[0], dir.path().join("objectives"));
        assert_eq!(c.tick.0, std::time::Duration::from_secs(5));
    }
}

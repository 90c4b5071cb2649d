//! The objectives file: one per service. What the service is, how it is built and run, which
//! environments it moves through, and what "healthy" means there.
//!
//! These types are the serde + JSON Schema model of the file; every field's doc comment is what
//! an editor shows. Cross-file checks (does the sensor exist?) live in `validate`, not here.

use super::units::{Duration, Target, Tolerance};
use super::yaml::recover_vec;
use super::{ApiVersion, MissingData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A service: one deployable unit and its objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "autopilot service objectives")]
pub struct ServiceSpec {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Service` for an objectives file.
    pub kind: ServiceKind,
    /// The service's name: a DNS label (lowercase letters, digits, `-`), used in host names
    /// such as `checkout.staging.example.com`.
    pub name: String,
    /// A sentence for people reading the release list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the code lives; with `build`, every push to `branch` becomes a release. Without
    /// `build` it is optional (commits announced with a release are then looked up here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// How one commit becomes one immutable artifact. Without it, releases are built elsewhere
    /// (your own CI) and announced as image digests (`autopilot release create SERVICE --image
    /// REPO@sha256:…`, `POST /v1/services/{service}/releases`) from the repository `run.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// How to run the artifact.
    pub run: Run,
    /// The environments a release passes through, in order (e.g. dev, staging, prod).
    #[serde(deserialize_with = "recover_vec")]
    pub environments: Vec<Environment>,
    /// The controller policy (a name from `controllers/`) used in every environment that does
    /// not name its own.
    pub controller: String,
    /// What a healthy release looks like: each objective is a share of bad events that must
    /// stay under a target, and (by default) not grow compared with the stable release.
    #[serde(deserialize_with = "recover_vec")]
    pub objectives: Vec<Objective>,
}

/// The `kind` of an objectives file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceKind {
    Service,
}

/// Where a service's code lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// The git repository (URL or local path).
    pub repository: String,
    /// The branch whose pushes become releases.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// For a monorepo: the folder of this service inside the repository. Pushes that change
    /// nothing under it do not build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often a remote repository (`https://…`, `ssh://…`, `git@host:…`, `file://…`) is
    /// fetched; a push webhook or a requested build fetches at once. A local path is read at
    /// every look.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
}

fn default_branch() -> String {
    "main".into()
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

/// How to build one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Build {
    /// The shell command that builds the commit, run in the checkout (or in `source.path`).
    pub command: String,
    /// What the build produces.
    pub artifact: Artifact,
    /// The longest a build may take before it counts as failed.
    #[serde(default = "default_build_timeout")]
    pub timeout: Duration,
}

fn default_build_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

/// The build's product, which autopilot pins by its content digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Artifact {
    /// An OCI image repository (e.g. `registry.example.com/shop/checkout`) that the build
    /// command pushes to, tagged with the commit: the command finds the reference to push in
    /// `$AUTOPILOT_IMAGE` (`REPO:COMMIT`). Autopilot resolves the tag to its manifest digest and
    /// pins that; if the command writes the digest it pushed to `$AUTOPILOT_DIGEST_FILE`
    /// (`docker buildx build --push --metadata-file`, `crane push … > file`), a tag that moved
    /// to anything else during the build is refused.
    Image(String),
    /// Files (paths relative to the build folder) that autopilot packs into an OCI artifact.
    Files(Vec<String>),
}

/// How to run a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Run {
    /// The command that starts one instance (local runtime), run in the unpacked artifact.
    pub command: String,
    /// The environment variable through which the instance is told which port to listen on.
    #[serde(default = "default_port_variable")]
    pub port_variable: String,
    /// The HTTP path that answers 2xx once an instance is ready for traffic.
    #[serde(default = "default_readiness")]
    pub readiness: String,
    /// How many instances of each release to run.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The image repository releases come from when they are built elsewhere (no `build`):
    /// an announced image must be in it. On Kubernetes, the image to run (pinned by digest at
    /// deploy time); defaults to the build's image artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra environment variables for every instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What each instance asks for and may use, in Kubernetes quantities (`cpu: 250m`,
    /// `memory: 256Mi`); the local runtime ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// An instance's compute resources, as Kubernetes takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// What the scheduler reserves (`cpu`, `memory`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// The most an instance may use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

fn default_port_variable() -> String {
    "PORT".into()
}

fn default_readiness() -> String {
    "/healthz".into()
}

fn default_replicas() -> u32 {
    1
}

/// One stage a release passes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    /// The environment's name: a DNS label, used in host names (`checkout.prod.example.com`).
    pub name: String,
    /// `public` environments are reachable from outside; `private` ones only from inside.
    #[serde(default)]
    pub visibility: Visibility,
    /// Whether callers must present an application and a user credential.
    #[serde(default)]
    pub auth: Auth,
    /// Who may enter (with `auth: required`). A caller who may not enter sees 404, as if the
    /// environment did not exist. Empty: every authenticated caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Access>,
    /// Pass the caller's credentials (the API key, the client token and `Authorization`) on to
    /// the release. Default false: the proxy removes the credentials it verified, so no release
    /// (a canary included) ever holds a caller's key or token; it learns who called from the
    /// verified `X-Autopilot-User` and `X-Autopilot-App` headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_credentials: bool,
    /// The controller policy for this environment, instead of the service's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
}

/// Reachability of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Visibility {
    Public,
    #[default]
    Private,
}

/// Credential requirement of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Auth {
    /// Anyone who can reach the environment may call it.
    None,
    /// An application credential and a user credential are both required.
    #[default]
    Required,
}

/// Who may enter an environment: a caller matching any group, or all the claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Access {
    /// Members of any of these groups (the token's `groups` claim) may enter.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Callers whose token has all of these claims with these values may enter.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// One objective: a share of bad events, judged absolutely and against stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Objective {
    /// The objective's name, unique within the service (e.g. `availability`).
    pub name: String,
    /// A sentence saying what users feel when this objective is missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The sensor (a name from `sensors/`) that counts bad and total events.
    pub sensor: String,
    /// The absolute target: `< 0.5%` (bad share), `> 99.9%` (good share), or a latency
    /// quantile `p99 < 300ms` (at most 1% of requests slower than 300 ms).
    pub target: Target,
    /// Also compare the canary with the stable release (recommended): a canary whose bad share
    /// is worse than stable's by more than the tolerance is a regression even within target.
    #[serde(default = "yes")]
    pub compare_with_stable: bool,
    /// How much worse than stable the canary may be: relative to stable (`50%`: up to 1.5 times
    /// stable's bad share) or as a share of the target (`50%` of a `< 0.5%` target: 0.25%),
    /// whichever is larger. Defaults to the controller's `analysis.tolerance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
    /// What a gap in this objective's data means, overriding the sensor's and the controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_data: Option<MissingData>,
}

fn yes() -> bool {
    true
}

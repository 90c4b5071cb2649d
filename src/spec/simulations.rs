//! The simulation scenario file: an incident (real or made up) to replay through the real
//! controller on a virtual clock. It names the specs to use, a traffic model, the releases and
//! how they behave, what goes wrong when, what operators do, and what must come out.

use super::ApiVersion;
use super::units::{Duration, Percent, Weight};
use super::yaml::recover_vec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "autopilot simulation scenario")]
pub struct Scenario {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Simulation`.
    pub kind: SimulationKind,
    /// The scenario's name.
    pub name: String,
    /// What happens in it, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Spec files and folders (objectives, sensors, controllers), relative to this file.
    pub specs: Vec<String>,
    /// The service (from the specs) to simulate.
    pub service: String,
    /// Seed of every random draw: the same file and seed give byte-identical output.
    #[serde(default)]
    pub seed: u64,
    /// How long to simulate.
    pub duration: Duration,
    /// The controller's idle interval, as autopilot.yaml's `tick`: it looks at least this
    /// often, and also when its plan asks, and while a canary is judged or a build runs as
    /// often as its sensors have news — production's rule, in `control::wake`.
    #[serde(default = "default_tick")]
    pub tick: Duration,
    /// How often the Prometheus that the service's sensors read scrapes (autopilot.yaml's
    /// `prometheus.scrapeInterval`): while a canary is judged the controller looks every half
    /// of it. Sensors on the proxy's own counters are looked at every 250 ms instead.
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: Duration,
    /// Wall-clock start of the simulation, `YYYY-MM-DDTHH:MM:SSZ` (gates with time windows
    /// depend on it). Default: Monday 2026-11-30 09:00 UTC.
    #[serde(default = "default_start")]
    pub start: String,
    /// How many requests arrive.
    pub traffic: Traffic,
    /// The release serving every environment when the simulation starts.
    pub stable: ReleaseBehaviour,
    /// Releases pushed during the simulation.
    #[serde(default, deserialize_with = "recover_vec")]
    pub releases: Vec<PushedRelease>,
    /// What goes wrong, and when.
    #[serde(default, deserialize_with = "recover_vec")]
    pub incidents: Vec<Incident>,
    /// What operators do, and when.
    #[serde(default, deserialize_with = "recover_vec")]
    pub operators: Vec<OperatorAction>,
    /// Sensor data recorded from Prometheus, replayed instead of the traffic model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    /// What must come out; `autopilot simulate` exits non-zero when any fails.
    #[serde(default, deserialize_with = "recover_vec")]
    pub expect: Vec<Expectation>,
}

fn default_tick() -> Duration {
    Duration::from_secs(10)
}

fn default_scrape_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_start() -> String {
    "2026-11-30T09:00:00Z".into()
}

/// The `kind` of a scenario file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SimulationKind {
    Simulation,
}

/// The traffic model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Traffic {
    /// Mean requests per second into each environment.
    pub rate: f64,
    /// Per-environment rates, overriding `rate`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, f64>,
    /// Amplitude of a sinusoidal swing of the rate (`70%`: between 30% and 170% of `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swing: Option<Percent>,
    /// Period of the swing.
    #[serde(default = "default_swing_period")]
    pub swing_period: Duration,
    /// Over-dispersion of bad events: each tick's error rate is drawn from a Beta distribution
    /// around the release's rate with this coefficient of variation (`0%`: plain binomial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispersion: Option<Percent>,
    /// Error rates rise with load: at the swing's peak the error rate is multiplied by
    /// `1 + loadSensitivity × swing`.
    #[serde(default)]
    pub load_sensitivity: f64,
    /// The callers an A/B strategy's segment matches (employees, beta testers): their share of
    /// the requests, and how their requests fail. Without it, a segment is a tenth of the
    /// callers, failing like everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentTraffic>,
}

/// The segment's callers in a simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SegmentTraffic {
    /// Their share of all requests.
    pub share: Percent,
    /// Their requests fail this many times as often as others', on every release (internal
    /// users reach admin pages and edge cases): why a segment's canary is judged against the
    /// same segment's stable requests, never against everyone's.
    #[serde(default = "one")]
    pub error_factor: f64,
}

fn default_swing_period() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// How a release behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseBehaviour {
    /// The release's name (its commit, for the simulated builder).
    pub name: String,
    /// Share of requests that fail (5xx).
    pub errors: Percent,
    /// Latency distribution.
    #[serde(default)]
    pub latency: Latency,
}

/// A lognormal latency distribution, optionally slowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Latency {
    /// The median.
    #[serde(default = "default_median")]
    pub median: Duration,
    /// σ of the log of the latency.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// Every request slowed by this factor (`1.2`: 20% slower at every quantile).
    #[serde(default = "one")]
    pub scale: f64,
    /// Only the slowest `tailShare` of requests slowed by `tailScale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_share: Option<Percent>,
    #[serde(default = "one")]
    pub tail_scale: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            median: default_median(),
            sigma: default_sigma(),
            scale: 1.0,
            tail_share: None,
            tail_scale: 1.0,
        }
    }
}

fn default_median() -> Duration {
    Duration(std::time::Duration::from_millis(50))
}

fn default_sigma() -> f64 {
    0.5
}

fn one() -> f64 {
    1.0
}

/// A release pushed during the simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushedRelease {
    /// The release's name (its commit).
    pub name: String,
    /// When it is pushed, from the start.
    pub pushed_at: Duration,
    /// Share of requests that fail.
    pub errors: Percent,
    /// Latency distribution.
    #[serde(default)]
    pub latency: Latency,
    /// Its instances never become ready (a crash loop at deploy).
    #[serde(default)]
    pub crash_on_deploy: bool,
    /// How long its build takes.
    #[serde(default = "default_build_time")]
    pub build_time: Duration,
    /// Share of the segment's requests that fail, when the release treats them unlike the
    /// others (a bug only its testers would never meet); default: `errors` × the segment's
    /// `errorFactor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_errors: Option<Percent>,
}

fn default_build_time() -> Duration {
    Duration::from_secs(60)
}

/// Something that goes wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Incident {
    /// When it starts, from the start.
    pub at: Duration,
    /// How long it lasts (for gaps, bursts, outages, drifts).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub lasts: Option<Duration>,
    /// What happens.
    pub what: IncidentKind,
}

/// Kinds of incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum IncidentKind {
    /// A release's error rate changes at once (a bug that starts late, a dependency failing).
    ErrorStep { release: String, errors: Percent },
    /// A release's error rate moves linearly to `errors` over the incident's duration.
    Drift { release: String, errors: Percent },
    /// Every release fails this share of requests on top of its own (a shared dependency).
    Burst { errors: Percent },
    /// The counters of `arm` are not reported.
    Gap { arm: Arm },
    /// The counters of `arm` restart from zero once.
    CounterReset { arm: Arm },
    /// Prometheus answers nothing for any arm (same as a gap of both, reported as an outage).
    PrometheusOutage,
    /// One of autopilot's ports fails every call (the store, the builder, the runtime or the
    /// router): what the controller does when a part of the world cannot be asked or changed.
    PortDown { port: PortName },
}

/// One of the driver's ports, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PortName {
    Store,
    Builder,
    Runtime,
    Router,
}

impl PortName {
    /// The port's name, as in errors.
    pub fn as_str(&self) -> &'static str {
        match self {
            PortName::Store => "store",
            PortName::Builder => "builder",
            PortName::Runtime => "runtime",
            PortName::Router => "router",
        }
    }
}

/// Which side of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Arm {
    Canary,
    Stable,
    Both,
}

/// An operator's action at a moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorAction {
    /// When, from the start.
    pub at: Duration,
    /// In which environment.
    pub environment: String,
    /// Who (recorded in the audit trail).
    #[serde(default = "default_operator")]
    pub by: String,
    /// What.
    pub action: OperatorKind,
    /// Why, as the operator would have said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn default_operator() -> String {
    "operator".into()
}

/// What an operator can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum OperatorKind {
    /// Hold the ramp; a regression or a spent budget still stops the rollout.
    Pause,
    /// Hold the canary even through a regression or a spent budget.
    PauseRegardless,
    /// Lift a pause (or a policy pause, or a rollback block).
    Resume,
    Promote,
    Rollback,
    /// Hold the canary at this weight.
    Weight(Weight),
    /// Stop holding the weight.
    ReleaseWeight,
    Freeze,
    Unfreeze,
    /// Keep the environment on this release.
    Pin(String),
    Unpin,
    /// Approve a release for the environment, as a member of these groups.
    Approve(ApproveAction),
}

/// An approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproveAction {
    pub release: String,
    pub groups: Vec<String>,
}

/// Recorded sensor data: exports of Prometheus range queries (the JSON that
/// `/api/v1/query_range` returns) for the canary and stable of one environment. Either one
/// export per objective holding many labelled series, with label matchers naming the canary's,
/// stable's and the bad ones (what a real export is); or one pre-summed export per counter and
/// arm. Counters may be raw (they count from process start): resets are handled per series
/// before summing, as Prometheus does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Replay {
    /// The environment whose canary the recording shows.
    pub environment: String,
    /// When the recording's first sample falls, from the simulation's start. Default: when the
    /// canary's rollout starts in `environment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Duration>,
    /// Per objective (by name), the recorded counters.
    pub objectives: BTreeMap<String, RecordedObjective>,
}

/// The recorded counters of one objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordedObjective {
    /// One export holding every series of the objective (both arms, good and bad), relative to
    /// the scenario. With it, each arm names its series with `match`, and `bad` picks the bad ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
    /// With `export`: label matchers picking the bad series, e.g. `code=~"5.."`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<String>,
    pub canary: RecordedArm,
    pub stable: RecordedArm,
}

/// One arm: label matchers into the objective's `export`, or files of its bad and total
/// counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordedArm {
    /// With the objective's `export`: label matchers picking this arm's series, e.g. `version="v2"`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// Without `export`: the file of this arm's bad events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<String>,
    /// Without `export`: the file of all this arm's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
}

/// What must come out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    /// The release.
    pub release: String,
    /// In which environment.
    pub environment: String,
    /// Its outcome there.
    pub outcome: ExpectedOutcome,
    /// At the latest this long after the release was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
    /// At most this many bad canary requests served in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blast_radius: Option<u64>,
}

/// A rollout's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExpectedOutcome {
    Promoted,
    RolledBack,
    /// Neither promoted nor rolled back by the end (held, paused, waiting).
    Held,
    /// Never reaches the environment.
    NeverStarted,
}

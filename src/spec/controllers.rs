//! A controller policy: how changes may move. Ramp steps, how the judge analyses evidence,
//! deadlines and budgets, gates before a release may enter an environment, rollback rules, and
//! how often the service is built.

use super::routes::{Mirror, Segment};
use super::units::{Duration, Percent, TimeOfDay, Tolerance, UtcOffset, Weight};
use super::yaml::recover_vec;
use super::{ApiVersion, MissingData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A control policy, one per file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "autopilot controller policy")]
pub struct ControllerSpec {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Controller`.
    pub kind: ControllerKind,
    /// The policy's name, which services and environments refer to.
    pub name: String,
    /// When to use this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How a new release meets traffic: `canary` (the default: a growing share of live
    /// traffic, `ramp`), `blueGreen` (no public traffic until judged, then all of it at once) or
    /// `shadow` (judged first on copies of live requests, then ramped as a canary) or `abTest`
    /// (a segment of callers first: by header, cookie or token claim).
    #[serde(default)]
    pub strategy: Strategy,
    /// How the canary's traffic share grows (`canary` and `shadow`; `blueGreen` has none;
    /// `abTest` ramps after its segment with one, or switches at once without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
    /// How the judge weighs evidence.
    pub analysis: Analysis,
    /// A rollout that has not finished within this time after it started is stopped
    /// (see `rollback.onDeadline`).
    pub progress_deadline: Duration,
    /// The most bad requests a rollout may serve before it stops exposing more traffic.
    pub blast_radius: BlastRadius,
    /// What a gap in the data means, unless a sensor or objective says otherwise.
    pub missing_data: MissingData,
    /// What must hold before a release may enter an environment that uses this policy.
    #[serde(default)]
    pub promotion: Promotion,
    /// After the judge's last word, watch the release for a late change before promoting it:
    /// it serves all but `baseline` of the traffic for `for`, the previous release serving the
    /// rest (and staying deployed), and a change for the worse rolls it back. Without it the
    /// release is promoted at the ramp's end. Not for `blueGreen` (its `rollbackWindow` keeps
    /// the previous release instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Bake>,
    /// When and how to roll back.
    #[serde(default)]
    pub rollback: Rollback,
    /// How the service is built (taken from the service's default controller).
    #[serde(default)]
    pub build: BuildPolicy,
}

/// The `kind` of a controller file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ControllerKind {
    Controller,
}

/// How a new release meets traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// A growing share of live traffic, step by step (`ramp`), judged on its own requests
    /// against stable's.
    #[default]
    Canary,
    /// The new release gets no public traffic while it is judged: on requests to its preview
    /// URL (`{release}.{service}.{environment}.{domain}`, from a load generator or testers)
    /// and, with `mirror`, on copies of live requests. Judged safe, it takes all traffic at once;
    /// the previous release stays deployed for `rollbackWindow`, so switching back is one step.
    BlueGreen(BlueGreen),
    /// The new release first serves no user: a share of live requests is copied to it and its
    /// answers discarded, its statuses and latencies judged against stable's. Judged safe, it
    /// is ramped as a canary (`ramp`), judged afresh on the requests it really serves: copies
    /// cannot show what only users do (writes, sessions).
    Shadow(Shadow),
    /// A/B by request attributes: the release first serves only a segment of callers (a
    /// header, a cookie or a claim of their verified token: employees, beta testers), split
    /// with stable so that it is judged against the same segment's stable requests. Judged
    /// safe, it is ramped as a canary for everyone (`ramp`), judged afresh; without a ramp it
    /// takes all traffic at once.
    AbTest(AbTest),
}

impl Strategy {
    /// The copies of live requests a release gets while it serves no user, if any.
    pub fn mirror(&self) -> Option<&Mirror> {
        match self {
            Strategy::Canary => None,
            Strategy::BlueGreen(b) => b.mirror.as_ref(),
            Strategy::Shadow(s) => Some(&s.mirror),
            Strategy::AbTest(_) => None,
        }
    }

    /// The segment a release serves first, if any (A/B).
    pub fn segment(&self) -> Option<&Segment> {
        match self {
            Strategy::AbTest(a) => Some(&a.segment),
            Strategy::Canary | Strategy::BlueGreen(_) | Strategy::Shadow(_) => None,
        }
    }

    /// Does a rollout start held at weight 0, before any share of all traffic (judged on preview
    /// and mirrored requests, or on a segment's)?
    pub fn starts_hidden(&self) -> bool {
        match self {
            Strategy::Canary => false,
            Strategy::BlueGreen(_) | Strategy::Shadow(_) | Strategy::AbTest(_) => true,
        }
    }

    /// Are users served by the release while it is held at weight 0 (a segment's)? Then the
    /// blast-radius budget counts them.
    pub fn held_serves_users(&self) -> bool {
        matches!(self, Strategy::AbTest(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Canary => "canary",
            Strategy::BlueGreen(_) => "blueGreen",
            Strategy::Shadow(_) => "shadow",
            Strategy::AbTest(_) => "abTest",
        }
    }
}

/// Blue/green: judged with no public traffic, then switched all at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlueGreen {
    /// Copies of live requests as evidence besides the preview URL's own traffic. Without it,
    /// something must call the preview URL (a load generator, a smoke suite, testers), or the
    /// judge gets no evidence and the progress deadline decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// After the switch the previous release stays deployed this long: an operator's rollback
    /// within it switches all traffic back in one step. Then it is retired.
    #[serde(default = "default_rollback_window")]
    pub rollback_window: Duration,
}

fn default_rollback_window() -> Duration {
    Duration::from_secs(30 * 60)
}

/// Shadow: judged first on copies of live requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shadow {
    /// Which live requests are copied to the new release.
    pub mirror: Mirror,
}

/// A/B: a segment of callers first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbTest {
    /// Who meets the release first, and which share of them.
    pub segment: Segment,
}

/// How the canary's weight grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Ramp {
    /// Fixed steps, in percent of traffic, strictly increasing (e.g. `[1, 5, 25, 50]`). The
    /// judge may hold a step (too little evidence) or skip ahead (strong evidence of safety).
    /// After the last step the canary is promoted.
    Steps(#[serde(deserialize_with = "recover_vec")] Vec<Weight>),
    /// Start small and multiply the weight whenever the evidence allows, capped by the
    /// blast-radius budget.
    Adaptive(AdaptiveRamp),
}

/// An evidence-driven ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveRamp {
    /// The first weight (percent).
    pub start: Weight,
    /// The highest weight before promotion (percent).
    pub max: Weight,
    /// How much the weight may grow per step (e.g. `2` doubles it), more than 1.
    #[serde(default = "default_factor")]
    pub factor: f64,
}

fn default_factor() -> f64 {
    2.0
}

/// How the judge weighs evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    /// How often sensors are read and the judge looks (any time is valid for our judge).
    pub interval: Duration,
    /// α: the chance of ever rolling back a healthy release, over the whole rollout. Between
    /// 0% and 50% (e.g. `1%`).
    pub false_rollback_rate: Percent,
    /// The chance of promoting a release that is worse than stable by more than the tolerance.
    /// Between 0% and 50%.
    #[serde(default = "default_false_promotion_rate")]
    pub false_promotion_rate: Percent,
    /// How much worse than stable a canary may be, unless an objective sets its own: relative
    /// to stable (`50%`: up to 1.5 times stable's bad share) or as a share of the objective's
    /// target, whichever is larger. One share for both decisions, or an indifference zone
    /// `{regression: 10%, safety: 50%}`: roll back beyond 10%, promote within 50%.
    pub tolerance: Tolerance,
    /// The least evidence before a canary may be promoted, however good it looks.
    #[serde(default)]
    pub min_evidence: MinEvidence,
}

fn default_false_promotion_rate() -> Percent {
    Percent(0.05)
}

/// The least evidence for promotion.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MinEvidence {
    /// At least this many canary requests.
    #[serde(default)]
    pub requests: u64,
    /// At least this long at the final step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

/// The blast-radius budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlastRadius {
    /// Bad requests (beyond what stable would have served badly) a rollout may cost at most.
    /// Each step's weight is capped so that a canary as bad as the evidence still allows would
    /// stay within what is left.
    pub budget: u64,
}

/// The bake: a watch for a late change between the ramp's end and the promotion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bake {
    /// How long the release is watched before it is promoted (the next environment takes it
    /// only after).
    #[serde(rename = "for")]
    pub duration: Duration,
    /// The share of traffic the previous release keeps meanwhile: the watch compares the new
    /// release with it at the same moments, so a daily swing or a burst both share cancels.
    /// Default `10%`.
    #[serde(default = "default_bake_baseline")]
    pub baseline: Percent,
}

fn default_bake_baseline() -> Percent {
    Percent(0.1)
}

/// Gates on entering an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    /// All of these must pass before a rollout starts (an empty list means automatic).
    #[serde(default, deserialize_with = "recover_vec")]
    pub gates: Vec<Gate>,
    /// A newer release replaces an older one still waiting at a gate.
    #[serde(default = "yes")]
    pub supersede: bool,
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion {
            gates: Vec::new(),
            supersede: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// One gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Gate {
    /// No condition: go as soon as the previous environment has promoted the release.
    Automatic,
    /// The release must have served as stable in the previous environment for this long.
    Soak(Duration),
    /// A person from one of these groups must approve through the API.
    Approval(Approval),
    /// Only start within this weekly time window.
    Window(TimeWindow),
}

/// A manual approval gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    /// Groups whose members may approve.
    pub groups: Vec<String>,
    /// How many different people must approve.
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// A weekly time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    /// Days of the week the window is open.
    #[serde(deserialize_with = "recover_vec")]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM`.
    pub from: TimeOfDay,
    /// Closing time, `HH:MM`; earlier than `from` means the window runs past midnight.
    pub to: TimeOfDay,
    /// The clock the times are on: `UTC` or an offset such as `+01:00`.
    #[serde(default = "utc")]
    pub timezone: UtcOffset,
}

fn utc() -> UtcOffset {
    UtcOffset { minutes: 0 }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Rollback rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollback {
    /// What to do when an objective regresses.
    #[serde(default = "rollback")]
    pub on_regression: StopAction,
    /// What to do when the progress deadline passes. Default `pause`: a deadline passed is not
    /// evidence against a release (a quiet service may simply not have sent enough requests),
    /// so it is held at its weight and a person is asked (the `stuck` notification); a
    /// regression found while it waits still rolls it back.
    #[serde(default = "pause")]
    pub on_deadline: StopAction,
    /// After a rollback, keep the environment on its previous release until a newer release
    /// arrives or an operator lifts the pin.
    #[serde(default = "yes")]
    pub pin_previous: bool,
}

impl Default for Rollback {
    fn default() -> Self {
        Rollback {
            on_regression: StopAction::Rollback,
            on_deadline: StopAction::Pause,
            pin_previous: true,
        }
    }
}

fn pause() -> StopAction {
    StopAction::Pause
}

fn rollback() -> StopAction {
    StopAction::Rollback
}

/// What to do when a rollout must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StopAction {
    /// Send all traffic back to stable.
    Rollback,
    /// Freeze the weight and wait for an operator.
    Pause,
}

/// When builds run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildPolicy {
    /// What starts a build.
    #[serde(default)]
    pub trigger: BuildTrigger,
    /// Builds per service running at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// When a build ends, build only the newest commit that arrived meanwhile.
    #[serde(default = "yes")]
    pub skip_intermediate: bool,
    /// At most this many builds per service per hour.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
}

impl Default for BuildPolicy {
    fn default() -> Self {
        BuildPolicy {
            trigger: BuildTrigger::Push,
            concurrency: 1,
            skip_intermediate: true,
            max_per_hour: default_max_per_hour(),
        }
    }
}

fn default_max_per_hour() -> u32 {
    12
}

/// What starts a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuildTrigger {
    /// Every push to the service's branch (operators may also request builds).
    #[default]
    Push,
    /// Only operator requests.
    Manual,
}

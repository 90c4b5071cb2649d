//! The data `plan` reads and writes: the service's state as the store keeps it, what the
//! adapters observed this tick, the operators' overrides, and the `Plan` that comes out.
//!
//! A rollout's phase is an enum with data, matched exhaustively everywhere; every change of
//! phase is a [`Transition`] that records its [`Cause`].

use super::builds::BuildState;
use super::gates::Approval;
use super::judge::{JudgeState, Judgement, Reading};
use super::time::Time;
use super::watch::WatchState;
use crate::spec::units::Weight;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A built release: one commit, one immutable artifact named by its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The release's id (used in routes, preview host names and the API).
    pub id: String,
    pub commit: String,
    /// `sha256:…` of the artifact.
    pub digest: String,
}

/// One attempt to bring one release into one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub release: String,
    pub phase: Phase,
    pub started_at: Time,
    /// The judge's memory, per objective.
    pub judges: BTreeMap<String, JudgeState>,
    /// The bake watch's memory, per objective (while baking).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watches: BTreeMap<String, WatchState>,
    /// Bad canary requests beyond what stable's rate would have produced (blast radius).
    pub excess_bad: f64,
}

impl Rollout {
    /// A rollout of `release` in `phase` since `started_at`, with no evidence yet.
    pub fn new(release: impl Into<String>, phase: Phase, started_at: Time) -> Rollout {
        Rollout {
            release: release.into(),
            phase,
            started_at,
            judges: BTreeMap::new(),
            watches: BTreeMap::new(),
            excess_bad: 0.0,
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for the environment's gates (soak, approval, window, freeze).
    Waiting { since: Time, on: String },
    /// Instances of the release are starting; no traffic yet.
    Deploying { since: Time },
    /// Serving `weight`% of traffic at ramp step `step`.
    Canary {
        step: usize,
        weight: Weight,
        since: Time,
    },
    /// Weight frozen; `by_operator` pauses end when the operator lifts them, the others
    /// (policy: deadline, missing data) when an operator resumes, promotes or rolls back.
    Paused {
        step: usize,
        weight: Weight,
        since: Time,
        reason: String,
        by_operator: bool,
    },
    /// Judged safe, the release serves `weight`% (all but the bake's baseline, which stays
    /// on the previous release) and is watched for a late change before it is promoted.
    Baking { weight: Weight, since: Time },
    /// All traffic is moving to the release.
    Promoting { since: Time },
    /// The release is stable in this environment.
    Promoted { at: Time },
    /// All traffic is moving back to stable.
    RollingBack { reason: String, since: Time },
    /// The release was taken out of this environment.
    RolledBack { reason: String, at: Time },
    /// A newer release took this one's place before it started.
    Superseded { by: String, at: Time },
}

/// Which phase, without its data: what transitions, metrics, notifications and the pages name.
/// Kebab-case on the wire and in the store (`rolling-back`), as the phase names always were.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseKind {
    Waiting,
    Deploying,
    Canary,
    Paused,
    Baking,
    Promoting,
    Promoted,
    RollingBack,
    RolledBack,
    Superseded,
}

impl PhaseKind {
    /// Every phase, in the order a rollout meets them (what a metric exports one series for).
    pub const ALL: [PhaseKind; 10] = [
        PhaseKind::Waiting,
        PhaseKind::Deploying,
        PhaseKind::Canary,
        PhaseKind::Paused,
        PhaseKind::Baking,
        PhaseKind::Promoting,
        PhaseKind::Promoted,
        PhaseKind::RollingBack,
        PhaseKind::RolledBack,
        PhaseKind::Superseded,
    ];

    /// The name on the wire, in the store and in displays.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Waiting => "waiting",
            PhaseKind::Deploying => "deploying",
            PhaseKind::Canary => "canary",
            PhaseKind::Paused => "paused",
            PhaseKind::Baking => "baking",
            PhaseKind::Promoting => "promoting",
            PhaseKind::Promoted => "promoted",
            PhaseKind::RollingBack => "rolling-back",
            PhaseKind::RolledBack => "rolled-back",
            PhaseKind::Superseded => "superseded",
        }
    }

    /// A finished rollout's phase: the environment is free for the next one.
    pub fn is_finished(self) -> bool {
        match self {
            PhaseKind::Promoted | PhaseKind::RolledBack | PhaseKind::Superseded => true,
            PhaseKind::Waiting
            | PhaseKind::Deploying
            | PhaseKind::Canary
            | PhaseKind::Paused
            | PhaseKind::Baking
            | PhaseKind::Promoting
            | PhaseKind::RollingBack => false,
        }
    }
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for PhaseKind {
    type Err = String;
    fn from_str(s: &str) -> Result<PhaseKind, String> {
        PhaseKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a phase"))
    }
}

impl AsRef<str> for PhaseKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for PhaseKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Phase {
    /// Which phase this is.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Waiting { .. } => PhaseKind::Waiting,
            Phase::Deploying { .. } => PhaseKind::Deploying,
            Phase::Canary { .. } => PhaseKind::Canary,
            Phase::Paused { .. } => PhaseKind::Paused,
            Phase::Baking { .. } => PhaseKind::Baking,
            Phase::Promoting { .. } => PhaseKind::Promoting,
            Phase::Promoted { .. } => PhaseKind::Promoted,
            Phase::RollingBack { .. } => PhaseKind::RollingBack,
            Phase::RolledBack { .. } => PhaseKind::RolledBack,
            Phase::Superseded { .. } => PhaseKind::Superseded,
        }
    }

    /// The phase's name, for records and displays.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Finished rollouts leave the environment free for the next one.
    pub fn is_finished(&self) -> bool {
        match self {
            Phase::Promoted { .. } | Phase::RolledBack { .. } | Phase::Superseded { .. } => true,
            Phase::Waiting { .. }
            | Phase::Deploying { .. }
            | Phase::Canary { .. }
            | Phase::Paused { .. }
            | Phase::Baking { .. }
            | Phase::Promoting { .. }
            | Phase::RollingBack { .. } => false,
        }
    }

    /// The canary's current weight.
    /// Held at weight 0 while judged (a strategy's preview, copies or segment stage)?
    pub fn held(&self) -> bool {
        matches!(
            self,
            Phase::Canary {
                weight: Weight(0),
                ..
            } | Phase::Paused {
                weight: Weight(0),
                ..
            }
        )
    }

    pub fn weight(&self) -> Weight {
        match self {
            Phase::Canary { weight, .. } | Phase::Paused { weight, .. } | Phase::Baking { weight, .. } => {
                *weight
            }
            Phase::Promoting { .. } | Phase::Promoted { .. } => Weight::MAX,
            Phase::Waiting { .. }
            | Phase::Deploying { .. }
            | Phase::RollingBack { .. }
            | Phase::RolledBack { .. }
            | Phase::Superseded { .. } => Weight(0),
        }
    }
}

/// One environment's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EnvState {
    /// The release serving the environment.
    pub stable: Option<String>,
    pub stable_since: Option<Time>,
    /// The current or the last rollout.
    pub rollout: Option<Rollout>,
    /// After a rollback: the release rolled back. Only newer releases start until an operator
    /// pins another.
    pub blocked: Option<String>,
    /// After a blue/green switch: the release that served before it, still deployed until the
    /// rollback window ends, so that switching back is one step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Kept>,
}

/// A release kept deployed after it stopped serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub release: String,
    pub until: Time,
}

/// A service's state as the store keeps it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceState {
    /// Built releases, oldest first.
    pub releases: Vec<Release>,
    pub environments: BTreeMap<String, EnvState>,
    pub builds: BuildState,
}

impl ServiceState {
    /// Position of a release in build order (newer is larger).
    pub fn order(&self, release: &str) -> Option<usize> {
        self.releases.iter().position(|r| r.id == release)
    }
}

/// Instances of one release in one environment, as the runtime reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: u32,
    pub desired: u32,
    /// The instances cannot start (crash loop, image missing …).
    pub failed: bool,
    /// Why they cannot, as the runtime tells it (`CrashLoopBackOff …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A finished build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BuildOutcome {
    Built(Release),
    Failed { reason: String },
}

/// What the adapters observed this tick.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Observed {
    /// The state from the store.
    pub state: ServiceState,
    /// Instances per (environment, release); `None`: the runtime could not be asked (unknown,
    /// never "not ready").
    pub readiness: Option<BTreeMap<(String, String), Readiness>>,
    /// What the router serves now, per environment; `None`: the router could not be asked.
    /// A release is retired or marked promoted only once these match the plan.
    pub routes: Option<BTreeMap<String, super::route::RouteWeights>>,
    /// Sensor readings per (environment, objective), for the environment's canary and stable.
    pub readings: BTreeMap<(String, String), Reading>,
    /// Commits pushed to the branch since the last tick, oldest first.
    pub pushes: Vec<String>,
    /// Builds that ended since the last tick, by commit.
    pub finished_builds: Vec<(String, BuildOutcome)>,
    /// Commits operators asked to build since the last tick.
    #[serde(default)]
    pub requested_builds: Vec<String>,
}

/// Who did something, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub who: String,
    pub reason: String,
}

/// Operator overrides for one environment. Standing ones (pause, weight, pin, freeze) win over
/// the controller until lifted; one-shot ones (promote, rollback, resume) are cleared by the
/// plan once carried out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EnvOverrides {
    /// A pause holds the ramp; a regression or a spent blast-radius budget still stops the
    /// rollout the policy's way, unless the pause was made `regardless`.
    pub pause: Option<Actor>,
    /// The pause holds the canary even through a regression (the operator takes the risk; the
    /// plan says so loudly every look).
    #[serde(default)]
    pub pause_regardless: bool,
    pub weight: Option<(Weight, Actor)>,
    pub promote: Option<Actor>,
    pub rollback: Option<Actor>,
    pub resume: Option<Actor>,
    pub pin: Option<(String, Actor)>,
    pub freeze: Option<Actor>,
}

impl EnvOverrides {
    /// Lifts a one-shot override that a recorded plan carried out.
    pub fn consume(&mut self, which: OneShot) {
        match which {
            OneShot::Promote => self.promote = None,
            OneShot::Rollback => self.rollback = None,
            OneShot::Resume => self.resume = None,
        }
    }
}

/// All operator input.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Overrides {
    pub environments: BTreeMap<String, EnvOverrides>,
    pub approvals: Vec<Approval>,
}

impl Overrides {
    /// Lifts the one-shot overrides a recorded plan carried out.
    pub fn consume(&mut self, consumed: &[(String, OneShot)]) {
        for (environment, which) in consumed {
            if let Some(o) = self.environments.get_mut(environment) {
                o.consume(*which);
            }
        }
    }
}

/// Which one-shot override was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OneShot {
    Promote,
    Rollback,
    Resume,
}

/// Why a transition happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cause {
    /// A release became the candidate for the environment.
    Candidate,
    /// Every gate is open.
    GatesOpen,
    /// The instances are ready.
    Ready,
    /// The first release of an environment has nothing to be compared with.
    FirstRelease,
    /// The instances cannot start.
    DeployFailed { reason: String },
    /// The judge found a regression.
    Regressed {
        objective: String,
        explanation: String,
        /// Every objective's judgement at that look, in words.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        objectives: Vec<ObjectiveWords>,
    },
    /// The evidence allows more traffic (or promotion).
    Evidence {
        explanation: String,
        /// Every objective's judgement at that look, in words.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        objectives: Vec<ObjectiveWords>,
        /// The step the ramp wanted, when the blast-radius budget allowed less.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capped: Option<Capped>,
    },
    /// Shadow: judged safe on copies of live requests, the release now serves users and is
    /// judged afresh on what they are served.
    SafeOnCopies {
        explanation: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        objectives: Vec<ObjectiveWords>,
    },
    /// A/B: judged safe on a segment of callers against the same segment's stable requests,
    /// the release now meets everyone and is judged afresh.
    SafeInSegment {
        segment: String,
        explanation: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        objectives: Vec<ObjectiveWords>,
    },
    /// Data has been missing for longer than the policy holds.
    MissingData { objective: String, since: Time },
    /// The progress deadline passed.
    Deadline,
    /// The blast-radius budget is spent.
    BlastRadius { excess: f64, budget: u64 },
    /// An operator acted.
    Operator { action: OperatorStep, actor: Actor },
    /// A newer release replaced this one.
    NewerRelease { release: String },
    /// The bake ended with no change seen: the release is promoted.
    Baked { looks: u32 },
    /// Traffic finished moving.
    Completed,
}

/// What an operator's override made a rollout do. Stored as the words it always was
/// (`set weight`, `lift pause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorStep {
    Pause,
    Resume,
    #[serde(rename = "lift pause")]
    LiftPause,
    #[serde(rename = "set weight")]
    SetWeight,
    Promote,
    Rollback,
}

impl OperatorStep {
    /// The words on the wire, in the store and in displays.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorStep::Pause => "pause",
            OperatorStep::Resume => "resume",
            OperatorStep::LiftPause => "lift pause",
            OperatorStep::SetWeight => "set weight",
            OperatorStep::Promote => "promote",
            OperatorStep::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for OperatorStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One objective's judgement at a decision, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveWords {
    pub objective: String,
    /// `regressed`, `safe`, `not yet sure`, `no data`.
    pub verdict: String,
    /// The counts and the verdict in words, the statistic after.
    pub words: String,
    /// Everything the judge said (for `--verbose`).
    pub explanation: String,
}

/// A ramp step the blast-radius budget made smaller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capped {
    /// The weight the ramp's step asked for.
    pub wanted: Weight,
    /// Bad canary requests (beyond stable's) the budget still allowed at that look.
    pub left: f64,
    pub budget: u64,
}

/// A recorded change of phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub environment: String,
    pub release: String,
    /// The phase left (`None` for a new rollout).
    pub from: Option<PhaseKind>,
    pub to: PhaseKind,
    /// The canary's weight after the transition.
    pub weight: Weight,
    pub cause: Cause,
    pub at: Time,
}

pub use super::route::Preview;

/// Something the executor must make true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    StartBuild {
        commit: String,
        /// Pushed commits not built because this newer one is (kept in its build's history).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<String>,
    },
    Deploy {
        environment: String,
        release: String,
    },
    /// Route `canary_weight`% to `canary` and the rest to `stable`.
    SetWeights {
        environment: String,
        stable: Option<String>,
        canary: String,
        canary_weight: Weight,
        /// At weight 0: keep `canary` routed at its preview URL while it is judged (blue/green,
        /// shadow), with copies of live requests if this says so. `None` at weight 0: take
        /// `canary` out of the route.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<Preview>,
    },
    Retire {
        environment: String,
        release: String,
    },
}

/// The judge's word on one objective, for the record and the displays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveEvidence {
    pub environment: String,
    pub release: String,
    pub objective: String,
    pub judgement: Judgement,
    /// The canary's weight while this evidence came in.
    #[serde(default)]
    pub weight: u8,
    /// When the judge gave its word.
    #[serde(default)]
    pub at: Time,
}

/// What `plan` decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The state to store.
    pub state: ServiceState,
    pub actions: Vec<Action>,
    pub transitions: Vec<Transition>,
    pub evidence: Vec<ObjectiveEvidence>,
    /// Why the builder or an environment is waiting, for people.
    pub notes: Vec<String>,
    /// When to look again at the latest (sooner if something changes).
    pub next_check: Time,
    /// The one-shot overrides this plan carried out, per environment: the store lifts them in
    /// the transaction that records the plan, so a plan that is not recorded (another writer
    /// won the version race) leaves the operator's request standing for the next tick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed: Vec<(String, OneShot)>,
}

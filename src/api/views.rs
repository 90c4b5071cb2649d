//! What the API answers and accepts, as types: the OpenAPI document is generated from these,
//! so the document and the server cannot disagree. Times are RFC 3339 strings.

use crate::control::judge::Verdict;
use crate::control::plan::PlanSpec;
use crate::control::rollout::{
    Actor, EnvOverrides, EnvState, ObjectiveEvidence, Overrides, Phase, PhaseKind, ServiceState, Transition,
};
use crate::store::StoredBuild;
use crate::store::api::AuditRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error: a stable `code` for scripts, a message for people, and the field at fault.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One of `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// The request field at fault (`body.percent`, `query.limit`, `path.environment` …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every service autopilot runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceView>,
    /// Whether push webhooks are accepted here.
    pub push_webhooks: PushWebhooks,
}

/// Whether push webhooks are accepted, and why not when they are not.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushWebhooks {
    /// A webhook secret is configured: signed, new deliveries are taken as hints to fetch.
    pub accepted: bool,
    /// In words, with what to do when they are refused.
    pub note: String,
}

/// A service and where each of its environments stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub environments: Vec<EnvironmentView>,
    /// Commits being built now.
    pub building: Vec<String>,
}

/// One environment: the stable release, the rollout, the overrides in force.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    pub name: String,
    /// Where the environment is served.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_since: Option<String>,
    /// The current or the last rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    /// A rolled-back release only newer ones may replace (until an operator resumes or pins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    pub overrides: OverridesView,
    /// What waits for a person here, if anything (an approval, a pause, a pin, a freeze).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for_person: Option<String>,
}

/// A rollout of one release into one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub release: String,
    /// The rollout's phase.
    pub state: PhaseKind,
    /// The canary's share of traffic, in percent.
    pub weight: u8,
    pub started_at: String,
    /// When it entered its state.
    pub since: String,
    /// Why it is in this state, in words (what it waits on, why it paused or rolled back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The judge's latest word on each objective, while the rollout is active.
    #[serde(default)]
    pub verdicts: Vec<ObjectiveVerdict>,
}

/// The judge's latest word on one objective of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ObjectiveVerdict {
    pub objective: String,
    /// `regressed`, `safe` or `not yet`.
    pub verdict: String,
    /// The counts and the verdict in words.
    pub words: String,
}

/// Who did something, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActorView {
    pub who: String,
    pub reason: String,
}

/// A held weight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WeightHold {
    pub percent: u8,
    pub by: ActorView,
}

/// A pinned release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PinView {
    pub release: String,
    pub by: ActorView,
}

/// An approval given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub release: String,
    pub by: String,
    pub groups: Vec<String>,
    pub at: String,
}

/// The operators' overrides in force for one environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct OverridesView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<ActorView>,
    /// The pause holds the canary even through a regression.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_regardless: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<WeightHold>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<ActorView>,
    /// One-shot actions asked for and not yet carried out (`promote`, `rollback`, `resume`).
    pub pending: Vec<String>,
    pub approvals: Vec<ApprovalView>,
}

/// A page of releases, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleasePage {
    pub items: Vec<ReleaseSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A release in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseSummary {
    pub id: String,
    pub service: String,
    pub commit: String,
    pub digest: String,
    /// `push`, or `request by WHO` (a build an operator asked for).
    pub source: String,
    /// The build's number.
    pub build: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_at: Option<String>,
    /// Where it runs now: `ENV (stable)` or `ENV (canary 20%)`.
    pub running: Vec<String>,
}

/// One release's whole story.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    pub id: String,
    pub service: String,
    pub commit: String,
    pub digest: String,
    pub source: String,
    /// How to fetch the artifact with standard tools.
    pub artifact: String,
    /// The artifact's size in bytes (manifest and blobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The service's objectives file as it was when the release was built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub build: BuildView,
    /// Every attempt to bring it into each environment, with every transition.
    pub deployments: Vec<DeploymentView>,
    /// The judge's word at each transition, then now.
    pub verdicts: Vec<VerdictView>,
    /// Every operator action that concerned it.
    pub actions: Vec<AuditView>,
    /// The URLs that reach it.
    pub urls: Vec<UrlView>,
}

/// A build.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildView {
    pub number: i64,
    pub commit: String,
    /// `running`, `pushing` (built; its artifact is not in the registry yet), `pulling` (an
    /// announced image being fetched and verified), `built` or `failed`.
    pub status: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The size of the full output, which `logs` serves as text.
    pub output_bytes: u64,
    pub logs: String,
}

/// A build of any outcome, in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    pub number: i64,
    pub commit: String,
    /// `running`, `pushing` (built; its artifact is not in the registry yet), `pulling` (an
    /// announced image being fetched and verified), `built` or `failed`.
    pub status: String,
    /// `push`, `request by WHO`, or `announced by WHO` (a release built elsewhere).
    pub source: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The release it made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Where its artifact can be pulled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pushed commits not built because this newer one was (coalescing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Its output as text (while it runs too).
    pub logs: String,
}

/// A page of builds, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildPage {
    pub items: Vec<BuildSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One attempt to bring a release into an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    pub environment: String,
    /// 1 for the first attempt in this environment.
    pub attempt: u32,
    pub started_at: String,
    /// The state the attempt reached.
    pub state: PhaseKind,
    pub transitions: Vec<TransitionView>,
}

/// A change of state, with its cause in words.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransitionView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PhaseKind>,
    pub to: PhaseKind,
    pub weight: u8,
    pub at: String,
    pub cause: String,
}

/// The judge's word on one objective.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerdictView {
    pub environment: String,
    pub objective: String,
    /// `regressed`, `safe` or `not yet`.
    pub verdict: String,
    /// The evidence, in words.
    pub explanation: String,
    pub canary_bad: u64,
    pub canary_total: u64,
    pub stable_bad: u64,
    pub stable_total: u64,
    /// When it was recorded (at a transition); absent for the judge's latest word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// One operator action, as audited.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    pub action: String,
    /// What exactly was asked.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub who: String,
    pub reason: String,
    /// The client's address.
    pub origin: String,
    pub at: String,
}

/// A page of audit records, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A URL that reaches a release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UrlView {
    /// `environment` (the environment's URL, while the release serves it) or `preview` (this
    /// release alone).
    pub kind: String,
    pub environment: String,
    pub url: String,
}

/// An operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionName {
    Pause,
    Resume,
    Promote,
    Rollback,
    /// Hold the canary at `percent`.
    Weight,
    /// Stop holding the weight.
    ClearWeight,
    /// Keep the environment on `release`.
    Pin,
    Unpin,
    Freeze,
    Unfreeze,
    /// Approve the waiting release (or `release`).
    Approve,
}

/// Ask for an operator action on one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: ActionName,
    /// Why (kept in the audit trail).
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    /// For `weight`: the canary's share, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub percent: Option<u8>,
    /// For `pin` (required) and `approve` (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// For `pause`: hold the canary even if it regresses or spends its blast-radius budget.
    /// Without it a pause holds the ramp only, and a regression still rolls the canary back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regardless: bool,
}

/// What an action did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResult {
    /// The audit record written with it.
    pub audit_id: i64,
    pub action: ActionName,
    /// False when the override was already in place.
    pub changed: bool,
    /// The environment with the override applied (the controller acts on it at its next look).
    pub environment: EnvironmentView,
}

/// Ask for a build of a commit (a hotfix, a cherry-pick).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// A commit id (full or abbreviated) reachable in the service's repository.
    #[schema(min_length = 4, max_length = 64)]
    pub commit: String,
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// Announce a release built elsewhere (your own CI): an image pinned by digest, from the
/// service's repository (`run.image`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseAnnouncement {
    /// `REPOSITORY@sha256:…` (a tag is refused: it may move).
    #[schema(min_length = 1, max_length = 512)]
    pub image: String,
    /// The commit the image was built from, if known (full or abbreviated).
    #[serde(default)]
    #[schema(min_length = 4, max_length = 64)]
    pub commit: Option<String>,
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
}

/// A release announced: autopilot pulls and verifies the image, then rolls it out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReleaseAccepted {
    pub audit_id: i64,
    pub service: String,
    pub image: String,
    /// The release's id (made of the digest).
    pub release: String,
}

/// A build asked for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildAccepted {
    pub audit_id: i64,
    pub service: String,
    pub commit: String,
}

/// A role: `viewer` reads, `operator` also acts, `admin` also makes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// Make a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Who the token is for (unique; making it again replaces the old secret).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub role: Role,
    /// The groups its approvals count for.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Sign in to the web pages with a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The token (any role); the session reads with its name until it ends.
    #[schema(min_length = 1)]
    pub token: String,
}

/// A token made: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// What a push webhook did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PushAccepted {
    /// The branch autopilot fetches now; it builds the tip it finds there (never a commit named
    /// in the payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetching: Option<String>,
    /// Why nothing will be fetched (another branch, a deletion, a ping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// What a registry's push notification announced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryEventsAccepted {
    /// The releases announced: one per pushed tag of a service's `run.image` repository.
    pub announced: Vec<ReleaseAccepted>,
    /// Events that announced nothing, and why (a pull, a blob, an untagged manifest, another
    /// repository).
    pub ignored: Vec<String>,
}

fn actor(a: &Actor) -> ActorView {
    ActorView {
        who: a.who.clone(),
        reason: a.reason.clone(),
    }
}

/// Where a phase came from and why, in words.
fn phase_detail(phase: &Phase) -> Option<String> {
    match phase {
        Phase::Waiting { on, .. } => Some(format!("waiting on {on}")),
        Phase::Paused { reason, .. } => Some(reason.clone()),
        Phase::RollingBack { reason, .. } | Phase::RolledBack { reason, .. } => Some(reason.clone()),
        Phase::Superseded { by, .. } => Some(format!("superseded by {by}")),
        Phase::Baking { .. } => Some("watched for a late change before the promotion".into()),
        Phase::Deploying { .. } | Phase::Canary { .. } | Phase::Promoting { .. } | Phase::Promoted { .. } => {
            None
        }
    }
}

fn phase_since(phase: &Phase) -> crate::control::time::Time {
    match phase {
        Phase::Waiting { since, .. }
        | Phase::Deploying { since }
        | Phase::Canary { since, .. }
        | Phase::Paused { since, .. }
        | Phase::Baking { since, .. }
        | Phase::Promoting { since }
        | Phase::RollingBack { since, .. } => *since,
        Phase::Promoted { at } | Phase::RolledBack { at, .. } | Phase::Superseded { at, .. } => *at,
    }
}

/// A verdict's name, as the API says it.
pub fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Regressed => "regressed",
        Verdict::Safe => "safe",
        Verdict::NotYet(_) => "not yet",
    }
}

/// One environment's view from its state, overrides and the judge's latest words (of the
/// service; those of this environment's active rollout are shown).
pub fn environment_view(
    name: &str,
    url: String,
    st: Option<&EnvState>,
    ov: Option<&EnvOverrides>,
    overrides: &Overrides,
    evidence: &[ObjectiveEvidence],
) -> EnvironmentView {
    let none = EnvState::default();
    let st = st.unwrap_or(&none);
    let rollout = st.rollout.as_ref().map(|r| RolloutView {
        release: r.release.clone(),
        state: r.phase.kind(),
        weight: r.phase.weight().0,
        started_at: r.started_at.to_string(),
        since: phase_since(&r.phase).to_string(),
        detail: phase_detail(&r.phase),
        verdicts: evidence
            .iter()
            .filter(|e| !r.phase.is_finished() && e.environment == name && e.release == r.release)
            .map(|e| ObjectiveVerdict {
                objective: e.objective.clone(),
                verdict: verdict_name(&e.judgement.verdict).to_owned(),
                words: if e.judgement.evidence.words.is_empty() {
                    e.judgement.evidence.explanation.clone()
                } else {
                    e.judgement.evidence.words.clone()
                },
            })
            .collect(),
    });
    let mut view = OverridesView::default();
    if let Some(o) = ov {
        view.paused = o.pause.as_ref().map(actor);
        view.paused_regardless = o.pause.is_some() && o.pause_regardless;
        view.weight = o.weight.as_ref().map(|(w, a)| WeightHold {
            percent: w.0,
            by: actor(a),
        });
        view.pinned = o.pin.as_ref().map(|(r, a)| PinView {
            release: r.clone(),
            by: actor(a),
        });
        view.frozen = o.freeze.as_ref().map(actor);
        for (name, set) in [
            ("promote", o.promote.is_some()),
            ("rollback", o.rollback.is_some()),
            ("resume", o.resume.is_some()),
        ] {
            if set {
                view.pending.push(name.to_owned());
            }
        }
    }
    view.approvals = overrides
        .approvals
        .iter()
        .filter(|a| a.environment == name)
        .map(|a| ApprovalView {
            release: a.release.clone(),
            by: a.by.clone(),
            groups: a.groups.clone(),
            at: a.at.to_string(),
        })
        .collect();
    let active = st.rollout.as_ref().filter(|r| !r.phase.is_finished());
    let waiting_for_person = match active.map(|r| &r.phase) {
        Some(Phase::Waiting { on, .. }) if on.contains("approval") => Some(format!("an approval: {on}")),
        Some(Phase::Paused { reason, .. }) => Some(format!("a paused rollout: {reason}")),
        _ => None,
    }
    .or_else(|| {
        view.paused
            .as_ref()
            .map(|a| format!("a pause by {}: {}", a.who, a.reason))
    })
    .or_else(|| {
        view.pinned
            .as_ref()
            .map(|p| format!("a pin to {} by {}", p.release, p.by.who))
    })
    .or_else(|| {
        view.frozen
            .as_ref()
            .map(|a| format!("a freeze by {}: {}", a.who, a.reason))
    })
    .or_else(|| {
        active
            .is_none()
            .then_some(())
            .and(st.blocked.as_ref())
            .map(|b| format!("a rollback block on {b} (resume or pin to lift it)"))
    });
    EnvironmentView {
        name: name.to_owned(),
        url,
        stable: st.stable.clone(),
        stable_since: st.stable_since.map(|t| t.to_string()),
        rollout,
        blocked: st.blocked.clone(),
        overrides: view,
        waiting_for_person,
    }
}

/// A service's view.
pub fn service_view(
    spec: &PlanSpec,
    description: Option<String>,
    state: &ServiceState,
    overrides: &Overrides,
    evidence: &[ObjectiveEvidence],
    url: impl Fn(&str) -> String,
) -> ServiceView {
    ServiceView {
        name: spec.service.clone(),
        description,
        environments: spec
            .environments
            .iter()
            .map(|e| {
                environment_view(
                    &e.name,
                    url(&e.name),
                    state.environments.get(&e.name),
                    overrides.environments.get(&e.name),
                    overrides,
                    evidence,
                )
            })
            .collect(),
        building: state.builds.running.iter().map(|(c, _)| c.clone()).collect(),
    }
}

/// Where a release runs now, in words.
pub fn running(state: &ServiceState, release: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (env, st) in &state.environments {
        if st.stable.as_deref() == Some(release) {
            out.push(format!("{env} (stable)"));
        }
        if let Some(r) = st
            .rollout
            .as_ref()
            .filter(|r| r.release == release && !r.phase.is_finished())
        {
            out.push(format!("{env} ({} {}%)", r.phase.name(), r.phase.weight().0));
        }
    }
    out
}

pub fn build_summary(b: &StoredBuild) -> BuildSummary {
    BuildSummary {
        number: b.seq,
        commit: b.commit.clone(),
        status: b.status.clone(),
        source: b.source.clone(),
        started_at: b.started_at.to_string(),
        finished_at: b.finished_at.map(|t| t.to_string()),
        release: b.release.clone().filter(|_| b.status == "built"),
        artifact: b.artifact.clone(),
        error: b.error.clone(),
        skipped: b.skipped.clone(),
        logs: format!("/v1/services/{}/builds/{}/logs", b.service, b.seq),
    }
}

pub fn release_summary(b: &StoredBuild, state: &ServiceState) -> ReleaseSummary {
    let id = b.release.clone().unwrap_or_default();
    ReleaseSummary {
        running: running(state, &id),
        id,
        service: b.service.clone(),
        commit: b.commit.clone(),
        digest: b.digest.clone().unwrap_or_default(),
        source: b.source.clone(),
        build: b.seq,
        built_at: b.finished_at.map(|t| t.to_string()),
    }
}

/// A transition as the API shows it (the cause in words).
pub fn transition_view(t: &Transition) -> TransitionView {
    TransitionView {
        from: t.from,
        to: t.to,
        weight: t.weight.0,
        at: t.at.to_string(),
        cause: crate::report::short_cause(&t.cause),
    }
}

pub fn audit_view(a: AuditRecord) -> AuditView {
    AuditView {
        id: a.id,
        service: a.service,
        environment: a.environment,
        release: a.release,
        action: a.action,
        detail: a.detail,
        who: a.who,
        reason: a.reason,
        origin: a.origin,
        at: a.at.to_string(),
    }
}

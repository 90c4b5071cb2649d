//! Build policy: which commit to build next, and when.
//!
//! At most `concurrency` builds of a service at once (one, by default); when a build ends, the
//! newest commit that arrived meanwhile is built and the ones in between are skipped (unless the
//! policy says otherwise); at most `maxPerHour` builds start per hour; an operator's request for
//! a specific commit (a hotfix) goes first.

use super::time::Time;
use crate::spec::controllers::{BuildPolicy, BuildTrigger};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

/// What the builder is doing, as the store remembers it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BuildState {
    /// Commits being built, with when they started.
    pub running: Vec<(String, Time)>,
    /// Start times of recent builds (for the hourly limit).
    pub recent_starts: Vec<Time>,
    /// Commits pushed to the branch and not yet built or skipped, oldest first.
    pub pending: Vec<String>,
    /// Operator requests to build a specific commit, oldest first.
    pub requested: Vec<String>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildDecision {
    /// Commits to start building now.
    pub start: Vec<String>,
    /// Pushed commits skipped because a newer one is built instead.
    pub skipped: Vec<String>,
    /// When the hourly limit lets the next build start, if it is what holds one back.
    pub wait_until: Option<Time>,
}

/// Decides which builds to start; returns the decision and the state after it.
pub fn decide(policy: &BuildPolicy, state: &BuildState, now: Time) -> (BuildDecision, BuildState) {
    let mut next = state.clone();
    next.recent_starts.retain(|t| now.since(*t) < HOUR);
    let mut decision = BuildDecision {
        start: Vec::new(),
        skipped: Vec::new(),
        wait_until: None,
    };
    loop {
        if next.running.len() >= policy.concurrency as usize {
            break;
        }
        let from_request = !next.requested.is_empty();
        let commit = if from_request {
            next.requested.remove(0)
        } else if policy.trigger == BuildTrigger::Push && !next.pending.is_empty() {
            if policy.skip_intermediate {
                let newest = next.pending.pop().expect("not empty");
                decision.skipped.append(&mut next.pending);
                newest
            } else {
                next.pending.remove(0)
            }
        } else {
            break;
        };
        if next.recent_starts.len() >= policy.max_per_hour as usize {
            // put it back and wait for the oldest start to leave the hour
            if from_request {
                next.requested.insert(0, commit);
            } else if policy.skip_intermediate {
                next.pending.push(commit);
            } else {
                next.pending.insert(0, commit);
            }
            let oldest = next.recent_starts.iter().min().copied().unwrap_or(now);
            decision.wait_until = Some(oldest.plus(HOUR));
            break;
        }
        next.recent_starts.push(now);
        next.running.push((commit.clone(), now));
        decision.start.push(commit);
    }
    (decision, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BuildPolicy {
        BuildPolicy::default()
    }

    #[test]
    fn one_build_at_a_time_then_the_newest_commit_skipping_the_rest() {
        let state = BuildState {
            pending: vec!["a".into()],
            ..Default::default()
        };
        let (d, mut s) = decide(&policy(), &state, Time::ZERO);
        assert_eq!(d.start, ["a"]);
        // b, c, d arrive while a builds: nothing starts
        s.pending = vec!["b".into(), "c".into(), "d".into()];
        let (d2, mut s) = decide(&policy(), &s, Time::from_secs(60));
        assert!(d2.start.is_empty());
        // a finishes: d is built, b and c skipped
        s.running.clear();
        let (d3, _) = decide(&policy(), &s, Time::from_secs(120));
        assert_eq!(d3.start, ["d"]);
        assert_eq!(d3.skipped, ["b", "c"]);
    }

    #[test]
    fn the_hourly_limit_holds_builds_back_until_a_slot_frees() {
        let p = BuildPolicy {
            max_per_hour: 2,
            ..policy()
        };
        let state = BuildState {
            recent_starts: vec![Time::from_secs(0), Time::from_secs(600)],
            pending: vec!["x".into()],
            ..Default::default()
        };
        let (d, s) = decide(&p, &state, Time::from_secs(1200));
        assert!(d.start.is_empty());
        assert_eq!(d.wait_until, Some(Time::from_secs(3600)));
        assert_eq!(s.pending, ["x"]);
        let (d, _) = decide(&p, &s, Time::from_secs(3600));
        assert_eq!(d.start, ["x"]);
    }

    #[test]
    fn an_operator_request_goes_first_even_with_manual_trigger() {
        let p = BuildPolicy {
            trigger: BuildTrigger::Manual,
            ..policy()
        };
        let state = BuildState {
            pending: vec!["pushed".into()],
            requested: vec!["hotfix".into()],
            ..Default::default()
        };
        let (d, s) = decide(&p, &state, Time::ZERO);
        assert_eq!(d.start, ["hotfix"]);
        s.running.iter().for_each(|(c, _)| assert_eq!(c, "hotfix"));
        let (d, _) = decide(&p, &BuildState { running: vec![], ..s }, Time::ZERO);
        assert!(d.start.is_empty(), "manual trigger: pushes do not build");
    }
}

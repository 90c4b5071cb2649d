//! The shape of a route: what an environment's router serves for a rollout's (stable, canary,
//! weight, preview). Decided here, once, so the proxy, the simulator and the tests route the
//! same way; a router only carries a [`Route`] out and reports what it serves.
//!
//! # Rules
//! - all traffic to the canary (weight 100, or any weight with no stable): the canary is the
//!   one release served, as the stable;
//! - weight 0 takes the canary out of the route, unless it is held at its preview URL while it
//!   is judged (blue/green, shadow, A/B), which needs a stable to serve everyone else;
//! - a mirror or an A/B segment applies only while the canary is held at weight 0.

use crate::spec::routes::{Mirror, Segment};
use crate::spec::units::Weight;
use serde::{Deserialize, Serialize};

/// A release held at weight 0 while it is judged: routed at its preview URL; with a mirror, sent
/// copies of live requests; with a segment, serving that segment's share of callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// A/B: the segment of callers split between the release and stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
}

/// What an environment's route serves, as decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub stable: Option<String>,
    /// Routed beside `stable`: at `weight`, or held at 0 at its preview URL.
    pub canary: Option<String>,
    /// The canary's share, 0–100 (0 when there is no canary).
    pub weight: Weight,
    /// Copies of live requests sent to the held canary.
    pub mirror: Option<Mirror>,
    /// A/B: the segment of callers split between the held canary and stable.
    pub segment: Option<Segment>,
}

impl Route {
    /// The route for `canary_weight`% to `canary` and the rest to `stable` (see the rules above).
    pub fn decide(
        stable: Option<&str>,
        canary: &str,
        canary_weight: Weight,
        preview: Option<&Preview>,
    ) -> Route {
        let w = canary_weight.0.min(100);
        let (stable, canary) = if w >= 100 || (stable.is_none() && w > 0) {
            (Some(canary), None)
        } else if w == 0 && (preview.is_none() || stable.is_none()) {
            (stable, None)
        } else {
            (stable, Some(canary))
        };
        let held = canary.is_some() && w == 0;
        Route {
            stable: stable.map(str::to_owned),
            canary: canary.map(str::to_owned),
            weight: if canary.is_some() { Weight(w) } else { Weight(0) },
            mirror: preview.and_then(|p| p.mirror.clone()).filter(|_| held),
            segment: preview.and_then(|p| p.segment.clone()).filter(|_| held),
        }
    }

    /// The releases routed (stable first).
    pub fn releases(&self) -> impl Iterator<Item = &str> {
        self.stable.iter().chain(self.canary.iter()).map(String::as_str)
    }

    /// The weights part, as a router reports it back.
    pub fn weights(&self) -> RouteWeights {
        RouteWeights {
            stable: self.stable.clone(),
            canary: self.canary.clone(),
            weight: self.weight,
        }
    }
}

/// What an environment's route serves, as read back from the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteWeights {
    pub stable: Option<String>,
    pub canary: Option<String>,
    /// The canary's share, 0–100.
    pub weight: Weight,
}

impl RouteWeights {
    /// The share of traffic (0–100) that `release` gets.
    pub fn share_of(&self, release: &str) -> u8 {
        let w = self.weight.0.min(100);
        let canary = if self.canary.as_deref() == Some(release) {
            w
        } else {
            0
        };
        let stable = match (&self.stable, &self.canary) {
            (Some(s), Some(_)) if s == release => 100 - w,
            (Some(s), None) if s == release => 100,
            _ => 0,
        };
        canary.saturating_add(stable).min(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::units::Percent;

    fn held() -> Preview {
        Preview {
            mirror: Some(Mirror {
                share: Percent(0.5),
                ..Mirror::all_safe_requests()
            }),
            segment: None,
        }
    }

    #[test]
    fn all_traffic_to_the_canary_makes_it_the_one_release_served() {
        for (stable, w) in [(Some("r1"), 100), (None, 30), (None, 100)] {
            let r = Route::decide(stable, "r2", Weight(w), None);
            assert_eq!(
                (r.stable.as_deref(), r.canary.as_deref(), r.weight),
                (Some("r2"), None, Weight(0))
            );
            assert_eq!(r.weights().share_of("r2"), 100);
        }
    }

    #[test]
    fn weight_0_takes_the_canary_out_unless_it_is_held_at_its_preview() {
        let out = Route::decide(Some("r1"), "r2", Weight(0), None);
        assert_eq!(out.canary, None);
        assert_eq!(out.weights().share_of("r1"), 100);
        let kept = Route::decide(Some("r1"), "r2", Weight(0), Some(&held()));
        assert_eq!(kept.canary.as_deref(), Some("r2"));
        assert_eq!(kept.weights().share_of("r2"), 0);
        assert!(kept.mirror.is_some());
        // no stable to serve everyone else: nothing to hold it beside
        let alone = Route::decide(None, "r2", Weight(0), Some(&held()));
        assert_eq!((alone.stable, alone.canary), (None, None));
    }

    #[test]
    fn a_mirror_applies_only_while_the_canary_is_held() {
        let r = Route::decide(Some("r1"), "r2", Weight(20), Some(&held()));
        assert_eq!((r.canary.as_deref(), r.weight), (Some("r2"), Weight(20)));
        assert!(r.mirror.is_none() && r.segment.is_none());
        assert_eq!(r.weights().share_of("r1") + r.weights().share_of("r2"), 100);
    }

    #[test]
    fn a_weight_over_100_is_read_as_100() {
        let r = Route::decide(Some("r1"), "r2", Weight(250), None);
        assert_eq!(r.releases().collect::<Vec<_>>(), ["r2"]);
    }
}

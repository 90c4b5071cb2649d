//! When to look next: one rule, for production's loop and the simulator's virtual clock alike.
//!
//! The loop looks again at the earliest of: what any plan asked for ([`Plan::next_check`]), the
//! idle interval, and, while a canary is judged or a build runs, the sensors' own rhythm (they
//! have news that often). A failed tick is tried again at that rhythm. Two looks are never
//! closer than [`MIN_GAP`]. An outside event (an operator's action, a push) wakes the loop at
//! once in both worlds; that is the caller's, not a decision.

use super::rollout::{Phase, Plan};
use super::time::Time;
use std::time::Duration;

/// While a canary runs on the proxy's own counters, look this often: the counters cost nothing
/// to read, so evidence is judged as it arrives. At 1 s a crashing canary at 10 requests/s
/// served 14 requests before its rollback (`autopilot demo --bad-errors 100%`); at 250 ms the
/// lag between the judge's crossing and the weight change is a few requests.
pub const CANARY_LOOK: Duration = Duration::from_millis(250);

/// Two looks are at least this far apart, whatever a plan asks (a plan that asks for "now"
/// again after a route change is looked at this much later, when the router has it).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// How often the loop looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhythm {
    /// The idle interval (autopilot.yaml's `tick`; a scenario's `tick`).
    pub interval: Duration,
    /// While a canary is judged or a build runs.
    pub busy: Duration,
}

impl Rhythm {
    /// The rhythm for sensors read from the proxy's counters (`None`) or from a Prometheus that
    /// scrapes every `scrape`: it has news once a scrape, so looking twice as often catches each
    /// one promptly.
    pub fn new(interval: Duration, prometheus_scrape: Option<Duration>) -> Rhythm {
        let busy = prometheus_scrape.map_or(CANARY_LOOK, |s| (s / 2).max(CANARY_LOOK));
        Rhythm { interval, busy }
    }

    /// When to look after a tick at `now` whose services' plans are `ticks` (`None`: that
    /// service's tick failed).
    pub fn next<'a>(&self, now: Time, ticks: impl IntoIterator<Item = Option<&'a Plan>>) -> Time {
        let mut next = now.plus(self.interval);
        for plan in ticks {
            match plan {
                Some(p) => {
                    next = next.min(p.next_check);
                    if busy(p) {
                        next = next.min(now.plus(self.busy));
                    }
                }
                None => next = next.min(now.plus(self.busy)),
            }
        }
        next.max(now.plus(MIN_GAP))
    }
}

/// A canary is judged (or its instances start) or a build runs: the sensors' rhythm applies.
fn busy(p: &Plan) -> bool {
    let judged = p.state.environments.values().any(|e| {
        e.rollout.as_ref().is_some_and(|r| match r.phase {
            Phase::Canary { .. } | Phase::Paused { .. } | Phase::Deploying { .. } => true,
            Phase::Waiting { .. }
            | Phase::Baking { .. }
            | Phase::Promoting { .. }
            | Phase::Promoted { .. }
            | Phase::RollingBack { .. }
            | Phase::RolledBack { .. }
            | Phase::Superseded { .. } => false,
        })
    });
    judged || !p.state.builds.running.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{EnvState, Rollout};
    use crate::spec::units::Weight;

    fn plan(phase: Option<Phase>, next_check: Time) -> Plan {
        let mut p = Plan {
            state: Default::default(),
            actions: Vec::new(),
            transitions: Vec::new(),
            evidence: Vec::new(),
            notes: Vec::new(),
            next_check,
            consumed: Vec::new(),
        };
        p.state.environments.insert(
            "dev".into(),
            EnvState {
                rollout: phase.map(|phase| Rollout::new("r2", phase, Time::ZERO)),
                ..Default::default()
            },
        );
        p
    }

    const NOW: Time = Time::from_secs(1000);

    #[test]
    fn idle_looks_at_the_interval_or_when_a_plan_asks() {
        let r = Rhythm::new(Duration::from_secs(5), None);
        assert_eq!(
            r.next(NOW, [Some(&plan(None, NOW.plus(Duration::from_secs(60))))]),
            NOW.plus(Duration::from_secs(5))
        );
        assert_eq!(
            r.next(NOW, [Some(&plan(None, NOW.plus(Duration::from_secs(2))))]),
            NOW.plus(Duration::from_secs(2))
        );
        assert_eq!(r.next(NOW, []), NOW.plus(Duration::from_secs(5)));
    }

    #[test]
    fn a_judged_canary_is_looked_at_as_often_as_its_sensors_have_news() {
        let canary = Phase::Canary {
            step: 0,
            weight: Weight(5),
            since: NOW,
        };
        let far = NOW.plus(Duration::from_secs(60));
        let proxy = Rhythm::new(Duration::from_secs(5), None);
        assert_eq!(
            proxy.next(NOW, [Some(&plan(Some(canary.clone()), far))]),
            NOW.plus(CANARY_LOOK)
        );
        let prom = Rhythm::new(Duration::from_secs(30), Some(Duration::from_secs(15)));
        assert_eq!(
            prom.next(NOW, [Some(&plan(Some(canary), far))]),
            NOW.plus(Duration::from_millis(7500))
        );
        // a bake is judged by its plan's own wake-ups
        let baking = Phase::Baking {
            weight: Weight(90),
            since: NOW,
        };
        assert_eq!(
            prom.next(NOW, [Some(&plan(Some(baking), far))]),
            NOW.plus(Duration::from_secs(30))
        );
    }

    #[test]
    fn a_failed_tick_is_tried_again_soon_and_looks_are_never_closer_than_the_gap() {
        let r = Rhythm::new(Duration::from_secs(5), Some(Duration::from_secs(2)));
        assert_eq!(r.next(NOW, [None]), NOW.plus(Duration::from_secs(1)));
        assert_eq!(r.next(NOW, [Some(&plan(None, NOW))]), NOW.plus(MIN_GAP));
        // a fast scrape does not look faster than the proxy's rhythm
        assert_eq!(
            Rhythm::new(Duration::from_secs(5), Some(Duration::from_millis(100))).busy,
            CANARY_LOOK
        );
    }
}

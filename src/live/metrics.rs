//! autopilot's own metrics, next to the proxy's on `/metrics`: per rollout its phase and weight,
//! per objective the canary's and stable's bad shares, each test's evidence next to its
//! threshold, and the verdict; and how long ticks take. (Flagger users have long asked to see
//! the analysis value beside its threshold.)

use crate::control::judge::Verdict;
use crate::control::rollout::{PhaseKind, Plan};
use crate::proxy::metrics::esc;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Tick statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TickStats {
    pub ticks: u64,
    pub last_seconds: f64,
    pub total_seconds: f64,
}

/// The exposition text for the latest plan of every service.
pub fn render(plans: &BTreeMap<String, Plan>, stats: TickStats) -> String {
    let mut families: BTreeMap<&str, (&str, &str, Vec<String>)> = BTreeMap::new();
    let mut add = |name: &'static str, kind: &'static str, help: &'static str, line: String| {
        families
            .entry(name)
            .or_insert((kind, help, Vec::new()))
            .2
            .push(line);
    };
    for (service, plan) in plans {
        for (env, st) in &plan.state.environments {
            let Some(r) = &st.rollout else { continue };
            let l = format!(
                "service=\"{}\",environment=\"{}\",release=\"{}\"",
                esc(service),
                esc(env),
                esc(&r.release)
            );
            // every phase a rollout can be in, 1 for the current one, so a dashboard can graph
            // any of them (the enum's own list: a hand-kept one once missed `baking`)
            for p in PhaseKind::ALL {
                add(
                    "autopilot_rollout_phase",
                    "gauge",
                    "1 for the rollout's current phase, 0 for the others.",
                    format!(
                        "autopilot_rollout_phase{{{l},phase=\"{p}\"}} {}",
                        u8::from(r.phase.kind() == p)
                    ),
                );
            }
            add(
                "autopilot_rollout_weight",
                "gauge",
                "The canary's share of the environment's traffic, percent.",
                format!("autopilot_rollout_weight{{{l}}} {}", r.phase.weight().0),
            );
            add(
                "autopilot_rollout_blast_radius",
                "gauge",
                "Bad canary requests beyond what stable's rate would have produced.",
                format!("autopilot_rollout_blast_radius{{{l}}} {}", r.excess_bad.max(0.0)),
            );
        }
        for e in &plan.evidence {
            let l = format!(
                "service=\"{}\",environment=\"{}\",release=\"{}\",objective=\"{}\"",
                esc(service),
                esc(&e.environment),
                esc(&e.release),
                esc(&e.objective)
            );
            let ev = &e.judgement.evidence;
            for (arm, c) in [("canary", ev.canary), ("stable", ev.stable)] {
                if c.total > 0 {
                    add(
                        "autopilot_objective_bad_ratio",
                        "gauge",
                        "The share of bad events since the rollout started, per arm.",
                        format!("autopilot_objective_bad_ratio{{{l},arm=\"{arm}\"}} {}", c.ratio()),
                    );
                }
            }
            for (test, value, threshold) in [
                ("regression", ev.regression_e, ev.regression_threshold),
                ("safety", ev.safety_e, ev.safety_threshold),
            ] {
                add(
                    "autopilot_objective_evidence",
                    "gauge",
                    "The test's e-value now; it decides when it reaches its threshold.",
                    format!("autopilot_objective_evidence{{{l},test=\"{test}\"}} {value}"),
                );
                add(
                    "autopilot_objective_evidence_threshold",
                    "gauge",
                    "The e-value at which the test decides (1/alpha).",
                    format!("autopilot_objective_evidence_threshold{{{l},test=\"{test}\"}} {threshold}"),
                );
            }
            let now = match e.judgement.verdict {
                Verdict::Regressed => "regressed",
                Verdict::Safe => "safe",
                Verdict::NotYet(_) => "not-yet",
            };
            for name in ["regressed", "safe", "not-yet"] {
                add(
                    "autopilot_objective_verdict",
                    "gauge",
                    "1 for the judge's current verdict on the objective.",
                    format!(
                        "autopilot_objective_verdict{{{l},verdict=\"{name}\"}} {}",
                        u8::from(name == now)
                    ),
                );
            }
        }
    }
    add(
        "autopilot_ticks_total",
        "counter",
        "Passes of the control loop.",
        format!("autopilot_ticks_total {}", stats.ticks),
    );
    add(
        "autopilot_tick_seconds_total",
        "counter",
        "Wall time spent in the control loop's passes.",
        format!("autopilot_tick_seconds_total {}", stats.total_seconds),
    );
    add(
        "autopilot_tick_last_seconds",
        "gauge",
        "Wall time of the last pass.",
        format!("autopilot_tick_last_seconds {}", stats.last_seconds),
    );
    let mut out = String::new();
    for (name, (kind, help, lines)) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{EnvState, Phase, Rollout};
    use crate::control::time::Time;
    use crate::spec::units::Weight;

    /// Guards against a hand-kept phase list: one once lacked `baking`, so no phase series was 1
    /// during a bake.
    #[test]
    fn every_phase_has_a_series_and_the_current_one_is_1() {
        for kind in PhaseKind::ALL {
            let phase = match kind {
                PhaseKind::Waiting => Phase::Waiting {
                    since: Time::ZERO,
                    on: "soak".into(),
                },
                PhaseKind::Deploying => Phase::Deploying { since: Time::ZERO },
                PhaseKind::Canary => Phase::Canary {
                    step: 0,
                    weight: Weight(5),
                    since: Time::ZERO,
                },
                PhaseKind::Paused => Phase::Paused {
                    step: 0,
                    weight: Weight(5),
                    since: Time::ZERO,
                    reason: "ann".into(),
                    by_operator: true,
                },
                PhaseKind::Baking => Phase::Baking {
                    weight: Weight(90),
                    since: Time::ZERO,
                },
                PhaseKind::Promoting => Phase::Promoting { since: Time::ZERO },
                PhaseKind::Promoted => Phase::Promoted { at: Time::ZERO },
                PhaseKind::RollingBack => Phase::RollingBack {
                    reason: "bad".into(),
                    since: Time::ZERO,
                },
                PhaseKind::RolledBack => Phase::RolledBack {
                    reason: "bad".into(),
                    at: Time::ZERO,
                },
                PhaseKind::Superseded => Phase::Superseded {
                    by: "r3".into(),
                    at: Time::ZERO,
                },
            };
            let mut plan = Plan {
                state: Default::default(),
                actions: Vec::new(),
                transitions: Vec::new(),
                evidence: Vec::new(),
                notes: Vec::new(),
                next_check: Time::ZERO,
                consumed: Vec::new(),
            };
            plan.state.environments.insert(
                "prod".into(),
                EnvState {
                    rollout: Some(Rollout::new("r2", phase, Time::ZERO)),
                    ..Default::default()
                },
            );
            let text = render(&BTreeMap::from([("shop".to_owned(), plan)]), TickStats::default());
            let ones: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("autopilot_rollout_phase{") && l.ends_with(" 1"))
                .collect();
            assert_eq!(ones.len(), 1, "{kind}: {ones:?}");
            assert!(ones[0].contains(&format!("phase=\"{kind}\"")), "{kind}: {ones:?}");
            let series = text
                .lines()
                .filter(|l| l.starts_with("autopilot_rollout_phase{"))
                .count();
            assert_eq!(series, PhaseKind::ALL.len());
        }
    }
}

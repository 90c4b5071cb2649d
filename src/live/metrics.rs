//! autopilot's own metrics, next to the proxy's on `/metrics`: per rollout its phase and weight,
//! per objective the canary's and stable's bad shares, each test's evidence next to its
//! threshold, and the verdict; and how long ticks take. (Flagger users have long asked to see
//! the analysis value beside its threshold.)

use crate::control::judge::Verdict;
use crate::control::rollout::Plan;
use crate::proxy::metrics::esc;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Every phase a rollout can be in (each exported, 1 for the current one, so a dashboard can
/// graph any of them).
const PHASES: [&str; 9] = [
    "waiting",
    "deploying",
    "canary",
    "paused",
    "promoting",
    "promoted",
    "rolling-back",
    "rolled-back",
    "superseded",
];

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
            for p in PHASES {
                add(
                    "autopilot_rollout_phase",
                    "gauge",
                    "1 for the rollout's current phase, 0 for the others.",
                    format!(
                        "autopilot_rollout_phase{{{l},phase=\"{p}\"}} {}",
                        u8::from(r.phase.name() == p)
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

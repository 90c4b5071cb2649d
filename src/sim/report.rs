//! What a simulation shows a person: a timeline for the terminal, a JSON record for machines
//! and an SVG chart (weights, canary vs stable bad shares, decision markers) for the story at a
//! glance. Output is deterministic.

use super::SimResult;
use crate::control::rollout::PhaseKind;
use crate::control::time::Time;
use crate::report::{cause_line, chart, objective_lines};
use std::fmt::Write as _;

fn rel(t: Time, start: Time) -> String {
    let s = t.since(start).as_secs();
    format!("+{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// The timeline for the terminal: operator actions, transitions and notes in the order they
/// happened; `verbose` shows every objective's full reasoning at every step.
pub fn timeline(r: &SimResult, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} (seed {}): {} → {}, {} looks, {} canary requests",
        r.scenario, r.seed, r.start, r.end, r.ticks, r.requests
    );
    let _ = writeln!(out);
    // at the same moment: what people did, then what the controller did, then what it noted
    let mut entries: Vec<(Time, u8, usize)> = Vec::new();
    entries.extend(r.operator_actions.iter().enumerate().map(|(i, o)| (o.at, 0, i)));
    entries.extend(r.transitions.iter().enumerate().map(|(i, t)| (t.at, 1, i)));
    entries.extend(r.notes.iter().enumerate().map(|(i, (at, _))| (*at, 2, i)));
    entries.sort();
    for (at, kind, i) in entries {
        let when = rel(at, r.start);
        match kind {
            0 => {
                let o = &r.operator_actions[i];
                let refused = o
                    .refused
                    .as_ref()
                    .map(|why| format!(" — refused: {why}"))
                    .unwrap_or_default();
                let why = o
                    .reason
                    .as_ref()
                    .map(|r| format!(" (\"{r}\")"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {when}  {:<8} {} asks: {}{why}{refused}",
                    o.environment, o.by, o.action
                );
            }
            1 => {
                let t = &r.transitions[i];
                let from = t.from.map_or("·", PhaseKind::as_str);
                let to = match t.to {
                    PhaseKind::Canary | PhaseKind::Paused => format!("{} {}%", t.to, t.weight.0),
                    other => other.as_str().to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {when}  {:<8} {:<10} {:>12} → {:<13} {}",
                    t.environment,
                    t.release,
                    from,
                    to,
                    cause_line(t)
                );
                objective_lines(t, verbose, &mut out);
            }
            _ => {
                let _ = writeln!(out, "  {when}  note: {}", r.notes[i].1);
            }
        }
    }
    let _ = writeln!(
        out,
        "\noutcomes (served: every request the canary served there; failed: 5xx):"
    );
    for o in &r.outcomes {
        let when = match o.decided_at {
            Some(d) => format!(
                "{} after push",
                crate::spec::units::Duration(std::time::Duration::from_secs(
                    d.since(o.pushed_at).as_secs().max(1)
                ))
            ),
            None => "undecided at the end".into(),
        };
        let excess = (o.served.bad as f64 - o.served.stable_would_fail).max(0.0);
        let _ = writeln!(
            out,
            "  {:<10} {:<8} {:<13} {when}; served {}, failed {} ({:.0} more than at stable's rate)",
            o.release, o.environment, o.phase, o.served.requests, o.served.bad, excess
        );
    }
    if !r.checks.is_empty() {
        let _ = writeln!(out, "\nexpectations:");
        for c in &r.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  {mark} {} — {}", c.expectation, c.detail);
        }
    }
    out
}

/// The JSON record.
pub fn json(r: &SimResult) -> String {
    serde_json::to_string_pretty(r).expect("a result serializes")
}

/// The SVG chart: a panel per environment where a canary ran (none for those it never
/// reached), each zoomed to its rollouts: the canary's weight and each objective's canary and
/// stable bad shares over time, with a labelled marker at every promotion and rollback.
pub fn svg(r: &SimResult) -> String {
    chart(
        &format!(
            "{} (seed {}) — canary weight and bad shares; green: promoted, red: rolled back",
            r.scenario, r.seed
        ),
        r.start,
        r.end,
        &r.environments,
        &r.objectives,
        &r.samples,
        &r.transitions,
    )
}

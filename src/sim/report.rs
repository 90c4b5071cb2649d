//! What a simulation shows a person: a timeline for the terminal, a JSON record for machines
//! and an SVG chart (weights, canary vs stable bad shares, decision markers) for the story at a
//! glance. Output is deterministic.

use super::SimResult;
use crate::control::time::Time;
use plotters::prelude::*;
use std::fmt::Write as _;

fn rel(t: Time, start: Time) -> String {
    let s = t.since(start).as_secs();
    format!("+{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// A transition's cause in a few words (the timelines of `simulate`, `demo` and `up`).
pub fn short_cause(c: &crate::control::rollout::Cause) -> String {
    use crate::control::rollout::Cause;
    match c {
        Cause::Candidate => "new candidate".into(),
        Cause::GatesOpen => "gates open".into(),
        Cause::Ready => "instances ready".into(),
        Cause::FirstRelease => "first release: nothing to compare with".into(),
        Cause::DeployFailed { reason } => format!("deploy failed: {reason}"),
        Cause::Regressed {
            objective,
            explanation,
        } => format!("{objective} regressed: {explanation}"),
        Cause::Evidence { explanation } => explanation.clone(),
        Cause::MissingData { objective, since } => format!("no data for {objective} since {since}"),
        Cause::Deadline => "progress deadline passed".into(),
        Cause::BlastRadius { excess, budget } => format!("blast radius {excess:.0} ≥ budget {budget}"),
        Cause::Operator { action, actor } => format!("{} by {} ({})", action, actor.who, actor.reason),
        Cause::NewerRelease { release } => format!("superseded by {release}"),
        Cause::Completed => "done".into(),
    }
}

/// `s` cut to `max` characters, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The timeline for the terminal (the JSON record has every explanation in full).
pub fn timeline(r: &SimResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} (seed {}): {} → {}, {} ticks, {} canary requests",
        r.scenario, r.seed, r.start, r.end, r.ticks, r.requests
    );
    let _ = writeln!(out);
    for t in &r.transitions {
        let from = t.from.as_deref().unwrap_or("·");
        let to = if t.to == "canary" || t.to == "paused" {
            format!("{} {}%", t.to, t.weight.0)
        } else {
            t.to.clone()
        };
        let _ = writeln!(
            out,
            "  {}  {:<8} {:<10} {:>12} → {:<13} {}",
            rel(t.at, r.start),
            t.environment,
            t.release,
            from,
            to,
            clip(&short_cause(&t.cause), 150)
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for (at, n) in &r.notes {
            let _ = writeln!(out, "  {}  {n}", rel(*at, r.start));
        }
    }
    let _ = writeln!(out, "\noutcomes:");
    for o in &r.outcomes {
        let when = o
            .decided_at
            .map(|d| {
                format!(
                    " {} after push",
                    crate::spec::units::Duration(std::time::Duration::from_secs(
                        d.since(o.pushed_at).as_secs().max(1)
                    ))
                )
            })
            .unwrap_or_default();
        let excess = (o.served.bad as f64 - o.served.stable_would_fail).max(0.0);
        let _ = writeln!(
            out,
            "  {:<10} {:<8} {:<13}{}; served {} canary requests, {} bad (excess over stable {:.0})",
            o.release, o.environment, o.phase, when, o.served.requests, o.served.bad, excess
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

/// (objective, canary share, stable share)
type Rate = (String, Option<f64>, Option<f64>);

const PALETTE: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The SVG chart: per environment, the canary's weight and each objective's canary and stable
/// bad shares over time, with a marker at every promotion and rollback.
pub fn svg(r: &SimResult) -> String {
    let envs = &r.environments;
    let height = 260 * envs.len() as u32 + 40;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1100, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (title, body) = root.split_vertically(40);
        let _ = title.draw(&Text::new(
            format!(
                "{} (seed {}) — weights and bad shares; green: promoted, red: rolled back",
                r.scenario, r.seed
            ),
            (10, 12),
            ("sans-serif", 16).into_font(),
        ));
        let panels = body.split_evenly((envs.len(), 1));
        let hours = |t: Time| t.since(r.start).as_secs_f64() / 3600.0;
        let span = hours(r.end).max(1.0 / 60.0);
        for (panel, env) in panels.iter().zip(envs) {
            let (left, right) = panel.split_horizontally(520);
            let samples: Vec<_> = r.samples.iter().filter(|s| &s.environment == env).collect();
            let markers: Vec<(f64, RGBColor)> = r
                .transitions
                .iter()
                .filter(|t| &t.environment == env)
                .filter_map(|t| match t.to.as_str() {
                    "promoted" => Some((hours(t.at), RGBColor(44, 160, 44))),
                    "rolled-back" => Some((hours(t.at), RGBColor(214, 39, 40))),
                    _ => None,
                })
                .collect();
            // weights
            if let Ok(mut chart) = ChartBuilder::on(&left)
                .caption(format!("{env}: canary weight (%)"), ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(0.0..span, 0.0..100.0)
            {
                let _ = chart
                    .configure_mesh()
                    .x_desc("hours")
                    .light_line_style(WHITE)
                    .draw();
                let _ = chart.draw_series(LineSeries::new(
                    samples.iter().map(|s| (hours(s.at), f64::from(s.weight))),
                    BLUE.stroke_width(2),
                ));
                for (x, color) in &markers {
                    let _ = chart.draw_series(LineSeries::new(
                        vec![(*x, 0.0), (*x, 100.0)],
                        color.stroke_width(2),
                    ));
                }
            }
            // bad shares
            let max_rate = samples
                .iter()
                .flat_map(|s| {
                    s.rates
                        .iter()
                        .flat_map(|(_, c, b)| [c.unwrap_or(0.0), b.unwrap_or(0.0)])
                })
                .fold(0.001_f64, f64::max)
                * 100.0
                * 1.1;
            if let Ok(mut chart) = ChartBuilder::on(&right)
                .caption(
                    format!("{env}: bad share since rollout start (%) — canary solid, stable thin"),
                    ("sans-serif", 14),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..span, 0.0..max_rate)
            {
                let _ = chart
                    .configure_mesh()
                    .x_desc("hours")
                    .light_line_style(WHITE)
                    .draw();
                for (k, objective) in r.objectives.iter().enumerate() {
                    let color = PALETTE[k % PALETTE.len()];
                    let series = |pick: fn(&Rate) -> Option<f64>| {
                        samples
                            .iter()
                            .filter_map(|s| {
                                let v = s.rates.iter().find(|x| &x.0 == objective).and_then(pick)?;
                                Some((hours(s.at), v * 100.0))
                            })
                            .collect::<Vec<_>>()
                    };
                    if let Ok(drawn) =
                        chart.draw_series(LineSeries::new(series(|x| x.1), color.stroke_width(2)))
                    {
                        drawn.label(format!("{objective} canary")).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                        });
                    }
                    if let Ok(drawn) =
                        chart.draw_series(LineSeries::new(series(|x| x.2), color.stroke_width(1)))
                    {
                        drawn.label(format!("{objective} stable")).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(1))
                        });
                    }
                }
                for (x, color) in &markers {
                    let _ = chart.draw_series(LineSeries::new(
                        vec![(*x, 0.0), (*x, max_rate)],
                        color.stroke_width(2),
                    ));
                }
                let _ = chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw();
            }
        }
        let _ = root.present();
    }
    text
}

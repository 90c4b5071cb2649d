//! The words and the chart that production and the simulator share: a transition's cause in a
//! few words, each objective's judgement in a line, and the rollout chart (the canary's weight
//! and each objective's bad shares over time, with promotion and rollback markers). The pages,
//! the API, notifications, `demo` and `simulate` all say the same thing the same way.
//!
//! Nothing here decides anything or does I/O; it depends on `control`'s records only.

use crate::control::announce::{Event, NotificationEvent};
use crate::control::rollout::{PhaseKind, Transition};
use crate::control::time::Time;
use plotters::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;

/// One look at an environment, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub at: Time,
    pub environment: String,
    pub release: Option<String>,
    pub weight: u8,
    /// Per objective: (canary bad share, stable bad share) since the rollout started.
    pub rates: Vec<(String, Option<f64>, Option<f64>)>,
}

/// An announcement in one line, for a chat channel or a webhook's `summary`.
pub fn announcement(e: &Event) -> String {
    let (service, release, env) = (&e.service, &e.release, &e.environment);
    match e.kind {
        NotificationEvent::Rollback => {
            let cause = e.cause.as_ref().map(short_cause).unwrap_or_default();
            format!("{service}: {release} rolled back in {env}: {cause}")
        }
        NotificationEvent::Promotion => format!("{service}: {release} promoted in {env}"),
        NotificationEvent::Stuck => format!(
            "{service}: {release} stuck in {env} past its progress deadline (paused at {}%)",
            e.weight.0
        ),
        NotificationEvent::Approval => format!(
            "{service}: {release} waits for approval in {env} ({})",
            e.waiting_on.as_deref().unwrap_or("an approval")
        ),
    }
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
            ..
        } => format!("{objective} regressed: {explanation}"),
        Cause::Evidence { explanation, .. } => explanation.clone(),
        Cause::SafeOnCopies { explanation, .. } => format!("safe on copies of live requests: {explanation}"),
        Cause::SafeInSegment {
            segment, explanation, ..
        } => format!("safe in segment {segment}: {explanation}"),
        Cause::MissingData { objective, since } => format!("no data for {objective} since {since}"),
        Cause::Deadline => "progress deadline passed".into(),
        Cause::BlastRadius { excess, budget } => format!("blast radius {excess:.0} ≥ budget {budget}"),
        Cause::Operator { action, actor } => format!("{} by {} ({})", action, actor.who, actor.reason),
        Cause::NewerRelease { release } => format!("superseded by {release}"),
        Cause::Baked { looks } => format!("baked: no change seen in {looks} looks"),
        Cause::Completed => "done".into(),
    }
}

/// A transition's cause for the timeline: words, never cut (the judge's numbers follow on
/// lines of their own).
pub fn cause_line(t: &crate::control::rollout::Transition) -> String {
    use crate::control::rollout::Cause;
    match &t.cause {
        Cause::Evidence { capped: Some(c), .. } => format!(
            "capped by the blast-radius budget at {}% of the {}% the ramp asked: higher, a canary as bad as still possible could spend the {:.0} bad requests left (of {}) before the next look",
            t.weight.0, c.wanted.0, c.left, c.budget
        ),
        Cause::Evidence { objectives, .. } if t.to == PhaseKind::Promoting && !objectives.is_empty() => {
            "every objective is safe: promote".into()
        }
        Cause::Evidence { objectives, .. } if !objectives.is_empty() => {
            let states: Vec<String> = objectives
                .iter()
                .map(|o| format!("{} {}", o.objective, o.verdict))
                .collect();
            format!("next step, nothing regressed ({})", states.join(", "))
        }
        Cause::SafeOnCopies { .. } => {
            "every objective is safe on copies of live requests: now serving users, judged afresh".into()
        }
        Cause::SafeInSegment { segment, .. } if t.to == PhaseKind::Promoting => {
            format!("every objective is safe in segment {segment}, against its stable requests: switch everyone")
        }
        Cause::SafeInSegment { segment, .. } => format!(
            "every objective is safe in segment {segment}, against its stable requests: now everyone, judged afresh"
        ),
        Cause::Regressed { objective, .. } => format!("{objective} regressed: roll back"),
        Cause::Deadline if t.to == PhaseKind::Paused => {
            "progress deadline passed without a decision: held at this weight for a person (no regression found)"
                .into()
        }
        // who asked, and why, is on the operator's own line, at the time they asked
        Cause::Operator { action, .. } => format!("carries out the operator's {action}"),
        other => short_cause(other),
    }
}

/// The judge's lines under a transition: each objective on its own line in words, when the
/// decision rests on them (a promotion, a regression, a capped step), or always with `verbose`
/// (then with everything the judge said).
pub fn objective_lines(t: &crate::control::rollout::Transition, verbose: bool, out: &mut String) {
    use crate::control::rollout::Cause;
    let (objectives, matters) = match &t.cause {
        Cause::Evidence {
            objectives, capped, ..
        } => (objectives, t.to == PhaseKind::Promoting || capped.is_some()),
        Cause::Regressed { objectives, .. }
        | Cause::SafeOnCopies { objectives, .. }
        | Cause::SafeInSegment { objectives, .. } => (objectives, true),
        _ => return,
    };
    if !(matters || verbose) {
        return;
    }
    for o in objectives {
        let text = if verbose { &o.explanation } else { &o.words };
        let _ = writeln!(out, "{:14}{}: {text}", "", o.objective);
    }
}

/// (objective, canary share, stable share)
type Rate = (String, Option<f64>, Option<f64>);

/// The objectives' colours; red and green are kept for rollback and promotion markers.
const PALETTE: [RGBColor; 4] = [
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const PROMOTED: RGBColor = RGBColor(44, 160, 44);
const ROLLED_BACK: RGBColor = RGBColor(214, 39, 40);

/// The rollout chart of [`svg`], for any samples and transitions (the release page draws its
/// own): times are shown from `start`; `end` bounds an environment without samples.
pub fn chart(
    title: &str,
    start: Time,
    end: Time,
    environments: &[String],
    objectives: &[String],
    samples: &[Sample],
    transitions: &[Transition],
) -> String {
    let envs: Vec<&String> = environments
        .iter()
        .filter(|e| samples.iter().any(|s| &s.environment == *e))
        .collect();
    let height = 260 * envs.len().max(1) as u32 + 40;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1100, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (heading, body) = root.split_vertically(40);
        let _ = heading.draw(&Text::new(
            title.to_owned(),
            (10, 12),
            ("sans-serif", 16).into_font(),
        ));
        if envs.is_empty() {
            let _ = body.draw(&Text::new(
                "no release reached a canary in any environment",
                (10, 20),
                ("sans-serif", 14).into_font(),
            ));
        }
        let panels = body.split_evenly((envs.len().max(1), 1));
        for (panel, env) in panels.iter().zip(envs) {
            let samples: Vec<_> = samples.iter().filter(|s| &s.environment == env).collect();
            let markers: Vec<(Time, RGBColor, String)> = transitions
                .iter()
                .filter(|t| &t.environment == env)
                .filter_map(|t| match t.to {
                    PhaseKind::Promoted => Some((t.at, PROMOTED, format!("{} promoted", t.release))),
                    PhaseKind::RolledBack => Some((t.at, ROLLED_BACK, format!("{} rolled back", t.release))),
                    _ => None,
                })
                .collect();
            // zoomed to this environment's rollouts, with a margin; minutes when short
            let first = samples.first().map(|s| s.at).unwrap_or(start);
            let last = samples
                .iter()
                .map(|s| s.at)
                .chain(markers.iter().map(|m| m.0))
                .max()
                .unwrap_or(end);
            let span_s = last.since(first).as_secs_f64().max(60.0);
            let (unit, per) = if span_s < 3.0 * 3600.0 {
                ("minutes since start", 60.0)
            } else {
                ("hours since start", 3600.0)
            };
            let x = |t: Time| t.since(start).as_secs_f64() / per;
            let (x0, x1) = (
                (x(first) - 0.05 * span_s / per).max(0.0),
                x(last) + 0.05 * span_s / per,
            );
            let (left, right) = panel.split_horizontally(520);
            // weights
            if let Ok(mut chart) = ChartBuilder::on(&left)
                .caption(format!("{env}: canary weight (%)"), ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(x0..x1, 0.0..100.0)
            {
                let _ = chart.configure_mesh().x_desc(unit).light_line_style(WHITE).draw();
                let _ = chart.draw_series(LineSeries::new(
                    samples.iter().map(|s| (x(s.at), f64::from(s.weight))),
                    BLUE.stroke_width(2),
                ));
                for (at, color, label) in &markers {
                    let _ = chart.draw_series(LineSeries::new(
                        vec![(x(*at), 0.0), (x(*at), 100.0)],
                        color.stroke_width(2),
                    ));
                    let _ = chart.draw_series(std::iter::once(Text::new(
                        label.clone(),
                        (x(*at), 96.0),
                        ("sans-serif", 12).into_font().color(color),
                    )));
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
                    format!("{env}: bad share since rollout start (%) — canary thick, stable thin"),
                    ("sans-serif", 14),
                )
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(44)
                .build_cartesian_2d(x0..x1, 0.0..max_rate)
            {
                let _ = chart.configure_mesh().x_desc(unit).light_line_style(WHITE).draw();
                for (k, objective) in objectives.iter().enumerate() {
                    let color = PALETTE[k % PALETTE.len()];
                    let series = |pick: fn(&Rate) -> Option<f64>| {
                        samples
                            .iter()
                            .filter_map(|s| {
                                let v = s.rates.iter().find(|x| &x.0 == objective).and_then(pick)?;
                                Some((x(s.at), v * 100.0))
                            })
                            .collect::<Vec<_>>()
                    };
                    if let Ok(drawn) =
                        chart.draw_series(LineSeries::new(series(|x| x.1), color.stroke_width(3)))
                    {
                        drawn.label(format!("{objective} canary")).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(3))
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
                for (at, color, _) in &markers {
                    let _ = chart.draw_series(LineSeries::new(
                        vec![(x(*at), 0.0), (x(*at), max_rate)],
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

//! Promotion gates: what must hold before a release may enter an environment.

use super::time::Time;
use crate::spec::controllers::{Gate, TimeWindow, Weekday};
use serde::{Deserialize, Serialize};

/// An approval given through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub release: String,
    pub environment: String,
    pub by: String,
    /// The approver's groups, as verified by the API's authentication.
    pub groups: Vec<String>,
    pub at: Time,
}

/// What a gate says now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GateStatus {
    Open,
    /// Closed; may open by itself at `until` (soak, window), or only by a person (`None`).
    Closed {
        why: String,
        until: Option<Time>,
    },
}

/// Facts the gates of one (release, environment) need.
pub struct GateInput<'a> {
    pub release: &'a str,
    pub environment: &'a str,
    /// When the release became stable in the previous environment (None for the first).
    pub stable_upstream_since: Option<Time>,
    pub approvals: &'a [Approval],
    pub now: Time,
}

pub fn evaluate(gate: &Gate, input: &GateInput) -> GateStatus {
    match gate {
        Gate::Automatic => GateStatus::Open,
        Gate::Soak(d) => match input.stable_upstream_since {
            None => GateStatus::Open,
            Some(since) => {
                let until = since.plus(d.0);
                if input.now >= until {
                    GateStatus::Open
                } else {
                    GateStatus::Closed {
                        why: format!("soaking for {d} in the previous environment"),
                        until: Some(until),
                    }
                }
            }
        },
        Gate::Approval(a) => {
            let mut approvers: Vec<&str> = input
                .approvals
                .iter()
                .filter(|x| x.release == input.release && x.environment == input.environment)
                .filter(|x| x.groups.iter().any(|g| a.groups.contains(g)))
                .map(|x| x.by.as_str())
                .collect();
            approvers.sort_unstable();
            approvers.dedup();
            if approvers.len() as u32 >= a.count {
                GateStatus::Open
            } else {
                GateStatus::Closed {
                    why: format!(
                        "waiting for {} approval(s) from {} ({} so far)",
                        a.count,
                        a.groups.join(" or "),
                        approvers.len()
                    ),
                    until: None,
                }
            }
        }
        Gate::Window(w) => window(w, input.now),
    }
}

fn weekday_index(d: Weekday) -> u64 {
    match d {
        Weekday::Mon => 0,
        Weekday::Tue => 1,
        Weekday::Wed => 2,
        Weekday::Thu => 3,
        Weekday::Fri => 4,
        Weekday::Sat => 5,
        Weekday::Sun => 6,
    }
}

/// Is `now` inside the weekly window? If not, when does it next open?
fn window(w: &TimeWindow, now: Time) -> GateStatus {
    const MIN_MS: u64 = 60_000;
    const DAY_MIN: u64 = 24 * 60;
    let offset = i64::from(w.timezone.minutes);
    let local_min = (now.millis() / MIN_MS) as i64 + offset;
    let open_at = |minute_of_week: i64| -> bool {
        let day = minute_of_week.div_euclid(DAY_MIN as i64) as u64 % 7;
        let minute = minute_of_week.rem_euclid(DAY_MIN as i64) as u16;
        // 1970-01-01 was a Thursday: day 0 of the epoch is weekday index 3
        let weekday = (day + 3) % 7;
        let (from, to) = (w.from.minutes, w.to.minutes);
        let opens_today = w.days.iter().any(|d| weekday_index(*d) == weekday);
        let opened_yesterday = w.days.iter().any(|d| weekday_index(*d) == (weekday + 6) % 7);
        if from < to {
            opens_today && minute >= from && minute < to
        } else {
            // past midnight: open from `from` today, or until `to` if it opened yesterday
            (opens_today && minute >= from) || (opened_yesterday && minute < to)
        }
    };
    if open_at(local_min) {
        return GateStatus::Open;
    }
    let next = (1..=7 * DAY_MIN as i64).find(|m| open_at(local_min + m));
    GateStatus::Closed {
        why: format!(
            "outside the window {} {}–{} ({})",
            w.days
                .iter()
                .map(|d| format!("{d:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(","),
            w.from,
            w.to,
            w.timezone
        ),
        until: next.map(|m| Time::from_millis(((local_min + m - offset) as u64) * MIN_MS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::controllers::Approval as ApprovalGate;

    fn window_gate() -> Gate {
        Gate::Window(TimeWindow {
            days: vec![Weekday::Mon, Weekday::Tue],
            from: "09:00".parse().unwrap(),
            to: "16:00".parse().unwrap(),
            timezone: "+01:00".parse().unwrap(),
        })
    }

    fn input(now: Time) -> GateInput<'static> {
        GateInput {
            release: "r1",
            environment: "prod",
            stable_upstream_since: Some(Time::ZERO),
            approvals: &[],
            now,
        }
    }

    #[test]
    fn a_window_opens_on_its_days_in_its_timezone() {
        // 2026-11-30 is a Monday; 08:30 UTC is 09:30 at +01:00
        let monday_0830_utc = Time::from_secs(1_796_027_400);
        assert_eq!(monday_0830_utc.to_string(), "2026-11-30T08:30:00Z");
        assert_eq!(
            evaluate(&window_gate(), &input(monday_0830_utc)),
            GateStatus::Open
        );
        // Monday 07:30 UTC = 08:30 local: closed until 08:00 UTC
        let early = Time::from_secs(1_796_027_400 - 3600);
        match evaluate(&window_gate(), &input(early)) {
            GateStatus::Closed { until, .. } => {
                assert_eq!(until.unwrap().to_string(), "2026-11-30T08:00:00Z")
            }
            GateStatus::Open => panic!("open too early"),
        }
        // Wednesday: closed until next Monday
        let wednesday = Time::from_secs(1_796_027_400 + 2 * 86_400);
        match evaluate(&window_gate(), &input(wednesday)) {
            GateStatus::Closed { until, .. } => {
                assert_eq!(until.unwrap().to_string(), "2026-12-07T08:00:00Z")
            }
            GateStatus::Open => panic!("open on a wednesday"),
        }
    }

    #[test]
    fn approvals_count_distinct_people_from_the_right_groups() {
        let gate = Gate::Approval(ApprovalGate {
            groups: vec!["sre".into()],
            count: 2,
        });
        let a = |by: &str, group: &str| Approval {
            release: "r1".into(),
            environment: "prod".into(),
            by: by.into(),
            groups: vec![group.into()],
            at: Time::ZERO,
        };
        let approvals = [a("ann", "sre"), a("ann", "sre"), a("bob", "devs")];
        let mut i = input(Time::ZERO);
        i.approvals = &approvals;
        assert!(matches!(
            evaluate(&gate, &i),
            GateStatus::Closed { until: None, .. }
        ));
        let approvals = [a("ann", "sre"), a("cid", "sre")];
        i.approvals = &approvals;
        assert_eq!(evaluate(&gate, &i), GateStatus::Open);
    }

    #[test]
    fn soak_opens_after_its_duration_upstream() {
        let gate = Gate::Soak("1h".parse().unwrap());
        assert!(matches!(
            evaluate(&gate, &input(Time::from_secs(3599))),
            GateStatus::Closed { .. }
        ));
        assert_eq!(evaluate(&gate, &input(Time::from_secs(3600))), GateStatus::Open);
    }
}

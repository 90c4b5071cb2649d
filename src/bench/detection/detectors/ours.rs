//! Our judge, as the benchmark drives it: the canary judge, then, once it promoted, the bake
//! watch on the promoted release against the previous one (`promotion.bake`).

use super::*;
use autopilot::control::judge::{self, Counts, JudgeConfig, Reading, Verdict};
use autopilot::control::time::Time;
use autopilot::control::watch::{self, WatchConfig, WatchState};
use std::time::Duration;

/// Our judge.
pub(crate) struct Ours {
    pub(crate) state: judge::JudgeState,
    pub(crate) cfg: JudgeConfig,
    pub(crate) metric: Metric,
    /// After the promotion: the watch (`None` while the canary is judged).
    pub(crate) watch: Option<(WatchState, WatchConfig)>,
}

impl Detector for Ours {
    fn observe(&mut self, t: u64, obs: &Obs) -> Decision {
        let conv = |a: Option<Arm>| {
            a.map(|a| {
                let (bad, total) = bad_total(&a, self.metric, 0);
                Counts::new(bad, total)
            })
        };
        let reading = Reading::of(conv(obs.canary), conv(obs.stable));
        if let Some((state, cfg)) = &mut self.watch {
            let (next, j) = watch::observe(state, reading, cfg, Time::from_secs(t));
            *state = next;
            return match j.verdict {
                Verdict::Regressed => Decision::Rollback,
                Verdict::Safe | Verdict::NotYet(_) => Decision::Continue,
            };
        }
        let (next, j) = judge::observe(&self.state, reading, &self.cfg, Time::from_secs(t));
        self.state = next;
        match j.verdict {
            Verdict::Regressed => Decision::Rollback,
            Verdict::Safe => Decision::Promote,
            Verdict::NotYet(_) => Decision::Continue,
        }
    }

    fn promoted(&mut self, _t: u64) -> bool {
        let cfg = WatchConfig::for_judge(
            &self.cfg,
            Duration::from_secs(WATCH_SECS),
            Duration::from_secs(TICK),
        );
        self.watch = Some((WatchState::default(), cfg));
        true
    }
}

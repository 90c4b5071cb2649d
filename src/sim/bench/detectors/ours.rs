//! Our judge, as the benchmark drives it.

use super::*;
use crate::control::judge::{self, Counts, JudgeConfig, Reading, Verdict};
use crate::control::time::Time;

/// Our judge.
pub(crate) struct Ours {
    pub(crate) state: judge::JudgeState,
    pub(crate) cfg: JudgeConfig,
    pub(crate) metric: Metric,
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
        let (next, j) = judge::observe(&self.state, reading, &self.cfg, Time::from_secs(t));
        self.state = next;
        match j.verdict {
            Verdict::Regressed => Decision::Rollback,
            Verdict::Safe => Decision::Promote,
            Verdict::NotYet(_) => Decision::Continue,
        }
    }
}

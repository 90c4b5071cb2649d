//! Counter arithmetic, written once: a counter that goes down was reset (a process restarted)
//! and counts from zero again; it is never a negative increment. The judge, the proxy's sensors
//! and the simulator's recordings all count this way. (The Prometheus adapter keeps its own
//! reset-adjusted series, as `increase()` does, because it sees every sample, not two readings.)

use serde::{Deserialize, Serialize};

/// One arm's cumulative counters as read from a sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub bad: u64,
    pub total: u64,
}

impl Counts {
    pub fn new(bad: u64, total: u64) -> Self {
        Counts { bad, total }
    }

    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.bad as f64 / self.total as f64
        }
    }

    /// Adds `other` in place.
    pub(super) fn add(&mut self, other: Counts) {
        *self = *self + other;
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    /// Both arms' or series' counts together.
    fn add(self, other: Counts) -> Counts {
        Counts::new(self.bad + other.bad, self.total + other.total)
    }
}

/// The increment from `last` to `now`: all of `now` at the first reading or after a reset.
pub fn increment(last: Option<Counts>, now: Counts) -> Counts {
    match last {
        Some(l) if now.total >= l.total && now.bad >= l.bad => {
            Counts::new(now.bad - l.bad, now.total - l.total)
        }
        _ => now,
    }
}

/// The counts since `base`, which the first reading sets; after a reset the base is zero.
pub fn since_base(base: &mut Option<Counts>, now: Option<Counts>) -> Option<Counts> {
    let now = now?;
    let b = base.get_or_insert(now);
    if now.bad < b.bad || now.total < b.total {
        *b = Counts::default();
    }
    Some(Counts::new(now.bad - b.bad, now.total - b.total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_goes_down_counts_from_zero_again() {
        assert_eq!(increment(None, Counts::new(2, 10)), Counts::new(2, 10));
        assert_eq!(
            increment(Some(Counts::new(2, 10)), Counts::new(3, 15)),
            Counts::new(1, 5)
        );
        assert_eq!(
            increment(Some(Counts::new(2, 10)), Counts::new(1, 4)),
            Counts::new(1, 4)
        );
        let mut base = None;
        assert_eq!(
            since_base(&mut base, Some(Counts::new(5, 100))),
            Some(Counts::new(0, 0))
        );
        assert_eq!(
            since_base(&mut base, Some(Counts::new(7, 150))),
            Some(Counts::new(2, 50))
        );
        // the process restarted: its counters start again at zero
        assert_eq!(
            since_base(&mut base, Some(Counts::new(1, 20))),
            Some(Counts::new(1, 20))
        );
        assert_eq!(since_base(&mut base, None), None);
    }
}

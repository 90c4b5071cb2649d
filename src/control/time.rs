//! Time as a value. The control code never reads a clock: `now` comes in as an argument, so
//! the simulator can run a day in a second and tests can say exactly when things happen.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A moment, in milliseconds since the Unix epoch (the simulator starts its clock at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub const fn from_secs(s: u64) -> Self {
        Time(s * 1000)
    }

    pub fn from_millis(ms: u64) -> Self {
        Time(ms)
    }

    pub fn millis(&self) -> u64 {
        self.0
    }

    pub fn secs_f64(&self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// `self + d`, saturating.
    pub fn plus(&self, d: std::time::Duration) -> Time {
        Time(self.0.saturating_add(d.as_millis() as u64))
    }

    /// How long since `earlier` (zero if `earlier` is later).
    pub fn since(&self, earlier: Time) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::str::FromStr for Time {
    type Err = String;

    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC).
    fn from_str(s: &str) -> Result<Time, String> {
        crate::spec::units::utc_seconds(s).map(Time::from_secs)
    }
}

impl fmt::Display for Time {
    /// RFC 3339 in UTC, e.g. `2026-11-27T03:18:36Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // civil-from-days (Howard Hinnant's algorithm)
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(Time::ZERO.to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Time::from_secs(1_795_749_516).to_string(), "2026-11-27T03:18:36Z");
        assert_eq!(Time::from_secs(951_782_400).to_string(), "2000-02-29T00:00:00Z");
        for t in [
            "1970-01-01T00:00:00Z",
            "2026-11-27T03:18:36Z",
            "2000-02-29T00:00:00Z",
            "2026-12-31T23:59:59Z",
        ] {
            assert_eq!(t.parse::<Time>().unwrap().to_string(), t);
        }
        assert!("2026-13-01T00:00:00Z".parse::<Time>().is_err());
        assert!("yesterday".parse::<Time>().is_err());
    }
}

//! Human units in specs: durations (`30s`, `1h30m`, `300ms`), percentages (`0.5%`, `99.9%`),
//! traffic weights (`0..=100`) and objective targets (`< 0.5%`, `> 99.9%`, `p99 < 300ms`).
//!
//! Each type parses from the string a person writes, prints back the same way, and describes
//! itself in the JSON Schema with a pattern so editors flag a typo before autopilot sees it.
//! Parsing never panics; errors say what was expected, with an example.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A positive span of time, written as numbers with units: `300ms`, `30s`, `5m`, `1h30m`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl Duration {
    pub fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }

    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }

    pub fn as_millis(&self) -> u128 {
        self.0.as_millis()
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a duration: write numbers with units (ms, s, m, h, d), such as `30s`, `5m` or `1h30m`"
            )
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(bad());
        }
        if let Some(positive) = text.strip_prefix('-')
            && Duration::from_str(positive).is_ok()
        {
            return Err(format!(
                "`{s}` is negative; durations here are lengths of time, write `{positive}`"
            ));
        }
        let mut total_ms: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let too_long = || format!("`{s}` is too long a duration (more than 500 million years)");
            let number: u64 = rest[..digits].parse().map_err(|_| too_long())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let Some((_, factor)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
                return Err(bad());
            };
            total_ms = number
                .checked_mul(*factor)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(too_long)?;
        }
        if total_ms == 0 {
            return Err(format!("`{s}` is zero; a duration here must be positive"));
        }
        Ok(Duration(std::time::Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, factor) in DURATION_UNITS.iter().rev() {
            if ms >= *factor && (*unit != "ms" || ms > 0) {
                let n = ms / factor;
                if n > 0 {
                    write!(f, "{n}{unit}")?;
                    ms -= n * factor;
                }
            }
        }
        Ok(())
    }
}

/// A fraction written as a percentage: `0.5%`, `10%`, `99.9%`. Stored as a fraction (0.005).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl Percent {
    pub fn fraction(&self) -> f64 {
        self.0
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a percentage: write a number followed by `%`, such as `0.5%` or `99.9%`")
        };
        let number = s.trim().strip_suffix('%').ok_or_else(bad)?.trim();
        if number.is_empty() || number.starts_with(['+', '-']) && number.len() == 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(format!("`{s}` is outside 0% to 100%"));
        }
        Ok(Percent(value / 100.0))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // round away float noise (0.1 + 0.2) without losing real precision
        let pct = (self.0 * 100.0 * 1e9).round() / 1e9;
        write!(f, "{pct}%")
    }
}

/// A traffic weight: an integer share from 0 (no traffic) to 100 (all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Weight(pub u8);

impl Weight {
    pub const MAX: Weight = Weight(100);
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // validated inside the visitor, so the error is reported at the value's location
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Weight;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a weight, an integer from 0 to 100")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Weight, E> {
                if !(0..=100).contains(&n) {
                    return Err(E::custom(format!(
                        "weight {n} is outside 0..=100 (a weight is a share of traffic in percent)"
                    )));
                }
                Ok(Weight(n as u8))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Weight, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_i64(V)
    }
}

impl JsonSchema for Weight {
    fn schema_name() -> Cow<'static, str> {
        "Weight".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A share of traffic in percent, an integer from 0 to 100.",
            "type": "integer", "minimum": 0, "maximum": 100
        })
    }
}

/// What an objective promises. Every target is a bound on the share of *bad* events:
/// `< 0.5%` (at most 0.5% bad), `> 99.9%` (at least 99.9% good, i.e. at most 0.1% bad), or a
/// latency quantile `p99 < 300ms` (at most 1% of requests slower than 300 ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The share of bad events stays below `max_bad`. `written_as_good` remembers `>` form.
    BadRatio { max_bad: f64, written_as_good: bool },
    /// At most `1 - quantile` of requests take longer than `threshold`.
    Latency { quantile: f64, threshold: Duration },
}

impl Target {
    /// The largest acceptable share of bad events.
    pub fn max_bad_ratio(&self) -> f64 {
        match self {
            Target::BadRatio { max_bad, .. } => *max_bad,
            Target::Latency { quantile, .. } => 1.0 - quantile,
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let bad = || {
            format!(
                "`{s}` is not a target: write `< 0.5%` (bad share), `> 99.9%` (good share) or `p99 < 300ms` (latency)"
            )
        };
        if let Some(rest) = text.strip_prefix('p') {
            let (q, threshold) = rest.split_once('<').ok_or_else(bad)?;
            let q: f64 = q.trim().parse().map_err(|_| bad())?;
            if !(q > 0.0 && q < 100.0) {
                return Err(format!(
                    "`{s}`: the quantile must be between p0 and p100, such as p99 or p99.9"
                ));
            }
            let threshold: Duration = threshold.trim_start_matches('=').trim().parse()?;
            return Ok(Target::Latency {
                quantile: q / 100.0,
                threshold,
            });
        }
        let (good, rest) = if let Some(r) = text.strip_prefix('<') {
            (false, r)
        } else if let Some(r) = text.strip_prefix('>') {
            (true, r)
        } else {
            return Err(bad());
        };
        let pct: Percent = rest.trim_start_matches('=').trim().parse()?;
        let max_bad = if good { 1.0 - pct.0 } else { pct.0 };
        if max_bad <= 0.0 || max_bad >= 1.0 {
            return Err(format!(
                "`{s}` can never be met or never be missed; pick a share strictly between 0% and 100%"
            ));
        }
        Ok(Target::BadRatio {
            max_bad,
            written_as_good: good,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::BadRatio {
                max_bad,
                written_as_good: true,
            } => write!(f, "> {}", Percent(1.0 - max_bad)),
            Target::BadRatio { max_bad, .. } => write!(f, "< {}", Percent(*max_bad)),
            Target::Latency { quantile, threshold } => {
                let q = (quantile * 100.0 * 1e9).round() / 1e9;
                write!(f, "p{q} < {threshold}")
            }
        }
    }
}

/// A time of day, `HH:MM` (24-hour clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub minutes: u16,
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a time of day: write `HH:MM` on a 24-hour clock, such as `09:00`");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 24 || m > 59 || (h == 24 && m != 0) || s.trim().len() != 5 {
            return Err(bad());
        }
        Ok(TimeOfDay { minutes: h * 60 + m })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

/// An offset from UTC: `UTC`, `+02:00`, `-05:30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    pub minutes: i16,
}

impl FromStr for UtcOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("utc") || text == "Z" {
            return Ok(UtcOffset { minutes: 0 });
        }
        let bad =
            || format!("`{s}` is not a UTC offset: write `UTC` or `+HH:MM` / `-HH:MM`, such as `+01:00`");
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(bad()),
        };
        let t: TimeOfDay = rest.parse().map_err(|_| bad())?;
        if t.minutes > 14 * 60 {
            return Err(bad());
        }
        Ok(UtcOffset {
            minutes: sign * t.minutes as i16,
        })
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minutes == 0 {
            return f.write_str("UTC");
        }
        let sign = if self.minutes < 0 { '-' } else { '+' };
        let m = self.minutes.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
    }
}

/// Seconds since the Unix epoch of a UTC time written `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_seconds(s: &str) -> Result<u64, String> {
    let bad =
        || format!("`{s}` is not a UTC time: write `YYYY-MM-DDTHH:MM:SSZ`, such as `2026-11-30T09:00:00Z`");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 || y < 1970 {
        return Err(bad());
    }
    // days-from-civil (Howard Hinnant's algorithm)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400 + hh * 3600 + mm * 60 + ss) as u64)
}

/// How much worse than stable a canary may be. One share serves both decisions (`25%`: what
/// files written before the indifference zone say); two make an indifference zone
/// (`{regression: 10%, safety: 50%}`): roll back a canary surely worse than stable by more than
/// `regression`, promote one surely no worse than `safety`; in between, either is acceptable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// δ_r: a canary within this of stable is never rolled back (but with probability α).
    pub regression: Percent,
    /// δ_s: a canary worse than this is never promoted (but with the false-promotion rate).
    pub safety: Percent,
}

impl Tolerance {
    /// One share for both decisions.
    pub fn single(p: Percent) -> Tolerance {
        Tolerance {
            regression: p,
            safety: p,
        }
    }

    pub fn is_zone(&self) -> bool {
        self.regression != self.safety
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zone() {
            write!(f, "{{regression: {}, safety: {}}}", self.regression, self.safety)
        } else {
            write!(f, "{}", self.regression)
        }
    }
}

impl Serialize for Tolerance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_zone() {
            use serde::ser::SerializeStruct;
            let mut m = s.serialize_struct("Tolerance", 2)?;
            m.serialize_field("regression", &self.regression)?;
            m.serialize_field("safety", &self.safety)?;
            m.end()
        } else {
            self.regression.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Tolerance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Zone {
            regression: Percent,
            safety: Percent,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Tolerance;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage such as `25%`, or `{regression: 10%, safety: 50%}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tolerance, E> {
                v.parse().map(Tolerance::single).map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Tolerance, A::Error> {
                let z = Zone::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if z.regression.0 > z.safety.0 {
                    return Err(de::Error::custom(format!(
                        "the regression tolerance ({}) is above the safety tolerance ({}): a canary between them would be both rolled back and promoted",
                        z.regression, z.safety
                    )));
                }
                Ok(Tolerance {
                    regression: z.regression,
                    safety: z.safety,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Tolerance {
    fn schema_name() -> Cow<'static, str> {
        "Tolerance".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let percent = g.subschema_for::<Percent>();
        json_schema!({
            "description": "How much worse than stable a canary may be: one percentage for both decisions, or an indifference zone `{regression, safety}` (roll back beyond `regression`, promote within `safety`).",
            "oneOf": [
                percent,
                {
                    "type": "object",
                    "properties": {
                        "regression": percent,
                        "safety": percent
                    },
                    "required": ["regression", "safety"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// An amount of bytes, written with a unit: `512B`, `64KiB`, `1MiB` (powers of 1024) or `10kB`,
/// `2MB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const BYTE_UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a size: write a whole number and a unit, such as `512B`, `64KiB` or `1MiB`")
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = t.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let (_, scale) = BYTE_UNITS
            .iter()
            .find(|(u, _)| *u == unit.trim())
            .ok_or_else(bad)?;
        number
            .checked_mul(*scale)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = BYTE_UNITS
            .iter()
            .filter(|(_, scale)| self.0 > 0 && self.0.is_multiple_of(*scale))
            .max_by_key(|(_, scale)| *scale)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

/// Serde and JSON Schema for a type that is written as a string.
macro_rules! string_unit {
    ($ty:ty, $name:literal, $pattern:literal, $description:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($description)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "description": $description,
                    "type": "string",
                    "pattern": $pattern
                })
            }
        }
    };
}

string_unit!(
    Duration,
    "Duration",
    r"^\s*([0-9]+(ms|s|m|h|d))+\s*$",
    "a duration such as `300ms`, `30s`, `5m` or `1h30m`"
);
string_unit!(
    Percent,
    "Percent",
    r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$",
    "a percentage such as `0.5%` or `99.9%`"
);
string_unit!(
    Target,
    "Target",
    r"^\s*(p[0-9]+(\.[0-9]+)?\s*<=?\s*([0-9]+(ms|s|m|h|d))+|[<>]=?\s*[0-9]+(\.[0-9]+)?\s*%)\s*$",
    "a target such as `< 0.5%` (bad share), `> 99.9%` (good share) or `p99 < 300ms` (latency)"
);
string_unit!(
    ByteSize,
    "ByteSize",
    r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|kB|MB|GB)\s*$",
    "a size such as `512B`, `64KiB` or `1MiB`"
);
string_unit!(
    TimeOfDay,
    "TimeOfDay",
    r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$",
    "a time of day `HH:MM` on a 24-hour clock"
);
string_unit!(
    UtcOffset,
    "UtcOffset",
    r"^(UTC|Z|[+-][0-9]{2}:[0-9]{2})$",
    "`UTC` or an offset such as `+01:00`"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> f64 {
        s.parse::<Duration>().unwrap().as_secs_f64()
    }

    #[test]
    fn sizes_parse_in_both_kinds_of_unit_and_print_back() {
        for (text, bytes) in [
            ("512B", 512),
            ("64KiB", 65_536),
            ("1MiB", 1 << 20),
            ("10kB", 10_000),
            (" 2MB ", 2_000_000),
            ("0B", 0),
        ] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.0, bytes, "{text}");
            assert_eq!(size.to_string().parse::<ByteSize>().unwrap(), size);
        }
        assert_eq!(ByteSize(65_536).to_string(), "64KiB");
        for bad in ["64", "KiB", "1.5MiB", "-1B", "64 kib", "99999999999999GiB"] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_parse_in_human_units() {
        assert_eq!(secs("30s"), 30.0);
        assert_eq!(secs("5m"), 300.0);
        assert_eq!(secs("1h30m"), 5400.0);
        assert_eq!(secs("300ms"), 0.3);
        assert_eq!(secs("2d"), 172_800.0);
        assert_eq!(secs(" 1m30s "), 90.0);
    }

    #[test]
    fn durations_reject_words_zero_and_negative() {
        for bad in [
            "5 minutes",
            "5",
            "",
            "m",
            "-5s",
            "1.5h",
            "5x",
            "0s",
            "99999999999999999d",
        ] {
            let e = bad.parse::<Duration>().unwrap_err();
            assert!(e.contains(bad.trim()) || bad.trim().is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn an_absurdly_long_duration_is_called_too_long() {
        for s in ["99999999999999999999999h", "9999999999999999d"] {
            let e = Duration::from_str(s).unwrap_err();
            assert!(e.contains("too long a duration"), "{e}");
        }
    }

    #[test]
    fn a_negative_duration_is_called_negative_not_unitless() {
        let e = "-10s".parse::<Duration>().unwrap_err();
        assert!(e.contains("negative") && e.contains("write `10s`"), "{e}");
        let e = "-x".parse::<Duration>().unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn durations_print_back_the_way_they_are_written() {
        for s in ["30s", "5m", "1h30m", "300ms", "2d", "1h1m1s1ms"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn percentages_parse_to_fractions() {
        assert_eq!("0.5%".parse::<Percent>().unwrap().0, 0.005);
        assert_eq!("99.9%".parse::<Percent>().unwrap().to_string(), "99.9%");
        assert_eq!("100%".parse::<Percent>().unwrap().0, 1.0);
        for bad in ["0.5", "%", "-1%", "101%", "abc%", "nan%"] {
            assert!(bad.parse::<Percent>().is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_are_bounds_on_the_bad_share() {
        let t: Target = "< 0.5%".parse().unwrap();
        assert!((t.max_bad_ratio() - 0.005).abs() < 1e-12);
        let t: Target = "> 99.9%".parse().unwrap();
        assert!((t.max_bad_ratio() - 0.001).abs() < 1e-12);
        assert_eq!(t.to_string(), "> 99.9%");
        let t: Target = "p99 < 300ms".parse().unwrap();
        assert!((t.max_bad_ratio() - 0.01).abs() < 1e-12);
        assert_eq!(t.to_string(), "p99 < 300ms");
        let t: Target = "p99.9<1s".parse().unwrap();
        assert_eq!(t.to_string(), "p99.9 < 1s");
        for bad in [
            "0.5%",
            "< 0%",
            "> 100%",
            "p99 > 300ms",
            "p0 < 1s",
            "p99 < 5 minutes",
            "< 200%",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn clock_times_and_offsets() {
        assert_eq!("09:30".parse::<TimeOfDay>().unwrap().minutes, 570);
        assert!("9:30".parse::<TimeOfDay>().is_err());
        assert!("25:00".parse::<TimeOfDay>().is_err());
        assert_eq!("-05:30".parse::<UtcOffset>().unwrap().minutes, -330);
        assert_eq!("UTC".parse::<UtcOffset>().unwrap().to_string(), "UTC");
        assert!("CET".parse::<UtcOffset>().is_err());
    }
}

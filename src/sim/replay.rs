//! Replaying recorded Prometheus data: range-query exports (`/api/v1/query_range` JSON) become
//! the sensor readings of one environment, on the simulation's virtual clock.
//!
//! A series is read as a step function (the last sample at or before a moment); a sample older
//! than Prometheus' staleness window counts as missing. Several series in one export are summed
//! per timestamp. Values are rounded to whole events.

use crate::control::judge::{Counts, Reading};
use crate::control::time::Time;
use crate::spec::simulations::Replay;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Prometheus marks a series stale after five minutes without a sample.
const STALENESS_MS: u64 = 5 * 60 * 1000;

/// Why a recording cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ReplayError {
    pub path: PathBuf,
    pub message: String,
}

/// One recorded series: (milliseconds since the recording's first sample, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    first_ms: u64,
    points: Vec<(u64, f64)>,
}

impl Series {
    /// The value at `offset_ms` after the recording started, or `None` if stale or before it.
    pub fn at(&self, offset_ms: u64) -> Option<f64> {
        let t = self.first_ms + offset_ms;
        let i = self.points.partition_point(|(ts, _)| *ts <= t);
        let (ts, v) = *self.points.get(i.checked_sub(1)?)?;
        (t - ts <= STALENESS_MS).then_some(v)
    }

    pub fn first_ms(&self) -> u64 {
        self.first_ms
    }
}

/// Parses a `query_range` export.
pub fn parse(path: &Path, text: &str) -> Result<Series, ReplayError> {
    let err = |message: String| ReplayError {
        path: path.to_path_buf(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "not JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if v["status"] != "success" {
        return Err(err(format!(
            "the export's status is {}, not \"success\"",
            v["status"]
        )));
    }
    if v["data"]["resultType"] != "matrix" {
        return Err(err(format!(
            "expected a range query result (resultType \"matrix\"), found {}",
            v["data"]["resultType"]
        )));
    }
    let results = v["data"]["result"]
        .as_array()
        .ok_or_else(|| err("`data.result` is not a list".into()))?;
    let mut sum: BTreeMap<u64, f64> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let values = r["values"]
            .as_array()
            .ok_or_else(|| err(format!("result[{i}] has no `values`")))?;
        for (j, pair) in values.iter().enumerate() {
            let ts = pair[0]
                .as_f64()
                .ok_or_else(|| err(format!("result[{i}].values[{j}]: the timestamp is not a number")))?;
            let value: f64 = pair[1].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                err(format!(
                    "result[{i}].values[{j}]: the value is not a number in a string"
                ))
            })?;
            if value.is_finite() {
                *sum.entry((ts * 1000.0).round() as u64).or_default() += value;
            }
        }
    }
    let first_ms = *sum
        .keys()
        .next()
        .ok_or_else(|| err("the export holds no samples".into()))?;
    Ok(Series {
        first_ms,
        points: sum.into_iter().collect(),
    })
}

/// The loaded recordings of a scenario.
#[derive(Debug, Clone)]
pub struct Recordings {
    pub environment: String,
    /// When (simulation time) the recordings start.
    pub start: Time,
    /// Per objective: canary (bad, total), stable (bad, total).
    pub series: BTreeMap<String, [Series; 4]>,
    first_ms: u64,
}

impl Recordings {
    /// Loads every file a scenario's `replay` names, relative to `base`.
    pub fn load(replay: &Replay, base: &Path, sim_start: Time) -> Result<Recordings, ReplayError> {
        let mut series = BTreeMap::new();
        for (objective, rec) in &replay.objectives {
            let read = |rel: &str| {
                let path = base.join(rel);
                let text = std::fs::read_to_string(&path).map_err(|e| ReplayError {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                parse(&path, &text)
            };
            series.insert(
                objective.clone(),
                [
                    read(&rec.canary.bad)?,
                    read(&rec.canary.total)?,
                    read(&rec.stable.bad)?,
                    read(&rec.stable.total)?,
                ],
            );
        }
        let first_ms = series
            .values()
            .flat_map(|s| s.iter().map(Series::first_ms))
            .min()
            .unwrap_or(0);
        Ok(Recordings {
            environment: replay.environment.clone(),
            start: sim_start.plus(replay.at.map_or(std::time::Duration::ZERO, |d| d.0)),
            series,
            first_ms,
        })
    }

    /// The raw recorded counters of an objective at simulation time `now`.
    pub fn raw(&self, objective: &str, now: Time) -> Option<Reading> {
        let s = self.series.get(objective)?;
        if now < self.start {
            return Some(Reading::default());
        }
        let offset = now.since(self.start).as_millis() as u64;
        // every series on one clock: the earliest first sample of the recording
        let t_abs = self.first_ms + offset;
        let at = |x: &Series| {
            let since_first = t_abs.checked_sub(x.first_ms)?;
            x.at(since_first).map(|v| v.round().max(0.0) as u64)
        };
        let arm = |bad: &Series, total: &Series| Some(Counts::new(at(bad)?, at(total)?));
        let (canary, stable) = (arm(&s[0], &s[1]), arm(&s[2], &s[3]));
        let missing = (canary.is_none() || stable.is_none()).then_some(crate::control::judge::Missing::Stale);
        Some(Reading {
            canary,
            stable,
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{"pod":"a"},"values":[[1700000000,"10"],[1700000010,"12"],[1700000020,"15.4"]]},
        {"metric":{"pod":"b"},"values":[[1700000000,"1"],[1700000010,"2"]]}]}}"#;

    #[test]
    fn series_are_summed_per_timestamp_and_read_as_steps() {
        let s = parse(Path::new("x.json"), EXPORT).unwrap();
        assert_eq!(s.at(0), Some(11.0));
        assert_eq!(s.at(15_000), Some(14.0));
        assert_eq!(s.at(20_000), Some(15.4));
        assert_eq!(s.at(20_000 + STALENESS_MS + 1), None, "stale after five minutes");
    }

    #[test]
    fn a_bad_export_says_what_is_wrong() {
        for (text, needle) in [
            ("{", "not JSON"),
            (r#"{"status":"error"}"#, "status"),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                "matrix",
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                "no samples",
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"values":[[1,"x"]]}]}}"#,
                "values[0]",
            ),
        ] {
            let e = parse(Path::new("rec.json"), text).unwrap_err().to_string();
            assert!(e.starts_with("rec.json: ") && e.contains(needle), "{e}");
        }
    }
}

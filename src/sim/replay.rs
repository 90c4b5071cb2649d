//! Replaying recorded Prometheus data: range-query exports (`/api/v1/query_range` JSON) become
//! the sensor readings of one environment, on the simulation's virtual clock.
//!
//! A series is read as a step function (the last sample at or before a moment); a sample older
//! than Prometheus' staleness window counts as missing. Several series are summed per
//! timestamp after each is made reset-free on its own (a counter below its previous sample
//! restarted, and counts from zero — as Prometheus' `increase()` does), so one pod's restart
//! does not read as the whole arm's. Values are rounded to whole events.

use crate::control::judge::{Counts, Reading};
use crate::control::time::Time;
use crate::spec::promql::{SeriesFilter, parse_matchers};
use crate::spec::simulations::{RecordedObjective, Replay};
use std::collections::{BTreeMap, BTreeSet};
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

/// One labelled series of an export: its labels and (Unix milliseconds, value) samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(u64, f64)>,
}

impl Labelled {
    /// The same samples made reset-free: each drop below the previous sample adds the value
    /// lost, so the series only grows.
    fn adjusted(&self) -> Vec<(u64, f64)> {
        let mut out = Vec::with_capacity(self.points.len());
        let (mut prev, mut offset) = (None::<f64>, 0.0);
        for &(ts, v) in &self.points {
            if let Some(p) = prev
                && v < p
            {
                offset += p;
            }
            prev = Some(v);
            out.push((ts, v + offset));
        }
        out
    }
}

/// Sums reset-free series at the given timestamps (each series at its last sample at or
/// before; zero before its first).
pub fn sum_at(series: &[&Labelled], at: &BTreeSet<u64>) -> Vec<(u64, f64)> {
    let adjusted: Vec<Vec<(u64, f64)>> = series.iter().map(|s| s.adjusted()).collect();
    at.iter()
        .map(|&t| {
            let v = adjusted
                .iter()
                .map(|a| {
                    let i = a.partition_point(|(ts, _)| *ts <= t);
                    i.checked_sub(1).map_or(0.0, |i| a[i].1)
                })
                .sum();
            (t, v)
        })
        .collect()
}

/// Every timestamp at which any of the series has a sample.
pub fn timestamps(series: &[&Labelled]) -> BTreeSet<u64> {
    series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect()
}

fn to_series(points: Vec<(u64, f64)>) -> Option<Series> {
    let first_ms = points.first()?.0;
    Some(Series { first_ms, points })
}

/// Parses a `query_range` export into its labelled series.
pub fn parse_export(path: &Path, text: &str) -> Result<Vec<Labelled>, ReplayError> {
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
    let mut out = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let values = r["values"]
            .as_array()
            .ok_or_else(|| err(format!("result[{i}] has no `values`")))?;
        let labels: BTreeMap<String, String> = r["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut points = Vec::with_capacity(values.len());
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
                points.push(((ts * 1000.0).round() as u64, value));
            }
        }
        points.sort_by_key(|p| p.0);
        out.push(Labelled { labels, points });
    }
    if out.iter().all(|s| s.points.is_empty()) {
        return Err(err("the export holds no samples".into()));
    }
    Ok(out)
}

/// Parses a `query_range` export of one counter: its series made reset-free and summed.
pub fn parse(path: &Path, text: &str) -> Result<Series, ReplayError> {
    let series = parse_export(path, text)?;
    let refs: Vec<&Labelled> = series.iter().collect();
    to_series(sum_at(&refs, &timestamps(&refs))).ok_or_else(|| ReplayError {
        path: path.to_path_buf(),
        message: "the export holds no samples".into(),
    })
}

/// The four counters of an objective recorded as one export: the arms' series picked by their
/// matchers, the bad ones by `bad`.
fn from_export(base: &Path, export: &str, o: &RecordedObjective) -> Result<[Series; 4], ReplayError> {
    let path = base.join(export);
    let err = |message: String| ReplayError {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let series = parse_export(&path, &text)?;
    let filter = |what: &str, m: Option<&String>| -> Result<SeriesFilter, ReplayError> {
        let m = m.ok_or_else(|| err(format!("`{what}` matchers are missing")))?;
        parse_matchers(m)
            .and_then(|ms| SeriesFilter::new(&ms))
            .map_err(|e| err(format!("`{what}`: {}", e.message)))
    };
    let bad = filter("bad", o.bad.as_ref())?;
    let mut out = Vec::new();
    for (arm, rec) in [("canary", &o.canary), ("stable", &o.stable)] {
        let pick = filter(&format!("{arm}.match"), rec.matches.as_ref())?;
        let all: Vec<&Labelled> = series
            .iter()
            .filter(|s| pick.matches(|l| s.labels.get(l).map(String::as_str)))
            .collect();
        if all.is_empty() {
            return Err(err(format!(
                "no series matches the {arm}'s `{}`",
                rec.matches.as_deref().unwrap_or_default()
            )));
        }
        let bads: Vec<&Labelled> = all
            .iter()
            .copied()
            .filter(|s| bad.matches(|l| s.labels.get(l).map(String::as_str)))
            .collect();
        let at = timestamps(&all);
        let total = to_series(sum_at(&all, &at)).ok_or_else(|| err(format!("the {arm} has no samples")))?;
        let bad = to_series(sum_at(&bads, &at)).ok_or_else(|| err(format!("the {arm} has no samples")))?;
        out.push(bad);
        out.push(total);
    }
    let [cb, ct, sb, st]: [Series; 4] = out.try_into().map_err(|_| err("four series".into()))?;
    Ok([cb, ct, sb, st])
}

/// The loaded recordings of a scenario.
#[derive(Debug, Clone)]
pub struct Recordings {
    pub environment: String,
    /// When (simulation time) the recordings start; `None` until the canary's rollout starts
    /// in the environment (the default alignment).
    pub start: Option<Time>,
    /// Per objective: canary (bad, total), stable (bad, total).
    pub series: BTreeMap<String, [Series; 4]>,
    first_ms: u64,
}

impl Recordings {
    /// Loads every file a scenario's `replay` names, relative to `base`.
    pub fn load(replay: &Replay, base: &Path, sim_start: Time) -> Result<Recordings, ReplayError> {
        let mut series = BTreeMap::new();
        for (objective, rec) in &replay.objectives {
            if let Some(export) = &rec.export {
                series.insert(objective.clone(), from_export(base, export, rec)?);
                continue;
            }
            let read = |rel: Option<&String>, what: &str| {
                let rel = rel.ok_or_else(|| ReplayError {
                    path: base.to_path_buf(),
                    message: format!("replay.objectives.{objective}: no `{what}` file"),
                })?;
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
                    read(rec.canary.bad.as_ref(), "canary.bad")?,
                    read(rec.canary.total.as_ref(), "canary.total")?,
                    read(rec.stable.bad.as_ref(), "stable.bad")?,
                    read(rec.stable.total.as_ref(), "stable.total")?,
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
            start: replay.at.map(|d| sim_start.plus(d.0)),
            series,
            first_ms,
        })
    }

    /// The raw recorded counters of an objective at simulation time `now`.
    pub fn raw(&self, objective: &str, now: Time) -> Option<Reading> {
        let s = self.series.get(objective)?;
        let Some(start) = self.start.filter(|s| now >= *s) else {
            return Some(Reading::default());
        };
        let offset = now.since(start).as_millis() as u64;
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
        // pod b has no sample at 20 s: what it counted still counts (a sum never drops)
        assert_eq!(s.at(20_000), Some(17.4));
        assert_eq!(s.at(20_000 + STALENESS_MS + 1), None, "stale after five minutes");
    }

    #[test]
    fn one_pod_restarting_is_not_a_reset_of_the_arm() {
        // pod a restarts at 20 s (12 → 3); pod b keeps counting
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"pod":"a"},"values":[[0,"10"],[10,"12"],[20,"3"],[30,"5"]]},
            {"metric":{"pod":"b"},"values":[[0,"100"],[10,"110"],[20,"120"],[30,"130"]]}]}}"#;
        let s = parse(Path::new("x.json"), text).unwrap();
        let at: Vec<f64> = [0, 10_000, 20_000, 30_000]
            .iter()
            .map(|t| s.at(*t).unwrap())
            .collect();
        assert_eq!(
            at,
            [110.0, 122.0, 135.0, 147.0],
            "each pod made reset-free, then summed"
        );
    }

    #[test]
    fn one_export_of_many_series_splits_into_arms_and_bad() {
        use crate::spec::simulations::RecordedArm;
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"version":"v2","code":"200"},"values":[[0,"90"],[10,"180"]]},
            {"metric":{"version":"v2","code":"503"},"values":[[10,"20"]]},
            {"metric":{"version":"v1","code":"200"},"values":[[0,"1000"],[10,"1900"]]},
            {"metric":{"version":"v1","code":"500"},"values":[[0,"1"],[10,"2"]]}]}}"#;
        std::fs::write(dir.path().join("export.json"), text).unwrap();
        let arm = |m: &str| RecordedArm {
            matches: Some(m.into()),
            bad: None,
            total: None,
        };
        let o = RecordedObjective {
            export: Some("export.json".into()),
            bad: Some(r#"code=~"5..""#.into()),
            canary: arm(r#"version="v2""#),
            stable: arm(r#"version="v1""#),
        };
        let [cb, ct, sb, st] = from_export(dir.path(), "export.json", &o).unwrap();
        assert_eq!(
            (cb.at(0), ct.at(0)),
            (Some(0.0), Some(90.0)),
            "no bad series yet: zero bad"
        );
        assert_eq!((cb.at(10_000), ct.at(10_000)), (Some(20.0), Some(200.0)));
        assert_eq!((sb.at(10_000), st.at(10_000)), (Some(2.0), Some(1902.0)));
        let mut wrong = o.clone();
        wrong.canary = arm(r#"version="v3""#);
        let e = from_export(dir.path(), "export.json", &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("export.json") && e.contains(r#"no series matches the canary's `version="v3"`"#),
            "{e}"
        );
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

//! `autopilot replay`: an incident replayed straight from Prometheus. The service's sensors
//! are read over a time range (`query_range`, every series with its labels), saved as a
//! scenario with its recordings, and run through the controller exactly as `simulate` runs any
//! scenario. The saved scenario can be kept (`--save`) and edited like any other.
//!
//! Per objective: a `counter` sensor becomes one export of every series of both arms, with
//! matchers naming the canary's, stable's and the bad ones (the scenario's `export:` form); a
//! `histogram` sensor becomes four pre-summed files per arm (total = `_count`, bad = `_count`
//! minus the bucket at the threshold, each series reset-free before summing). Free PromQL
//! templates and the proxy's own counters are not replayed (their data is not in Prometheus
//! as counters); the objectives that use them are listed.

use super::PromSettings;
use crate::spec::Catalog;
use crate::spec::promql::{self, IdentitySelector};
use crate::spec::sensors::{SensorSource, bucket_for};
use crate::spec::units::Target;
use prometheus_http_query::response::{Data, RangeVector};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub service: String,
    pub environment: String,
    pub canary: String,
    pub stable: String,
    /// Unix seconds.
    pub from: u64,
    pub to: u64,
    pub step: std::time::Duration,
    /// Spec files for the scenario's `specs:` (absolute).
    pub specs: Vec<PathBuf>,
    /// An outcome to expect in the environment (`rolledBack`, `promoted`, `held`).
    pub expect: Option<String>,
}

/// The files written: the scenario, and notes on what was not replayed.
#[derive(Debug, Clone)]
pub struct Saved {
    pub scenario: PathBuf,
    pub skipped: Vec<String>,
    pub series: usize,
}

/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MMZ`, in Unix seconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let full = if s.len() == 17 && s.ends_with('Z') {
        format!("{}:00Z", &s[..16])
    } else {
        s.to_owned()
    };
    crate::spec::units::utc_seconds(&full)
}

fn export_json(series: &[RangeVector]) -> String {
    let result: Vec<serde_json::Value> = series
        .iter()
        .map(|rv| {
            let values: Vec<serde_json::Value> = rv
                .samples()
                .iter()
                .map(|s| serde_json::json!([s.timestamp(), s.value().to_string()]))
                .collect();
            serde_json::json!({"metric": rv.metric(), "values": values})
        })
        .collect();
    serde_json::to_string(&serde_json::json!({
        "status": "success",
        "data": {"resultType": "matrix", "result": result}
    }))
    .expect("export serializes")
}

fn selector(sel: &IdentitySelector, req: &ReplayRequest, name: &str) -> String {
    let id = &sel.identity;
    let mut m: Vec<String> = sel.fixed.iter().map(|x| x.to_string()).collect();
    m.push(format!("{}={}", id.service, promql::quote(&req.service)));
    m.push(format!("{}={}", id.environment, promql::quote(&req.environment)));
    m.push(format!(
        "{}=~{}",
        id.release,
        promql::quote(&promql::alternation([req.canary.as_str(), req.stable.as_str()]))
    ));
    format!("{name}{{{}}}", m.join(","))
}

async fn range(
    client: &prometheus_http_query::Client,
    query: &str,
    req: &ReplayRequest,
) -> Result<Vec<RangeVector>, String> {
    let r = client
        .query_range(
            query,
            req.from as i64,
            req.to as i64,
            req.step.as_secs_f64().max(1.0),
        )
        .post()
        .await
        .map_err(|e| format!("{query}: {}", super::classify(&e).1))?;
    match r.into_inner().0 {
        Data::Matrix(m) => Ok(m),
        _ => Err(format!("{query}: not a range result")),
    }
}

/// The scenario's YAML quoting of a string.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// Reads the sensors over the range and writes the scenario and its recordings into `dir`.
pub async fn record(
    catalog: &Catalog,
    settings: &PromSettings,
    req: &ReplayRequest,
    dir: &Path,
) -> Result<Saved, String> {
    let client = settings.client()?;
    let svc = catalog
        .services
        .get(&req.service)
        .ok_or_else(|| format!("no service `{}`", req.service))?;
    std::fs::create_dir_all(dir.join("recordings")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tag = format!("{}-{}", req.service, req.environment);
    let mut objectives = String::new();
    let mut skipped = Vec::new();
    let mut series = 0;
    let (mut stable_rate, mut stable_errors, mut canary_errors) = (None, None, None);
    for o in &svc.objectives {
        let Some(sensor) = catalog.sensors.get(&o.sensor) else {
            continue;
        };
        match &sensor.source {
            SensorSource::Counter(c) => {
                let sel = promql::identity_selector(&c.selector).map_err(|e| e.message)?;
                let data = range(&client, &selector(&sel, req, &c.metric), req).await?;
                series += data.len();
                let file = format!("recordings/{tag}-{}.json", o.name);
                std::fs::write(dir.join(&file), export_json(&data)).map_err(|e| e.to_string())?;
                // the releases' error rates over the range, for the simulated environments
                let rel = |r: &str| promql::quote(r);
                let arm = |r: &str| format!("{}={}", sel.identity.release, rel(r));
                let _ = writeln!(
                    objectives,
                    "    {}:\n      export: {}\n      bad: {}\n      canary: {{match: {}}}\n      stable: {{match: {}}}",
                    o.name,
                    q(&file),
                    q(&c.bad),
                    q(&arm(&req.canary)),
                    q(&arm(&req.stable))
                );
                let bad = promql::SeriesFilter::new(&promql::parse_matchers(&c.bad).map_err(|e| e.message)?)
                    .map_err(|e| e.message)?;
                let mut sums: BTreeMap<(bool, bool), f64> = BTreeMap::new();
                for rv in &data {
                    let Some(release) = rv.metric().get(&sel.identity.release) else {
                        continue;
                    };
                    let values: Vec<f64> = rv.samples().iter().map(|s| s.value()).collect();
                    let grown = growth(&values);
                    let is_bad = bad.matches(|l| rv.metric().get(l).map(String::as_str));
                    *sums.entry((release == &req.canary, is_bad)).or_default() += grown;
                }
                let total = |canary: bool| {
                    sums.get(&(canary, false)).copied().unwrap_or(0.0)
                        + sums.get(&(canary, true)).copied().unwrap_or(0.0)
                };
                let share = |canary: bool| {
                    let t = total(canary);
                    (t > 0.0).then(|| sums.get(&(canary, true)).copied().unwrap_or(0.0) / t)
                };
                stable_rate = stable_rate.or(Some(total(false) / (req.to - req.from).max(1) as f64));
                stable_errors = stable_errors.or(share(false));
                canary_errors = canary_errors.or(share(true));
            }
            SensorSource::Histogram(h) => {
                let Target::Latency { threshold, .. } = o.target else {
                    continue;
                };
                let sel = promql::identity_selector(&h.selector).map_err(|e| e.message)?;
                let count = range(&client, &selector(&sel, req, &format!("{}_count", h.metric)), req).await?;
                let buckets = range(
                    &client,
                    &selector(&sel, req, &format!("{}_bucket", h.metric)),
                    req,
                )
                .await?;
                series += count.len() + buckets.len();
                let t = h.unit.convert(threshold);
                let bounds: Vec<f64> = buckets
                    .iter()
                    .filter_map(|b| b.metric().get("le")?.parse().ok())
                    .collect();
                let Some(le) = bucket_for(&bounds, t) else {
                    skipped.push(format!("{}: no bucket at or below {threshold}", o.name));
                    continue;
                };
                let mut files = Vec::new();
                for release in [&req.canary, &req.stable] {
                    let of = |set: &[RangeVector], at_le: bool| -> Vec<crate::sim::replay::Labelled> {
                        set.iter()
                            .filter(|rv| rv.metric().get(&sel.identity.release) == Some(release))
                            .filter(|rv| {
                                !at_le
                                    || rv
                                        .metric()
                                        .get("le")
                                        .and_then(|v| v.parse::<f64>().ok())
                                        .is_some_and(|b| (b - le).abs() <= 1e-9 * le.abs().max(1.0))
                            })
                            .map(|rv| crate::sim::replay::Labelled {
                                labels: rv.metric().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                                points: rv
                                    .samples()
                                    .iter()
                                    .map(|s| ((s.timestamp() * 1000.0).round() as u64, s.value()))
                                    .collect(),
                            })
                            .collect()
                    };
                    let totals = of(&count, false);
                    let goods = of(&buckets, true);
                    let tr: Vec<&_> = totals.iter().collect();
                    let gr: Vec<&_> = goods.iter().collect();
                    let at = crate::sim::replay::timestamps(&tr);
                    let total = crate::sim::replay::sum_at(&tr, &at);
                    let good = crate::sim::replay::sum_at(&gr, &at);
                    let bad: Vec<(u64, f64)> = total
                        .iter()
                        .zip(&good)
                        .map(|(t, g)| (t.0, (t.1 - g.1).max(0.0)))
                        .collect();
                    for (what, points) in [("bad", bad), ("total", total)] {
                        let file = format!("recordings/{tag}-{}-{release}-{what}.json", o.name);
                        let values: Vec<serde_json::Value> = points
                            .iter()
                            .map(|(ts, v)| serde_json::json!([*ts as f64 / 1000.0, v.to_string()]))
                            .collect();
                        let json = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}});
                        std::fs::write(dir.join(&file), json.to_string()).map_err(|e| e.to_string())?;
                        files.push(file);
                    }
                }
                let _ = writeln!(
                    objectives,
                    "    {}:\n      canary: {{bad: {}, total: {}}}\n      stable: {{bad: {}, total: {}}}",
                    o.name,
                    q(&files[0]),
                    q(&files[1]),
                    q(&files[2]),
                    q(&files[3])
                );
            }
            SensorSource::Prometheus(_) => {
                skipped.push(format!("{}: free PromQL templates are not replayed", o.name))
            }
            SensorSource::Proxy(_) => skipped.push(format!(
                "{}: the proxy's own counters are not in Prometheus",
                o.name
            )),
        }
    }
    if objectives.is_empty() {
        return Err(format!(
            "nothing of {} can be replayed from Prometheus ({})",
            req.service,
            skipped.join("; ")
        ));
    }
    let pct = |x: Option<f64>| format!("{:.4}%", 100.0 * x.unwrap_or(0.0));
    let specs: Vec<String> = req.specs.iter().map(|p| q(&p.display().to_string())).collect();
    let start = crate::control::time::Time::from_secs(req.from);
    let length = req.to.saturating_sub(req.from);
    let mut yaml = format!(
        "# Replayed from Prometheus {url}: {service} in {env}, canary {canary} over stable {stable},\n\
         # {from} to {to}. Written by `autopilot replay`; edit and rerun with `autopilot simulate`.\n\
         apiVersion: autopilot/v1\nkind: Simulation\nname: {name}\n\
         description: {desc}\nspecs: [{specs}]\nservice: {service}\nseed: 1\n\
         start: {start}\n\
         # time for the environments before {env} (simulated), then the recording\n\
         duration: {duration}s\n\
         traffic: {{rate: {rate}}}\nstable: {{name: {stable_q}, errors: {stable_errors}}}\n\
         releases:\n  - {{name: {canary_q}, pushedAt: 1s, errors: {canary_errors}}}\n\
         replay:\n  environment: {env}\n  objectives:\n{objectives}",
        url = settings.url,
        service = req.service,
        env = req.environment,
        canary = req.canary,
        stable = req.stable,
        from = start,
        to = crate::control::time::Time::from_secs(req.to),
        name = q(&format!("replay-{tag}")),
        desc = q(&format!(
            "{} in {} replayed from Prometheus",
            req.service, req.environment
        )),
        specs = specs.join(", "),
        start = start,
        duration = length + 6 * 3600,
        rate = stable_rate
            .filter(|r| *r > 0.0)
            .map_or("10".to_owned(), |r| format!("{r:.3}")),
        stable_q = q(&req.stable),
        canary_q = q(&req.canary),
        stable_errors = pct(stable_errors),
        canary_errors = pct(canary_errors),
    );
    if let Some(outcome) = &req.expect {
        let _ = writeln!(
            yaml,
            "expect:\n  - {{release: {}, environment: {}, outcome: {outcome}}}",
            q(&req.canary),
            req.environment
        );
    }
    let scenario = dir.join(format!("replay-{tag}.yaml"));
    std::fs::write(&scenario, yaml).map_err(|e| format!("{}: {e}", scenario.display()))?;
    Ok(Saved {
        scenario,
        skipped,
        series,
    })
}

/// How much a counter grew over its samples, resets included.
fn growth(values: &[f64]) -> f64 {
    let mut g = 0.0;
    for w in values.windows(2) {
        g += if w[1] >= w[0] { w[1] - w[0] } else { w[1] };
    }
    g
}

//! The sensor library: named ways to count *bad* and *total* events for one service,
//! environment and release. A sensor is a Prometheus counter with a matcher for its bad
//! series, a latency histogram (requests slower than the objective's threshold, by bucket
//! arithmetic), a pair of free PromQL templates, or one of the proxy's own counters.
//!
//! Templates are checked here for their variables only; turning them into queries is the
//! Prometheus adapter's job.

use super::yaml::recover_vec;
use super::{ApiVersion, MissingData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A file of sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "autopilot sensor library")]
pub struct SensorLibrary {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Sensors` for a sensor library.
    pub kind: SensorsKind,
    /// The sensors; names are unique across all sensor files.
    #[serde(deserialize_with = "recover_vec")]
    pub sensors: Vec<Sensor>,
}

/// The `kind` of a sensor library file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SensorsKind {
    Sensors,
}

/// One named sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sensor {
    /// The name objectives use to pick this sensor (letters, digits, `.`, `-`, `_`).
    pub name: String,
    /// What this sensor counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the counts come from.
    pub source: SensorSource,
    /// What a gap in this sensor's data means, unless the objective says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_data: Option<MissingData>,
}

/// Where a sensor's counts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SensorSource {
    /// A Prometheus counter of events, some of them bad (e.g. `http_requests_total` with
    /// `code=~"5.."`). Read for every service, environment and release in one query per tick.
    Counter(CounterSensor),
    /// Two PromQL templates that each return one number: bad events and all events. Variables:
    /// `{{service}}`, `{{environment}}`, `{{release}}`, `{{window}}` (time since the rollout
    /// started, as a PromQL duration). Any PromQL works, at a price: one query per release
    /// and arm each tick (prefer `counter` or `histogram`, which batch).
    Prometheus(PromQueries),
    /// A Prometheus latency histogram: bad = requests slower than the objective's threshold,
    /// computed as `_count` minus the `_bucket` at the threshold.
    Histogram(Histogram),
    /// The autopilot proxy's own per-release counters (no Prometheus needed).
    Proxy(ProxySignal),
}

/// A counter of events, and which of its series count bad ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CounterSensor {
    /// The counter's name, e.g. `http_requests_total`.
    pub metric: String,
    /// The label matchers that select one service, environment and release, as a template: each
    /// of `{{service}}`, `{{environment}}` and `{{release}}` once, as a label's whole value (e.g.
    /// `service="{{service}}",env="{{environment}}",version="{{release}}",job="web"`).
    pub selector: String,
    /// The label matchers that pick the bad events among them, e.g. `code=~"5.."`.
    pub bad: String,
}

/// A pair of PromQL templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromQueries {
    /// PromQL counting bad events, e.g. 5xx responses.
    pub bad: String,
    /// PromQL counting all events.
    pub total: String,
}

/// A Prometheus histogram of latencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Histogram {
    /// The histogram's base name, without `_bucket` / `_count`
    /// (e.g. `http_request_duration_seconds`).
    pub metric: String,
    /// The label matchers that select one service, environment and release, as a template
    /// (e.g. `service="{{service}}",env="{{environment}}",version="{{release}}"`).
    pub selector: String,
    /// The unit of the histogram's `le` bounds.
    #[serde(default)]
    pub unit: HistogramUnit,
    /// The histogram's bucket bounds (in `unit`), if known: an objective's latency threshold
    /// must then be one of them, since Prometheus cannot count between buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
}

/// Unit of histogram bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HistogramUnit {
    #[default]
    Seconds,
    Milliseconds,
}

impl HistogramUnit {
    /// A latency threshold in this unit (e.g. 300 ms → 0.3 for seconds).
    pub fn convert(&self, d: super::units::Duration) -> f64 {
        match self {
            HistogramUnit::Seconds => d.as_secs_f64(),
            HistogramUnit::Milliseconds => d.as_secs_f64() * 1000.0,
        }
    }
}

impl HistogramUnit {
    pub fn name(&self) -> &'static str {
        match self {
            HistogramUnit::Seconds => "seconds",
            HistogramUnit::Milliseconds => "milliseconds",
        }
    }
}

/// The bucket bound a latency threshold is counted at: the threshold itself if it is a bound,
/// else the largest bound below it (stricter than asked: a request between the two counts as
/// slow). `None` when every bound lies above the threshold.
pub fn bucket_for(buckets: &[f64], threshold: f64) -> Option<f64> {
    let eps = 1e-9 * threshold.abs().max(1.0);
    buckets
        .iter()
        .copied()
        .filter(|b| *b <= threshold + eps)
        .fold(None, |best: Option<f64>, b| Some(best.map_or(b, |x| x.max(b))))
        .map(|b| {
            if (b - threshold).abs() <= eps {
                threshold
            } else {
                b
            }
        })
}

/// The proxy's built-in counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProxySignal {
    /// Bad = 5xx responses and upstream failures; total = all requests.
    Errors,
    /// Bad = requests slower than the objective's latency threshold; total = all requests.
    Latency,
}

/// The variables a template may use, and which sources allow them.
pub const TEMPLATE_VARIABLES: [&str; 4] = ["service", "environment", "release", "window"];

/// What a sensor measures, which decides which targets it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measures {
    /// A share of bad events (errors): serves `< x%` / `> x%` targets.
    Ratio,
    /// Latency: serves `pNN < duration` targets.
    Latency,
}

impl SensorSource {
    pub fn measures(&self) -> Measures {
        match self {
            SensorSource::Counter(_)
            | SensorSource::Prometheus(_)
            | SensorSource::Proxy(ProxySignal::Errors) => Measures::Ratio,
            SensorSource::Histogram(_) | SensorSource::Proxy(ProxySignal::Latency) => Measures::Latency,
        }
    }
}

/// Finds `{{name}}` placeholders; returns the names, or where the braces go wrong.
pub fn template_variables(template: &str) -> Result<Vec<(usize, String)>, (usize, String)> {
    let mut out = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err((offset + start, "`{{` is never closed with `}}`".into()));
        };
        let name = after[..end].trim();
        out.push((offset + start, name.to_owned()));
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if let Some(pos) = rest.find("}}") {
        return Err((offset + pos, "`}}` without an opening `{{`".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_variables_are_found_and_braces_checked() {
        let vars = template_variables(r#"sum(x{a="{{service}}",b="{{ release }}"}[{{window}}])"#).unwrap();
        let names: Vec<_> = vars.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["service", "release", "window"]);
        assert!(template_variables("x{{service").is_err());
        assert!(template_variables("x}}").is_err());
        // PromQL's own braces are not placeholders
        assert!(template_variables(r#"up{job="a"}"#).unwrap().is_empty());
    }
}

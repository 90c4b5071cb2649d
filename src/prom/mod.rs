//! The Prometheus sensors: the [`Sensors`] port on a real Prometheus.
//!
//! **One query per sensor per tick.** Every rollout that uses a `counter` or `histogram` sensor
//! is served by one query: the sensor's selector with its `{{service}}`, `{{environment}}` and
//! `{{release}}` labels matched against every value in play (`service=~"checkout|payments"`),
//! and the answer grouped here by those labels. (Free `prometheus:` templates are any PromQL
//! and cannot be merged: they cost a query per release and arm, and `sensors check` says so.)
//!
//! **Counts since the rollout began, from raw samples.** Each query is a range selector over
//! the last few scrapes (`metric{…}[W]`), so every raw sample arrives here with its timestamp.
//! Per series this adapter keeps a reset-adjusted counter, as Prometheus' `increase()` does —
//! a sample below the previous one means the process restarted, and its value is what it
//! counted since — but without `increase()`'s extrapolation to the window's edges, so 120
//! requests read back as exactly 120. The count at the rollout's start comes from one
//! instant query at that moment (`metric{…} @ start`) when a rollout is first seen (after a
//! restart, too): a series that did not exist then (the canary's own) counted from zero.
//! Why not `increase(metric[since start])` on every tick: it extrapolates (non-integer
//! counts that are not what was served), its window differs per rollout (no batching), and it
//! silently spans gaps. Limits: a reset *and* a climb past the old value between two scrapes
//! is invisible (to Prometheus too); a series idle for more than Prometheus' 5-minute lookback
//! at the rollout's start counts from zero.
//!
//! **Missing data is explicit** ([`Missing`]): no matching series, a stale series, a scrape
//! gap (the newest sample older than three scrape intervals), a counter reset (that tick), NaN,
//! Prometheus unreachable, timed out or answering an error. Never zero.

pub mod check;
pub mod file_sd;
pub mod replay;
pub mod server;

use crate::control::judge::{Counts, Missing, Reading};
use crate::control::plan::PlanSpec;
use crate::control::ports::{Readings, Sensors};
use crate::control::rollout::ServiceState;
use crate::control::time::Time;
use crate::spec::Catalog;
use crate::spec::promql::{self, IdentitySelector, SeriesFilter};
use crate::spec::sensors::{PromQueries, SensorSource, bucket_for};
use crate::spec::units::{Duration, Target};
use prometheus_http_query::response::Data;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

/// `prometheus:` in `autopilot.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromSettings {
    /// Prometheus' base URL, e.g. `http://127.0.0.1:9090` (a path prefix is kept).
    pub url: String,
    /// The environment variable holding a bearer token to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_variable: Option<String>,
    /// Basic auth: a user name, and the environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// A PEM file of CA certificates to trust for an `https` URL (besides the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long one query may take before its sensors count as missing (`timeout`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How often Prometheus scrapes the services: a series whose newest sample is older than
    /// three of these is a scrape gap.
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: Duration,
    /// Where to write Prometheus file-based service discovery (`file_sd_configs`) listing every
    /// running release (relative to the configuration file). None: not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sd: Option<PathBuf>,
}

/// Basic auth for Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// The environment variable holding the password.
    pub password_variable: String,
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_scrape_interval() -> Duration {
    Duration(std::time::Duration::from_secs(15))
}

impl PromSettings {
    /// Settings for a Prometheus at `url`, everything else default.
    pub fn at(url: &str) -> PromSettings {
        PromSettings {
            url: url.to_owned(),
            bearer_token_variable: None,
            basic_auth: None,
            ca_file: None,
            timeout: default_timeout(),
            scrape_interval: default_scrape_interval(),
            file_sd: None,
        }
    }

    /// A Prometheus client with the configured auth, CA and timeout.
    pub fn client(&self) -> Result<prometheus_http_query::Client, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = reqwest::header::HeaderMap::new();
        let var = |name: &str| {
            std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))
        };
        if let Some(v) = &self.bearer_token_variable {
            let value = format!("Bearer {}", var(v)?);
            let mut h = reqwest::header::HeaderValue::from_str(&value).map_err(|e| format!("{v}: {e}"))?;
            h.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, h);
        }
        if let Some(b) = &self.basic_auth {
            use base64::Engine as _;
            let pair = format!("{}:{}", b.username, var(&b.password_variable)?);
            let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
            let mut h = reqwest::header::HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
            h.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, h);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(self.timeout.0)
            .connect_timeout(self.timeout.0);
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| e.to_string())?;
        prometheus_http_query::Client::from(http, &self.url).map_err(|e| format!("{}: {e}", self.url))
    }
}

/// How one (service, objective) is read.
#[derive(Debug, Clone)]
enum ObjectiveRead {
    /// From a batched sensor; `threshold` (in the histogram's unit) for latency.
    Batched { sensor: String, threshold: Option<f64> },
    /// Free templates: a query per arm.
    Templates(PromQueries),
    /// Not a Prometheus sensor (the proxy reads it).
    NotMine,
}

/// A batched sensor, compiled.
#[derive(Debug, Clone)]
struct Batched {
    selector: IdentitySelector,
    kind: BatchedKind,
}

#[derive(Debug, Clone)]
enum BatchedKind {
    Counter {
        metric: String,
        bad: SeriesFilter,
    },
    Histogram {
        metric: String,
        buckets: Option<Vec<f64>>,
    },
}

/// One service's arm: (service, environment, release).
type Arm = (String, String, String);

/// What a series is, decided when it is first seen.
#[derive(Debug, Clone)]
struct SeriesInfo {
    sensor: String,
    arm: Arm,
    role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A counter series: counts towards total, and towards bad if it matches `bad`.
    Counter { bad: bool },
    /// A histogram's `_count`.
    Count,
    /// A histogram's `_bucket` at this bound.
    Bucket(f64),
}

/// A series' reset-adjusted counter.
#[derive(Debug, Clone)]
struct SeriesState {
    info: SeriesInfo,
    last_ts: f64,
    last_raw: f64,
    /// Monotone: the raw value plus every value lost to a reset.
    adjusted: f64,
    /// The newest sample was NaN.
    nan: bool,
    /// A reset was seen in the samples of the current tick.
    reset_now: bool,
    /// In the current tick's answer.
    present: bool,
}

/// What one tick asked of Prometheus, for `sensors check` and the benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryLog {
    pub sensor: String,
    pub promql: String,
    /// Series in the answer (or the error).
    pub outcome: Result<usize, String>,
}

/// The [`Sensors`] port on Prometheus.
pub struct PromSensors {
    client: prometheus_http_query::Client,
    settings: PromSettings,
    reads: HashMap<(String, String), ObjectiveRead>,
    sensors: BTreeMap<String, Batched>,
    series: HashMap<String, SeriesState>,
    /// The series of each (sensor, arm), so an arm's counts never scan every series.
    by_arm: HashMap<(String, Arm), Vec<String>>,
    /// Per (rollout, series): the adjusted value at the rollout's start.
    bases: HashMap<(String, String), f64>,
    /// Per rollout and sensor: raw values at the rollout's start, once fetched.
    starts: HashMap<(String, String), HashMap<String, f64>>,
    last_read_at: Option<Time>,
    waited: std::time::Duration,
    /// Queries sent since this adapter was made.
    pub queries_total: u64,
    /// What the last tick asked.
    pub last_queries: Vec<QueryLog>,
    /// Every arm of the last read: (service, environment, objective, release) → counts or why
    /// not (the reading itself carries one reason, the canary's first).
    pub last_arms: BTreeMap<(String, String, String, String), Result<Counts, Missing>>,
    /// How long the last read took (wall), and of that, waiting for Prometheus.
    pub last_read: (std::time::Duration, std::time::Duration),
}

impl std::fmt::Debug for PromSensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromSensors")
            .field("url", &self.settings.url)
            .finish()
    }
}

/// Why a query failed, as a missing reason and the words for the log.
pub(crate) fn classify(e: &prometheus_http_query::Error) -> (Missing, String) {
    use prometheus_http_query::Error as E;
    let reason = match e {
        E::Prometheus(p) if p.is_timeout() || p.is_canceled() => Missing::Timeout,
        E::Prometheus(_) => Missing::QueryError,
        E::Client(c) => match c.inner() {
            Some(r) if r.is_timeout() => Missing::Timeout,
            Some(r) if r.is_connect() => Missing::Unreachable,
            Some(r) if r.is_status() => Missing::QueryError,
            Some(_) => Missing::Unreachable,
            None => Missing::QueryError,
        },
        _ => Missing::QueryError,
    };
    let mut words = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        words.push_str(": ");
        words.push_str(&s.to_string());
        source = s.source();
    }
    (reason, words)
}

/// A PromQL timestamp (seconds, milliseconds as decimals).
fn promql_time(t: Time) -> String {
    format!("{}.{:03}", t.millis() / 1000, t.millis() % 1000)
}

/// A PromQL duration for a range selector, whole milliseconds.
fn promql_duration(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The ways Prometheus may write a bucket bound (`0.3`, `1`, `1.0`).
fn le_spellings(b: f64) -> Vec<String> {
    let mut v = vec![format!("{b}")];
    if b.fract() == 0.0 {
        v.push(format!("{b:.1}"));
    }
    v
}

/// A series' identity: its name and labels, sorted.
fn series_key(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(k);
        out.push('=');
        out.push_str(&promql::quote(v));
        out.push(',');
    }
    out
}

/// A rollout's identity in this adapter's memory.
fn rollout_key(service: &str, env: &str, release: &str, started: Time) -> String {
    format!("{service}/{env}/{release}@{}", started.millis())
}

/// Every live rollout's arms, per objective.
struct Wanted<'a> {
    service: &'a str,
    env: &'a str,
    objective: &'a str,
    read: &'a ObjectiveRead,
    rollout: String,
    started: Time,
    canary: Arm,
    stable: Option<Arm>,
}

impl PromSensors {
    /// Compiles every Prometheus sensor the catalog's objectives use.
    pub fn new(settings: &PromSettings, catalog: &Catalog) -> Result<PromSensors, String> {
        let client = settings.client()?;
        let mut reads = HashMap::new();
        let mut sensors = BTreeMap::new();
        for (service, s) in &catalog.services {
            for o in &s.objectives {
                let Some(sensor) = catalog.sensors.get(&o.sensor) else {
                    continue;
                };
                let threshold = match o.target {
                    Target::Latency { threshold, .. } => Some(threshold),
                    _ => None,
                };
                let read = match &sensor.source {
                    SensorSource::Counter(c) => {
                        let selector = promql::identity_selector(&c.selector).map_err(|e| e.message)?;
                        let bad = promql::parse_matchers(&c.bad).map_err(|e| e.message)?;
                        let bad = SeriesFilter::new(&bad).map_err(|e| e.message)?;
                        let kind = BatchedKind::Counter {
                            metric: c.metric.clone(),
                            bad,
                        };
                        sensors.insert(o.sensor.clone(), Batched { selector, kind });
                        ObjectiveRead::Batched {
                            sensor: o.sensor.clone(),
                            threshold: None,
                        }
                    }
                    SensorSource::Histogram(h) => {
                        let selector = promql::identity_selector(&h.selector).map_err(|e| e.message)?;
                        let kind = BatchedKind::Histogram {
                            metric: h.metric.clone(),
                            buckets: h.buckets.clone(),
                        };
                        sensors.insert(o.sensor.clone(), Batched { selector, kind });
                        ObjectiveRead::Batched {
                            sensor: o.sensor.clone(),
                            threshold: threshold.map(|t| h.unit.convert(t)),
                        }
                    }
                    SensorSource::Prometheus(q) => ObjectiveRead::Templates(q.clone()),
                    SensorSource::Proxy(_) => ObjectiveRead::NotMine,
                };
                reads.insert((service.clone(), o.name.clone()), read);
            }
        }
        Ok(PromSensors {
            client,
            settings: settings.clone(),
            reads,
            sensors,
            series: HashMap::new(),
            by_arm: HashMap::new(),
            bases: HashMap::new(),
            starts: HashMap::new(),
            last_read_at: None,
            waited: std::time::Duration::ZERO,
            queries_total: 0,
            last_queries: Vec::new(),
            last_read: Default::default(),
            last_arms: BTreeMap::new(),
        })
    }

    /// Whether any objective of the catalog is read here.
    pub fn reads_anything(&self) -> bool {
        self.reads.values().any(|r| !matches!(r, ObjectiveRead::NotMine))
    }

    fn stale_after(&self) -> std::time::Duration {
        self.settings.scrape_interval.0 * 3
    }

    /// The selector for a sensor restricted to these arms (`None`: every release of those
    /// services and environments), and a `le` filter for histograms.
    fn selector(&self, b: &Batched, arms: &BTreeSet<&Arm>, thresholds: &BTreeSet<u64>) -> String {
        let id = &b.selector.identity;
        let mut matchers: Vec<String> = b.selector.fixed.iter().map(|m| m.to_string()).collect();
        let alt = |f: fn(&Arm) -> &str| promql::quote(&promql::alternation(arms.iter().map(|a| f(a))));
        matchers.push(format!("{}=~{}", id.service, alt(|a| &a.0)));
        matchers.push(format!("{}=~{}", id.environment, alt(|a| &a.1)));
        matchers.push(format!("{}=~{}", id.release, alt(|a| &a.2)));
        match &b.kind {
            BatchedKind::Counter { metric, .. } => format!("{metric}{{{}}}", matchers.join(",")),
            BatchedKind::Histogram { metric, buckets } => {
                if let Some(buckets) = buckets {
                    // the bucket each threshold is counted at, and `_count` (which has no `le`)
                    let mut les: BTreeSet<String> = BTreeSet::new();
                    for t in thresholds {
                        if let Some(b) = bucket_for(buckets, f64::from_bits(*t)) {
                            les.extend(le_spellings(b));
                        }
                    }
                    let mut alts: Vec<String> = les
                        .into_iter()
                        .map(|l| promql::alternation([l.as_str()]))
                        .collect();
                    alts.push(String::new());
                    matchers.push(format!("le=~{}", promql::quote(&alts.join("|"))));
                }
                matchers.insert(
                    0,
                    format!(
                        "__name__=~{}",
                        promql::quote(&format!("{}_count|{}_bucket", metric, metric))
                    ),
                );
                format!("{{{}}}", matchers.join(","))
            }
        }
    }

    /// Sends an instant query (POST: the selectors can be long); counts it.
    async fn query(
        &mut self,
        sensor: &str,
        promql_text: String,
        at: Time,
    ) -> Result<Data, (Missing, String)> {
        self.queries_total += 1;
        let timeout_ms = self.settings.timeout.0.as_millis() as i64;
        let asked = std::time::Instant::now();
        let result = self
            .client
            .query(&promql_text)
            .query("time", promql_time(at))
            .timeout(timeout_ms)
            .post()
            .await;
        self.waited += asked.elapsed();
        let outcome = match &result {
            Ok(r) => Ok(match r.data() {
                Data::Vector(v) => v.len(),
                Data::Matrix(m) => m.len(),
                _ => 0,
            }),
            Err(e) => Err(classify(e).1),
        };
        self.last_queries.push(QueryLog {
            sensor: sensor.to_owned(),
            promql: promql_text,
            outcome,
        });
        match result {
            Ok(r) => Ok(r.into_inner().0),
            Err(e) => {
                let (why, words) = classify(&e);
                tracing::warn!(sensor, reason = %why, "prometheus: {words}");
                Err((why, words))
            }
        }
    }

    /// Decides what a newly seen series is; `None` if it is none of ours.
    fn describe(&self, sensor: &str, b: &Batched, labels: &HashMap<String, String>) -> Option<SeriesInfo> {
        let id = &b.selector.identity;
        let arm = (
            labels.get(&id.service)?.clone(),
            labels.get(&id.environment)?.clone(),
            labels.get(&id.release)?.clone(),
        );
        let role = match &b.kind {
            BatchedKind::Counter { bad, .. } => Role::Counter {
                bad: bad.matches(|l| labels.get(l).map(String::as_str)),
            },
            BatchedKind::Histogram { metric, .. } => {
                let name = labels.get("__name__")?;
                if name == &format!("{metric}_count") {
                    Role::Count
                } else {
                    let le: f64 = labels.get("le")?.parse().ok()?;
                    Role::Bucket(le)
                }
            }
        };
        Some(SeriesInfo {
            sensor: sensor.to_owned(),
            arm,
            role,
        })
    }

    /// Folds a range query's raw samples into the series' adjusted counters.
    fn absorb(&mut self, sensor: &str, data: Data, wanted: &BTreeSet<&Arm>) {
        let Some(b) = self.sensors.get(sensor).cloned() else {
            return;
        };
        let Data::Matrix(matrix) = data else { return };
        for rv in matrix {
            let (labels, samples) = rv.into_inner();
            let key = series_key(&labels);
            if !self.series.contains_key(&key) {
                // the label regexes match their cross product: keep only the arms asked for
                let Some(info) = self
                    .describe(sensor, &b, &labels)
                    .filter(|i| wanted.contains(&i.arm))
                else {
                    continue;
                };
                let Some(first) = samples.iter().find(|s| s.value().is_finite()) else {
                    continue;
                };
                let state = SeriesState {
                    info,
                    last_ts: first.timestamp(),
                    last_raw: first.value(),
                    adjusted: first.value(),
                    nan: false,
                    reset_now: false,
                    present: false,
                };
                self.by_arm
                    .entry((state.info.sensor.clone(), state.info.arm.clone()))
                    .or_default()
                    .push(key.clone());
                self.series.insert(key.clone(), state);
            }
            let Some(state) = self.series.get_mut(&key) else {
                continue;
            };
            state.present = true;
            for s in &samples {
                if s.timestamp() <= state.last_ts {
                    continue;
                }
                state.last_ts = s.timestamp();
                let v = s.value();
                if !v.is_finite() {
                    state.nan = true;
                    continue;
                }
                state.nan = false;
                if v >= state.last_raw {
                    state.adjusted += v - state.last_raw;
                } else {
                    state.reset_now = true;
                    state.adjusted += v;
                }
                state.last_raw = v;
            }
        }
    }

    /// Fetches the raw values at each new rollout's start, one query per sensor.
    async fn fetch_starts(&mut self, wanted: &[Wanted<'_>]) -> HashMap<String, (Missing, String)> {
        let mut failed = HashMap::new();
        // per sensor: the new rollouts, each with its start and arms
        let mut per_sensor: BTreeMap<String, Vec<(&Wanted<'_>, BTreeSet<&Arm>)>> = BTreeMap::new();
        let mut queued: HashSet<(&str, &str)> = HashSet::new();
        for w in wanted {
            let ObjectiveRead::Batched { sensor, .. } = w.read else {
                continue;
            };
            if self.starts.contains_key(&(w.rollout.clone(), sensor.clone())) {
                continue;
            }
            if !queued.insert((sensor.as_str(), w.rollout.as_str())) {
                continue;
            }
            let entry = per_sensor.entry(sensor.clone()).or_default();
            let arms: BTreeSet<&Arm> = std::iter::once(&w.canary).chain(w.stable.as_ref()).collect();
            entry.push((w, arms));
        }
        for (sensor, rollouts) in per_sensor {
            let Some(b) = self.sensors.get(&sensor).cloned() else {
                continue;
            };
            let thresholds = self.thresholds(&sensor, wanted);
            let parts: Vec<String> = rollouts
                .iter()
                .map(|(w, arms)| {
                    format!(
                        "({} @ {})",
                        self.selector(&b, arms, &thresholds),
                        promql_time(w.started)
                    )
                })
                .collect();
            let now = self.last_read_at.unwrap_or(Time::ZERO);
            match self.query(&sensor, parts.join(" or "), now).await {
                Ok(Data::Vector(v)) => {
                    let rollout_of: HashMap<&Arm, &str> = rollouts
                        .iter()
                        .flat_map(|(w, arms)| arms.iter().map(move |a| (*a, w.rollout.as_str())))
                        .collect();
                    let mut by_rollout: HashMap<String, HashMap<String, f64>> = HashMap::new();
                    for iv in v {
                        let (labels, sample) = iv.into_inner();
                        let Some(info) = self.describe(&sensor, &b, &labels) else {
                            continue;
                        };
                        if let Some(rollout) = rollout_of.get(&info.arm) {
                            by_rollout
                                .entry((*rollout).to_owned())
                                .or_default()
                                .insert(series_key(&labels), sample.value());
                        }
                    }
                    for (w, _) in &rollouts {
                        let values = by_rollout.remove(&w.rollout).unwrap_or_default();
                        self.starts.insert((w.rollout.clone(), sensor.clone()), values);
                    }
                }
                Ok(_) => {
                    failed.insert(
                        sensor.clone(),
                        (Missing::QueryError, "not an instant vector".into()),
                    );
                }
                Err(e) => {
                    failed.insert(sensor.clone(), e);
                }
            }
        }
        failed
    }

    /// The latency thresholds in use for a histogram sensor (as bits, to sort and dedup).
    fn thresholds(&self, sensor: &str, wanted: &[Wanted<'_>]) -> BTreeSet<u64> {
        wanted
            .iter()
            .filter_map(|w| match w.read {
                ObjectiveRead::Batched { sensor: s, threshold } if s == sensor => threshold.map(f64::to_bits),
                _ => None,
            })
            .collect()
    }

    /// Counts of one arm since its rollout began, or why not.
    fn arm_counts(
        &mut self,
        w: &Wanted<'_>,
        arm: &Arm,
        sensor: &str,
        threshold: Option<f64>,
        now: Time,
    ) -> Result<Counts, Missing> {
        let now_s = now.millis() as f64 / 1000.0;
        let stale_after = self.stale_after().as_secs_f64();
        let keys: Vec<String> = self
            .by_arm
            .get(&(sensor.to_owned(), arm.clone()))
            .cloned()
            .unwrap_or_default();
        let bucket = match threshold {
            Some(t) => {
                let bounds: Vec<f64> = keys
                    .iter()
                    .filter_map(|k| match self.series[k].info.role {
                        Role::Bucket(le) => Some(le),
                        _ => None,
                    })
                    .collect();
                bucket_for(&bounds, t)
            }
            None => None,
        };
        let counted = |role: Role| match role {
            Role::Counter { .. } | Role::Count => true,
            Role::Bucket(le) => bucket.is_some_and(|b| (b - le).abs() <= 1e-9 * b.abs().max(1.0)),
        };
        let totals: Vec<&String> = keys
            .iter()
            .filter(|k| matches!(self.series[*k].info.role, Role::Counter { .. } | Role::Count))
            .collect();
        if totals.is_empty() {
            return Err(Missing::NoSeries);
        }
        if threshold.is_some() && bucket.is_none() {
            return Err(Missing::NoSeries);
        }
        let present: Vec<&SeriesState> = keys
            .iter()
            .map(|k| &self.series[k])
            .filter(|s| s.present && counted(s.info.role))
            .collect();
        if present.is_empty() {
            return Err(Missing::Stale);
        }
        if present.iter().any(|s| s.nan) {
            return Err(Missing::NotANumber);
        }
        if present.iter().any(|s| s.reset_now) {
            // counts go on from the restart; this tick's are short by what was lost
            return Err(Missing::CounterReset);
        }
        let newest = present.iter().map(|s| s.last_ts).fold(f64::MIN, f64::max);
        if now_s - newest > stale_after {
            return Err(Missing::ScrapeGap);
        }
        let start_values = self.starts.get(&(w.rollout.clone(), sensor.to_owned()));
        let (mut total, mut bad, mut good) = (0.0, 0.0, 0.0);
        for k in &keys {
            let s = &self.series[k];
            if !counted(s.info.role) {
                continue;
            }
            let base = *self
                .bases
                .entry((w.rollout.clone(), k.clone()))
                .or_insert_with(|| {
                    let raw_then = start_values.and_then(|m| m.get(k)).copied().unwrap_or(0.0);
                    let since = if s.last_raw >= raw_then {
                        s.last_raw - raw_then
                    } else {
                        s.last_raw
                    };
                    s.adjusted - since
                });
            let n = (s.adjusted - base).max(0.0);
            match s.info.role {
                Role::Counter { bad: is_bad } => {
                    total += n;
                    if is_bad {
                        bad += n;
                    }
                }
                Role::Count => total += n,
                Role::Bucket(_) => good += n,
            }
        }
        if threshold.is_some() {
            bad = (total - good).max(0.0);
        }
        let total = total.round() as u64;
        Ok(Counts::new((bad.round() as u64).min(total), total))
    }

    /// Reads a free-template sensor for one arm: two queries.
    async fn template_counts(
        &mut self,
        q: &PromQueries,
        w: &Wanted<'_>,
        arm: &Arm,
        now: Time,
    ) -> Result<Counts, Missing> {
        let window = now.since(w.started).max(std::time::Duration::from_secs(1));
        let render = |t: &str| {
            t.replace("{{service}}", &arm.0)
                .replace("{{ service }}", &arm.0)
                .replace("{{environment}}", &arm.1)
                .replace("{{ environment }}", &arm.1)
                .replace("{{release}}", &arm.2)
                .replace("{{ release }}", &arm.2)
                .replace("{{window}}", &promql_duration(window))
                .replace("{{ window }}", &promql_duration(window))
        };
        // total first: with no total there is no data; with a total, an empty `bad` answer is
        // PromQL's `sum` over no bad series — zero bad events
        let mut values = [0.0; 2];
        for (i, t) in [(1, &q.total), (0, &q.bad)] {
            let data = self.query(w.objective, render(t), now).await.map_err(|e| e.0)?;
            let v = match data {
                Data::Vector(v) if v.is_empty() && i == 1 => return Err(Missing::NoSeries),
                Data::Vector(v) => v.iter().map(|x| x.sample().value()).sum::<f64>(),
                Data::Scalar(s) => s.value(),
                _ => return Err(Missing::QueryError),
            };
            if !v.is_finite() {
                return Err(Missing::NotANumber);
            }
            values[i] = v.max(0.0);
        }
        let total = values[1].round() as u64;
        Ok(Counts::new((values[0].round() as u64).min(total), total))
    }
}

impl Sensors for PromSensors {
    async fn read(
        &mut self,
        services: &[(&PlanSpec, &ServiceState)],
        now: Time,
    ) -> BTreeMap<String, Readings> {
        self.last_queries.clear();
        self.last_arms.clear();
        let began = std::time::Instant::now();
        self.waited = std::time::Duration::ZERO;
        let reads = std::mem::take(&mut self.reads);
        let mut wanted = Vec::new();
        for (spec, state) in services {
            for env in &spec.environments {
                let Some(st) = state.environments.get(&env.name) else {
                    continue;
                };
                let Some(r) = st.rollout.as_ref().filter(|r| !r.phase.is_finished()) else {
                    continue;
                };
                for o in &env.objectives {
                    let Some(read) = reads.get(&(spec.service.clone(), o.name.clone())) else {
                        continue;
                    };
                    if matches!(read, ObjectiveRead::NotMine) {
                        continue;
                    }
                    let arm = |release: &str| (spec.service.clone(), env.name.clone(), release.to_owned());
                    wanted.push(Wanted {
                        service: &spec.service,
                        env: &env.name,
                        objective: &o.name,
                        read,
                        rollout: rollout_key(&spec.service, &env.name, &r.release, r.started_at),
                        started: r.started_at,
                        canary: arm(&r.release),
                        stable: st.stable.as_deref().filter(|s| *s != r.release).map(arm),
                    });
                }
            }
        }
        let since_last = self
            .last_read_at
            .map_or(std::time::Duration::ZERO, |t| now.since(t));
        self.last_read_at = Some(now);
        // the window reaches back past the last read and over a scrape gap's threshold
        let window = (self.stale_after() * 2).max(since_last + self.settings.scrape_interval.0);
        let window = window.min(std::time::Duration::from_secs(600));

        for s in self.series.values_mut() {
            s.present = false;
            s.reset_now = false;
        }
        // one query per batched sensor, serving every rollout that uses it
        let mut failed: HashMap<String, (Missing, String)> = HashMap::new();
        let by_sensor: BTreeMap<String, BTreeSet<&Arm>> = wanted.iter().fold(BTreeMap::new(), |mut m, w| {
            if let ObjectiveRead::Batched { sensor, .. } = w.read {
                let e: &mut BTreeSet<&Arm> = m.entry(sensor.clone()).or_default();
                e.insert(&w.canary);
                if let Some(s) = &w.stable {
                    e.insert(s);
                }
            }
            m
        });
        for (sensor, arms) in &by_sensor {
            let Some(b) = self.sensors.get(sensor).cloned() else {
                continue;
            };
            let thresholds = self.thresholds(sensor, &wanted);
            let q = format!(
                "{}[{}]",
                self.selector(&b, arms, &thresholds),
                promql_duration(window)
            );
            match self.query(sensor, q, now).await {
                Ok(data) => self.absorb(sensor, data, arms),
                Err(e) => {
                    failed.insert(sensor.clone(), e);
                }
            }
        }
        // the values at each new rollout's start
        for (sensor, e) in self.fetch_starts(&wanted).await {
            failed.entry(sensor).or_insert(e);
        }

        let mut out: BTreeMap<String, Readings> = BTreeMap::new();
        for w in &wanted {
            let arm_reading = |this: &mut Self, arm: &Arm| -> Result<Counts, Missing> {
                match w.read {
                    ObjectiveRead::Batched { sensor, threshold } => {
                        if let Some((why, _)) = failed.get(sensor) {
                            return Err(*why);
                        }
                        if !this.starts.contains_key(&(w.rollout.clone(), sensor.clone())) {
                            return Err(Missing::QueryError);
                        }
                        this.arm_counts(w, arm, sensor, *threshold, now)
                    }
                    _ => Err(Missing::Unsupported),
                }
            };
            let (canary, stable) = match w.read {
                ObjectiveRead::Templates(q) => {
                    let c = self.template_counts(q, w, &w.canary, now).await;
                    let s = match &w.stable {
                        Some(a) => Some(self.template_counts(q, w, a, now).await),
                        None => None,
                    };
                    (c, s)
                }
                _ => {
                    let c = arm_reading(self, &w.canary);
                    let s = w.stable.as_ref().map(|a| arm_reading(self, a));
                    (c, s)
                }
            };
            let key = |arm: &Arm| {
                (
                    arm.0.clone(),
                    arm.1.clone(),
                    w.objective.to_owned(),
                    arm.2.clone(),
                )
            };
            self.last_arms.insert(key(&w.canary), canary);
            if let (Some(a), Some(s)) = (&w.stable, &stable) {
                self.last_arms.insert(key(a), *s);
            }
            let missing = canary
                .as_ref()
                .err()
                .or(stable.as_ref().and_then(|s| s.as_ref().err()))
                .copied();
            let reading = Reading {
                canary: canary.ok(),
                stable: stable.and_then(Result::ok),
                missing,
            };
            out.entry(w.service.to_owned())
                .or_default()
                .insert((w.env.to_owned(), w.objective.to_owned()), reading);
        }

        // forget rollouts that ended, and series no live rollout reads
        let live: HashSet<&str> = wanted.iter().map(|w| w.rollout.as_str()).collect();
        self.bases.retain(|(r, _), _| live.contains(r.as_str()));
        self.starts.retain(|(r, _), _| live.contains(r.as_str()));
        let arms: HashSet<(&str, &Arm)> = wanted
            .iter()
            .filter_map(|w| match w.read {
                ObjectiveRead::Batched { sensor, .. } => Some((sensor.as_str(), w)),
                _ => None,
            })
            .flat_map(|(s, w)| std::iter::once((s, &w.canary)).chain(w.stable.as_ref().map(|a| (s, a))))
            .collect();
        self.series
            .retain(|_, s| arms.contains(&(s.info.sensor.as_str(), &s.info.arm)));
        self.by_arm
            .retain(|(sensor, arm), _| arms.contains(&(sensor.as_str(), arm)));
        drop(wanted);
        self.reads = reads;
        self.last_read = (began.elapsed(), self.waited);
        out
    }
}

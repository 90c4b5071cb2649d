//! `autopilot bench sensors` (BENCHMARKS.md §3): the control loop at scale, with its sensors
//! served by a real Prometheus.
//!
//! For N services × 3 environments, each with a canary rollout running (stable r1, canary r2)
//! and two objectives (errors from a `counter` sensor, latency from a `histogram` sensor), a
//! separate exporter process serves every series (7 per release and environment, counters
//! growing each second) and a throwaway Prometheus scrapes it every 5 s. The real driver ticks
//! every service: load from SQLite, read the sensors, plan, act on a steady stand-in for the
//! runtime and router, record. Per tick: Prometheus queries, CPU time of this process, wall
//! time, store transactions; and this process' memory after the ticks.
//!
//! The **reference**, measured in the same run: the same services judged through free PromQL
//! templates (`prometheus:` sensors), which cannot be batched — a query per release, arm and
//! counter, which is what reading Prometheus per service costs.
//!
//! Writes `sensors.md` and `sensors.csv` into the output folder.

use autopilot::control::driver;
use autopilot::control::plan::PlanSpec;
use autopilot::control::ports::*;
use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::prom::server::{Exporter, TempPrometheus};
use autopilot::prom::{PromSensors, PromSettings};
use autopilot::spec::units::Weight;
use autopilot::store::SqlStore;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const ENVS: [&str; 3] = ["dev", "staging", "prod"];
const SCRAPE: Duration = Duration::from_secs(5);
const BUCKETS: [&str; 4] = ["0.1", "0.3", "1", "+Inf"];

/// Every series of N services at `t` seconds: counters that grow with time (stable 20
/// requests/s, canary 2/s, 0.5% errors, 3% slower than 300 ms).
pub fn exporter_values(services: usize, t: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for i in 0..services {
        for env in ENVS {
            for (release, rate) in [("r1", 20.0), ("r2", 2.0)] {
                let total = (rate * t).floor();
                let bad = (total * 0.005).floor();
                let l = format!(r#"service="svc-{i:04}",env="{env}",version="{release}""#);
                out.insert(format!(r#"http_requests_total{{{l},code="200"}}"#), total - bad);
                out.insert(format!(r#"http_requests_total{{{l},code="500"}}"#), bad);
                let fast = [0.6, 0.97, 0.995, 1.0];
                for (b, share) in BUCKETS.iter().zip(fast) {
                    out.insert(
                        format!(r#"http_request_duration_seconds_bucket{{{l},le="{b}"}}"#),
                        (total * share).floor(),
                    );
                }
                out.insert(format!("http_request_duration_seconds_count{{{l}}}"), total);
            }
        }
    }
    out
}

/// `autopilot bench exporter`: serves [`exporter_values`] on `listen` until killed.
pub async fn run_exporter(services: usize, listen: std::net::SocketAddr) -> std::io::Result<()> {
    let exporter = Exporter::start_at(listen).await?;
    let started = Instant::now();
    loop {
        exporter.replace(exporter_values(
            services,
            1000.0 + started.elapsed().as_secs_f64(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The sensor library of the benchmark (and of `tests/prometheus.rs`): a counter, a histogram
/// with declared buckets, and the same counter as a free PromQL pair.
pub const SENSORS: &str = include_str!("../../tests/fixtures/prometheus-sensors.yaml");

fn service_yaml(i: usize, batched: bool) -> String {
    let objectives = if batched {
        "  - {name: availability, sensor: http-errors, target: \"< 1%\"}\n  - {name: latency, sensor: http-latency, target: p99 < 300ms}\n"
    } else {
        "  - {name: availability, sensor: http-errors-promql, target: \"< 1%\"}\n"
    };
    format!(
        "apiVersion: autopilot/v1\nkind: Service\nname: svc-{i:04}\nsource: {{repository: https://git.example.com/svc.git}}\n\
         build: {{command: make, artifact: {{files: [bin/app]}}}}\nrun: {{command: bin/app, readiness: /ready}}\n\
         environments: [{{name: dev}}, {{name: staging}}, {{name: prod}}]\ncontroller: progressive\nobjectives:\n{objectives}"
    )
}

/// A runtime and router that report the world exactly as the state says (every release ready,
/// every route as planned) and take every action: the loop's own cost, without processes.
#[derive(Debug, Default)]
struct Steady {
    routes: BTreeMap<String, BTreeMap<String, RouteWeights>>,
}

impl Builder for Steady {
    async fn events(&mut self, _service: &str) -> Result<SourceEvents, PortError> {
        Ok(SourceEvents::default())
    }
    async fn ack(&mut self, _service: &str, _cursor: &str) -> Result<(), PortError> {
        Ok(())
    }
    async fn start_build(
        &mut self,
        _service: &str,
        _commit: &str,
        _skipped: &[String],
    ) -> Result<(), PortError> {
        Ok(())
    }
}

impl Runtime for Steady {
    async fn instances(&mut self, _service: &str) -> Result<Instances, PortError> {
        let ready = Readiness {
            ready: 1,
            desired: 1,
            failed: false,
            reason: None,
        };
        Ok(ENVS
            .iter()
            .flat_map(|e| ["r1", "r2"].map(|r| ((e.to_string(), r.to_owned()), ready.clone())))
            .collect())
    }
    async fn deploy(&mut self, _s: &str, _e: &str, _r: &Release) -> Result<(), PortError> {
        Ok(())
    }
    async fn retire(&mut self, _s: &str, _e: &str, _r: &str) -> Result<(), PortError> {
        Ok(())
    }
}

impl Router for Steady {
    async fn routes(&mut self, service: &str) -> Result<BTreeMap<String, RouteWeights>, PortError> {
        Ok(self.routes.get(service).cloned().unwrap_or_default())
    }
    async fn set_route(&mut self, service: &str, environment: &str, route: &Route) -> Result<(), PortError> {
        self.routes
            .entry(service.to_owned())
            .or_default()
            .insert(environment.to_owned(), route.weights());
        Ok(())
    }
}

fn seeded_state(started: Time) -> ServiceState {
    let mut s = ServiceState::default();
    for id in ["r1", "r2"] {
        s.releases.push(Release {
            id: id.into(),
            commit: format!("c{id}"),
            digest: format!("sha256:{id}"),
        });
    }
    for env in ENVS {
        s.environments.insert(
            env.into(),
            EnvState {
                stable: Some("r1".into()),
                stable_since: Some(Time::ZERO),
                rollout: Some(Rollout {
                    release: "r2".into(),
                    phase: Phase::Canary {
                        step: 0,
                        weight: Weight(10),
                        since: started,
                    },
                    started_at: started,
                    judges: Default::default(),
                    watches: Default::default(),
                    excess_bad: 0.0,
                }),
                blocked: None,
                previous: None,
            },
        );
    }
    s
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    match u {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// A `/proc/self/status` field in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Row {
    pub services: usize,
    pub how: &'static str,
    pub series: usize,
    pub queries_first: u64,
    pub queries_per_tick: f64,
    pub cpu_ms_per_tick: f64,
    pub wall_ms_per_tick: f64,
    /// Of the wall time: reading the sensors, and of that, waiting for Prometheus' answers.
    pub read_ms_per_tick: f64,
    pub prometheus_ms_per_tick: f64,
    pub store_writes_per_tick: usize,
    pub rss_mib: f64,
    pub readings_with_data: usize,
    pub readings: usize,
}

async fn measure(prom: &TempPrometheus, services: usize, batched: bool, ticks: usize) -> Result<Row, String> {
    let mut texts: Vec<(String, String)> = (0..services)
        .map(|i| (format!("svc-{i:04}.yaml"), service_yaml(i, batched)))
        .collect();
    texts.push(("sensors.yaml".into(), SENSORS.into()));
    texts.push((
        "progressive.yaml".into(),
        include_str!("../../controllers/progressive.yaml").into(),
    ));
    let refs: Vec<(&str, &str)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let catalog = autopilot::spec::load_texts(&refs).map_err(|r| r.render_text())?;
    let specs: Vec<PlanSpec> = catalog
        .services
        .keys()
        .filter_map(|s| PlanSpec::resolve(&catalog, s))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut store = SqlStore::open_dir(dir.path()).await.map_err(|e| e.to_string())?;
    // the rollouts began ten minutes ago: the templates' `increase()` windows then hold data
    let started = Time::from_millis(autopilot::clock::wall_clock().millis() - 600_000);
    let mut steady = Steady::default();
    for spec in &specs {
        let state = seeded_state(started);
        let plan = Plan {
            state,
            actions: Vec::new(),
            transitions: Vec::new(),
            evidence: Vec::new(),
            notes: Vec::new(),
            next_check: Time::ZERO,
            consumed: Vec::new(),
        };
        store
            .record(&spec.service, 0, &plan, &[])
            .await
            .map_err(|e| e.to_string())?;
        for env in ENVS {
            let route = Route::decide(Some("r1"), "r2", Weight(10), None);
            steady.set_route(&spec.service, env, &route).await.ok();
        }
    }
    let settings = PromSettings {
        scrape_interval: autopilot::spec::units::Duration(SCRAPE),
        timeout: autopilot::spec::units::Duration(Duration::from_secs(30)),
        ..PromSettings::at(&prom.url())
    };
    let sensors = PromSensors::new(&settings, &catalog)?;
    let mut ports = Ports {
        store: store.clone(),
        sensors,
        builder: Steady::default(),
        runtime: Steady::default(),
        router: steady,
    };
    let mut row = Row {
        services,
        how: if batched {
            "batched (counter + histogram)"
        } else {
            "reference: free PromQL per arm"
        },
        series: 0,
        queries_first: 0,
        queries_per_tick: 0.0,
        cpu_ms_per_tick: 0.0,
        wall_ms_per_tick: 0.0,
        read_ms_per_tick: 0.0,
        prometheus_ms_per_tick: 0.0,
        store_writes_per_tick: 0,
        rss_mib: 0.0,
        readings_with_data: 0,
        readings: 0,
    };
    let (mut cpu, mut wall, mut queries) = (Duration::ZERO, Duration::ZERO, 0u64);
    let (mut read, mut waited) = (Duration::ZERO, Duration::ZERO);
    for t in 0..=ticks {
        let q0 = ports.sensors.queries_total;
        let (c0, w0) = (cpu_time(), Instant::now());
        let results = driver::tick_all(&specs, &mut ports, autopilot::clock::wall_clock()).await;
        let (dc, dw) = (cpu_time().saturating_sub(c0), w0.elapsed());
        let dq = ports.sensors.queries_total - q0;
        let recorded = results.iter().filter(|(_, r)| r.is_ok()).count();
        if let Some((s, Err(e))) = results.iter().find(|(_, r)| r.is_err()) {
            return Err(format!("{s}: {e}"));
        }
        if t == 0 {
            // the first tick also asks for the values at each rollout's start
            row.queries_first = dq;
        } else {
            cpu += dc;
            wall += dw;
            read += ports.sensors.last_read.0;
            waited += ports.sensors.last_read.1;
            queries += dq;
            row.store_writes_per_tick = recorded;
            row.readings = 0;
            row.readings_with_data = 0;
            for (_, r) in &results {
                if let Ok(tick) = r {
                    for reading in tick.observed.readings.values() {
                        row.readings += 1;
                        if reading.canary.is_some() && reading.stable.is_some() {
                            row.readings_with_data += 1;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n = ticks.max(1) as f64;
    row.queries_per_tick = queries as f64 / n;
    row.cpu_ms_per_tick = cpu.as_secs_f64() * 1000.0 / n;
    row.wall_ms_per_tick = wall.as_secs_f64() * 1000.0 / n;
    row.read_ms_per_tick = read.as_secs_f64() * 1000.0 / n;
    row.prometheus_ms_per_tick = waited.as_secs_f64() * 1000.0 / n;
    row.rss_mib = memory_mib("VmRSS:");
    row.series = services * ENVS.len() * 2 * 7;
    store.close().await;
    Ok(row)
}

/// Waits until Prometheus holds every counter series (two scrapes in).
async fn wait_scraped(prom: &TempPrometheus, services: usize) -> Result<(), String> {
    let client = PromSettings::at(&prom.url()).client()?;
    let want = (services * ENVS.len() * 2 * 2) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    loop {
        let r = client.query("count(http_requests_total)").get().await;
        if let Ok(r) = r
            && let Some(v) = r.data().as_vector()
            && v.first().is_some_and(|x| x.sample().value() == want)
        {
            seen += 1;
            if seen >= 2 {
                return Ok(());
            }
            tokio::time::sleep(SCRAPE).await;
            continue;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Prometheus did not scrape {want} series in time: {}",
                prom.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs every size; `exe` is autopilot itself (for the exporter process).
pub async fn run(
    exe: &Path,
    sizes: &[usize],
    reference_up_to: usize,
    ticks: usize,
    out: &Path,
) -> Result<String, String> {
    let mut rows = Vec::new();
    for &n in sizes {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut exporter = std::process::Command::new(exe)
            .args(["bench", "exporter", "--services", &n.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let config = format!(
            "  - job_name: services\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n    scrape_timeout: 4s\n"
        );
        let result = async {
            let prom = TempPrometheus::start(SCRAPE, &config)?;
            wait_scraped(&prom, n).await?;
            let mut out = vec![measure(&prom, n, true, ticks).await?];
            if n <= reference_up_to {
                out.push(measure(&prom, n, false, ticks).await?);
            }
            Ok::<_, String>(out)
        }
        .await;
        let _ = exporter.kill();
        let _ = exporter.wait();
        let measured = result?;
        for r in &measured {
            eprintln!(
                "{} services, {}: {:.1} queries/tick, {:.1} ms CPU, {:.1} ms wall",
                r.services, r.how, r.queries_per_tick, r.cpu_ms_per_tick, r.wall_ms_per_tick
            );
        }
        rows.extend(measured);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Control-loop scale (BENCHMARKS.md §3)\n\nN services × 3 environments, a canary rollout running in each; sensors from a real Prometheus (scrape every 5 s) reading an exporter process; {ticks} ticks after the first, averaged. CPU is this process' (user + system); the exporter and Prometheus run in their own processes.\n"
    );
    let _ = writeln!(
        md,
        "| services | sensors read by | series in Prometheus | queries, first tick | queries / tick | CPU ms / tick | wall ms / tick | of which sensors read | of which Prometheus answering | store transactions / tick | readings with data | RSS MiB |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut csv = String::from(
        "services,how,series,queries_first,queries_per_tick,cpu_ms_per_tick,wall_ms_per_tick,read_ms_per_tick,prometheus_ms_per_tick,store_writes_per_tick,readings_with_data,readings,rss_mib\n",
    );
    for r in &rows {
        // one set of fields for both files; the table rounds, the CSV keeps the precision
        let fields = |digits: usize| {
            [
                r.services.to_string(),
                r.how.to_owned(),
                r.series.to_string(),
                r.queries_first.to_string(),
                format!("{:.0}", r.queries_per_tick),
                format!("{:.*}", digits, r.cpu_ms_per_tick),
                format!("{:.*}", digits, r.wall_ms_per_tick),
                format!("{:.*}", digits, r.read_ms_per_tick),
                format!("{:.*}", digits, r.prometheus_ms_per_tick),
                r.store_writes_per_tick.to_string(),
                r.readings_with_data.to_string(),
                r.readings.to_string(),
                format!("{:.0}", r.rss_mib),
            ]
        };
        let mut table = fields(1).to_vec();
        let total = table.remove(11);
        table[10] = format!("{}/{total}", table[10]);
        let _ = writeln!(md, "| {} |", table.join(" | "));
        let _ = writeln!(csv, "{}", fields(3).join(","));
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("sensors.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("sensors.csv"), &csv).map_err(|e| e.to_string())?;
    Ok(md)
}

//! The Prometheus sensors against a real Prometheus (the Debian package; `scripts/test`
//! installs it), started here on a free loopback port with a 500 ms scrape interval, scraping
//! an exporter whose counters the tests drive. Targets come and go through file-based service
//! discovery, the same file `autopilot up` writes.

use autopilot::clock::wall_clock;
use autopilot::control::judge::{Counts, Missing, Reading};
use autopilot::control::plan::PlanSpec;
use autopilot::control::ports::Sensors;
use autopilot::control::rollout::{EnvState, Phase, Rollout, ServiceState};
use autopilot::control::time::Time;
use autopilot::prom::server::{Exporter, TempPrometheus};
use autopilot::prom::{PromSensors, PromSettings, file_sd};
use autopilot::spec::Catalog;
use autopilot::spec::units::Weight;
use std::time::Duration;

const SCRAPE: Duration = Duration::from_millis(500);
/// The longest any expected reading may take to show (a few scrapes, generously).
const WAIT: Duration = Duration::from_secs(30);

/// The sensor library the benchmark uses too: a counter, a histogram and a free PromQL pair.
const SENSORS: &str = include_str!("fixtures/prometheus-sensors.yaml");

const CONTROLLER: &str = include_str!("../controllers/progressive.yaml");

fn service(name: &str, objectives: &str) -> String {
    format!(
        r#"
apiVersion: autopilot/v1
kind: Service
name: {name}
source:
  repository: https://git.example.com/{name}.git
build:
  command: make
  artifact:
    files: [bin/app]
run:
  command: bin/app
  readiness: /ready
environments:
  - name: prod
controller: progressive
objectives:
{objectives}"#
    )
}

const ERRORS: &str = "  - name: availability\n    sensor: http-errors\n    target: \"< 1%\"\n";
const LATENCY: &str = "  - name: latency\n    sensor: http-latency\n    target: p99 < 300ms\n";

fn catalog(services: &[(&str, &str)]) -> Catalog {
    let texts: Vec<(String, String)> = services
        .iter()
        .map(|(n, o)| (format!("{n}.yaml"), service(n, o)))
        .chain([
            ("sensors.yaml".to_owned(), SENSORS.to_owned()),
            ("progressive.yaml".to_owned(), CONTROLLER.to_owned()),
        ])
        .collect();
    let refs: Vec<(&str, &str)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    autopilot::spec::load_texts(&refs).unwrap_or_else(|r| panic!("{}", r.render_text()))
}

/// A canary rollout of r2 over stable r1 in prod, started at `started`.
fn canary_state(started: Time) -> ServiceState {
    let mut s = ServiceState::default();
    s.environments.insert(
        "prod".into(),
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
    s
}

fn series(metric: &str, service: &str, release: &str, extra: &str) -> String {
    format!(r#"{metric}{{service="{service}",env="prod",version="{release}"{extra}}}"#)
}

/// Sets or adds to `http_requests_total` of (service, release, code) in prod.
fn requests(exporter: &Exporter, how: &str, (service, release, code): (&str, &str, &str), value: f64) {
    let s = series(
        "http_requests_total",
        service,
        release,
        &format!(r#",code="{code}""#),
    );
    match how {
        "set" => exporter.set(&s, value),
        _ => exporter.add(&s, value),
    }
}

/// Prometheus with a file_sd job reading every `*.json` in its folder's `targets/`.
fn prometheus() -> TempPrometheus {
    let config = "  - job_name: releases\n    honor_labels: true\n    file_sd_configs:\n      - files: ['{dir}/targets/*.json']\n        refresh_interval: 1s\n";
    TempPrometheus::start(SCRAPE, config).expect("prometheus starts (scripts/test installs it)")
}

/// Lists an exporter as a target (the file `autopilot up` writes has the same form).
fn add_target(prom: &TempPrometheus, name: &str, exporter: &Exporter, labels: (&str, &str, &str)) {
    let text = file_sd::render(&[(
        labels.0.to_owned(),
        labels.1.to_owned(),
        labels.2.to_owned(),
        vec![exporter.addr],
    )]);
    file_sd::write(&prom.dir().join("targets").join(format!("{name}.json")), &text).unwrap();
}

/// A folder with shop-a's specs and an `autopilot.yaml` with this `prometheus:` block
/// (indented fields).
fn spec_dir(objectives: &str, prometheus: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_specs(dir.path(), objectives, prometheus);
    dir
}

fn write_specs(dir: &std::path::Path, objectives: &str, prometheus: &str) {
    std::fs::write(dir.join("shop-a.yaml"), service("shop-a", objectives)).unwrap();
    std::fs::write(dir.join("sensors.yaml"), SENSORS).unwrap();
    std::fs::write(dir.join("progressive.yaml"), CONTROLLER).unwrap();
    std::fs::write(
        dir.join("autopilot.yaml"),
        format!(
            "apiVersion: autopilot/v1\nkind: Autopilot\nspecs: [shop-a.yaml, sensors.yaml, progressive.yaml]\nprometheus:\n{prometheus}"
        ),
    )
    .unwrap();
}

fn settings(prom: &TempPrometheus) -> PromSettings {
    PromSettings {
        scrape_interval: autopilot::spec::units::Duration(SCRAPE),
        timeout: autopilot::spec::units::Duration(Duration::from_secs(2)),
        ..PromSettings::at(&prom.url())
    }
}

/// Reads until `done` holds for the reading of (service, objective), or fails after `WAIT`;
/// returns every reading seen.
async fn read_until(
    sensors: &mut PromSensors,
    specs: &[(PlanSpec, ServiceState)],
    service: &str,
    objective: &str,
    done: impl Fn(&Reading) -> bool,
) -> Vec<Reading> {
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let refs: Vec<(&PlanSpec, &ServiceState)> = specs.iter().map(|(p, s)| (p, s)).collect();
        let out = sensors.read(&refs, wall_clock()).await;
        let r = out
            .get(service)
            .and_then(|r| r.get(&("prod".to_owned(), objective.to_owned())))
            .copied()
            .unwrap_or_else(|| panic!("no reading for {service}/{objective}: {out:?}"));
        seen.push(r);
        if done(&r) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service}/{objective}: not reached within {WAIT:?}; readings: {:?}; last queries: {:?}",
            &seen[seen.len().saturating_sub(5)..],
            sensors.last_queries
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Prometheus holds `value` for a series (the exporter was scraped).
async fn scraped(prom: &TempPrometheus, series: &str, value: f64) {
    let client = PromSettings::at(&prom.url()).client().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.query(series).get().await
            && let Some(v) = r.data().as_vector()
            && v.iter().any(|x| x.sample().value() == value)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never reached {value}: {}",
            prom.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_batched_and_missing_data_has_its_reason() {
    let prom = prometheus();
    let exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    let cat = catalog(&[("shop-a", ERRORS), ("shop-b", ERRORS)]);
    // stable has served before the rollout: its old counts must not count
    for svc in ["shop-a", "shop-b"] {
        exporter.set(&series("http_requests_total", svc, "r1", r#",code="200""#), 990.0);
        exporter.set(&series("http_requests_total", svc, "r1", r#",code="500""#), 10.0);
    }
    scraped(
        &prom,
        &series("http_requests_total", "shop-b", "r1", r#",code="500""#),
        10.0,
    )
    .await;
    let started = wall_clock();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let specs: Vec<(PlanSpec, ServiceState)> = ["shop-a", "shop-b"]
        .iter()
        .map(|s| (PlanSpec::resolve(&cat, s).unwrap(), canary_state(started)))
        .collect();
    let mut sensors = PromSensors::new(&settings(&prom), &cat).unwrap();

    // known traffic after the start
    let a_canary = series("http_requests_total", "shop-a", "r2", r#",code="200""#);
    exporter.add(&a_canary, 117.0);
    requests(&exporter, "add", ("shop-a", "r2", "503"), 3.0);
    requests(&exporter, "add", ("shop-a", "r1", "200"), 495.0);
    requests(&exporter, "add", ("shop-a", "r1", "500"), 5.0);
    requests(&exporter, "add", ("shop-b", "r2", "200"), 40.0);
    let seen = read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary == Some(Counts::new(3, 120)) && r.stable == Some(Counts::new(5, 500))
    })
    .await;
    assert!(
        seen.iter().all(|r| r.canary.is_none_or(|c| c.total <= 120)),
        "never more than was served: {seen:?}"
    );
    // one query serves both services (the first tick also asks for the values at the start)
    let refs: Vec<(&PlanSpec, &ServiceState)> = specs.iter().map(|(p, s)| (p, s)).collect();
    let out = sensors.read(&refs, wall_clock()).await;
    assert_eq!(sensors.last_queries.len(), 1, "{:?}", sensors.last_queries);
    assert!(
        sensors.last_queries[0]
            .promql
            .contains(r#"service=~"shop\\-a|shop\\-b""#)
            || sensors.last_queries[0]
                .promql
                .contains(r#"service=~"shop-a|shop-b""#),
        "{:?}",
        sensors.last_queries
    );
    let b = out["shop-b"][&("prod".to_owned(), "availability".to_owned())];
    assert_eq!(b.canary, Some(Counts::new(0, 40)), "shop-b from the same answer");
    assert_eq!(b.stable, Some(Counts::new(0, 0)));

    // a counter reset (the canary's process restarted): that tick is missing, then counting
    // goes on from the restart
    exporter.set(&a_canary, 0.0);
    requests(&exporter, "set", ("shop-a", "r2", "503"), 0.0);
    exporter.add(&a_canary, 7.0);
    let seen = read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary == Some(Counts::new(3, 127))
    })
    .await;
    assert!(
        seen.iter()
            .any(|r| r.missing == Some(Missing::CounterReset) && r.canary.is_none()),
        "the reset is reported: {seen:?}"
    );

    // NaN is not a number of requests
    exporter.set(&a_canary, f64::NAN);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.missing == Some(Missing::NotANumber) && r.canary.is_none()
    })
    .await;
    exporter.set(&a_canary, 124.0);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary.is_some()
    })
    .await;

    // a release nobody has sent traffic to yet has no series: missing, not zero
    let mut fresh = specs.clone();
    fresh[0].1 = canary_state(wall_clock());
    if let Some(r) = fresh[0].1.environments.get_mut("prod").unwrap().rollout.as_mut() {
        r.release = "r3".into();
    }
    read_until(&mut sensors, &fresh, "shop-a", "availability", |r| {
        r.missing == Some(Missing::NoSeries) && r.canary.is_none() && r.stable.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_that_stops_goes_from_a_scrape_gap_to_stale() {
    let prom = prometheus();
    let mut exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    let cat = catalog(&[("shop-a", ERRORS)]);
    let started = wall_clock();
    let specs = vec![(PlanSpec::resolve(&cat, "shop-a").unwrap(), canary_state(started))];
    let mut sensors = PromSensors::new(&settings(&prom), &cat).unwrap();
    requests(&exporter, "add", ("shop-a", "r2", "200"), 10.0);
    requests(&exporter, "add", ("shop-a", "r1", "200"), 90.0);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary == Some(Counts::new(0, 10))
    })
    .await;
    exporter.stop().await;
    let seen = read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.missing == Some(Missing::Stale)
    })
    .await;
    assert!(
        seen.iter()
            .all(|r| r.canary.is_none() || r.canary == Some(Counts::new(0, 10))),
        "no counts appear from nowhere: {seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.missing == Some(Missing::ScrapeGap)),
        "a gap is a scrape gap before the series go stale: {seen:?}"
    );
    // the exporter comes back (the same process): data again, with nothing lost
    exporter.restart(false).await.unwrap();
    requests(&exporter, "add", ("shop-a", "r2", "200"), 5.0);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary == Some(Counts::new(0, 15))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_or_frozen_is_missing_data_with_its_reason() {
    let mut prom = prometheus();
    let exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    let cat = catalog(&[("shop-a", ERRORS)]);
    let specs = vec![(
        PlanSpec::resolve(&cat, "shop-a").unwrap(),
        canary_state(wall_clock()),
    )];
    let mut sensors = PromSensors::new(&settings(&prom), &cat).unwrap();
    requests(&exporter, "add", ("shop-a", "r2", "200"), 10.0);
    requests(&exporter, "add", ("shop-a", "r1", "200"), 90.0);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary.is_some()
    })
    .await;

    // frozen (SIGSTOP): the connection opens, no answer comes — a timeout
    prom.freeze(true);
    let seen = read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.missing == Some(Missing::Timeout)
    })
    .await;
    assert!(
        seen.iter()
            .all(|r| r.canary.is_none() || r.canary == Some(Counts::new(0, 10)))
    );
    prom.freeze(false);
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary.is_some()
    })
    .await;

    // stopped: nothing listens — unreachable
    prom.pause();
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.missing == Some(Missing::Unreachable) && r.canary.is_none() && r.stable.is_none()
    })
    .await;
    prom.resume().unwrap();
    read_until(&mut sensors, &specs, "shop-a", "availability", |r| {
        r.canary == Some(Counts::new(0, 10))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_counts_from_the_bucket_and_templates_still_work() {
    let prom = prometheus();
    let exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    let templ = "  - name: availability\n    sensor: http-errors-promql\n    target: \"< 1%\"\n";
    let cat = catalog(&[("shop-a", LATENCY), ("shop-b", templ)]);
    let started = wall_clock();
    let specs: Vec<_> = ["shop-a", "shop-b"]
        .iter()
        .map(|s| (PlanSpec::resolve(&cat, s).unwrap(), canary_state(started)))
        .collect();
    let mut sensors = PromSensors::new(&settings(&prom), &cat).unwrap();
    let h = |release: &str, suffix: &str, le: &str| {
        series(
            &format!("http_request_duration_seconds_{suffix}"),
            "shop-a",
            release,
            le,
        )
    };
    // 200 canary requests, 170 within 300 ms: 30 slow; stable 1000, 990 fast
    for (release, fast, slow) in [("r2", 170.0, 30.0), ("r1", 990.0, 10.0)] {
        exporter.set(&h(release, "bucket", r#",le="0.1""#), fast / 2.0);
        exporter.set(&h(release, "bucket", r#",le="0.3""#), fast);
        exporter.set(&h(release, "bucket", r#",le="1""#), fast + slow);
        exporter.set(&h(release, "bucket", r#",le="+Inf""#), fast + slow);
        exporter.set(&h(release, "count", ""), fast + slow);
    }
    read_until(&mut sensors, &specs, "shop-a", "latency", |r| {
        r.canary == Some(Counts::new(30, 200)) && r.stable == Some(Counts::new(10, 1000))
    })
    .await;
    let q = sensors
        .last_queries
        .iter()
        .find(|q| q.sensor == "http-latency")
        .unwrap();
    assert!(
        q.promql.contains(r#"le=~"0\\.3|""#),
        "only the bucket at the threshold: {}",
        q.promql
    );

    // free PromQL templates: a query per arm (increase() extrapolates: roughly the count)
    requests(&exporter, "set", ("shop-b", "r2", "200"), 0.0);
    requests(&exporter, "set", ("shop-b", "r1", "200"), 0.0);
    scraped(
        &prom,
        &series("http_requests_total", "shop-b", "r1", r#",code="200""#),
        0.0,
    )
    .await;
    requests(&exporter, "set", ("shop-b", "r2", "200"), 100.0);
    requests(&exporter, "set", ("shop-b", "r1", "200"), 100.0);
    read_until(&mut sensors, &specs, "shop-b", "availability", |r| {
        r.canary.is_some_and(|c| c.total > 0 && c.bad == 0) && r.stable.is_some()
    })
    .await;
    let templates = sensors
        .last_queries
        .iter()
        .filter(|q| q.sensor == "availability")
        .count();
    assert_eq!(
        templates, 4,
        "bad and total, for each arm: {:?}",
        sensors.last_queries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_listed_in_file_sd_is_scraped_with_its_labels() {
    let prom = prometheus();
    let exporter = Exporter::start().await.unwrap();
    exporter.set("app_up", 1.0);
    // the release starts: autopilot lists it, Prometheus finds it without a config change
    add_target(&prom, "release-r9", &exporter, ("shop", "staging", "r9"));
    scraped(
        &prom,
        r#"up{job="releases",service="shop",environment="staging",release="r9"}"#,
        1.0,
    )
    .await;
    scraped(&prom, r#"app_up{release="r9",environment="staging"}"#, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_check_shows_counts_promql_and_reasons_without_starting_anything() {
    let prom = prometheus();
    let exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    let dir = spec_dir(
        &format!("{ERRORS}{LATENCY}"),
        &format!("  url: {}\n  scrapeInterval: 500ms\n", prom.url()),
    );
    requests(&exporter, "set", ("shop-a", "r2", "200"), 96.0);
    requests(&exporter, "set", ("shop-a", "r2", "500"), 4.0);
    requests(&exporter, "set", ("shop-a", "r1", "200"), 1000.0);
    scraped(
        &prom,
        &series("http_requests_total", "shop-a", "r1", r#",code="200""#),
        1000.0,
    )
    .await;
    let run = |env: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
            .current_dir(dir.path())
            .args(["sensors", "check", "shop-a.yaml", "--environment", env])
            .args(["--canary", "r2", "--stable", "r1", "--since", "1h"])
            .output()
            .unwrap()
    };
    let out = run("prod");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "latency has no series: {text}");
    assert!(
        text.contains("availability") && text.contains("r2") && text.contains("4.000%"),
        "{text}"
    );
    assert!(text.contains("1000"), "stable's count over the hour: {text}");
    assert!(
        text.contains("missing: no series matches"),
        "the latency histogram is not exported: {text}"
    );
    assert!(
        text.contains("http_requests_total{") && text.contains("[http-latency]"),
        "the PromQL: {text}"
    );
    // a wrong environment is a usage error with a suggestion
    let out = run("prd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `prod`"));
}

/// OpenMetrics history of shop-a in prod from `t0` for 30 minutes, one sample per 15 s: stable
/// r1 at 20 requests/s with 0.5% errors; canary `release` at 5 requests/s, with errors jumping
/// from 0.5% to 8% after `bad_after` steps (never, for a healthy canary).
fn history(t0: u64, release: &str, bad_after: u64) -> String {
    let mut out = String::from("# TYPE http_requests counter\n");
    let (mut s_ok, mut s_bad, mut c_ok, mut c_bad) = (0u64, 0u64, 0u64, 0u64);
    let mut lines = Vec::new();
    for step in 0..=120u64 {
        let t = t0 + step * 15;
        // deterministic: stable fails 3 of every 600, the canary 3 of 600 then 6 of 75
        s_bad += if step % 2 == 0 { 1 } else { 2 };
        s_ok += 300 - if step % 2 == 0 { 1 } else { 2 };
        let bad = if step >= bad_after {
            6
        } else {
            u64::from(step % 3 == 0)
        };
        c_bad += bad;
        c_ok += 75 - bad;
        for (rel, code, v) in [
            ("r1", "200", s_ok),
            ("r1", "500", s_bad),
            (release, "200", c_ok),
            (release, "500", c_bad),
        ] {
            lines.push(format!(
                "http_requests_total{{service=\"shop-a\",env=\"prod\",version=\"{rel}\",code=\"{code}\"}} {v} {t}\n"
            ));
        }
    }
    for l in lines {
        out.push_str(&l);
    }
    out.push_str("# EOF\n");
    out
}

#[test]
fn replay_from_prometheus_reproduces_an_injected_regression() {
    // two incidents in the real database, 3 hours and 2 hours ago: r2 went bad 5 minutes into
    // its canary, r3 stayed healthy
    let now = wall_clock().millis() / 1000;
    let (t_bad, t_good) = (now - 3 * 3600, now - 2 * 3600);
    let text = format!(
        "{}{}",
        history(t_bad, "r2", 20).trim_end_matches("# EOF\n"),
        history(t_good, "r3", u64::MAX).replace("# TYPE http_requests counter\n", "")
    );
    let prom = TempPrometheus::start_with_history(SCRAPE, "", &text).expect("backfilled prometheus starts");
    let dir = spec_dir(ERRORS, &format!("  url: {}\n  scrapeInterval: 15s\n", prom.url()));
    let utc = |t: u64| Time::from_secs(t).to_string();
    let replay = |t0: u64, canary: &str, save: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
            .current_dir(dir.path())
            .args(["replay", "shop-a.yaml", "--environment", "prod"])
            .args(["--from", &utc(t0), "--to", &utc(t0 + 30 * 60)])
            .args([
                "--canary",
                canary,
                "--stable",
                "r1",
                "--expect",
                "rolledBack",
                "--save",
                save,
            ])
            .output()
            .unwrap()
    };
    let out = replay(t_bad, "r2", "bad");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stderr}{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the regression is rolled back:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("availability regressed"), "{stdout}");
    assert!(stderr.contains("read 4 series"), "{stderr}");
    // the saved scenario is a scenario like any other: it validates and reruns
    let saved = dir.path().join("bad/replay-shop-a-prod.yaml");
    let rerun = std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(["simulate", "--quiet"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stdout)
    );
    // the healthy canary is not rolled back: the replay tells the two apart
    let out = replay(t_good, "r3", "good");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a healthy canary must not be rolled back:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_prometheus_with_basic_auth_is_read_with_its_ca_and_password() {
    let certs = tempfile::tempdir().unwrap();
    let ca = autopilot::proxy::tls::LocalCa::load_or_create(certs.path()).unwrap();
    let (chain, key) = ca.issue(&["localhost".to_owned()]).unwrap();
    std::fs::write(certs.path().join("server.pem"), chain).unwrap();
    std::fs::write(certs.path().join("server.key"), key).unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = format!(
        "tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\nbasic_auth_users:\n  reader: {hash}\n",
        certs.path().display()
    );
    let config = "  - job_name: releases\n    honor_labels: true\n    file_sd_configs:\n      - files: ['{dir}/targets/*.json']\n        refresh_interval: 1s\n";
    let prom = TempPrometheus::start_with_web(SCRAPE, config, Some(&web)).expect("prometheus starts");
    let exporter = Exporter::start().await.unwrap();
    add_target(&prom, "app", &exporter, ("x", "prod", "x"));
    requests(&exporter, "set", ("shop-a", "r2", "200"), 10.0);
    requests(&exporter, "set", ("shop-a", "r1", "200"), 90.0);
    let dir = tempfile::tempdir().unwrap();
    let url = prom.url().replace("http://127.0.0.1", "https://localhost");
    let write_config = |ca: bool| {
        let ca = if ca {
            format!("  caFile: {}\n", certs.path().join("ca.pem").display())
        } else {
            String::new()
        };
        write_specs(
            dir.path(),
            ERRORS,
            &format!(
                "  url: {url}\n  scrapeInterval: 500ms\n  timeout: 5s\n  basicAuth: {{username: reader, passwordVariable: PROM_PASSWORD}}\n{ca}"
            ),
        );
    };
    // the password comes from the environment named in autopilot.yaml, as a user runs it
    let check = |password: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"));
        c.current_dir(dir.path())
            .args(["sensors", "check", "shop-a", "--environment", "prod"])
            .args(["--canary", "r2", "--stable", "r1", "--since", "1h"])
            .env_remove("PROM_PASSWORD");
        if let Some(p) = password {
            c.env("PROM_PASSWORD", p);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    write_config(true);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, text) = check(Some("s3cret"));
        if code == Some(0) {
            assert!(text.contains("10") && text.contains("90"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never read over https with basic auth: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, text) = check(Some("wrong"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("missing: the sensor's source answered with an error"),
        "{text}"
    );
    let (code, text) = check(None);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("PROM_PASSWORD is not set"), "{text}");
    // without the CA, the server's certificate is not trusted
    write_config(false);
    let (code, text) = check(Some("s3cret"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("→ error:") && text.contains("certificate"),
        "{text}"
    );
}

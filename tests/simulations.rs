//! `autopilot simulate` as a user runs it: every checked-in scenario runs green, the same file
//! and seed give byte-identical output, a failed expectation exits non-zero, and the record and
//! the chart are written.

use autopilot::sim;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenarios() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("simulations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_checked_in_scenario_meets_its_expectations() {
    let all = scenarios();
    assert!(all.len() >= 8, "at least eight scenarios, found {}", all.len());
    let mut failures = Vec::new();
    for path in &all {
        let (scenario, _) = sim::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!scenario.expect.is_empty(), "{} expects nothing", path.display());
        let result = sim::run_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for c in result.checks.iter().filter(|c| !c.passed) {
            failures.push(format!("{}: {} — {}", scenario.name, c.expectation, c.detail));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_file_and_seed_give_byte_identical_output() {
    let path = root().join("simulations/shared-burst.yaml");
    let run = || {
        let (scenario, catalog) = sim::load(&path).unwrap();
        let r = sim::run(&scenario, &catalog).unwrap();
        (
            sim::report::timeline(&r),
            sim::report::json(&r),
            sim::report::svg(&r),
        )
    };
    let (a, b) = (run(), run());
    assert!(a == b, "two runs differ");
    assert!(a.2.starts_with("<svg") && a.2.contains("staging: canary weight"));
}

#[test]
fn memory_does_not_grow_with_the_scenarios_length() {
    // a canary held for two days is looked at every 10 s: 17,000 looks. Before, every look's
    // plan was kept (30 days took 1.9 GB, 365 days ran out of memory); now the chart's history
    // is thinned to a bound, and nothing else grows with time.
    let path = root().join("simulations/paused-regardless.yaml");
    let (mut scenario, catalog) = sim::load(&path).unwrap();
    let mut samples = Vec::new();
    for hours in [12, 48] {
        scenario.duration = autopilot::spec::units::Duration::from_secs(hours * 3600);
        let r = sim::run(&scenario, &catalog).unwrap();
        assert!(r.ticks > hours * 300, "{hours}h: {} looks", r.ticks);
        assert!(r.passed(), "{:?}", r.checks);
        let held: Vec<_> = r.samples.iter().filter(|s| s.environment == "staging").collect();
        assert!(held.len() <= sim::MAX_SAMPLES_PER_ENVIRONMENT, "{}", held.len());
        // the thinned history still spans the rollout to the end
        assert!(held.last().unwrap().at.since(r.start).as_secs() > (hours - 1) * 3600);
        samples.push(r.samples.len());
    }
    assert!(
        samples[1] <= samples[0] + sim::MAX_SAMPLES_PER_ENVIRONMENT,
        "{samples:?}"
    );
}

fn write_scenario(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("s.yaml");
    let text = text.replace(
        "SPECS",
        &format!(
            "{0}/objectives/checkout.yaml, {0}/sensors, {0}/controllers",
            root().display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    path
}

const FAILING: &str = r#"
apiVersion: autopilot/v1
kind: Simulation
name: wrong-expectation
specs: [SPECS]
service: checkout
duration: 30m
traffic: {rate: 100}
stable: {name: v1, errors: 0.05%}
releases:
  - {name: v2, pushedAt: 1m, errors: 10%}
expect:
  - {release: v2, environment: dev, outcome: promoted}
"#;

#[test]
fn the_command_exits_1_on_a_failed_expectation_and_writes_record_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_scenario(dir.path(), FAILING);
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(["simulate", path.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("FAIL v2 in dev: promoted — rolled-back"),
        "{stdout}"
    );
    assert!(stdout.contains("regressed"), "the timeline says why: {stdout}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("wrong-expectation.json")).unwrap()).unwrap();
    assert_eq!(record["checks"][0]["passed"], false);
    assert!(
        std::fs::read_to_string(out.join("wrong-expectation.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("simulated requests judged in"), "{stderr}");
}

#[test]
fn a_broken_scenario_is_reported_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let broken = FAILING
        .replace("duration: 30m", "duration: 30 minutes")
        .replace("outcome: promoted", "outcome: promotd")
        .replace(
            "- {name: v2, pushedAt: 1m, errors: 10%}",
            "- {name: v2, pushedAt: 1m, errors: 10%, colour: red}",
        );
    let path = write_scenario(dir.path(), &broken);
    let run = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(["simulate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    for needle in [
        "s.yaml:7:11",
        "`30 minutes` is not a duration",
        "s.yaml:11:43",
        "unknown field `colour`",
        "s.yaml:13:46",
        "did you mean `promoted`?",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

/// Guards against a scenario's operator action that makes no sense being kept: a rollback
/// asked for when nothing rolls out used to wait and roll back the *next* canary.
#[test]
fn a_scenario_operator_action_that_conflicts_is_refused_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_scenario(
        dir.path(),
        r#"
apiVersion: autopilot/v1
kind: Simulation
name: early-rollback
specs: [SPECS]
service: checkout
duration: 40m
traffic: {rate: 100}
stable: {name: v1, errors: 0.05%}
releases:
  - {name: v2, pushedAt: 10m, errors: 0.05%}
operators:
  - {at: 2m, environment: dev, by: sam, action: rollback}
expect:
  - {release: v2, environment: dev, outcome: promoted}
"#,
    );
    let result = sim::run_file(&path).unwrap();
    assert!(
        result
            .notes
            .iter()
            .any(|(_, n)| n.contains("rollback by sam in dev refused: no rollout in progress")),
        "{:?}",
        result.notes
    );
    assert!(
        result.checks.iter().all(|c| c.passed),
        "the refused rollback still hit v2"
    );
}

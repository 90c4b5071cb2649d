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

/// Every scenario's timeline is a checked-in snapshot (`tests/output/<scenario>.txt`), so a
/// change of the controller's behaviour shows as a diff in review. `UPDATE_SNAPSHOTS=1` rewrites
/// them after a change that is meant.
#[test]
fn every_scenarios_timeline_matches_its_snapshot() {
    let dir = root().join("tests/output");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut changed = Vec::new();
    for path in scenarios() {
        let result = sim::run_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = sim::report::timeline(&result, true);
        let file = dir.join(format!("{}.txt", result.scenario));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &text).unwrap();
            continue;
        }
        let kept = std::fs::read_to_string(&file).unwrap_or_default();
        if kept != text {
            let first = kept
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(kept.lines().count().min(text.lines().count()));
            changed.push(format!(
                "{}: line {}\n  kept: {}\n  now:  {}",
                file.display(),
                first + 1,
                kept.lines().nth(first).unwrap_or("(end)"),
                text.lines().nth(first).unwrap_or("(end)")
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "the timelines changed (UPDATE_SNAPSHOTS=1 rewrites them if that is meant):\n{}",
        changed.join("\n")
    );
}

#[test]
fn the_same_file_and_seed_give_byte_identical_output() {
    let path = root().join("simulations/shared-burst.yaml");
    let run = || {
        let (scenario, catalog) = sim::load(&path).unwrap();
        let r = sim::run(&scenario, &catalog).unwrap();
        (
            sim::report::timeline(&r, false),
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

#[test]
fn the_timeline_reads_in_words_with_operators_at_their_time_and_nothing_cut() {
    let run = |name: &str, verbose: bool| {
        let r = sim::run_file(&root().join("simulations").join(name)).unwrap();
        sim::report::timeline(&r, verbose)
    };
    let text = run("operator-override.yaml", false);
    // nothing is cut
    assert!(!text.contains('…'), "{text}");
    // operator actions at the time they were asked, attributed once
    assert!(text.contains("+0:18:30  staging  ann asks: pause\n"), "{text}");
    assert!(text.contains("+0:38:30  staging  ann asks: resume\n"), "{text}");
    assert!(
        text.contains("+0:40:00  prod     rita asks: approve v2 as release-managers"),
        "{text}"
    );
    assert_eq!(text.matches("ann").count(), 2, "{text}");
    assert!(
        text.contains("paused 5%     carries out the operator's pause"),
        "{text}"
    );
    // a promotion shows each objective on its own line, words first
    let promotion = text.split("every objective is safe: promote\n").nth(1).unwrap();
    let mut lines = promotion.lines();
    let first = lines.next().unwrap().trim_start();
    assert!(
        first.starts_with("availability: canary ") && first.contains(" bad vs stable "),
        "{first}"
    );
    assert!(lines.next().unwrap().trim_start().starts_with("latency: canary"));
    assert!(promotion.contains("no worse than allowed, and the judge is sure"));
    // the unexplained statistics are gone from the default view, and all there with --verbose
    assert!(!text.contains("= 1/α") && !text.contains("1e308"), "{text}");
    let verbose = run("operator-override.yaml", true);
    assert!(
        verbose.contains("not yet conclusive: regression evidence"),
        "{verbose}"
    );
    // a regression says what was worse, how sure, and what the rest was doing
    let text = run("error-regression.yaml", false);
    assert!(text.contains("availability regressed: roll back"), "{text}");
    assert!(
        text.contains("worse than stable by more than 25%, and the judge is sure"),
        "{text}"
    );
    assert!(text.contains("needs about"), "{text}");
    // every capped step says the budget capped it, and from what
    let text = run("shared-burst.yaml", false);
    // staging's controller (progressive) steps through 5, 10, 25, 50, 75
    for line in text
        .lines()
        .filter(|l| l.contains("staging") && l.contains("canary → canary"))
    {
        let weight: u8 = line
            .split("canary → canary ")
            .nth(1)
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if ![5, 10, 25, 50, 75].contains(&weight) {
            assert!(line.contains("capped by the blast-radius budget at"), "{line}");
        }
    }
    // (whether a step is capped depends on the draws; the words of one that is, on nothing)
    let capped = autopilot::control::rollout::Transition {
        environment: "staging".into(),
        release: "v2".into(),
        from: Some(autopilot::control::rollout::PhaseKind::Canary),
        to: autopilot::control::rollout::PhaseKind::Canary,
        weight: autopilot::spec::units::Weight(30),
        cause: autopilot::control::rollout::Cause::Evidence {
            explanation: String::new(),
            objectives: Vec::new(),
            capped: Some(autopilot::control::rollout::Capped {
                wanted: autopilot::spec::units::Weight(50),
                left: 12.0,
                budget: 100,
            }),
        },
        at: autopilot::control::time::Time::ZERO,
    };
    let line = autopilot::report::cause_line(&capped);
    assert!(
        line.contains("capped by the blast-radius budget at 30% of the 50% the ramp asked"),
        "{line}"
    );
}

#[test]
fn the_chart_has_a_panel_per_environment_a_canary_reached_zoomed_and_labelled() {
    let r = sim::run_file(&root().join("simulations/error-regression.yaml")).unwrap();
    let svg = sim::report::svg(&r);
    // v2 never reached staging or prod: no empty panels for them
    assert!(svg.contains("dev: canary weight"), "{svg}");
    assert!(!svg.contains("staging: canary weight") && !svg.contains("prod: canary weight"));
    // a rollout of a few minutes in an hour-long scenario is drawn in minutes, not as a sliver
    assert!(svg.contains("minutes since start"));
    // the rollback marker is labelled, and red is the rollback's alone
    assert!(svg.contains("v2 rolled back"));
    assert_eq!(
        svg.matches("stroke=\"#D62728\"").count(),
        2,
        "one marker per chart"
    );
}

#[test]
fn a_file_of_several_scenarios_runs_each_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let one = std::fs::read_to_string(root().join("simulations/paused-regression.yaml")).unwrap();
    let two = std::fs::read_to_string(root().join("simulations/paused-regardless.yaml")).unwrap();
    let specs = root().display().to_string();
    let both = format!("{one}---\n{two}").replace("../", &format!("{specs}/"));
    let path = dir.path().join("both.yaml");
    std::fs::write(&path, both).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args(["simulate", "--quiet", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("paused-regression: v2 in staging: rolled back"),
        "{stdout}"
    );
    assert!(
        stdout.contains("paused-regardless: v2 in staging: held"),
        "{stdout}"
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
    // it says where it wrote
    assert!(
        stderr.contains(&format!(
            "written: {}",
            out.join("wrong-expectation.json").display()
        )),
        "{stderr}"
    );
    // the record speaks the YAML's camelCase
    assert!(
        record["outcomes"][0]["pushedAt"].is_u64(),
        "{}",
        record["outcomes"][0]
    );
    assert!(record["outcomes"][0].get("pushed_at").is_none());
    // --quiet is quiet: the expectations on stdout, nothing on stderr
    let quiet = Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .args([
            "simulate",
            path.to_str().unwrap(),
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(1));
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).lines().count(), 1);
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
    let asked = &result.operator_actions[0];
    assert_eq!((asked.by.as_str(), asked.action.as_str()), ("sam", "rollback"));
    assert!(
        asked
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("no rollout in progress")),
        "{asked:?}"
    );
    // shown at the time it was asked, attributed, with why it was refused
    let timeline = sim::report::timeline(&result, false);
    assert!(
        timeline.contains("+0:02:00  dev      sam asks: rollback — refused: no rollout in progress"),
        "{timeline}"
    );
    assert!(
        result.checks.iter().all(|c| c.passed),
        "the refused rollback still hit v2"
    );
}

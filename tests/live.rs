//! The live loop against real things: the demo end to end (real git, real builds, real
//! processes, the real proxy over HTTPS with auth, SQLite), a SIGKILL of `autopilot up` in the
//! middle of a rollout and a restart, and the builder and the local runtime on their own.
//!
//! Every wait is a bounded poll of a real server or file; nothing sleeps for a fixed time to
//! make a result true.

use autopilot::control::ports::{Builder, Runtime};
use autopilot::control::rollout::{BuildOutcome, Cause, Phase, Release};
use autopilot::live::demo;
use autopilot::release::LocalBuilder;
use autopilot::release::oci;
use autopilot::release::registry::{Credentials, Registry, TempRegistry};
use autopilot::runtime::LocalRuntime;
use autopilot::store::SqlStore;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
use common::up::{Running, phase, prepare, running, running_with, store_of, up, wait_for};

const EXE: &str = env!("CARGO_BIN_EXE_autopilot");

fn alive(pid: u32) -> bool {
    // a zombie is not running
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn the_demo_promotes_healthy_releases_and_rolls_back_the_bad_one_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let mut child = Command::new(EXE)
        .args(["demo", "--interval", "1s", "--limit", "4m", "--dir"])
        .arg(dir.path().join("demo"))
        .arg("--summary")
        .arg(&summary_path)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the output, line by line, from a thread (the demo does not end by itself)
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout_pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout_pipe).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut stdout = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let pages = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
                // regression: the demo stopped its API and pages with its summary, so the
                // rolled-back state could never be looked at
                if let Some(rest) = line.split("the pages and the API at ").nth(1) {
                    break rest.split('/').take(3).collect::<Vec<_>>().join("/");
                }
            }
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the demo ended or hung before it said it keeps running:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    };
    // still serving after the summary: the pages answer (asking for a token)
    let status_line = {
        use std::io::{Read, Write};
        let host = pages.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(host).unwrap();
        c.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer.lines().next().unwrap_or_default().to_owned()
    };
    assert!(status_line.contains(" 401 "), "{pages}: {status_line}");
    // Ctrl-C ends it, cleanly
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    // plain output off a terminal: no escape codes
    assert!(!stdout.contains('\x1b'), "{stdout}");
    assert!(
        stdout.contains("rolled back because availability regressed"),
        "{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    let releases: Vec<String> = serde_json::from_value(summary["releases"].clone()).unwrap();
    assert_eq!(releases.len(), 3);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqlStore::open_dir(&dir.path().join("demo/data")).await.unwrap();
        let states = store.states().await.unwrap();
        let (_, state) = states.iter().find(|(s, _)| s == demo::SERVICE).unwrap();
        let transitions = store.transitions(Some(demo::SERVICE)).await.unwrap();
        // v1 and v2 promoted in all three environments, each under one digest
        for r in &releases[..2] {
            let release = state.releases.iter().find(|x| &x.id == r).unwrap();
            assert!(release.digest.starts_with("sha256:") && release.digest.len() == 71);
            assert!(r.starts_with('r') && release.digest[7..].starts_with(&r[1..]));
            for env in demo::ENVIRONMENTS {
                assert!(
                    transitions.iter().any(|t| t.transition.environment == env
                        && &t.transition.release == r
                        && t.transition.to == "promoted"),
                    "{r} not promoted in {env}"
                );
            }
        }
        // v2 went through as a canary judged against v1
        assert!(transitions.iter().any(|t| t.transition.release == releases[1]
            && t.transition.to == "promoting"
            && matches!(t.transition.cause, Cause::Evidence { .. })));
        // v3: rolled back in dev with a regression as the recorded cause; never left dev
        let bad = &releases[2];
        let cause = transitions
            .iter()
            .find(|t| &t.transition.release == bad && t.transition.to == "rolling-back")
            .map(|t| t.transition.cause.clone())
            .expect("a rollback of the bad release");
        assert!(
            matches!(cause, Cause::Regressed { ref objective, .. } if objective == "availability"),
            "{cause:?}"
        );
        assert!(
            transitions
                .iter()
                .any(|t| &t.transition.release == bad && t.transition.to == "rolled-back")
        );
        assert!(
            !transitions
                .iter()
                .any(|t| &t.transition.release == bad && t.transition.environment != "dev")
        );
        assert_eq!(state.environments["dev"].blocked.as_deref(), Some(bad.as_str()));
        assert_eq!(
            state.environments["dev"].stable.as_deref(),
            Some(releases[1].as_str())
        );
        // the builds, with their output, are in the store
        let builds = store.builds(Some(demo::SERVICE)).await.unwrap();
        assert_eq!(builds.len(), 3);
        assert!(builds.iter().all(|b| b.status == "built"));
    });
    // no failed request on the healthy releases' traffic; the bad one within its budget (50)
    let served = &summary["served"];
    for r in &releases[..2] {
        let (n, bad): (u64, u64) = serde_json::from_value(served[r].clone()).unwrap();
        assert!(n > 1000, "{r} served only {n}");
        assert_eq!(bad, 0, "{r} failed requests");
    }
    let (n, bad): (u64, u64) = serde_json::from_value(served[&releases[2]].clone()).unwrap();
    assert!(bad > 0 && bad <= 50, "the bad release failed {bad} of {n}");
    let unattributed: (u64, u64) = serde_json::from_value(served["-"].clone()).unwrap_or((0, 0));
    assert_eq!(
        unattributed.1, 0,
        "requests that reached no release: {}",
        summary["failures"]
    );
}

async fn recorded_pids(store: &SqlStore) -> Vec<u32> {
    use sqlx::Row;
    sqlx::query("SELECT pid FROM processes")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64, _>("pid") as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_autopilot_carries_on_where_it_stopped() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (config, creds, config_path) = prepare(dir.path());
    let repo = dir.path().join("repo");
    let v1 = String::from_utf8(
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let log1 = dir.path().join("up1.log");
    let mut first = up(&config_path, &log1);
    let show = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let store = store_of(&config.data_dir).await;
    wait_for("v1 promoted in prod", Duration::from_secs(60), || async {
        matches!(
            phase(&store, "prod", &v1).await,
            Some((_, Phase::Promoted { .. }))
        )
        .then_some(())
    })
    .await;
    // traffic through the proxy (HTTPS, credentials), as users would send it
    let seen = std::sync::Arc::new(std::sync::Mutex::new(demo::Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let creds = std::sync::Arc::new(creds);
    let traffic = tokio::spawn(demo::traffic(config.clone(), creds, seen.clone(), stop_rx));
    let v2 = demo::commit(&repo, "v2", 0.0, "v2").unwrap();
    let (r2, _) = wait_for("v2 a canary in staging", Duration::from_secs(90), || async {
        phase(&store, "staging", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::Canary { .. }))
    })
    .await;
    // the controller's own metrics: the canary's weight, the evidence beside its threshold
    let text = wait_for("the controller's metrics", Duration::from_secs(10), || {
        let url = format!("http://{}/metrics", config.admin);
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            text.contains("autopilot_objective_evidence{service=\"shop\",environment=\"staging\"")
                .then_some(text)
        }
    })
    .await;
    for family in [
        "autopilot_rollout_phase{",
        "autopilot_objective_evidence{",
        "autopilot_objective_evidence_threshold{",
        "autopilot_objective_verdict{",
        "autopilot_objective_bad_ratio{",
        "autopilot_ticks_total ",
        "autopilot_proxy_requests_total{",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    common::promtool_check(&text);
    let before = store.transitions(Some(demo::SERVICE)).await.unwrap();
    let pids = recorded_pids(&store).await;
    assert!(pids.len() >= 6, "stable and canary instances: {pids:?}");
    // SIGKILL: nothing is cleaned up by the dying process
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        pids.iter().any(|p| alive(*p)),
        "the killed autopilot's services run on, orphaned"
    );

    let log2 = dir.path().join("up2.log");
    let second = up(&config_path, &log2);
    // the orphans are stopped at start
    wait_for("the orphans stopped", Duration::from_secs(30), || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    // the rollout goes on from its recorded phase to prod
    wait_for(
        "v2 promoted in prod after the restart",
        Duration::from_secs(120),
        || async {
            matches!(
                phase(&store, "prod", &v2).await,
                Some((_, Phase::Promoted { .. }))
            )
            .then_some(())
        },
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = traffic.await;
    let after = store.transitions(Some(demo::SERVICE)).await.unwrap();
    // nothing recorded before the kill was lost, and no transition was repeated
    assert_eq!(&after[..before.len()], &before[..], "{}", show(&log2));
    let mut seen_keys = std::collections::BTreeSet::new();
    for t in &after {
        let t = &t.transition;
        if t.to != "canary" {
            assert!(
                seen_keys.insert((t.environment.clone(), t.release.clone(), t.to)),
                "repeated transition {t:?}"
            );
        }
    }
    // staging carried on from its canary: no new rollout of v2 there after the restart
    assert_eq!(
        after
            .iter()
            .filter(|t| t.transition.environment == "staging"
                && t.transition.release == r2
                && t.transition.from.is_none())
            .count(),
        1
    );
    // each commit built once
    let builds = store.builds(Some(demo::SERVICE)).await.unwrap();
    assert_eq!(builds.len(), 2, "{builds:?}");
    // healthy traffic never failed (requests that found no autopilot while it was down, `-`,
    // are the price of an in-process proxy)
    let stats = seen.lock().unwrap().by_release.clone();
    for (release, (n, bad)) in stats.iter().filter(|(r, _)| r.as_str() != "-") {
        assert_eq!(*bad, 0, "{release}: {bad} of {n} failed\n{}", show(&log2));
    }
    // a clean stop (SIGTERM) leaves no service process behind
    let running = recorded_pids(&store).await;
    assert!(!running.is_empty());
    let mut second = second;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("autopilot to stop", Duration::from_secs(30), || {
        let s = second.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "{}", show(&log2));
    for p in running {
        assert!(!alive(p), "service process {p} outlived autopilot");
    }
    assert!(recorded_pids(&store).await.is_empty());
}

/// A git repository with one commit whose build runs `command`.
fn repo_with(dir: &Path, command: &str) -> (autopilot::spec::objectives::ServiceSpec, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("app.txt"), "hello\n").unwrap();
    let git = |args: &[&str]| git_in(&repo, args);
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    let commit = git(&["rev-parse", "HEAD"]);
    let yaml = format!(
        "apiVersion: autopilot/v1\nkind: Service\nname: svc\nsource: {{repository: {}}}\n\
         build: {{command: \"{command}\", artifact: {{files: [out]}}, timeout: 2s}}\n\
         run: {{command: x}}\nenvironments: [{{name: dev}}]\ncontroller: c\nobjectives: []\n",
        repo.display()
    );
    let spec: autopilot::spec::objectives::ServiceSpec =
        autopilot::spec::parse_document("svc.yaml", &yaml).unwrap();
    (spec, commit)
}

async fn finished(b: &mut LocalBuilder) -> Vec<(String, BuildOutcome)> {
    wait_for("the build to finish", Duration::from_secs(20), || {
        let mut b = b.clone();
        async move {
            let e = b.events("svc").await.unwrap();
            (!e.finished.is_empty()).then_some(e.finished)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_packs_its_files_once_and_a_failing_or_hung_build_keeps_its_output() {
    for (command, expect) in [
        ("mkdir -p out && cp app.txt out/ && echo built it", Ok("built it")),
        ("echo about to fail; echo oops >&2; exit 3", Err("oops")),
        ("echo started; sleep 30", Err("timed out")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (spec, commit) = repo_with(dir.path(), command);
        let store = SqlStore::open_dir(&dir.path().join("data")).await.unwrap();
        let mut b = LocalBuilder::new(
            &[spec],
            &Default::default(),
            dir.path(),
            &dir.path().join("data"),
            store.clone(),
        )
        .await
        .unwrap();
        let first = b.events("svc").await.unwrap();
        assert_eq!(
            first.pushes,
            vec![commit.clone()],
            "the first look reports the tip"
        );
        b.start_build("svc", &commit, &[]).await.unwrap();
        // asking again (a replayed tick) builds nothing more
        b.start_build("svc", &commit, &[]).await.unwrap();
        let done = finished(&mut b).await;
        assert_eq!(done.len(), 1);
        let builds = store.builds(Some("svc")).await.unwrap();
        assert_eq!(builds.len(), 1);
        match (expect, &done[0].1) {
            (Ok(out), BuildOutcome::Built(release)) => {
                assert!(builds[0].output.contains(out), "{:?}", builds[0].output);
                assert_eq!(release.commit, commit);
                assert!(
                    dir.path()
                        .join("data/artifacts/blobs/sha256")
                        .join(&release.digest[7..])
                        .exists()
                );
            }
            (Err(out), BuildOutcome::Failed { reason }) => {
                let text = format!("{} {reason}", builds[0].output);
                assert!(text.contains(out), "{text}");
                assert_eq!(builds[0].status, "failed");
            }
            (want, got) => panic!("{command}: wanted {want:?}, got {got:?}"),
        }
        // acknowledged events do not come again; a new commit does
        let cursor = b.events("svc").await.unwrap().cursor;
        b.ack("svc", &cursor).await.unwrap();
        let again = b.events("svc").await.unwrap();
        assert!(again.pushes.is_empty() && again.finished.is_empty(), "{again:?}");
    }
}

/// Packs a release whose run command is `command` (with the sample service's behaviour file).
async fn runtime_with(dir: &Path, command: &str, replicas: u32) -> (LocalRuntime, Release) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("dist")).unwrap();
    std::fs::write(src.join("dist/behaviour"), "errors = 0\nmessage = hi\n").unwrap();
    let store = SqlStore::open_dir(&dir.join("data")).await.unwrap();
    let layout = autopilot::release::oci::Layout::open(&dir.join("data/artifacts")).unwrap();
    let digest = layout.pack(&src, &["dist".into()], "t").unwrap();
    let yaml = format!(
        "apiVersion: autopilot/v1\nkind: Service\nname: svc\nsource: {{repository: .}}\n\
         build: {{command: x, artifact: {{files: [dist]}}}}\n\
         run: {{command: \"{command}\", replicas: {replicas}}}\nenvironments: [{{name: dev}}]\ncontroller: c\nobjectives: []\n"
    );
    let spec: autopilot::spec::objectives::ServiceSpec =
        autopilot::spec::parse_document("svc.yaml", &yaml).unwrap();
    let rt = LocalRuntime::new(&[spec], layout, &dir.join("data"), store.pool().clone())
        .await
        .unwrap()
        .with_grace(Duration::from_secs(2));
    let release = Release {
        id: "r1".into(),
        commit: "c".into(),
        digest,
    };
    (rt, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_become_ready_restart_after_a_crash_and_stop_on_retire() {
    let dir = tempfile::tempdir().unwrap();
    // a slow start: ready only once the service listens
    let (mut rt, release) = runtime_with(
        dir.path(),
        &format!("sleep 0.5; exec {EXE} sample-service dist/behaviour"),
        2,
    )
    .await;
    rt.deploy("svc", "dev", &release).await.unwrap();
    rt.deploy("svc", "dev", &release).await.unwrap();
    let ready = |rt: &LocalRuntime| {
        let mut rt = rt.clone();
        async move {
            let i = rt.instances("svc").await.unwrap();
            i.get(&("dev".into(), "r1".into())).cloned()
        }
    };
    let r = ready(&rt).await.unwrap();
    assert_eq!((r.desired, r.failed), (2, false), "two instances, deployed once");
    wait_for("two ready instances", Duration::from_secs(20), || async {
        ready(&rt).await.filter(|r| r.ready == 2).map(|_| ())
    })
    .await;
    let endpoints = rt.endpoints("svc", "dev", "r1");
    let answer = reqwest::get(format!("http://{}/", endpoints[0])).await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "hi\n");
    // a crash: the instance is restarted on the same port and becomes ready again
    let pids = rt.pids();
    let victim = pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    wait_for("a restarted instance", Duration::from_secs(20), || async {
        let now = rt.pids();
        (!now.contains(&victim) && now.len() == 2).then_some(())
    })
    .await;
    wait_for("ready again", Duration::from_secs(20), || async {
        ready(&rt).await.filter(|r| r.ready == 2 && !r.failed).map(|_| ())
    })
    .await;
    assert_eq!(rt.endpoints("svc", "dev", "r1"), endpoints);
    // retire: SIGTERM, and the processes are gone
    let pids = rt.pids();
    rt.retire("svc", "dev", "r1").await.unwrap();
    for p in pids {
        assert!(!alive(p), "{p} still runs after retire");
    }
    assert!(rt.instances("svc").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_keeps_crashing_is_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, release) = runtime_with(dir.path(), "echo cannot start >&2; exit 1", 1).await;
    rt.deploy("svc", "dev", &release).await.unwrap();
    wait_for("a crash loop", Duration::from_secs(20), || {
        let mut rt = rt.clone();
        async move {
            let i = rt.instances("svc").await.unwrap();
            i.get(&("dev".into(), "r1".into()))
                .filter(|r| r.failed && r.ready == 0)
                .map(|_| ())
        }
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("data/logs/svc-dev-r1-0.log")).unwrap();
    assert!(log.contains("cannot start"), "{log}");
    rt.stop_all().await;
}

fn up_once(config_text: &str, dir: &Path) -> (Option<i32>, String) {
    let path = dir.join("autopilot.yaml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(EXE)
        .args(["up", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_refuses_to_start_on_bad_specs_a_bad_config_a_busy_port_or_an_unwritable_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = prepare(dir.path());
    let base = serde_json::to_value(&config).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v[key] = value;
        serde_json::to_string_pretty(&v).unwrap()
    };
    // a mistake in the configuration: its place, and nothing started
    let (code, err) = up_once(
        "apiVersion: autopilot/v1\nkind: Autopilot\ntick: soon\nlistn: 127.0.0.1:1\n",
        dir.path(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("autopilot.yaml:3:") && err.contains("autopilot.yaml:4:"),
        "{err}"
    );
    // a broken objectives file: every problem with file:line:column
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("svc.yaml"),
        "apiVersion: autopilot/v1\nkind: Service\nname: svc\nsource: {repository: .}\nbuild: {command: x, artifact: {files: [a]}}\nrun: {command: x}\nenvironments: [{name: dev}]\ncontroller: nope\nobjectives: []\n",
    )
    .unwrap();
    let (code, err) = up_once(&with("specs", serde_json::json!([broken])), dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("svc.yaml:8:"), "{err}");
    // the proxy's port taken by someone else
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = up_once(&with("listen", serde_json::json!(addr)), dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&addr) && err.contains("proxy"), "{err}");
    // a data directory that cannot be made (its parent is a file)
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, err) = up_once(&with("dataDir", serde_json::json!(file.join("data"))), dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("data directory") && err.contains("a-file"), "{err}");
    // nothing was started: no store in the real data directory
    assert!(!config.data_dir.join("autopilot.db").exists());
    // Kubernetes: what it could not run is refused at start, with why
    let (code, err) = up_once(
        &with("runtime", serde_json::json!({"kubernetes": {}})),
        dir.path(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("`shop` builds files") && err.contains("runtime.kubernetes.files"),
        "{err}"
    );
    let mut v = base.clone();
    v["registry"] = serde_json::json!({"host": "127.0.0.1:9"});
    v["runtime"] = serde_json::json!({"kubernetes": {
        "cluster": {"kubeconfig": dir.path().join("no-such-kubeconfig")},
        "files": {"image": "debian:bookworm-slim", "fetcher": "registry.example.com/autopilot:0.1"}}});
    let (code, err) = up_once(&serde_json::to_string_pretty(&v).unwrap(), dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("runtime.kubernetes: the cluster of `dev`") && err.contains("no-such-kubeconfig"),
        "{err}"
    );
}

/// Runs the CLI against a running `autopilot up`; (exit code, stdout, stderr).
fn cli(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(EXE)
        .args(args)
        .env("AUTOPILOT_URL", url)
        .env("AUTOPILOT_TOKEN", token)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_from_the_cli_changes_what_the_loop_does_next_and_is_audited() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let Running {
        config,
        repo,
        base: url,
        token,
        store,
        v1,
        log,
        up: _up,
        ..
    } = running(dir.path(), "dev").await;
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    // regression: the proxy admin token was printed in clear at every start; it is in a file
    // only its owner reads, and the log names the file
    let admin_token = config.data_dir.join("proxy-admin.token");
    let secret = std::fs::read_to_string(&admin_token).unwrap();
    assert!(secret.trim().len() >= 32, "{secret}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!show().contains(secret.trim()), "the token is in the log");
    assert!(show().contains("proxy-admin.token"), "{}", show());
    // no webhook secret configured: push webhooks are off, and the start says so
    assert!(show().contains("push webhooks are refused"), "{}", show());
    let v2 = demo::commit(&repo, "v2", 0.0, "v2").unwrap();
    wait_for("v2 a canary in dev", Duration::from_secs(60), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::Canary { .. }))
    })
    .await;

    // pause from the CLI: the loop holds the canary from its next tick, and says who did it
    let (code, out, err) = cli(
        &url,
        &token,
        &["pause", "shop", "dev", "--reason", "checking the graphs"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pause shop dev: done"), "{out}");
    let held = wait_for("the loop to pause v2 in dev", Duration::from_secs(20), || async {
        phase(&store, "dev", &v2).await.filter(|(_, p)| {
            matches!(
                p,
                Phase::Paused {
                    by_operator: true,
                    ..
                }
            )
        })
    })
    .await;
    let paused_at = held.1.weight();

    // discovery: the public URL; stable and canary with their shares and ready endpoints,
    // which are the addresses the proxy routes to and answer when called directly
    let v1_id = phase(&store, "dev", &v1).await.unwrap().0;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let r = http
                .get(format!("{url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (code, d) = get("/v1/discovery/shop/dev".into()).await;
    assert_eq!(code, 200, "{d}");
    let (scheme, port) = match config.tls_listen {
        Some(t) => ("https", t.port()),
        None => ("http", config.listen.port()),
    };
    assert_eq!(
        d["url"],
        format!("{scheme}://shop.dev.{}:{port}/", config.domain),
        "{d}"
    );
    let releases = d["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2, "{d}");
    assert_eq!(
        (
            &releases[0]["release"],
            &releases[0]["role"],
            &releases[0]["weight"]
        ),
        (&json!(v1_id), &json!("stable"), &json!(100 - paused_at.0)),
        "{d}"
    );
    assert_eq!(
        (
            &releases[1]["release"],
            &releases[1]["role"],
            &releases[1]["weight"]
        ),
        (&json!(held.0), &json!("canary"), &json!(paused_at.0)),
        "{d}"
    );
    for r in releases {
        let endpoints = r["endpoints"].as_array().unwrap();
        assert!(!endpoints.is_empty(), "{d}");
        for e in endpoints {
            let answer = http
                .get(format!("http://{}/healthz", e.as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{e} answers");
        }
    }
    let (code, one) = get(format!("/v1/discovery/shop/dev/{}", held.0)).await;
    assert_eq!((code, &one), (200, &releases[1]));
    let (code, e) = get("/v1/discovery/shop/dev/r000000000000".into()).await;
    assert_eq!((code, e["field"].as_str()), (404, Some("path.release")), "{e}");
    let (code, e) = get("/v1/discovery/shop/qa".into()).await;
    assert_eq!(
        (code, e["field"].as_str()),
        (404, Some("path.environment")),
        "{e}"
    );
    let (code, out, _) = cli(&url, &token, &["status", "shop", "--output", "json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dev = &status["services"][0]["environments"][0];
    assert_eq!(dev["rollout"]["state"], "paused", "{out}");
    assert_eq!(dev["overrides"]["paused"]["who"], "admin");
    let (_, table, _) = cli(&url, &token, &["status"]);
    assert!(table.contains("SERVICE") && table.contains("paused"), "{table}");
    // held: still paused at the same weight a few ticks later
    let ticks = || async {
        let text = reqwest::get(format!("http://{}/metrics", config.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let line = text.lines().find(|l| l.starts_with("autopilot_ticks_total "))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    let seen = wait_for("the tick count", Duration::from_secs(10), ticks).await;
    wait_for("more ticks", Duration::from_secs(20), || async {
        ticks().await.filter(|t| *t >= seen + 4.0)
    })
    .await;
    let (_, still) = phase(&store, "dev", &v2).await.unwrap();
    assert!(
        matches!(still, Phase::Paused { .. }) && still.weight() == paused_at,
        "{still:?}"
    );
    // the audit trail says who, what and why
    let (_, out, _) = cli(&url, &token, &["audit", "--service", "shop", "--output", "json"]);
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(audit["items"][0]["action"], "pause");
    assert_eq!(audit["items"][0]["who"], "admin");
    assert_eq!(audit["items"][0]["reason"], "checking the graphs");
    assert_eq!(audit["items"][0]["origin"], "127.0.0.1");

    // resume: the canary moves on; a second resume is a conflict (exit 4)
    let (code, out, err) = cli(
        &url,
        &token,
        &["resume", "shop", "dev", "--reason", "graphs are fine"],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_for("v2 to move on in dev", Duration::from_secs(60), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| !matches!(p, Phase::Paused { .. }))
    })
    .await;
    let (code, _, err) = cli(&url, &token, &["resume", "shop", "dev", "--reason", "again"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("409"), "{err}");

    // exit codes scripts rely on
    assert_eq!(
        cli(&url, &token, &["promote", "shop", "nowhere", "--reason", "x"]).0,
        3
    );
    assert_eq!(cli(&url, "ap_wrong", &["status"]).0, 5);
    assert_eq!(cli("http://127.0.0.1:1", &token, &["status"]).0, 6);
    assert_eq!(
        cli(&url, &token, &["weight", "shop", "dev", "150", "--reason", "x"]).0,
        2
    );
    let (code, out, _) = cli(
        &url,
        &token,
        &["token", "create", "vic", "--role", "viewer", "--output", "json"],
    );
    assert_eq!(code, 0);
    let viewer = serde_json::from_str::<serde_json::Value>(&out).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        cli(&url, &viewer, &["pause", "shop", "prod", "--reason", "x"]).0,
        5
    );
    assert_eq!(cli(&url, &viewer, &["status"]).0, 0);

    // the releases, one release's story and its build output
    let (code, out, _) = cli(&url, &token, &["release", "list", "shop", "--output", "json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let newest = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["items"][0]["commit"], v2.as_str());
    let (code, view, _) = cli(&url, &token, &["release", "view", &newest]);
    assert_eq!(code, 0);
    assert!(view.contains("dev attempt 1"), "{view}");
    assert!(view.contains("artifact oci-layout:artifacts@sha256:"), "{view}");
    assert!(view.contains("pause dev") || view.contains("dev pause"), "{view}");
    let (code, logs, _) = cli(&url, &token, &["release", "logs", &newest]);
    assert_eq!(code, 0);
    let stored = store.builds(Some("shop")).await.unwrap();
    let build = stored.iter().find(|b| b.commit == v2).unwrap();
    assert_eq!(logs, build.output);

    // a hotfix: a commit on another branch, built on request, becomes a release marked so
    let sh = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    sh(&["checkout", "-q", "-b", "hotfix", &v1]);
    std::fs::write(repo.join("HOTFIX"), "1").unwrap();
    sh(&["add", "HOTFIX"]);
    sh(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "-m",
        "hotfix",
    ]);
    let hotfix = sh(&["rev-parse", "HEAD"]);
    sh(&["checkout", "-q", "main"]);
    let (code, out, err) = cli(
        &url,
        &token,
        &["build", "shop", "--commit", &hotfix[..10], "--reason", "cve fix"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let built = wait_for("the hotfix release", Duration::from_secs(60), || async {
        let (_, out, _) = cli(&url, &token, &["release", "list", "shop", "--output", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|r| r["commit"] == hotfix.as_str())
            .cloned()
    })
    .await;
    assert_eq!(built["source"], "request by admin", "{built}\n{}", show());
}

/// `autopilot up` on PostgreSQL: the whole loop (builds, processes, states, the API) keeps its
/// records in a real server instead of SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_up_runs_on_a_postgresql_store() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg = autopilot::store::postgres::TempPostgres::start()
        .expect("PostgreSQL starts (scripts/test installs it)");
    let url = pg.database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _creds, config_path) = prepare(dir.path());
    config.store = Some(url.clone());
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let log = dir.path().join("up.log");
    let mut child = up(&config_path, &log);
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    let store = SqlStore::open(&url).await.unwrap();
    let head = Command::new("git")
        .arg("-C")
        .arg(dir.path().join("repo"))
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let v1 = String::from_utf8(head.stdout).unwrap().trim().to_owned();
    wait_for(
        "v1 promoted in prod, recorded in PostgreSQL",
        Duration::from_secs(90),
        || async {
            matches!(
                phase(&store, "prod", &v1).await,
                Some((_, Phase::Promoted { .. }))
            )
            .then_some(())
        },
    )
    .await;
    assert!(!config.data_dir.join("autopilot.db").exists(), "SQLite was used");
    let builds = store.builds(Some(demo::SERVICE)).await.unwrap();
    assert_eq!(builds.len(), 1, "{}", show());
    assert!(!recorded_pids(&store).await.is_empty(), "the runtime's records");
    // the API reads the same store
    let token = std::fs::read_to_string(config.data_dir.join("admin.token")).unwrap();
    let (code, out, err) = cli(
        &format!("http://{}", config.api.listen),
        &token,
        &["release", "list", "shop", "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&v1), "{out}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = wait_for("autopilot to stop", Duration::from_secs(30), || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "{}", show());
    assert!(
        recorded_pids(&store).await.is_empty(),
        "a clean stop leaves no process record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_follows_releases_a_real_prometheus_finds_each_new_release() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Prometheus configured once, with file-based discovery of the file `up` writes
    let prom = autopilot::prom::server::TempPrometheus::start(
        Duration::from_millis(500),
        "  - job_name: autopilot-releases\n    file_sd_configs:\n      - files: ['{dir}/targets/*.json']\n        refresh_interval: 1s\n",
    )
    .expect("prometheus starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _creds, config_path) = prepare(dir.path());
    let mut settings = autopilot::prom::PromSettings::at(&prom.url());
    settings.file_sd = Some(prom.dir().join("targets/autopilot.json"));
    config.prometheus = Some(settings);
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let log = dir.path().join("up.log");
    let _child = up(&config_path, &log);
    let client = autopilot::prom::PromSettings::at(&prom.url()).client().unwrap();
    // v1 starts in dev: Prometheus finds its instance, labelled, with no change to its config
    // (this wait timed out once in a full run, with nothing to tell why: it now says what `up`
    // logged and wrote, and what Prometheus saw)
    let why = {
        let (log, targets) = (log.clone(), prom.dir().join("targets/autopilot.json"));
        let url = prom.url();
        move || {
            let seen = std::process::Command::new("curl")
                .args(["-s", &format!("{url}/api/v1/targets")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            format!(
                "targets file: {:?}\nPrometheus targets: {seen}\nup.log (last 60 lines):\n{tail}",
                std::fs::read_to_string(&targets).ok()
            )
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let found = loop {
        let attempt = {
            let client = client.clone();
            async move {
                let targets = client.targets(None).await.ok()?;
                targets
                    .active()
                    .iter()
                    .find(|t| {
                        let l = t.labels();
                        l.get("service").map(String::as_str) == Some("shop")
                            && l.get("environment").map(String::as_str) == Some("dev")
                            && l.get("release").is_some_and(|r| !r.is_empty())
                    })
                    .map(|t| (t.labels().clone(), t.scrape_url().to_string()))
            }
        };
        if let Some(found) = attempt.await {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus did not find the release in dev within 90 s\n{}",
            why()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        found.1.starts_with("http://127.0.0.1:"),
        "the instance's own address: {found:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let written = std::fs::read_to_string(prom.dir().join("targets/autopilot.json")).unwrap();
    assert!(written.contains(&found.0["release"]), "{written}");
}

/// `skopeo inspect --raw` of an image reference (`docker://…`, `oci:…`): the manifest's bytes.
fn skopeo_raw(target: &str) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", target])
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d: [u8; 32] = sha2::Sha256::digest(bytes).into();
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_pushed_to_a_real_registry_comes_back_byte_for_byte_and_standard_tools_read_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = TempRegistry::start().expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("app.txt"), "hello\n").unwrap();
    // a megabyte of seeded noise: a layer that does not fit in one chunk
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let noise: Vec<u8> = (0..1 << 20).map(|_| rand::Rng::random::<u8>(&mut rng)).collect();
    std::fs::write(src.join("bin/blob"), &noise).unwrap();
    let layout = oci::Layout::open(&dir.path().join("layout")).unwrap();
    let digest = layout
        .pack(&src, &["app.txt".into(), "bin".into()], "shop:c1")
        .unwrap();
    let r = Registry::new(&registry.host(), "team", Credentials::Anonymous).unwrap();
    let reference = r.push(&layout, "shop", &digest, "c1").await.unwrap();
    assert_eq!(reference, format!("{}/team/shop@{digest}", registry.host()));
    // again: nothing to send, the same answer
    assert_eq!(r.push(&layout, "shop", &digest, "c1").await.unwrap(), reference);
    // pulled back by digest into another layout: the same manifest and blobs, byte for byte
    let other = oci::Layout::open(&dir.path().join("other")).unwrap();
    assert_eq!(r.pull(&reference, &other, "shop:c1").await.unwrap().0, digest);
    let (manifest, blobs) = layout.parts(&digest).unwrap();
    let (manifest2, blobs2) = other.parts(&digest).unwrap();
    assert_eq!(manifest, manifest2);
    assert_eq!(blobs, blobs2);
    for b in &blobs {
        assert_eq!(layout.blob(&b.digest).unwrap(), other.blob(&b.digest).unwrap());
    }
    let unpacked = dir.path().join("unpacked");
    other.unpack(&digest, &unpacked).unwrap();
    assert_eq!(std::fs::read(unpacked.join("bin/blob")).unwrap(), noise);
    // standard tools read both: the registry's copy by digest, the layout by name
    assert_eq!(sha256_of(&skopeo_raw(&format!("docker://{reference}"))), digest);
    let tagged = skopeo_raw(&format!("docker://{}/team/shop:c1", registry.host()));
    assert_eq!(
        sha256_of(&tagged),
        digest,
        "the commit's tag names the same manifest"
    );
    let local = skopeo_raw(&format!("oci:{}:shop:c1", dir.path().join("layout").display()));
    assert_eq!(sha256_of(&local), digest);
    // refused: a tag (it may move), and a digest the registry does not hold
    let e = r
        .pull(&format!("{}/team/shop:c1", registry.host()), &other, "x")
        .await
        .unwrap_err();
    assert!(e.message.contains("names no digest") && !e.transient, "{e}");
    let missing = format!("{}/team/shop@sha256:{}", registry.host(), "0".repeat(64));
    assert!(r.pull(&missing, &other, "x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_is_a_release_only_once_its_artifact_is_in_the_registry_which_is_retried_until_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = TempRegistry::start().expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let (spec, commit) = repo_with(dir.path(), "mkdir -p out && cp app.txt out/ && echo built it");
    let data = dir.path().join("data");
    let store = SqlStore::open_dir(&data).await.unwrap();
    // the registry is down when the build ends
    registry.stop();
    let r = Registry::new(&registry.host(), "autopilot", Credentials::Anonymous).unwrap();
    let mut b = LocalBuilder::with_registry(
        std::slice::from_ref(&spec),
        &Default::default(),
        dir.path(),
        &data,
        store.clone(),
        Some(r.clone()),
    )
    .await
    .unwrap();
    b.events("svc").await.unwrap();
    b.start_build("svc", &commit, &[]).await.unwrap();
    let pushing = wait_for("a failed push recorded", Duration::from_secs(20), || async {
        let builds = store.builds(Some("svc")).await.unwrap();
        builds
            .into_iter()
            .find(|x| x.status == "pushing" && x.output.contains("push failed"))
    })
    .await;
    assert!(
        pushing.output.contains("built it"),
        "the build's own output stays: {}",
        pushing.output
    );
    assert!(pushing.artifact.is_none());
    // not a release yet: nothing finished
    assert!(b.events("svc").await.unwrap().finished.is_empty());
    // autopilot restarts while the registry is still down; then the registry comes back
    drop(b);
    let mut b = LocalBuilder::with_registry(
        &[spec],
        &Default::default(),
        dir.path(),
        &data,
        store.clone(),
        Some(r),
    )
    .await
    .unwrap();
    registry.resume().unwrap();
    let done = wait_for("the push to succeed", Duration::from_secs(120), || {
        let mut b = b.clone();
        async move {
            let e = b.events("svc").await.unwrap();
            (!e.finished.is_empty()).then_some(e.finished)
        }
    })
    .await;
    let BuildOutcome::Built(release) = &done[0].1 else {
        panic!("{done:?}")
    };
    let build = store.builds(Some("svc")).await.unwrap().remove(0);
    assert_eq!(build.status, "built");
    let reference = build.artifact.clone().expect("the registry reference is kept");
    assert_eq!(
        reference,
        format!("{}/autopilot/svc@{}", registry.host(), release.digest)
    );
    assert!(build.output.contains("pushed"), "{}", build.output);
    assert_eq!(
        sha256_of(&skopeo_raw(&format!("docker://{reference}"))),
        release.digest
    );
    let cursor = b.events("svc").await.unwrap().cursor;
    b.ack("svc", &cursor).await.unwrap();
}

/// Runs git in `dir` as a person would (author set), asserting it worked; its stdout.
fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A developer's clone (`dir/repo`, one commit), the bare remote it pushes to
/// (`dir/origin.git`, over file://), and a builder of `svc` following that remote.
struct Remote {
    first: String,
    work: std::path::PathBuf,
    origin: std::path::PathBuf,
    data: std::path::PathBuf,
    store: SqlStore,
    b: LocalBuilder,
}

async fn with_remote(dir: &Path, poll: &str) -> Remote {
    let (_, first) = repo_with(dir, "mkdir -p out && cp app.txt out/");
    let work = dir.join("repo");
    let origin = dir.join("origin.git");
    git_in(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            &work.to_string_lossy(),
            &origin.to_string_lossy(),
        ],
    );
    git_in(&work, &["remote", "add", "origin", &origin.to_string_lossy()]);
    let yaml = format!(
        "apiVersion: autopilot/v1\nkind: Service\nname: svc\nsource: {{repository: \"file://{}\", pollInterval: {poll}}}\n\
         build: {{command: \"mkdir -p out && cp app.txt out/\", artifact: {{files: [out]}}, timeout: 10s}}\n\
         run: {{command: x}}\nenvironments: [{{name: dev}}]\ncontroller: c\nobjectives: []\n",
        origin.display()
    );
    let spec: autopilot::spec::objectives::ServiceSpec =
        autopilot::spec::parse_document("svc.yaml", &yaml).unwrap();
    let data = dir.join("data");
    let store = SqlStore::open_dir(&data).await.unwrap();
    let b = LocalBuilder::new(&[spec], &Default::default(), dir, &data, store.clone())
        .await
        .unwrap();
    Remote {
        first,
        work,
        origin,
        data,
        store,
        b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_repository_is_mirrored_fetched_each_interval_and_retried_while_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // a developer's clone, and the remote they push to (a bare repository, over file://)
    let Remote {
        first,
        work,
        origin,
        data,
        store,
        mut b,
    } = with_remote(dir.path(), "1s").await;
    // the first look fetches the remote into a mirror, and builds from it
    let e = b.events("svc").await.unwrap();
    assert_eq!(e.pushes, vec![first.clone()]);
    b.ack("svc", &e.cursor).await.unwrap();
    assert!(data.join("mirrors/svc.git/HEAD").exists());
    b.start_build("svc", &first, &[]).await.unwrap();
    let done = finished(&mut b).await;
    assert!(matches!(done[0].1, BuildOutcome::Built(_)), "{done:?}");
    // a push to the remote is seen at the next interval
    std::fs::write(work.join("app.txt"), "two\n").unwrap();
    git_in(&work, &["commit", "-qam", "two"]);
    git_in(&work, &["push", "-q", "origin", "main"]);
    let second = git_in(&work, &["rev-parse", "HEAD"]);
    let seen = wait_for("the push fetched", Duration::from_secs(20), || {
        let mut b = b.clone();
        let second = second.clone();
        async move {
            let e = b.events("svc").await.unwrap();
            (e.pushes == [second]).then_some(e)
        }
    })
    .await;
    b.ack("svc", &seen.cursor).await.unwrap();
    // the remote goes away: looks go on from the mirror, and the builder says what is wrong
    let away = dir.path().join("away.git");
    std::fs::rename(&origin, &away).unwrap();
    let problem = wait_for("the fetch to fail", Duration::from_secs(20), || {
        let mut b = b.clone();
        async move {
            let e = b.events("svc").await.unwrap();
            assert!(e.pushes.is_empty(), "{e:?}");
            b.source_problem("svc")
        }
    })
    .await;
    assert!(
        problem.contains("origin.git") || problem.contains("does not appear"),
        "{problem}"
    );
    // back, with a hotfix on another branch: a build of that commit, asked for, is fetched and
    // resolved at once
    std::fs::rename(&away, &origin).unwrap();
    git_in(&work, &["checkout", "-qb", "hotfix", &first]);
    std::fs::write(work.join("app.txt"), "fixed\n").unwrap();
    git_in(&work, &["commit", "-qam", "hotfix"]);
    git_in(&work, &["push", "-q", "origin", "hotfix"]);
    let fix = git_in(&work, &["rev-parse", "HEAD"]);
    sqlx::query("INSERT INTO build_requests (service, commit_sha, who, reason, at) VALUES ('svc', $1, 'ann', 'hotfix', 0)")
        .bind(&fix[..10])
        .execute(store.pool())
        .await
        .unwrap();
    let e = b.events("svc").await.unwrap();
    assert_eq!(
        e.requested,
        vec![fix.clone()],
        "the request names a commit fetched just now"
    );
    assert!(b.source_problem("svc").is_none());
}

/// Regression: a push webhook's `after` was built as it came, so a signed or replayed delivery
/// naming a commit of an unmerged branch put unreviewed code in front of users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_webhook_is_a_hint_to_fetch_the_branch_and_builds_its_tip_never_the_claimed_commit() {
    use autopilot::control::time::Time;
    use autopilot::store::api::{AuditEntry, Effect, Mutated};
    let dir = tempfile::tempdir().unwrap();
    // polled once an hour: only the webhook's hint can make the builder fetch in this test
    let Remote {
        first,
        work,
        origin: _,
        data: _,
        store,
        mut b,
    } = with_remote(dir.path(), "1h").await;
    let e = b.events("svc").await.unwrap();
    assert_eq!(e.pushes, vec![first.clone()]);
    b.ack("svc", &e.cursor).await.unwrap();
    // an unreviewed commit on a branch nobody merged, and a reviewed one merged to main
    git_in(&work, &["checkout", "-qb", "unmerged", &first]);
    std::fs::write(work.join("app.txt"), "evil\n").unwrap();
    git_in(&work, &["commit", "-qam", "unreviewed"]);
    git_in(&work, &["push", "-q", "origin", "unmerged"]);
    let unreviewed = git_in(&work, &["rev-parse", "HEAD"]);
    git_in(&work, &["checkout", "-q", "main"]);
    std::fs::write(work.join("app.txt"), "two\n").unwrap();
    git_in(&work, &["commit", "-qam", "two"]);
    git_in(&work, &["push", "-q", "origin", "main"]);
    let tip = git_in(&work, &["rev-parse", "HEAD"]);
    // nothing fetched yet: the poll is an hour away
    let e = b.events("svc").await.unwrap();
    assert!(e.pushes.is_empty() && e.requested.is_empty(), "{e:?}");
    // a push naming the unreviewed commit, as the webhook records it
    let hint = |delivery: &str| {
        let delivery = delivery.to_owned();
        let store = store.clone();
        let unreviewed = unreviewed.clone();
        async move {
            store
                .mutate(
                    "svc",
                    None,
                    |_, _| {
                        Ok::<_, ()>(Effect::fetch(
                            AuditEntry {
                                environment: None,
                                release: None,
                                action: "push".into(),
                                detail: json!({ "claimed": unreviewed }),
                                who: "github:mallory".into(),
                                reason: "push to main".into(),
                                origin: "test".into(),
                                at: Time::from_secs(1_800_000_000),
                            },
                            delivery.clone(),
                        ))
                    },
                    |_, _, _| (202, String::new()),
                )
                .await
                .unwrap()
        }
    };
    assert!(matches!(hint("d-1").await, Mutated::Done { .. }));
    assert!(
        matches!(hint("d-1").await, Mutated::Repeated),
        "a delivery counts once"
    );
    let e = b.events("svc").await.unwrap();
    assert_eq!(e.pushes, vec![tip.clone()], "the branch's tip, fetched at once");
    assert!(e.requested.is_empty(), "nothing named by the sender: {e:?}");
    b.ack("svc", &e.cursor).await.unwrap();
    // an old delivery replayed under a new id: the tip is built already, nothing else is
    assert!(matches!(hint("d-2").await, Mutated::Done { .. }));
    let e = b.events("svc").await.unwrap();
    assert!(e.pushes.is_empty() && e.requested.is_empty(), "{e:?}");
    b.ack("svc", &e.cursor).await.unwrap();
    let builds = store.builds(Some("svc")).await.unwrap();
    assert!(
        builds.iter().all(|b| b.commit != unreviewed),
        "the unreviewed commit was never built: {builds:?}"
    );
    // an operator's build of a commit that is not there fails without naming server paths
    sqlx::query("INSERT INTO build_requests (service, commit_sha, who, reason, at) VALUES ('svc', 'deadbeef', 'ann', 'x', 0)")
        .execute(store.pool())
        .await
        .unwrap();
    let e = b.events("svc").await.unwrap();
    assert!(e.requested.is_empty(), "{e:?}");
    let failed = store.builds(Some("svc")).await.unwrap();
    let failed = failed.iter().find(|b| b.commit == "deadbeef").unwrap();
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.contains("deadbeef"), "{error}");
    assert!(
        !error.contains(&*dir.path().to_string_lossy()),
        "the error shows a server path: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_build_s_output_is_readable_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, commit) = repo_with(
        dir.path(),
        "echo compiling the first half; sleep 3; echo second half; mkdir -p out && cp app.txt out/",
    );
    spec.build.as_mut().unwrap().timeout = autopilot::spec::units::Duration(Duration::from_secs(30));
    let data = dir.path().join("data");
    let store = SqlStore::open_dir(&data).await.unwrap();
    let mut b = LocalBuilder::new(&[spec], &Default::default(), dir.path(), &data, store.clone())
        .await
        .unwrap();
    b.events("svc").await.unwrap();
    b.start_build("svc", &commit, &[]).await.unwrap();
    let partial = wait_for(
        "the first half of the output, while it runs",
        Duration::from_secs(20),
        || async {
            let builds = store.builds(Some("svc")).await.unwrap();
            builds
                .into_iter()
                .find(|x| x.status == "running" && x.output.contains("first half"))
        },
    )
    .await;
    assert!(!partial.output.contains("second half"), "{}", partial.output);
    let done = finished(&mut b).await;
    assert!(matches!(done[0].1, BuildOutcome::Built(_)), "{done:?}");
    let build = store.builds(Some("svc")).await.unwrap().remove(0);
    assert!(
        build.output.contains("first half") && build.output.contains("second half"),
        "{}",
        build.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_asks_for_a_password_gets_it_and_a_wrong_one_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let registry = TempRegistry::start_with_htpasswd(&format!("ci:{hash}\n"))
        .expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.txt"), "hello\n").unwrap();
    let layout = oci::Layout::open(&dir.path().join("layout")).unwrap();
    let digest = layout.pack(dir.path(), &["app.txt".into()], "shop:c1").unwrap();
    let basic = |password: &str| Credentials::Basic {
        username: "ci".into(),
        password: password.into(),
    };
    let wrong = Registry::new(&registry.host(), "team", basic("guess")).unwrap();
    let e = wrong.push(&layout, "shop", &digest, "c1").await.unwrap_err();
    assert!(e.contains("team/shop"), "{e}");
    let anonymous = Registry::new(&registry.host(), "team", Credentials::Anonymous).unwrap();
    assert!(anonymous.push(&layout, "shop", &digest, "c1").await.is_err());
    let right = Registry::new(&registry.host(), "team", basic("s3cret")).unwrap();
    let reference = right.push(&layout, "shop", &digest, "c1").await.unwrap();
    let other = oci::Layout::open(&dir.path().join("other")).unwrap();
    assert_eq!(right.pull(&reference, &other, "shop:c1").await.unwrap().0, digest);
}

/// A service whose build pushes a container image itself (skopeo here, `docker buildx … --push`
/// in a real CI): autopilot pins the digest the tag names, pulls it by digest (verified) and can
/// run it; a tag that moves during the build is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_build_is_pinned_by_the_digest_its_tag_names_and_a_tag_moved_during_the_build_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = TempRegistry::start().expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // a two-platform index whose second layer deletes a file of the first (a whiteout)
    common::image::write(
        &repo.join("image"),
        &[
            &[("serve.sh", "#!/bin/sh\necho v1\n"), ("old.txt", "gone\n")],
            &[(".wh.old.txt", ""), ("app.txt", "hello\n")],
        ],
        true,
    );
    let push = "skopeo copy --quiet --all --dest-tls-verify=false --digestfile \"$AUTOPILOT_DIGEST_FILE\" \
                oci:image:latest \"docker://$AUTOPILOT_IMAGE\" && echo pushed $AUTOPILOT_IMAGE";
    std::fs::write(repo.join("build.sh"), format!("set -e\n{push}\n")).unwrap();
    let git = |args: &[&str]| git_in(&repo, args);
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    let c1 = git(&["rev-parse", "HEAD"]);
    let image_repo = format!("{}/shop/svc", registry.host());
    let yaml = format!(
        "apiVersion: autopilot/v1\nkind: Service\nname: svc\nsource: {{repository: {}}}\n\
         build: {{command: sh build.sh, artifact: {{image: {image_repo}}}, timeout: 60s}}\n\
         run: {{command: x}}\nenvironments: [{{name: dev}}]\ncontroller: c\nobjectives: []\n",
        repo.display()
    );
    let spec: autopilot::spec::objectives::ServiceSpec =
        autopilot::spec::parse_document("svc.yaml", &yaml).unwrap();
    let data = dir.path().join("data");
    let store = SqlStore::open_dir(&data).await.unwrap();
    // no `registry:` in autopilot.yaml: the build pushes where its recipe says
    let mut b = LocalBuilder::new(
        std::slice::from_ref(&spec),
        &Default::default(),
        dir.path(),
        &data,
        store.clone(),
    )
    .await
    .unwrap();
    b.events("svc").await.unwrap();
    b.start_build("svc", &c1, &[]).await.unwrap();
    let done = finished(&mut b).await;
    let BuildOutcome::Built(release) = &done[0].1 else {
        panic!("{done:?}\n{:?}", store.builds(Some("svc")).await.unwrap())
    };
    // pinned: the digest the commit's tag names in the registry (the index, every platform)
    let tagged = skopeo_raw(&format!("docker://{image_repo}:{c1}"));
    assert_eq!(sha256_of(&tagged), release.digest);
    let build = store.builds(Some("svc")).await.unwrap().remove(0);
    assert_eq!(
        build.artifact.as_deref(),
        Some(format!("{image_repo}@{}", release.digest).as_str())
    );
    assert!(
        build.output.contains("pushed") && build.output.contains("resolved to"),
        "{}",
        build.output
    );
    assert!(build.size.unwrap_or(0) > tagged.len() as i64, "{:?}", build.size);
    // pulled for this machine's platform: gzip layers applied in order, the whiteout honoured
    let unpacked = dir.path().join("unpacked");
    b.layout().unpack(&release.digest, &unpacked).unwrap();
    assert_eq!(
        std::fs::read_to_string(unpacked.join("app.txt")).unwrap(),
        "hello\n"
    );
    assert!(!unpacked.join("old.txt").exists(), "the whiteout removed old.txt");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(unpacked.join("serve.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "serve.sh stays executable");
    let cursor = b.events("svc").await.unwrap().cursor;
    b.ack("svc", &cursor).await.unwrap();

    // the next build pushes, and before autopilot looks, someone else's push moves the tag
    common::image::write(&repo.join("other"), &[&[("app.txt", "not ours\n")]], false);
    let moved = push
        .replace("oci:image:latest", "oci:other:latest")
        .replace(" --digestfile \"$AUTOPILOT_DIGEST_FILE\"", "");
    std::fs::write(repo.join("build.sh"), format!("set -e\n{push}\n{moved}\n")).unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "two"]);
    let c2 = git(&["rev-parse", "HEAD"]);
    b.start_build("svc", &c2, &[]).await.unwrap();
    let done = finished(&mut b).await;
    let BuildOutcome::Failed { reason } = &done[0].1 else {
        panic!("a moved tag must not be pinned: {done:?}")
    };
    assert!(reason.contains("moved during the build"), "{reason}");
    let failed = store
        .builds(Some("svc"))
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.commit == c2)
        .unwrap();
    assert_eq!(failed.status, "failed");
    assert!(failed.digest.is_none() && failed.artifact.is_none());
    assert!(
        failed.output.contains("pushed"),
        "the build's output is kept: {}",
        failed.output
    );
}

/// The objectives file of the demo's service made into one whose releases are built elsewhere:
/// no `source`, no `build`; `run.image` names the repository CI pushes to.
fn without_build(spec: &Path, image_repo: &str) {
    let text = std::fs::read_to_string(spec).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line == "source:" || line == "build:" {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("  ") {
            continue;
        }
        skipping = false;
        if line == "run:" {
            out.push_str(&format!("run:\n  image: {image_repo}\n"));
            continue;
        }
        if line.starts_with("  command: exec") {
            out.push_str(&format!(
                "  command: exec '{}' sample-service behaviour\n",
                common::up::EXE
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(spec, out).unwrap();
}

/// Coming from Flagger: the team's CI builds and pushes images; autopilot only judges and
/// promotes. A release is announced from the CLI by digest, pulled and verified, and rolled out;
/// a tag, an image from another repository and a digest the registry does not have are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_built_elsewhere_is_announced_from_the_cli_pulled_by_digest_and_rolled_out() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = TempRegistry::start().expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let (config, _creds, config_path) = prepare(dir.path());
    let image_repo = format!("{}/shop/shop", registry.host());
    without_build(&dir.path().join("specs/objectives/shop.yaml"), &image_repo);
    let (code, out, err) = {
        let o = Command::new(common::up::EXE)
            .args(["validate"])
            .arg(dir.path().join("specs"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "a service without build validates:\n{out}{err}");
    // CI built v1 and pushed it
    let layout = dir.path().join("ci-v1");
    common::image::write(&layout, &[&[("behaviour", "errors = 0\nmessage = v1\n")]], false);
    let d1 = common::image::push(&layout, &format!("{image_repo}:build-1"));
    let log = dir.path().join("up.log");
    let _up = up(&config_path, &log);
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    let url = format!("http://{}", config.api.listen);
    let token = wait_for("the admin token", Duration::from_secs(30), || {
        let f = config.data_dir.join("admin.token");
        async move { std::fs::read_to_string(f).ok().filter(|t| !t.is_empty()) }
    })
    .await;
    common::up::api_ready(&url).await;
    let store = SqlStore::open_dir(&config.data_dir).await.unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";

    // refused at the door, each with its reason: a tag, another repository, a build request
    let (code, out, err) = cli(
        &url,
        &token,
        &[
            "release",
            "create",
            "shop",
            "--image",
            &format!("{image_repo}:build-1"),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("names no digest"), "{err}");
    let (code, _, err) = cli(
        &url,
        &token,
        &[
            "release",
            "create",
            "shop",
            "--image",
            &format!("{}/elsewhere/shop@{d1}", registry.host()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("is not shop's repository"), "{err}");
    let (code, _, err) = cli(
        &url,
        &token,
        &["build", "shop", "--commit", "abcdef12", "--reason", "hotfix"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("has no `build`"), "{err}");

    let (code, out, err) = cli(
        &url,
        &token,
        &[
            "release",
            "create",
            "shop",
            "--image",
            &format!("{image_repo}@{d1}"),
            "--commit",
            commit,
            "--reason",
            "CI run 1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("announced"), "{out}");
    wait_for(
        "the announced release stable in dev",
        Duration::from_secs(90),
        || async {
            matches!(
                phase(&store, "dev", commit).await,
                Some((_, Phase::Promoted { .. }))
            )
            .then_some(())
        },
    )
    .await;
    let build = store.builds(Some("shop")).await.unwrap().remove(0);
    assert_eq!(build.status, "built", "{}", show());
    assert_eq!(build.digest.as_deref(), Some(d1.as_str()));
    assert_eq!(build.source, "announced by admin");
    let release = autopilot::release::release_id(&d1);
    let (code, out, _) = cli(&url, &token, &["release", "view", &release]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("artifact {image_repo}@{d1}")), "{out}");
    assert!(out.contains("size     "), "{out}");
    assert!(out.contains("announced by admin"), "{out}");

    // a digest of the right form the registry does not have: recorded as failed, never deployed
    let missing = format!("sha256:{}", "ab".repeat(32));
    let (code, out, err) = cli(
        &url,
        &token,
        &[
            "release",
            "create",
            "shop",
            "--image",
            &format!("{image_repo}@{missing}"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let failed = wait_for(
        "the missing image recorded as failed",
        Duration::from_secs(30),
        || async {
            store
                .builds(Some("shop"))
                .await
                .unwrap()
                .into_iter()
                .find(|b| b.commit == missing && b.status == "failed")
        },
    )
    .await;
    assert!(
        failed.error.as_deref().unwrap_or_default().contains("pulling"),
        "{failed:?}"
    );

    // or the registry says so itself: its push notifications (with an operator token) announce
    // each pushed tag of the repository; CI only pushes
    let mut registry = registry;
    registry
        .notify(&format!("{url}/v1/webhooks/registry"), &token)
        .unwrap();
    let layout = dir.path().join("ci-v2");
    common::image::write(&layout, &[&[("behaviour", "errors = 0\nmessage = v2\n")]], false);
    let d2 = common::image::push(&layout, &format!("{image_repo}:build-2"));
    wait_for(
        "the pushed tag rolling out in dev",
        Duration::from_secs(60),
        || async { phase(&store, "dev", &d2).await },
    )
    .await;
    let announced = store
        .builds(Some("shop"))
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.commit == d2)
        .unwrap();
    assert_eq!(
        announced.artifact.as_deref(),
        Some(format!("{image_repo}@{d2}").as_str())
    );
    assert_eq!(announced.source, "announced by admin", "{}", show());
}

/// Five pushes while a build runs make two builds — the one running and the newest commit,
/// which records the three it made moot — and `maxPerHour` holds the next build back, saying
/// so. The real builder, the real loop, a real git repository; builds wait on a gate file the
/// test opens, so nothing depends on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_a_slow_build_are_coalesced_and_the_hourly_limit_holds_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _creds, config_path) = prepare(dir.path());
    let gate = dir.path().join("gate");
    let spec = dir.path().join("specs/objectives/shop.yaml");
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "  command: mkdir -p dist",
        &format!(
            "  command: while [ ! -e '{}' ]; do sleep 0.05; done; mkdir -p dist",
            gate.display()
        ),
    );
    std::fs::write(&spec, text).unwrap();
    let ctl = dir.path().join("specs/controllers/demo.yaml");
    let text = std::fs::read_to_string(&ctl)
        .unwrap()
        .replace("maxPerHour: 60", "maxPerHour: 3");
    std::fs::write(&ctl, text).unwrap();
    std::fs::write(&gate, "").unwrap();
    let log = dir.path().join("up.log");
    let _up = up(&config_path, &log);
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    let store = store_of(&config.data_dir).await;
    let repo = dir.path().join("repo");
    let built = |commit: String| {
        let store = store.clone();
        async move {
            store
                .builds(Some("shop"))
                .await
                .unwrap()
                .into_iter()
                .find(|b| b.commit == commit && b.status == "built")
        }
    };
    let v1 = git_in(&repo, &["rev-parse", "HEAD"]);
    wait_for("v1 built", Duration::from_secs(60), || built(v1.clone())).await;

    // the gate closes; c1 starts building and waits on it; four more pushes arrive meanwhile
    std::fs::remove_file(&gate).unwrap();
    let c1 = demo::commit(&repo, "c1", 0.0, "c1").unwrap();
    wait_for("c1 building", Duration::from_secs(30), || async {
        let builds = store.builds(Some("shop")).await.unwrap();
        builds
            .into_iter()
            .find(|b| b.commit == c1 && b.status == "running")
    })
    .await;
    let later: Vec<String> = (2..=5)
        .map(|i| demo::commit(&repo, &format!("c{i}"), 0.0, &format!("c{i}")).unwrap())
        .collect();
    // the loop sees them all while c1 still builds
    wait_for("the pushes seen", Duration::from_secs(30), || async {
        let states = store.states().await.unwrap();
        let st = &states.iter().find(|(s, _)| s == "shop")?.1;
        (st.builds.pending.last() == later.last()).then_some(())
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let c5 = later.last().unwrap().clone();
    let newest = wait_for("c5 built", Duration::from_secs(60), || built(c5.clone())).await;
    assert_eq!(
        newest.skipped,
        later[..3].to_vec(),
        "c5's build records the commits it made moot"
    );
    let commits: Vec<String> = store
        .builds(Some("shop"))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.commit)
        .collect();
    assert_eq!(
        commits,
        [v1.clone(), c1.clone(), c5.clone()],
        "five pushes, two builds:\n{}",
        show()
    );

    // three builds this hour (v1, c1, c5) is the limit: the next push waits, and the log says why
    let c6 = demo::commit(&repo, "c6", 0.0, "c6").unwrap();
    wait_for("the limit said", Duration::from_secs(30), || async {
        show().contains("build limit of 3 per hour reached").then_some(())
    })
    .await;
    let builds = store.builds(Some("shop")).await.unwrap();
    assert!(
        !builds.iter().any(|b| b.commit == c6),
        "c6 must wait for the hour: {builds:?}"
    );
}

/// The value of the first sample of `family` in an exposition whose line has every one of
/// `labels`.
fn sample(exposition: &str, family: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(family) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no {family} sample with {labels:?}:\n{exposition}"))
}

/// Replaces the ramp of the demo's policy (laid out in `specs`) with `with`.
fn demo_ramp_replaced(specs: &Path, with: &str) {
    let path = specs.join("controllers/demo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replace("ramp:\n  steps: [10, 25, 50]\n", with);
    assert_ne!(changed, text, "the demo's policy has the ramp this test replaces");
    std::fs::write(path, changed).unwrap();
}

/// Blue/green through the whole product: `autopilot up`, its proxy, real processes. The held
/// release serves no user while it is judged on copies of their requests, takes all traffic at
/// once, and an operator's rollback inside the window gives it all back to the previous
/// release, which was kept running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_is_judged_on_copies_switches_at_once_and_switches_back_in_one_step() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let Running {
        config,
        creds,
        repo,
        base: url,
        token,
        store,
        v1,
        log,
        up: _up,
        ..
    } = running_with(dir.path(), "dev", |specs| {
        demo_ramp_replaced(
            specs,
            "strategy:\n  blueGreen:\n    mirror: {share: 100%}\n    rollbackWindow: 10m\n",
        )
    })
    .await;
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    let v1_id = phase(&store, "dev", &v1).await.unwrap().0;
    let host = format!("shop.dev.{}", config.domain);

    // users: one request after another, each answer's release recorded in order
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ask = {
        let (creds, listen) = (creds.clone(), config.listen);
        move |host: String| {
            let creds = creds.clone();
            async move {
                let r = reqwest::Client::new()
                    .get(format!("http://{listen}/"))
                    .header("host", host)
                    .header("x-api-key", &creds.api_key)
                    .bearer_auth(&creds.token)
                    .send()
                    .await
                    .ok()?;
                let release = r.headers().get("x-autopilot-release")?.to_str().ok()?.to_owned();
                r.status().is_success().then_some(release)
            }
        }
    };
    let users = {
        let (served, stop, ask, host) = (served.clone(), stop.clone(), ask.clone(), host.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(release) = ask(host.clone()).await {
                    served.lock().unwrap().push(release);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let v2 = demo::commit(&repo, "v2", 0.0, "v2").unwrap();
    let held = wait_for("v2 held at weight 0 in dev", Duration::from_secs(60), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::Canary { weight, .. } if weight.0 == 0))
    })
    .await;
    let v2_id = held.0;
    // held: reachable at its preview URL, while the public host is still all v1's
    let preview = wait_for("v2's preview answers", Duration::from_secs(20), || {
        ask(format!("{v2_id}.{host}"))
    })
    .await;
    assert_eq!(preview, v2_id);

    wait_for("v2 switched in dev", Duration::from_secs(90), || async {
        matches!(phase(&store, "dev", &v2).await, Some((_, Phase::Promoted { .. }))).then_some(())
    })
    .await;
    wait_for("a user served by v2", Duration::from_secs(20), || async {
        (served.lock().unwrap().last() == Some(&v2_id)).then_some(())
    })
    .await;
    // all at once: every answer before the switch from v1, every one after from v2
    let seen = served.lock().unwrap().clone();
    let first_v2 = seen.iter().position(|r| *r == v2_id).unwrap();
    assert!(first_v2 > 0, "users were served before the switch");
    assert!(
        seen[..first_v2].iter().all(|r| *r == v1_id),
        "before the switch: v1 alone"
    );
    assert!(
        seen[first_v2..].iter().all(|r| *r == v2_id),
        "after it: v2 alone, no ramp"
    );
    // the copies were its evidence: counted as copies in the proxy's metrics
    let metrics = reqwest::get(format!("http://{}/metrics", config.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let release = format!("release=\"{v2_id}\"");
    let copies = sample(
        &metrics,
        "autopilot_proxy_mirror_copies_total",
        &[&release, "result=\"sent\""],
    );
    assert!(copies >= 200.0, "the judge needed 200 requests: {copies} copies");

    // v1 still runs (its rollback window); the operator's rollback gives it everything back
    let (code, d) = {
        let r = reqwest::Client::new()
            .get(format!("{url}/v1/discovery/shop/dev"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(code, 200);
    assert!(
        d["releases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["release"] == v1_id.as_str()),
        "v1 kept running: {d}"
    );
    let before_rollback = served.lock().unwrap().len();
    let (code, out, err) = cli(
        &url,
        &token,
        &["rollback", "shop", "dev", "--reason", "the graphs look wrong"],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", show());
    wait_for("v2 rolled back in dev", Duration::from_secs(30), || async {
        phase(&store, "dev", &v2)
            .await
            .filter(|(_, p)| matches!(p, Phase::RolledBack { .. }))
    })
    .await;
    wait_for("users served by v1 again", Duration::from_secs(20), || async {
        (served.lock().unwrap().last() == Some(&v1_id)).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    users.await.unwrap();
    let after: Vec<String> = served.lock().unwrap()[before_rollback..].to_vec();
    let back = after.iter().position(|r| *r == v1_id).unwrap();
    assert!(
        after[back..].iter().all(|r| *r == v1_id),
        "one step back: v1 alone after it"
    );
    assert!(
        matches!(phase(&store, "dev", &v1).await, Some((_, Phase::Promoted { .. }))),
        "v1 stable again"
    );
}

/// A/B through the whole product: `autopilot up`, its proxy, real processes. The new release
/// first serves half of the callers who send `x-staff: 1` and nobody else, judged against the
/// other half of them on stable (counted apart, `segment="staff"`); judged safe there, it is
/// ramped for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_test_serves_its_segment_first_then_everyone_by_the_ramp() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let Running {
        config,
        creds,
        repo,
        store,
        v1,
        up: _up,
        ..
    } = running_with(dir.path(), "dev", |specs| {
        demo_ramp_replaced(
            specs,
            "strategy:\n  abTest:\n    segment:\n      name: staff\n      match: [{header: {name: x-staff, value: '1'}}]\n      share: 50%\nramp:\n  steps: [10, 25, 50]\n",
        )
    })
    .await;
    let v1_id = phase(&store, "dev", &v1).await.unwrap().0;
    let host = format!("shop.dev.{}", config.domain);

    // two kinds of callers, one request after another each, every answer's release recorded
    // with the moment it came
    type Log = std::sync::Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>>;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers = |staff: bool, log: Log| {
        let (creds, listen, host) = (creds.clone(), config.listen, host.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut req = client
                    .get(format!("http://{listen}/"))
                    .header("host", &host)
                    .header("x-api-key", &creds.api_key)
                    .bearer_auth(&creds.token);
                if staff {
                    req = req.header("x-staff", "1");
                }
                if let Ok(r) = req.send().await
                    && r.status().is_success()
                    && let Some(release) = r
                        .headers()
                        .get("x-autopilot-release")
                        .and_then(|v| v.to_str().ok())
                {
                    log.lock()
                        .unwrap()
                        .push((release.to_owned(), std::time::Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (staff_log, customer_log): (Log, Log) = (Default::default(), Default::default());
    let staff = callers(true, staff_log.clone());
    let customers = callers(false, customer_log.clone());

    let v2 = demo::commit(&repo, "v2", 0.0, "v2").unwrap();
    let v2_id = wait_for(
        "v2 serving its segment in dev",
        Duration::from_secs(60),
        || async {
            phase(&store, "dev", &v2)
                .await
                .filter(|(_, p)| matches!(p, Phase::Canary { weight, .. } if weight.0 == 0))
        },
    )
    .await
    .0;
    let held_seen = std::time::Instant::now();
    wait_for(
        "v2 ramped for everyone in dev",
        Duration::from_secs(90),
        || async {
            match phase(&store, "dev", &v2).await {
                Some((_, Phase::Canary { weight, .. })) if weight.0 > 0 => Some(()),
                Some((_, Phase::Promoted { .. })) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let first_customer_on_v2 = wait_for("a customer served by v2", Duration::from_secs(30), || async {
        customer_log
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| *r == v2_id)
            .map(|(_, at)| *at)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    staff.await.unwrap();
    customers.await.unwrap();

    // from the moment v2 was seen serving its segment until the first customer met it: the
    // customers met v1 alone, the staff both releases
    let between = |log: &Log| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at > held_seen && *at < first_customer_on_v2)
            .map(|(r, _)| r.clone())
            .collect()
    };
    let (staff_held, customers_held) = (between(&staff_log), between(&customer_log));
    assert!(
        customers_held.len() > 50,
        "{} customer requests",
        customers_held.len()
    );
    assert!(
        customers_held.iter().all(|r| *r == v1_id),
        "no customer met v2 before its ramp"
    );
    let on_v2 = staff_held.iter().filter(|r| **r == v2_id).count();
    let on_v1 = staff_held.iter().filter(|r| **r == v1_id).count();
    assert!(
        on_v2 > 50 && on_v1 > 50,
        "staff split: {on_v2} on v2, {on_v1} on v1"
    );

    // the segment's requests were counted apart, per release
    let metrics = reqwest::get(format!("http://{}/metrics", config.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let segment_2xx = |release: &str| {
        let release = format!("release=\"{release}\"");
        let labels = [release.as_str(), "segment=\"staff\"", "code=\"2xx\""];
        sample(&metrics, "autopilot_proxy_requests_total", &labels)
    };
    // (staff requests after the ramp began are routed by the weight and counted with everyone's)
    let staff_total = staff_log.lock().unwrap().len() as f64;
    let (seg_v1, seg_v2) = (segment_2xx(&v1_id), segment_2xx(&v2_id));
    assert!(seg_v1 > 50.0 && seg_v2 > 50.0, "{metrics}");
    assert!(seg_v1 + seg_v2 <= staff_total, "only staff requests: {metrics}");
}

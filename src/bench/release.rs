//! `autopilot bench registry`: a large artifact pushed to and pulled from a real registry (a
//! throwaway `docker-registry` on loopback, filesystem storage), by autopilot (oci-client) and,
//! as the reference in the same run, by a standard tool doing the same copy (`skopeo copy`,
//! from and to the same OCI layout). Each round, each side gets a fresh registry, so nothing is
//! already there (nor remembered by skopeo's blob cache). Writes `registry.md` and
//! `registry.csv`.

use autopilot::release::oci::Layout;
use autopilot::release::registry::{Credentials, Registry, TempRegistry};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Row {
    who: &'static str,
    what: &'static str,
    seconds: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn skopeo(args: &[&str]) -> Result<f64, String> {
    let started = Instant::now();
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| format!("skopeo (apt-get install skopeo): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs the benchmark with an artifact of `megabytes` MB, `rounds` times each.
pub async fn run(out: &Path, megabytes: usize, rounds: usize) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    // incompressible, seeded
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(12);
    let mut bytes = vec![0u8; megabytes << 20];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    std::fs::write(src.join("payload"), &bytes).map_err(|e| e.to_string())?;
    drop(bytes);
    let layout_dir = dir.path().join("layout");
    let layout = Layout::open(&layout_dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let digest = layout
        .pack(&src, &["payload".into()], "bench:v1")
        .map_err(|e| e.to_string())?;
    let pack = started.elapsed().as_secs_f64();
    let mut rows = vec![
        Row {
            who: "autopilot (oci-client)",
            what: "push",
            seconds: Vec::new(),
        },
        Row {
            who: "autopilot (oci-client)",
            what: "pull by digest, verified",
            seconds: Vec::new(),
        },
        Row {
            who: "reference: skopeo copy",
            what: "push",
            seconds: Vec::new(),
        },
        Row {
            who: "reference: skopeo copy",
            what: "pull",
            seconds: Vec::new(),
        },
    ];
    for round in 0..rounds {
        let (mine, other) = (TempRegistry::start()?, TempRegistry::start()?);
        let ours = Registry::new(&mine.host(), "bench", Credentials::Anonymous)?;
        let started = Instant::now();
        let reference = ours.push(&layout, "bench", &digest, "v1").await?;
        rows[0].seconds.push(started.elapsed().as_secs_f64());
        let into = Layout::open(&dir.path().join(format!("pulled{round}"))).map_err(|e| e.to_string())?;
        let started = Instant::now();
        ours.pull(&reference, &into, "bench:v1")
            .await
            .map_err(|e| e.to_string())?;
        rows[1].seconds.push(started.elapsed().as_secs_f64());
        let theirs = format!("docker://{}/bench/bench:v1", other.host());
        let from = format!("oci:{}:bench:v1", layout_dir.display());
        rows[2].seconds.push(skopeo(&[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &from,
            &theirs,
        ])?);
        let to = format!(
            "oci:{}:bench:v1",
            dir.path().join(format!("skopeo{round}")).display()
        );
        rows[3]
            .seconds
            .push(skopeo(&["copy", "-q", "--src-tls-verify=false", &theirs, &to])?);
    }
    let mb = megabytes as f64;
    let mut md = format!(
        "# Registry throughput\n\nAn artifact of {megabytes} MB (one incompressible layer) against \
         throwaway docker-registries on loopback (filesystem storage), {rounds} rounds, each side to a \
         fresh registry; medians. Packing it into the OCI layout took {pack:.2} s.\n\n\
         | who | what | median s | MB/s |\n|---|---|---:|---:|\n"
    );
    let mut csv = String::from("who,what,round,seconds\n");
    for r in &rows {
        let m = median(&r.seconds);
        md.push_str(&format!("| {} | {} | {m:.2} | {:.0} |\n", r.who, r.what, mb / m));
        for (i, s) in r.seconds.iter().enumerate() {
            csv.push_str(&format!("{},{},{i},{s:.4}\n", r.who, r.what));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("registry.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("registry.csv"), &csv).map_err(|e| e.to_string())?;
    Ok(md)
}

/// The secret the bench's `up` and its pushes share (push webhooks are refused without one).
const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// GitHub's signature of a payload: `sha256=` and the hex HMAC-SHA256 under the secret.
fn github_signature(payload: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("any key length");
    mac.update(payload);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// `autopilot bench webhook`: how long from a push webhook to its build starting, with
/// `autopilot up` running the demo's service from a *remote* repository (a bare repository
/// named by a `file://` URL, polled only every hour, so only the webhook can start a build).
/// Each round commits, pushes to the remote, sends a GitHub push webhook and polls the store
/// (every 2 ms) until the commit's build runs; the next round waits for that build to end.
/// The references, measured in the same rounds: the webhook's own HTTP answer, and a `git
/// fetch` of the same remote into a mirror of its own. Writes `webhook.md` and `webhook.csv`.
pub async fn run_webhook(exe: &Path, out: &Path, rounds: usize) -> Result<String, String> {
    use autopilot::live::demo;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let opts = demo::DemoOptions {
        dir: dir.path().to_owned(),
        exe: exe.to_owned(),
        interval: "1s".parse().map_err(|e| format!("{e:?}"))?,
        fancy: false,
        limit: std::time::Duration::from_secs(600),
        bad_errors: demo::BAD_ERRORS,
        linger: false,
    };
    let creds = demo::Credentials::generate(
        &dir.path().join("specs"),
        "https://id.autopilot.test",
        "bench",
        &["shop-team"],
    )?;
    let config = demo::lay_out(&opts, &creds)?;
    let work = dir.path().join("repo");
    demo::commit(&work, "v1", 0.0, "v1")?;
    // the remote: a bare clone, named by URL, polled hourly
    let remote = dir.path().join("remote.git");
    let git = |args: &[&str], at: &Path| -> Result<String, String> {
        let o = Command::new("git")
            .arg("-C")
            .arg(at)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
        } else {
            Err(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    };
    git(
        &[
            "clone",
            "-q",
            "--bare",
            &work.to_string_lossy(),
            &remote.to_string_lossy(),
        ],
        dir.path(),
    )?;
    git(&["remote", "add", "origin", &remote.to_string_lossy()], &work)?;
    let spec = dir.path().join("specs/objectives/shop.yaml");
    let text = std::fs::read_to_string(&spec).map_err(|e| e.to_string())?;
    let text = text.replace(
        &format!("  repository: {}\n", work.display()),
        &format!("  repository: file://{}\n  pollInterval: 1h\n", remote.display()),
    );
    std::fs::write(&spec, text).map_err(|e| e.to_string())?;
    let config_path = dir.path().join("autopilot.yaml");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("up.log")).map_err(|e| e.to_string())?;
    let mut up = Command::new(exe)
        .args(["up", "--config"])
        .arg(&config_path)
        .env(&config.api.webhook_secret_variable, WEBHOOK_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = webhook_rounds(&config, &work, &remote, dir.path(), rounds, &git).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::SIGTERM,
    );
    let _ = up.wait();
    let rows = result?;
    let mut md = format!(
        "# From a push webhook to its build starting\n\n`autopilot up` (the demo's service, its \
         repository a remote polled hourly), {rounds} rounds: commit, push to the remote, send a \
         GitHub push webhook, poll the store every 2 ms until the build runs. References in the same \
         rounds: the webhook's HTTP answer, and a `git fetch` of the remote by itself.\n\n\
         | what | p50 ms | p90 ms | max ms |\n|---|---:|---:|---:|\n"
    );
    let mut csv = String::from("what,round,ms\n");
    for r in &rows {
        let mut s = r.seconds.clone();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize] * 1000.0;
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} |\n",
            r.what,
            at(0.5),
            at(0.9),
            at(1.0)
        ));
        for (i, x) in r.seconds.iter().enumerate() {
            csv.push_str(&format!("{},{i},{:.2}\n", r.what, x * 1000.0));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    std::fs::write(out.join("webhook.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("webhook.csv"), &csv).map_err(|e| e.to_string())?;
    Ok(md)
}

/// Runs git in a folder: its stdout, or why not.
type Git = dyn Fn(&[&str], &Path) -> Result<String, String>;

async fn webhook_rounds(
    config: &autopilot::live::config::AutopilotConfig,
    work: &Path,
    remote: &Path,
    dir: &Path,
    rounds: usize,
    git: &Git,
) -> Result<Vec<Row>, String> {
    use std::time::Duration;
    let deadline = |what: &str, started: Instant, limit: Duration| -> Result<(), String> {
        if started.elapsed() > limit {
            Err(format!(
                "timed out waiting for {what} (see {}/up.log)",
                dir.display()
            ))
        } else {
            Ok(())
        }
    };
    // the store exists once `up` wrote its admin token
    let started = Instant::now();
    while !config.data_dir.join("admin.token").exists() {
        deadline("autopilot up to start", started, Duration::from_secs(60))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = autopilot::store::SqlStore::open_dir(&config.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let status = |commit: String| {
        let store = store.clone();
        async move {
            store
                .builds(Some(autopilot::live::demo::SERVICE))
                .await
                .ok()
                .and_then(|b| b.into_iter().find(|b| b.commit == commit))
                .map(|b| b.status)
        }
    };
    // the first release (v1, found by the first fetch) is built before the rounds
    let v1 = git(&["rev-parse", "HEAD"], work)?;
    let started = Instant::now();
    while status(v1.clone()).await.as_deref() != Some("built") {
        deadline("v1's build", started, Duration::from_secs(120))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/v1/webhooks/push/{}",
        config.api.listen,
        autopilot::live::demo::SERVICE
    );
    let mirror = dir.join("reference-mirror.git");
    git(&["init", "-q", "--bare", &mirror.to_string_lossy()], dir)?;
    let mut rows = vec![
        Row {
            who: "autopilot",
            what: "webhook → build running",
            seconds: Vec::new(),
        },
        Row {
            who: "reference",
            what: "the webhook's HTTP answer",
            seconds: Vec::new(),
        },
        Row {
            who: "reference",
            what: "git fetch of the remote alone",
            seconds: Vec::new(),
        },
    ];
    for round in 0..rounds {
        let commit =
            autopilot::live::demo::commit(work, &format!("round {round}"), 0.0, &format!("r{round}"))?;
        git(&["push", "-q", "origin", "main"], work)?;
        let body = serde_json::json!({
            "ref": "refs/heads/main", "after": commit, "pusher": {"name": "bench"}
        })
        .to_string();
        let t0 = Instant::now();
        let answer = client
            .post(&url)
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("bench-{round}"))
            .header("x-hub-signature-256", github_signature(body.as_bytes()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let http = t0.elapsed().as_secs_f64();
        if !answer.status().is_success() {
            return Err(format!("the webhook answered {}", answer.status()));
        }
        while status(commit.clone()).await.is_none() {
            deadline("the build to start", t0, Duration::from_secs(60))?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rows[0].seconds.push(t0.elapsed().as_secs_f64());
        rows[1].seconds.push(http);
        let t = Instant::now();
        git(
            &[
                "fetch",
                "-q",
                "--no-tags",
                &format!("file://{}", remote.display()),
                "+refs/heads/*:refs/heads/*",
            ],
            &mirror,
        )?;
        rows[2].seconds.push(t.elapsed().as_secs_f64());
        // one build at a time: the next round's commit must not wait behind this one
        let t = Instant::now();
        while status(commit.clone()).await.as_deref() == Some("running") {
            deadline("the build to end", t, Duration::from_secs(60))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(rows)
}

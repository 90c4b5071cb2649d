//! `autopilot up` on the demo's layout, for the tests that drive it whole (the live loop, the
//! web pages): lay it out, start it, stop it, and wait on it with bounded polls.

use autopilot::control::rollout::Phase;
use autopilot::live::config::AutopilotConfig;
use autopilot::live::demo;
use autopilot::store::SqlStore;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_autopilot");

/// Polls `check` every 100 ms until it gives a value or `limit` passes.
pub async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the demo's layout (repository with v1, specs, credentials) and its configuration as
/// `autopilot.yaml` (JSON is YAML).
pub fn prepare(dir: &Path) -> (AutopilotConfig, demo::Credentials, PathBuf) {
    let opts = demo::DemoOptions {
        dir: dir.to_owned(),
        exe: PathBuf::from(EXE),
        interval: "1s".parse().unwrap(),
        fancy: false,
        limit: Duration::from_secs(120),
        bad_errors: demo::BAD_ERRORS,
        linger: false,
    };
    let creds = demo::Credentials::generate(
        &dir.join("specs"),
        "https://id.autopilot.test",
        "demo",
        &["shop-team"],
    )
    .unwrap();
    let config = demo::lay_out(&opts, &creds).unwrap();
    demo::commit(&dir.join("repo"), "v1", 0.0, "v1").unwrap();
    let path = dir.join("autopilot.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    (config, creds, path)
}

pub struct Child(pub std::process::Child);

impl Drop for Child {
    /// SIGTERM first, so `autopilot up` stops its services (a SIGKILL would leave them running
    /// on, orphaned, into the next test binaries); SIGKILL if it has not stopped in 20 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn up(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Child(
        Command::new(EXE)
            .args(["up", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Polls the API at `url` until it answers: `up` writes its admin token before its API
/// listens, so the token alone does not say the API is there.
pub async fn api_ready(url: &str) {
    wait_for("the API to answer", Duration::from_secs(60), || async {
        reqwest::get(format!("{url}/v1/openapi.json"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// The store of the `up` using `data_dir`, once it is open (`up` writes its admin token after
/// opening and migrating the store).
pub async fn store_of(data_dir: &Path) -> SqlStore {
    wait_for("the store", Duration::from_secs(30), || {
        let d = data_dir.to_owned();
        async move {
            if d.join("admin.token").exists() {
                SqlStore::open_dir(&d).await.ok()
            } else {
                None
            }
        }
    })
    .await
}

pub async fn phase(store: &SqlStore, env: &str, commit: &str) -> Option<(String, Phase)> {
    let states = store.states().await.ok()?;
    let (_, st) = states.into_iter().find(|(s, _)| s == demo::SERVICE)?;
    let release = st.releases.iter().find(|r| r.commit == commit)?.id.clone();
    let e = st.environments.get(env)?;
    if e.stable.as_deref() == Some(release.as_str()) {
        return Some((
            release,
            Phase::Promoted {
                at: autopilot::control::time::Time::ZERO,
            },
        ));
    }
    let r = e.rollout.as_ref().filter(|r| r.release == release)?;
    Some((release, r.phase.clone()))
}

/// `autopilot up` on the demo's layout, started, with its admin token, its store, and v1 (the
/// first commit) promoted in `env`.
pub struct Running {
    pub config: AutopilotConfig,
    pub creds: std::sync::Arc<demo::Credentials>,
    pub repo: PathBuf,
    pub log: PathBuf,
    pub base: String,
    pub token: String,
    pub store: SqlStore,
    pub v1: String,
    pub up: Child,
}

pub async fn running(dir: &Path, env: &str) -> Running {
    running_with(dir, env, |_| {}).await
}

/// As [`running`], with the laid-out specs (`dir/specs`) changed by `tweak` before `up` starts.
pub async fn running_with(dir: &Path, env: &str, tweak: impl FnOnce(&Path)) -> Running {
    let (config, creds, config_path) = prepare(dir);
    tweak(&dir.join("specs"));
    let repo = dir.join("repo");
    let log = dir.join("up.log");
    let up = up(&config_path, &log);
    let base = format!("http://{}", config.api.listen);
    // no token in the environment: `up` made an admin token and wrote it for the CLI
    let token = wait_for("the admin token", Duration::from_secs(30), || {
        let f = config.data_dir.join("admin.token");
        async move { std::fs::read_to_string(f).ok().filter(|t| !t.is_empty()) }
    })
    .await;
    api_ready(&base).await;
    let store = SqlStore::open_dir(&config.data_dir).await.unwrap();
    let head = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let v1 = String::from_utf8(head.stdout).unwrap().trim().to_owned();
    wait_for(
        &format!("v1 stable in {env}"),
        Duration::from_secs(90),
        || async { matches!(phase(&store, env, &v1).await, Some((_, Phase::Promoted { .. }))).then_some(()) },
    )
    .await;
    Running {
        config,
        creds: std::sync::Arc::new(creds),
        repo,
        log,
        base,
        token,
        store,
        v1,
        up,
    }
}

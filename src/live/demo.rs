//! `autopilot demo`: the whole loop on a sample service, in one terminal, in a few minutes.
//!
//! It makes a temporary git repository holding a small service, specs for it (three
//! environments behind the proxy with HTTPS from the local CA and auth on), credentials, and
//! runs [`super::Up`] on them while generated traffic with valid credentials flows through the
//! proxy. Then it commits: a healthy second version (a canary through dev → staging → prod) and
//! a third whose *artifact* carries a bug (its error rate is a file in the release), which
//! autopilot rolls back in dev by itself. It ends with a summary from the store and the traffic.
//!
//! The sample service is `autopilot sample-service`: it reads its behaviour from a file of the
//! unpacked release ([`serve_sample`]).

use super::Up;
use super::config::AutopilotConfig;
use crate::control::driver::Tick;
use crate::control::rollout::ServiceState;
use crate::proxy::auth::{AuthSettings, SignatureAlgorithm};
use crate::spec::units::Duration as Dur;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The sample service's name (a DNS label: it is part of host names).
pub const SERVICE: &str = "shop";
/// The environments, in order.
pub const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];
/// The traffic each environment gets, requests per second.
pub const RATE_PER_ENV: f64 = 100.0;
/// The bad version's error rate by default (from `behaviour` in its artifact).
pub const BAD_ERRORS: f64 = 0.25;

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where everything goes (a temporary folder by default); kept for a look around.
    pub dir: PathBuf,
    /// The `autopilot` executable the sample service runs as.
    pub exe: PathBuf,
    /// The controller's analysis interval.
    pub interval: Dur,
    /// Colour and a progress line (a terminal), or plain lines.
    pub fancy: bool,
    /// Give up after this long.
    pub limit: Duration,
    /// The share of requests the bad version fails (1.0: a crash of every request).
    pub bad_errors: f64,
    /// After the summary, keep autopilot running (API, pages, proxy, the loop) until Ctrl-C or
    /// SIGTERM, so the rolled-back state can be looked at; false: end with the summary.
    pub linger: bool,
}

/// A future that resolves when Ctrl-C or SIGTERM arrives. The handlers are in place when this
/// returns (not when the future is first polled), so a signal sent right after the line that
/// invites it is caught, not fatal.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("Ctrl-C handler: {e}"))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// What the demo saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DemoSummary {
    pub wall_seconds: f64,
    pub store: String,
    pub proxy: String,
    pub proxy_https: String,
    pub admin: String,
    /// Release ids of the three versions, in order of their commits.
    pub releases: Vec<String>,
    /// Seconds from the bad commit to its rollback in dev.
    pub bad_push_to_rollback: Option<f64>,
    /// Requests the generator sent, per release: (total, failed).
    pub served: BTreeMap<String, (u64, u64)>,
    /// The first failed requests, for a look.
    pub failures: Vec<String>,
    pub ok: bool,
}

/// Requests and failures seen by the traffic generator, per release (by the response's
/// `x-autopilot-release`; failures without a release under `-`).
#[derive(Debug, Default)]
pub struct Seen {
    pub by_release: BTreeMap<String, (u64, u64)>,
    /// The first failures, each as `environment: status or error`.
    pub failures: Vec<String>,
}

struct Paint {
    on: bool,
}

impl Paint {
    fn c(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Whether to use colour: a terminal, and `NO_COLOR` unset or empty.
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn sh(dir: &Path, script: &str) -> Result<String, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "autopilot demo")
        .env("GIT_AUTHOR_EMAIL", "demo@autopilot.invalid")
        .env("GIT_COMMITTER_NAME", "autopilot demo")
        .env("GIT_COMMITTER_EMAIL", "demo@autopilot.invalid")
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Commits a version of the sample service; returns the commit.
pub fn commit(repo: &Path, message: &str, errors: f64, text: &str) -> Result<String, String> {
    std::fs::write(
        repo.join("behaviour"),
        format!("# read by the service at start, from its release\nerrors = {errors}\nmessage = {text}\n"),
    )
    .map_err(|e| e.to_string())?;
    sh(
        repo,
        &format!("git add -A && git commit -q -m '{message}' && git rev-parse HEAD"),
    )
}

/// ES256 credentials: the JWKS file, a user token and an API key with its digest.
pub struct Credentials {
    pub jwks: PathBuf,
    pub token: String,
    pub api_key: String,
    pub api_key_sha256: String,
}

impl Credentials {
    /// Makes a key pair, writes `jwks.json` into `dir`, signs a day-long token for `issuer`
    /// (audience `autopilot`, groups `groups`) and makes a random API key.
    pub fn generate(dir: &Path, issuer: &str, kid: &str, groups: &[&str]) -> Result<Credentials, String> {
        use base64::Engine;
        use sha2::Digest;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let raw = kp.public_key_raw();
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])
        }]});
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).map_err(|e| e.to_string())?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 86_400;
        let claims = serde_json::json!({
            "sub": kid, "iss": issuer, "aud": "autopilot", "exp": exp, "groups": groups
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
        )
        .map_err(|e| e.to_string())?;
        let mut bytes = [0u8; 24];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        let api_key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let api_key_sha256 = sha2::Sha256::digest(api_key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Credentials {
            jwks: path,
            token,
            api_key,
            api_key_sha256,
        })
    }
}

/// Writes the sample repository, the specs and the configuration under `dir`.
pub fn lay_out(opts: &DemoOptions, creds: &Credentials) -> Result<AutopilotConfig, String> {
    let repo = opts.dir.join("repo");
    let specs = opts.dir.join("specs");
    for d in [
        &repo,
        &specs.join("objectives"),
        &specs.join("controllers"),
        &specs.join("sensors"),
    ] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    sh(&repo, "git init -q -b main .")?;
    let exe = opts.exe.display().to_string().replace('\'', "'\\''");
    let objectives = format!(
        r#"apiVersion: autopilot/v1
kind: Service
name: {SERVICE}
description: The demo's sample shop (its behaviour comes from the `behaviour` file it is built with).
source:
  repository: {repo}
  branch: main
build:
  # a real build: it packs the files the release runs with
  command: mkdir -p dist && cp behaviour dist/behaviour && git rev-parse HEAD > dist/COMMIT && echo "packed dist/ for $(cat dist/COMMIT)"
  artifact:
    files: [dist]
  timeout: 1m
run:
  command: exec '{exe}' sample-service dist/behaviour
  portVariable: PORT
  readiness: /healthz
  replicas: 2
environments:
  - name: dev
    auth: required
  - name: staging
    auth: required
  - name: prod
    auth: required
    visibility: public
controller: demo
objectives:
  - name: availability
    description: Shoppers see an error page.
    sensor: proxy.errors
    target: "< 1%"
  - name: latency
    description: Pages are slow.
    sensor: proxy.latency
    target: p99 < 300ms
"#,
        repo = repo.display()
    );
    let controller = format!(
        r#"apiVersion: autopilot/v1
kind: Controller
name: demo
description: The demo's policy - quick steps, a strict judge, a small blast-radius budget.
ramp:
  steps: [10, 25, 50]
analysis:
  interval: {interval}
  falseRollbackRate: 1%
  falsePromotionRate: 5%
  tolerance: 50%
  minEvidence:
    requests: 200
    duration: {interval}
progressDeadline: 5m
blastRadius:
  budget: 50
missingData:
  hold: 30s
  then: rollback
rollback:
  onRegression: rollback
  pinPrevious: true
build:
  maxPerHour: 60
"#,
        interval = opts.interval
    );
    let write =
        |p: PathBuf, text: &str| std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()));
    write(specs.join("objectives/shop.yaml"), &objectives)?;
    write(specs.join("controllers/demo.yaml"), &controller)?;
    write(
        specs.join("sensors/proxy.yaml"),
        include_str!("../../sensors/proxy.yaml"),
    )?;
    let addr = |what: &str| crate::net::free_loopback().map_err(|e| format!("a free port for {what}: {e}"));
    Ok(AutopilotConfig {
        data_dir: opts.dir.join("data"),
        specs: vec![
            specs.join("objectives"),
            specs.join("sensors"),
            specs.join("controllers"),
        ],
        listen: addr("the proxy")?,
        tls_listen: Some(addr("https")?),
        admin: addr("the admin listener")?,
        domain: "autopilot.test".into(),
        tick: Dur(Duration::from_secs(2)),
        auth: Some(AuthSettings {
            issuer: "https://id.autopilot.test".into(),
            audience: "autopilot".into(),
            algorithms: vec![SignatureAlgorithm::ES256],
            jwks: creds.jwks.display().to_string(),
            jwks_refresh: Dur(Duration::from_secs(300)),
            jwks_ca: None,
            api_keys: [("demo-traffic".to_owned(), creds.api_key_sha256.clone())].into(),
            api_key_header: "x-api-key".into(),
            client_token_header: "x-client-token".into(),
            client_claim: "azp".into(),
            clients: Vec::new(),
            groups_claim: "groups".into(),
        }),
        api: super::config::ApiConfig {
            listen: addr("the API")?,
            ..Default::default()
        },
        ..AutopilotConfig::default()
    })
}

/// Sends `RATE_PER_ENV` requests per second to every environment over HTTPS with valid
/// credentials until `stop`, counting answers by the release that served them.
pub async fn traffic(
    config: AutopilotConfig,
    creds: Arc<Credentials>,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let tls = config.tls_listen.ok_or("the demo needs HTTPS")?;
    let ca_pem =
        std::fs::read(config.data_dir.join("ca/ca.pem")).map_err(|e| format!("the local CA: {e}"))?;
    let ca = reqwest::Certificate::from_pem(&ca_pem).map_err(|e| e.to_string())?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5));
    for env in ENVIRONMENTS {
        builder = builder.resolve(&format!("{SERVICE}.{env}.{}", config.domain), tls);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    // the HTTPS listener answers (any status) before the load starts
    let probe = format!("https://{SERVICE}.dev.{}:{}/", config.domain, tls.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&probe).send().await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("the proxy's HTTPS listener {tls} does not answer"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tasks = Vec::new();
    for env in ENVIRONMENTS {
        let url = format!("https://{SERVICE}.{env}.{}:{}/", config.domain, tls.port());
        let (client, creds, seen, mut stop) = (client.clone(), creds.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE_PER_ENV));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut in_flight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                while in_flight.try_join_next().is_some() {}
                let (client, creds, seen, url) = (client.clone(), creds.clone(), seen.clone(), url.clone());
                in_flight.spawn(async move {
                    let answer = client
                        .get(&url)
                        .header("x-api-key", &creds.api_key)
                        .bearer_auth(&creds.token)
                        .send()
                        .await;
                    let (release, bad, what) = match answer {
                        Ok(r) => (
                            r.headers()
                                .get("x-autopilot-release")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned(),
                            r.status().is_server_error(),
                            r.status().to_string(),
                        ),
                        Err(e) => ("-".to_owned(), true, e.to_string()),
                    };
                    let mut s = seen.lock().expect("traffic stats lock");
                    let e = s.by_release.entry(release.clone()).or_default();
                    e.0 += 1;
                    e.1 += u64::from(bad);
                    if bad && s.failures.len() < 20 {
                        s.failures.push(format!("{env} {release}: {what}"));
                    }
                });
            }
            // the requests in flight finish before the stop is done
            while in_flight.join_next().await.is_some() {}
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn phase_of(state: &ServiceState, env: &str, release: &str) -> Option<String> {
    let e = state.environments.get(env)?;
    if e.stable.as_deref() == Some(release) {
        return Some("promoted".into());
    }
    e.rollout
        .as_ref()
        .filter(|r| r.release == release)
        .map(|r| r.phase.name().to_owned())
}

/// The release built from `commit`, once it is.
fn release_of(state: &ServiceState, commit: &str) -> Option<String> {
    state
        .releases
        .iter()
        .find(|r| r.commit == commit)
        .map(|r| r.id.clone())
}

/// Runs the demo. Prints as it goes; returns what it saw.
/// Runs the demo; the summary is also written as JSON to `summary_file`, if given, before
/// autopilot keeps running (with [`DemoOptions::linger`]).
pub async fn run(opts: DemoOptions, summary_file: Option<&Path>) -> Result<DemoSummary, String> {
    let began = Instant::now();
    let paint = Arc::new(Paint { on: opts.fancy });
    let creds = Credentials::generate(
        &opts.dir.join("specs"),
        "https://id.autopilot.test",
        "demo",
        &["shop-team"],
    )?;
    let config = lay_out(&opts, &creds)?;
    let repo = opts.dir.join("repo");
    println!(
        "{} a sample service `{SERVICE}` in {}",
        paint.c("1", "autopilot demo:"),
        repo.display()
    );
    let v1 = commit(&repo, "v1: the shop opens", 0.0, "welcome (v1)")?;
    println!("  pushed v1 {} (healthy)", &v1[..8]);
    let admin_token = {
        let mut b = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let mut up = Up::start(config.clone(), admin_token)
        .await
        .map_err(|e| e.to_string())?;
    let store = up.store.clone();
    let mut summary = DemoSummary {
        store: format!("{}", config.data_dir.join("autopilot.db").display()),
        proxy: format!("http://{SERVICE}.dev.{}:{}", config.domain, config.listen.port()),
        proxy_https: format!(
            "https://{SERVICE}.dev.{}:{}",
            config.domain,
            config.tls_listen.map_or(0, |a| a.port())
        ),
        admin: format!("http://{}/metrics", config.admin),
        ..DemoSummary::default()
    };
    println!(
        "  proxy {} (HTTPS {}, CA {}), store {}",
        config.listen,
        config.tls_listen.map(|a| a.to_string()).unwrap_or_default(),
        config.data_dir.join("ca/ca.pem").display(),
        summary.store
    );
    if let Some(token) = &up.admin_token_file {
        println!(
            "  API {} — in another terminal: AUTOPILOT_URL=http://{} AUTOPILOT_TOKEN=$(cat {}) autopilot watch",
            config.api.listen,
            config.api.listen,
            token.display()
        );
        println!(
            "  web http://{}/ — open it in a browser and sign in with that token",
            config.api.listen
        );
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let creds = Arc::new(creds);
    let traffic_task = tokio::spawn(traffic(
        config.clone(),
        creds.clone(),
        seen.clone(),
        stop_rx.clone(),
    ));

    // the script: push versions as the previous ones land, then stop
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(Vec<String>, Option<f64>), String>>();
    let script = {
        let (repo, store, paint, limit) = (repo.clone(), store.clone(), paint.clone(), opts.limit);
        let bad_errors = opts.bad_errors;
        tokio::spawn(async move {
            let wait_for = |commit: String, env: &'static str, wanted: &'static [&'static str]| {
                let store = store.clone();
                async move {
                    let deadline = Instant::now() + limit;
                    loop {
                        if let Ok(states) = store.states().await
                            && let Some((_, st)) = states.iter().find(|(s, _)| s == SERVICE)
                            && let Some(release) = release_of(st, &commit)
                            && let Some(p) = phase_of(st, env, &release)
                            && wanted.contains(&p.as_str())
                        {
                            return Ok((release, p));
                        }
                        if Instant::now() > deadline {
                            return Err(format!("{commit} did not reach {wanted:?} in {env} in time"));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let result = async {
                let (r1, _) = wait_for(v1.clone(), "prod", &["promoted"]).await?;
                let v2 = commit(&repo, "v2: a friendlier greeting", 0.0, "welcome back (v2)")?;
                println!("  {} v2 {} (healthy)", paint.c("1", "pushed"), &v2[..8]);
                let (r2, _) = wait_for(v2, "prod", &["promoted"]).await?;
                let v3 = commit(&repo, "v3: new checkout (buggy)", bad_errors, "new checkout (v3)")?;
                let pushed = Instant::now();
                println!(
                    "  {} v3 {} — its artifact fails {:.0}% of requests",
                    paint.c("1;33", "pushed"),
                    &v3[..8],
                    bad_errors * 100.0
                );
                let (r3, phase) = wait_for(v3, "dev", &["rolled-back", "promoted"]).await?;
                let took = pushed.elapsed().as_secs_f64();
                if phase != "rolled-back" {
                    return Err(format!("the bad release {r3} was promoted in dev"));
                }
                Ok((vec![r1, r2, r3], Some(took)))
            }
            .await;
            let _ = done_tx.send(result);
        })
    };

    let bar = if opts.fancy {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let printer = {
        let (paint, bar) = (paint.clone(), bar.clone());
        move |_service: &str, tick: &Tick| {
            for t in &tick.plan.transitions {
                let colour = match t.to.as_str() {
                    "promoted" => "32",
                    "rolled-back" | "rolling-back" => "31",
                    "canary" => "36",
                    _ => "0",
                };
                let line = format!(
                    "  {:>8} {:<13} {} {:>3}%  {}",
                    t.environment,
                    t.release,
                    paint.c(colour, &format!("{:<12}", t.to)),
                    t.weight.0,
                    // in words; the judge's lines follow where a decision rests on them
                    crate::report::cause_line(t)
                );
                let mut judged = String::new();
                crate::report::objective_lines(t, false, &mut judged);
                let line = format!("{line}\n{}", judged.trim_end_matches('\n'));
                let line = line.trim_end().to_owned();
                match &bar {
                    Some(b) => b.println(line),
                    None => println!("{line}"),
                }
            }
            if let Some(b) = &bar {
                let mut parts = Vec::new();
                for (env, st) in &tick.plan.state.environments {
                    if let Some(r) = st.rollout.as_ref().filter(|r| !r.phase.is_finished()) {
                        let verdicts: Vec<String> = tick
                            .plan
                            .evidence
                            .iter()
                            .filter(|e| &e.environment == env)
                            .map(|e| {
                                let v = match e.judgement.verdict {
                                    crate::control::judge::Verdict::Regressed => "regressed",
                                    crate::control::judge::Verdict::Safe => "safe",
                                    crate::control::judge::Verdict::NotYet(_) => "not yet",
                                };
                                format!("{} {v}", e.objective)
                            })
                            .collect();
                        let w = r.phase.weight().0 as usize;
                        parts.push(format!(
                            "{env} {} [{}{}] {w}% {}",
                            r.release,
                            "#".repeat(w / 10),
                            "-".repeat(10 - w / 10),
                            verdicts.join(" ")
                        ));
                    }
                }
                b.set_message(if parts.is_empty() {
                    "idle".into()
                } else {
                    parts.join(" | ")
                });
            }
        }
    };
    let mut done_rx = done_rx;
    let mut outcome = None;
    let run = up.run(
        async {
            outcome = Some(
                (&mut done_rx)
                    .await
                    .unwrap_or_else(|_| Err("the script stopped".into())),
            );
        },
        printer,
    );
    let ran = run.await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let _ = stop_tx.send(true);
    let _ = traffic_task.await;
    script.abort();
    let result = outcome.unwrap_or_else(|| Err("stopped".into()));
    let transitions = store.transitions(Some(SERVICE)).await;
    let (transitions, (releases, took)) = match (transitions, ran, result) {
        (Ok(t), Ok(()), Ok(r)) => (t, r),
        (t, ran, result) => {
            up.stop().await;
            let why = t.err().map(|e| e.to_string());
            let why = why.or(ran.err().map(|e| e.to_string()));
            return Err(why.or(result.err()).unwrap_or_default());
        }
    };
    summary.releases = releases;
    summary.bad_push_to_rollback = took;
    summary.served = seen.lock().expect("traffic stats lock").by_release.clone();
    summary.failures = seen.lock().expect("traffic stats lock").failures.clone();
    summary.wall_seconds = began.elapsed().as_secs_f64();
    summary.ok = true;

    println!("\n{}", paint.c("1", "summary"));
    for (i, r) in summary.releases.iter().enumerate() {
        let (n, bad) = summary.served.get(r).copied().unwrap_or_default();
        let fate: Vec<String> = ENVIRONMENTS
            .iter()
            .filter_map(|env| {
                transitions
                    .iter()
                    .rev()
                    .find(|t| t.transition.environment == *env && t.transition.release == *r)
                    .map(|t| format!("{env}: {}", t.transition.to))
            })
            .collect();
        println!(
            "  v{} {r}: {n} requests, {bad} failed ({:.2}%); {}",
            i + 1,
            if n > 0 { bad as f64 * 100.0 / n as f64 } else { 0.0 },
            fate.join(", ")
        );
    }
    if let Some(t) = transitions
        .iter()
        .find(|t| t.transition.to == "rolling-back" && Some(&t.transition.release) == summary.releases.get(2))
    {
        let because = match &t.transition.cause {
            crate::control::rollout::Cause::Regressed {
                objective,
                objectives,
                ..
            } => objectives
                .iter()
                .find(|o| &o.objective == objective)
                .map(|o| format!("{objective} regressed: {}", o.words))
                .unwrap_or_else(|| crate::report::short_cause(&t.transition.cause)),
            other => crate::report::short_cause(other),
        };
        println!("  rolled back because {because}");
    }
    if let Some(t) = summary.bad_push_to_rollback {
        println!("  from the bad push to its rollback: {t:.1} s (build, deploy, canary, judgement)");
    }
    println!(
        "  decisions: {} transitions recorded; demo took {:.0} s",
        transitions.len(),
        summary.wall_seconds
    );
    println!(
        "  look around: store {} (sqlite3), files in {}",
        summary.store,
        opts.dir.display()
    );
    if let Some(path) = summary_file
        && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&summary).unwrap_or_default())
    {
        eprintln!("the summary could not be written to {}: {e}", path.display());
    }
    if opts.linger {
        let stop = match stop_signal() {
            Ok(stop) => stop,
            Err(e) => {
                up.stop().await;
                return Err(e);
            }
        };
        let token = up
            .admin_token_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("admin.token"));
        println!(
            "\n{} the pages and the API at http://{}/ (its admin token is in {}), the shop at {}; the loop goes on. Ctrl-C stops it.",
            paint.c("1", "autopilot keeps running:"),
            config.api.listen,
            token.display(),
            summary.proxy
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if let Err(e) = up.run(stop, |_, _| {}).await {
            up.stop().await;
            return Err(e.to_string());
        }
    }
    up.stop().await;
    Ok(summary)
}

/// `autopilot sample-service BEHAVIOUR`: the demo's service. Listens on `$PORT` (loopback),
/// answers `/healthz`, and fails a share of other requests given by `errors = …` in the
/// behaviour file (a file of its release) — every request in a deterministic pattern, so the
/// share is exact.
pub async fn serve_sample(behaviour: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(behaviour).map_err(|e| format!("{}: {e}", behaviour.display()))?;
    let mut errors = 0.0f64;
    let mut message = "hello".to_owned();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "errors" => errors = v.trim().parse().map_err(|e| format!("errors: {e}"))?,
                "message" => message = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let port: u16 = std::env::var("PORT")
        .map_err(|_| "PORT is not set".to_owned())?
        .parse()
        .map_err(|e| format!("PORT: {e}"))?;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(move || {
            let served = served.clone();
            let message = message.clone();
            async move {
                let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if fails(n, errors) {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "checkout failed\n".to_owned(),
                    )
                } else {
                    (axum::http::StatusCode::OK, format!("{message}\n"))
                }
            }
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await
        .map_err(|e| e.to_string())
}

/// Whether request `n` fails at error share `errors`: when the running count of failures owed
/// steps up (exactly `errors` of every run of requests, spread evenly).
fn fails(n: u64, errors: f64) -> bool {
    let n = n as f64;
    ((n + 1.0) * errors).floor() > (n * errors).floor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_fails_exactly_its_share() {
        assert_eq!((0..1000).filter(|n| fails(*n, 0.25)).count(), 250);
        assert_eq!((0..1000).filter(|n| fails(*n, 0.0)).count(), 0);
        assert!((0..10).all(|n| fails(n, 1.0)));
    }
}

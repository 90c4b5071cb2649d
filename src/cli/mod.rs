//! The operator command line over the API: `autopilot status`, `watch`, `release list|view|logs`,
//! `pause|resume|promote|rollback|approve`, `weight`, `pin|unpin`, `freeze|unfreeze`, `build`,
//! `audit`, `token create`. Tables for people, `--output json` for scripts.
//!
//! # Exit codes (scripts may rely on them)
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the API failed (5xx) or answered something unexpected |
//! | 2 | usage: a bad argument, or the API said the request is invalid (400) |
//! | 3 | not found (404): no such service, environment or release |
//! | 4 | conflict (409/422): the action contradicts the rollout's state |
//! | 5 | not allowed (401/403): no token, a wrong one, or too small a role |
//! | 6 | the API cannot be reached |
//!
//! The API's address comes from `--url` or `AUTOPILOT_URL` (default `http://127.0.0.1:7070`);
//! the token from `--token`, `AUTOPILOT_TOKEN`, or the `admin.token` file `autopilot up` wrote
//! in `.autopilot/`. Colour only on a terminal and without `NO_COLOR`.

pub mod kubernetes;
pub mod watch;

use crate::terminal::{printable, printable_lines};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Where and how to reach the API.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The API's address.
    #[arg(
        long,
        env = "AUTOPILOT_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
    /// An API bearer token (default: `AUTOPILOT_TOKEN`, else the `admin.token` that `autopilot
    /// up` wrote in its data directory: `./autopilot.yaml`'s `dataDir`, else `.autopilot/`).
    #[arg(long, env = "AUTOPILOT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `autopilot release …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReleaseCommand {
    /// A service's releases, newest first.
    List {
        service: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One release: build, deployments, verdicts, operator actions, URLs.
    View { release: String },
    /// A release's full build output.
    Logs { release: String },
    /// Announce a release built elsewhere (a service without `build`): an image pinned by
    /// digest. Autopilot pulls it, verifies it and rolls it out.
    Create {
        service: String,
        /// `REPOSITORY@sha256:…` in the service's `run.image` repository.
        #[arg(long)]
        image: String,
        /// The commit the image was built from.
        #[arg(long)]
        commit: Option<String>,
        #[arg(long, default_value = "released by CI")]
        reason: String,
    },
}

/// `autopilot token …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token (needs an admin token); prints its secret once.
    Create {
        name: String,
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// A group its approvals count for (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Revoke a token by name (needs an admin token); it stops working at once.
    Revoke { name: String },
}

/// One call's failure, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

/// Says what failed, and gives its exit code.
fn fail(f: Failure) -> ExitCode {
    eprintln!("error: {}", printable(&f.message));
    ExitCode::from(f.code)
}

/// The exit code for an HTTP status.
fn code_for(status: u16) -> u8 {
    match status {
        400 | 413 => 2,
        404 => 3,
        409 | 422 => 4,
        401 | 403 => 5,
        _ => 1,
    }
}

struct Api {
    base: String,
    token: Option<String>,
    /// Where a token was looked for when none was given, to say so when the API asks for one.
    looked: Vec<std::path::PathBuf>,
    client: reqwest::Client,
}

/// The token: `--token` or `AUTOPILOT_TOKEN`; else the API admin token `autopilot up` wrote in
/// its data directory (the `dataDir` of `./autopilot.yaml`, else `.autopilot/`). Never the proxy
/// admin token, which the API does not take. Returns the token, or where it was looked for.
fn token(c: &Connection) -> Result<String, Vec<std::path::PathBuf>> {
    if let Some(t) = c.token.clone().filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let mut dirs = Vec::new();
    if std::path::Path::new("autopilot.yaml").exists()
        && let Ok(config) = crate::live::config::AutopilotConfig::load(std::path::Path::new("autopilot.yaml"))
    {
        dirs.push(config.data_dir);
    }
    dirs.push(std::path::PathBuf::from(".autopilot"));
    let files: Vec<std::path::PathBuf> = dirs.into_iter().map(|d| d.join("admin.token")).collect();
    files
        .iter()
        .find_map(|f| {
            std::fs::read_to_string(f)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        })
        .ok_or(files)
}

impl Api {
    fn new(c: &Connection) -> Api {
        let (token, looked) = match token(c) {
            Ok(t) => (Some(t), Vec::new()),
            Err(looked) => (None, looked),
        };
        Api {
            base: c.url.trim_end_matches('/').to_owned(),
            token,
            looked,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("a client"),
        }
    }

    /// One request; a connection failure is tried once more (with the same idempotency key,
    /// so a mutation that did arrive is not done twice).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(String, String), Failure> {
        let key = body.map(|_| {
            let mut b = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        });
        let url_ok = url::Url::parse(&self.base).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !url_ok {
            return Err(Failure {
                code: 2,
                message: format!(
                    "the API's address `{}` (--url or AUTOPILOT_URL) is not an http(s) URL, such as http://127.0.0.1:7070",
                    printable(&self.base)
                ),
            });
        }
        let mut last = String::new();
        for _ in 0..2 {
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let (Some(b), Some(k)) = (body, &key) {
                req = req
                    .header("content-type", "application/json")
                    .header("idempotency-key", k)
                    .body(b.to_string());
            }
            match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    let ctype = res
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let text = res.text().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return Ok((ctype, text));
                    }
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .map(|j| {
                            let field = j["field"].as_str().map(|f| format!(" ({f})")).unwrap_or_default();
                            format!("{}{field}", j["message"].as_str().unwrap_or(&text))
                        })
                        .unwrap_or(text);
                    // no token given: say where one was looked for
                    let looked = if status == 401 && self.token.is_none() {
                        let files: Vec<String> =
                            self.looked.iter().map(|f| f.display().to_string()).collect();
                        format!(
                            " — no token given: pass --token or set AUTOPILOT_TOKEN (an API token, not the proxy admin token); no admin.token in {}",
                            files.join(" or ")
                        )
                    } else {
                        String::new()
                    };
                    return Err(Failure {
                        code: code_for(status),
                        message: format!("{status}: {message}{looked}"),
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(Failure {
            code: 6,
            message: format!(
                "cannot reach the API at {} ({last}); is `autopilot up` running?",
                self.base
            ),
        })
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let (_, text) = self.call(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| Failure {
            code: 1,
            message: format!("the API answered something that is not JSON: {e}"),
        })
    }
}

fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A state word, coloured by what it means (when colour is on).
fn paint(state: &str) -> String {
    if !colour() {
        return printable(state).into_owned();
    }
    let c = match state {
        "promoted" => "32",
        "rolled-back" | "rolling-back" => "31",
        "canary" | "promoting" | "deploying" => "36",
        "paused" | "waiting" => "33",
        _ => return printable(state).into_owned(),
    };
    format!("\x1b[{c}m{state}\x1b[0m")
}

/// Prints rows as aligned columns (by characters, ignoring colour codes).
fn table(header: &[&str], rows: &[Vec<String>]) {
    let visible = |s: &str| {
        let mut n = 0;
        let mut esc = false;
        for ch in s.chars() {
            match (esc, ch) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, _) => n += 1,
            }
        }
        n
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(visible(c));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - visible(c) + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A value as text for people: strings from the API (names, reasons, commit messages: anyone's
/// words) with their control characters escaped, so none reaches the terminal.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s).into_owned(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
}

/// The columns of [`env_rows`].
const ENV_HEADER: [&str; 7] = [
    "SERVICE",
    "ENV",
    "STABLE",
    "LATEST ROLLOUT",
    "WEIGHT",
    "STATE",
    "WAITING FOR",
];

/// One row per environment of a service view.
fn env_rows(service: &Value) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for e in service["environments"].as_array().into_iter().flatten() {
        let r = &e["rollout"];
        let (canary, weight, state) = if r.is_null() {
            ("-".into(), "-".into(), "-".into())
        } else {
            let active = !matches!(
                r["state"].as_str(),
                Some("promoted" | "rolled-back" | "superseded")
            );
            (
                s(&r["release"]),
                if active {
                    format!("{}%", s(&r["weight"]))
                } else {
                    "-".into()
                },
                paint(r["state"].as_str().unwrap_or("-")),
            )
        };
        rows.push(vec![
            s(&service["name"]),
            s(&e["name"]),
            s(&e["stable"]),
            canary,
            weight,
            state,
            printable(e["waiting_for_person"].as_str().unwrap_or("")).into_owned(),
        ]);
    }
    rows
}

/// `autopilot status [SERVICE]`.
pub async fn status(c: &Connection, service: Option<String>) -> ExitCode {
    let api = Api::new(c);
    let result = match &service {
        Some(s) => api
            .json(reqwest::Method::GET, &format!("/v1/services/{}", enc(s)), None)
            .await
            .map(|v| json!({ "services": [v] })),
        None => api.json(reqwest::Method::GET, "/v1/services", None).await,
    };
    finish(c, result, |v| {
        let rows: Vec<_> = v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(env_rows)
            .collect();
        table(&ENV_HEADER, &rows);
        if !v["push_webhooks"].is_null() {
            println!("\npush webhooks: {}", s(&v["push_webhooks"]["note"]));
        }
    })
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn finish(c: &Connection, result: Result<Value, Failure>, people: impl FnOnce(&Value)) -> ExitCode {
    match result {
        Ok(v) => {
            match c.output {
                Output::Json => print_json(&v),
                Output::Table => people(&v),
            }
            ExitCode::SUCCESS
        }
        Err(f) => fail(f),
    }
}

/// `autopilot release …`.
pub async fn release(c: &Connection, command: ReleaseCommand) -> ExitCode {
    let api = Api::new(c);
    match command {
        ReleaseCommand::List {
            service,
            limit,
            cursor,
        } => {
            let mut path = format!("/v1/services/{}/releases?limit={limit}", enc(&service));
            if let Some(cur) = cursor {
                path.push_str(&format!("&cursor={}", enc(&cur)));
            }
            let result = api.json(reqwest::Method::GET, &path, None).await;
            finish(c, result, |v| {
                let rows: Vec<_> = v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let running: Vec<String> =
                            r["running"].as_array().into_iter().flatten().map(s).collect();
                        vec![
                            s(&r["id"]),
                            s(&r["commit"]).chars().take(12).collect(),
                            s(&r["built_at"]),
                            s(&r["source"]),
                            running.join(", "),
                        ]
                    })
                    .collect();
                table(&["RELEASE", "COMMIT", "BUILT", "SOURCE", "RUNNING"], &rows);
                if let Some(n) = v["next_cursor"].as_str() {
                    println!("more: --cursor {}", printable(n));
                }
            })
        }
        ReleaseCommand::Create {
            service,
            image,
            commit,
            reason,
        } => {
            let mut body = json!({ "image": image, "reason": reason });
            if let Some(c) = commit {
                body["commit"] = json!(c);
            }
            let result = api
                .json(
                    reqwest::Method::POST,
                    &format!("/v1/services/{}/releases", enc(&service)),
                    Some(&body),
                )
                .await;
            finish(c, result, |v| {
                println!(
                    "release {} of {} announced (audit #{}): autopilot pulls {} and rolls it out",
                    s(&v["release"]),
                    s(&v["service"]),
                    s(&v["audit_id"]),
                    s(&v["image"])
                );
            })
        }
        ReleaseCommand::View { release } => {
            let result = api
                .json(
                    reqwest::Method::GET,
                    &format!("/v1/releases/{}", enc(&release)),
                    None,
                )
                .await;
            finish(c, result, |r| {
                println!("release  {}  ({})", s(&r["id"]), s(&r["service"]));
                println!("commit   {}", s(&r["commit"]));
                println!("digest   {}", s(&r["digest"]));
                println!("artifact {}", s(&r["artifact"]));
                if let Some(n) = r["size"].as_u64() {
                    println!("size     {n} bytes");
                }
                println!("source   {}", s(&r["source"]));
                let b = &r["build"];
                println!(
                    "build    #{} {} {} → {} ({} bytes of output: autopilot release logs {})",
                    s(&b["number"]),
                    s(&b["status"]),
                    s(&b["started_at"]),
                    s(&b["finished_at"]),
                    s(&b["output_bytes"]),
                    s(&r["id"])
                );
                for u in r["urls"].as_array().into_iter().flatten() {
                    println!(
                        "url      {} ({} {})",
                        s(&u["url"]),
                        s(&u["kind"]),
                        s(&u["environment"])
                    );
                }
                for d in r["deployments"].as_array().into_iter().flatten() {
                    println!(
                        "\n{} attempt {} — {}",
                        s(&d["environment"]),
                        s(&d["attempt"]),
                        paint(d["state"].as_str().unwrap_or("-"))
                    );
                    for t in d["transitions"].as_array().into_iter().flatten() {
                        println!(
                            "  {}  {} → {} at {}%: {}",
                            s(&t["at"]),
                            s(&t["from"]),
                            paint(t["to"].as_str().unwrap_or("-")),
                            s(&t["weight"]),
                            s(&t["cause"])
                        );
                    }
                }
                let verdicts: Vec<_> = r["verdicts"].as_array().into_iter().flatten().collect();
                if !verdicts.is_empty() {
                    println!("\nverdicts");
                    for v in verdicts {
                        println!(
                            "  {} {} {} {}: {}",
                            printable(v["at"].as_str().unwrap_or("now")),
                            s(&v["environment"]),
                            s(&v["objective"]),
                            s(&v["verdict"]),
                            s(&v["explanation"])
                        );
                    }
                }
                let actions: Vec<_> = r["actions"].as_array().into_iter().flatten().collect();
                if !actions.is_empty() {
                    println!("\noperator actions");
                    for a in actions {
                        println!(
                            "  {} {} {} by {}: {}",
                            s(&a["at"]),
                            s(&a["environment"]),
                            s(&a["action"]),
                            s(&a["who"]),
                            s(&a["reason"])
                        );
                    }
                }
            })
        }
        ReleaseCommand::Logs { release } => {
            match api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/releases/{}/logs", enc(&release)),
                    None,
                )
                .await
            {
                Ok((_, text)) => {
                    match c.output {
                        Output::Json => print_json(&json!({ "release": release, "output": text })),
                        Output::Table => print!("{}", printable_lines(&text)),
                    }
                    ExitCode::SUCCESS
                }
                Err(f) => fail(f),
            }
        }
    }
}

/// An operator action: `pause`, `resume`, `promote`, `rollback`, `approve`, `weight`,
/// `clear-weight`, `pin`, `unpin`, `freeze`, `unfreeze`.
pub async fn act(
    c: &Connection,
    service: &str,
    environment: &str,
    action: &str,
    reason: &str,
    percent: Option<u8>,
    release: Option<String>,
) -> ExitCode {
    let extra = json!({ "percent": percent, "release": release });
    act_with(c, service, environment, action, reason, extra).await
}

/// An action with more fields in its body (`null` ones are left out).
pub async fn act_with(
    c: &Connection,
    service: &str,
    environment: &str,
    action: &str,
    reason: &str,
    extra: serde_json::Value,
) -> ExitCode {
    let api = Api::new(c);
    let mut body = json!({ "action": action, "reason": reason });
    if let serde_json::Value::Object(fields) = extra {
        for (k, v) in fields.into_iter().filter(|(_, v)| !v.is_null()) {
            body[k] = v;
        }
    }
    let path = format!(
        "/v1/services/{}/environments/{}/actions",
        enc(service),
        enc(environment)
    );
    let result = api.json(reqwest::Method::POST, &path, Some(&body)).await;
    finish(c, result, |v| {
        let verb = if v["changed"] == json!(true) {
            "done"
        } else {
            "already in place"
        };
        println!(
            "{action} {service} {environment}: {verb} (audit #{})",
            s(&v["audit_id"])
        );
        let e = &v["environment"];
        let rows = env_rows(&json!({ "name": service, "environments": [e] }));
        table(&ENV_HEADER, &rows);
    })
}

/// `autopilot build SERVICE --commit SHA`.
pub async fn build(c: &Connection, service: &str, commit: &str, reason: &str) -> ExitCode {
    let api = Api::new(c);
    let body = json!({ "commit": commit, "reason": reason });
    let result = api
        .json(
            reqwest::Method::POST,
            &format!("/v1/services/{}/builds", enc(service)),
            Some(&body),
        )
        .await;
    finish(c, result, |v| {
        println!(
            "build of {} for {} asked for (audit #{}); it becomes a release like any other",
            s(&v["commit"]),
            s(&v["service"]),
            s(&v["audit_id"])
        );
    })
}

/// `autopilot audit`.
pub async fn audit(c: &Connection, service: Option<String>, release: Option<String>, limit: u32) -> ExitCode {
    let api = Api::new(c);
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(s) = service {
        path.push_str(&format!("&service={}", enc(&s)));
    }
    if let Some(r) = release {
        path.push_str(&format!("&release={}", enc(&r)));
    }
    let result = api.json(reqwest::Method::GET, &path, None).await;
    finish(c, result, |v| {
        let rows: Vec<_> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                vec![
                    s(&a["id"]),
                    s(&a["at"]),
                    s(&a["who"]),
                    s(&a["action"]),
                    format!(
                        "{} {}",
                        s(&a["service"]),
                        printable(a["environment"].as_str().unwrap_or(""))
                    ),
                    s(&a["release"]),
                    s(&a["reason"]),
                ]
            })
            .collect();
        table(&["ID", "AT", "WHO", "ACTION", "WHERE", "RELEASE", "WHY"], &rows);
    })
}

/// `autopilot token create`.
pub async fn token_create(c: &Connection, command: TokenCommand) -> ExitCode {
    let api = Api::new(c);
    let (name, role, groups) = match command {
        TokenCommand::Create { name, role, groups } => (name, role, groups),
        TokenCommand::Revoke { name } => {
            return match api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/tokens/{}", enc(&name)),
                    None,
                )
                .await
            {
                Ok(_) => {
                    if c.output == Output::Json {
                        print_json(&json!({ "revoked": name }));
                    } else {
                        println!("{name}: revoked");
                    }
                    ExitCode::SUCCESS
                }
                Err(f) => fail(f),
            };
        }
    };
    let body = json!({ "name": name, "role": role, "groups": groups });
    let result = api.json(reqwest::Method::POST, "/v1/tokens", Some(&body)).await;
    finish(c, result, |v| {
        println!("{} ({}): {}", s(&v["name"]), s(&v["role"]), s(&v["token"]));
        println!("the secret is shown this once");
    })
}

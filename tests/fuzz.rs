//! Every parser that reads what someone else wrote, fuzzed at volume: the YAML reader with every
//! spec kind, the routes file, the PromQL selector parser, the Prometheus range-query importer,
//! JWT and JWKS handling, push and registry webhook bodies, the API's JSON bodies, OCI manifests
//! and tar layers.
//!
//! Structure-aware mutation on the stable toolchain: each target starts from its checked-in
//! corpus (`tests/fuzz/corpus/<target>/`, plus the real specs in the repository's folders) and
//! feeds the parser inputs made by 1–6 mutations of a seed: byte flips, insertions of the
//! format's own tokens (YAML indicators, JSON delimiters, PromQL operators, huge and negative
//! numbers, control characters), deletions, duplications, splices of two seeds, truncations.
//! Inputs that are signed or authenticated are signed *after* mutation, so the parser behind the
//! check is what gets fuzzed. Coverage-guided fuzzing (cargo-fuzz, cargo-afl) would need an
//! instrumented build of the whole dependency tree — a second full build that CI cannot afford —
//! or a nightly toolchain, which a fresh machine does not have.
//!
//! Each target runs a fixed number of inputs from a fixed seed, so a run is repeatable
//! (`AUTOPILOT_FUZZ_SCALE=20 cargo nextest run --test fuzz --no-capture` runs twenty times as
//! many, for a long run by hand; `AUTOPILOT_FUZZ_SEED=n` starts another sequence). A target fails
//! when its parser panics or breaks its promise (an error without its location, a 5xx, a file
//! written outside the folder it was given); the input is written to
//! `target/fuzz-failures/<target>/` and printed, to be added to the corpus once fixed.

use autopilot::api::{ApiSettings, ApiState};
use autopilot::control::plan::PlanSpec;
use autopilot::control::time::Time;
use autopilot::store::SqlStore;
use axum::body::Body;
use hmac::{KeyInit, Mac};
use http::{Method, Request, StatusCode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seeds of a target: its corpus folder, and any extra files.
fn corpus(target: &str, extra: &[PathBuf]) -> Vec<Vec<u8>> {
    let dir = root().join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.extend_from_slice(extra);
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    assert!(!seeds.is_empty(), "no corpus for {target} in {}", dir.display());
    seeds
}

/// YAML files of a repository folder.
fn yaml_in(folder: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(folder))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Tokens every format shares: numbers at the edges, control and odd characters.
const COMMON: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "1e999",
    "-0",
    "NaN",
    "18446744073709551616",
    "9223372036854775807",
    "\u{0}",
    "\u{1b}[2J",
    "\r\n",
    "\t",
    "\u{feff}",
    "\u{202e}",
    "é",
    "𝄞",
    "\\",
    "\"",
    "'",
    " ",
];

/// The mutator: 1–6 random edits of a seed, or a splice of two.
struct Mutator {
    rng: ChaCha8Rng,
    tokens: Vec<&'static str>,
}

impl Mutator {
    fn new(target: &str, tokens: &[&'static str]) -> Mutator {
        // a seed per target, fixed: the same inputs every run
        let base: u64 = std::env::var("AUTOPILOT_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let seed = target.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ base, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Mutator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            tokens: COMMON.iter().chain(tokens).copied().collect(),
        }
    }

    fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds[self.rng.random_range(0..seeds.len())].clone();
        // a seed as it is now and then: the valid path must stay valid
        if self.rng.random_ratio(1, 16) {
            return data;
        }
        for _ in 0..self.rng.random_range(1..=6) {
            let len = data.len();
            let at = if len == 0 {
                0
            } else {
                self.rng.random_range(0..=len)
            };
            match self.rng.random_range(0..8) {
                0 if len > 0 => {
                    let i = self.rng.random_range(0..len);
                    data[i] ^= 1 << self.rng.random_range(0..8);
                }
                1 => {
                    let b: u8 = self.rng.random();
                    data.insert(at, b);
                }
                2 | 3 => {
                    let t = self.tokens[self.rng.random_range(0..self.tokens.len())];
                    data.splice(at..at, t.bytes());
                }
                4 if len > 0 => {
                    let end = (at + self.rng.random_range(1..=16)).min(len);
                    let start = at.min(end);
                    data.drain(start..end);
                }
                5 if len > 0 => {
                    let start = self.rng.random_range(0..len);
                    let end = (start + self.rng.random_range(1..=64)).min(len);
                    let copy = data[start..end].to_vec();
                    let times = self.rng.random_range(1..=8);
                    for _ in 0..times {
                        data.splice(at..at, copy.iter().copied());
                    }
                }
                6 => {
                    let other = &seeds[self.rng.random_range(0..seeds.len())];
                    if !other.is_empty() {
                        let from = self.rng.random_range(0..other.len());
                        let cut = at.min(data.len());
                        data.truncate(cut);
                        data.extend_from_slice(&other[from..]);
                    }
                }
                7 if len > 0 => data.truncate(self.rng.random_range(0..len)),
                _ => {}
            }
        }
        data
    }
}

/// How many inputs a target runs: its own default (about five seconds here, so that CI's run
/// of every target takes under a minute), times `AUTOPILOT_FUZZ_SCALE` for a longer run.
fn runs(default: usize) -> usize {
    let scale: f64 = std::env::var("AUTOPILOT_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0);
    (default as f64 * scale).ceil() as usize
}

/// Runs `check` on `n` mutated inputs; a panic or a broken promise (`Err`) fails the target,
/// with the input saved.
fn fuzz(
    target: &str,
    seeds: &[Vec<u8>],
    tokens: &[&'static str],
    n: usize,
    mut check: impl FnMut(&[u8]) -> Result<(), String>,
) {
    let mut m = Mutator::new(target, tokens);
    let started = Instant::now();
    for i in 0..n {
        let input = m.input(seeds);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(&input)));
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(panic) => format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            ),
        };
        let dir = root().join("target/fuzz-failures").join(target);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("input-{i}"));
        let _ = std::fs::write(&file, &input);
        panic!(
            "{target}: input {i} ({}): {problem}\n{:?}",
            file.display(),
            String::from_utf8_lossy(&input)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    // the figures for the note: executions per target
    eprintln!(
        "fuzz {target}: {n} inputs in {secs:.1} s ({:.0}/s), {} seeds",
        n as f64 / secs.max(1e-9),
        seeds.len()
    );
}

const YAML: &[&str] = &[
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "|\n",
    ">-\n",
    "\n  ",
    "\n",
    "#",
    "---\n",
    "...\n",
    "~",
    "null",
    "true",
    "? ",
    "%YAML 1.2\n",
    "0x1F",
    "0o17",
    ".inf",
    "1_000",
    "5m",
    "1h30m",
    "99%",
    "150%",
    "kind: ",
    "name: ",
    "objectives: ",
    "controller: ",
    "environments: ",
    "sensor: ",
    "target: ",
    "steps: ",
];

#[test]
fn every_spec_kind_read_from_yaml() {
    let mut files = Vec::new();
    for folder in [
        "objectives",
        "sensors",
        "controllers",
        "simulations",
        "tests/broken",
    ] {
        files.extend(yaml_in(folder));
    }
    let seeds = corpus("spec", &files);
    // the other files of the set, so that a mutated one is checked against real references
    let whole: Vec<(String, String)> = ["objectives", "sensors", "controllers"]
        .iter()
        .flat_map(|f| yaml_in(f))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    fuzz("spec", &seeds, YAML, runs(2500), |input| {
        let text = String::from_utf8_lossy(input);
        let mut texts: Vec<(&str, &str)> = whole
            .iter()
            .take(3)
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        texts.push(("fuzzed.yaml", &text));
        match autopilot::spec::load_texts(&texts) {
            Ok(_) => Ok(()),
            Err(report) => {
                let _ = report.render_text();
                match report
                    .diagnostics
                    .iter()
                    .find(|d| d.line == 0 || d.message.is_empty())
                {
                    Some(d) => Err(format!("a problem without its place or words: {d:?}")),
                    None => Ok(()),
                }
            }
        }
    });
}

#[test]
fn the_routes_file() {
    let seeds = corpus("routes", &[root().join("tests/broken/routes.yaml")]);
    fuzz("routes", &seeds, YAML, runs(30_000), |input| {
        let text = String::from_utf8_lossy(input);
        match autopilot::spec::parse_document::<autopilot::proxy::routes::RoutesFile>("routes.yaml", &text) {
            Ok(file) => {
                // a file that parses either checks or says why, and builds a table
                if file.check().is_ok() {
                    let registry = Default::default();
                    let _ = autopilot::proxy::routes::RouteTable::build(&file, None, &registry);
                }
                Ok(())
            }
            Err(report) if report.diagnostics.iter().any(|d| d.line == 0) => {
                Err(format!("a problem without its place: {:?}", report.diagnostics))
            }
            Err(report) => {
                let _ = report.render_text();
                Ok(())
            }
        }
    });
}

#[test]
fn promql_selectors() {
    let seeds = corpus("promql", &[]);
    let tokens: &[&str] = &[
        "=",
        "!=",
        "=~",
        "!~",
        ",",
        "{",
        "}",
        "\"",
        "\\\"",
        "(",
        ")",
        "[5m]",
        "{{service}}",
        "{{release}}",
        "{{",
        "}}",
        "__name__",
        "le",
        "by (release)",
        "sum",
        "rate(",
        "\\\\",
        ".*",
        "|",
        "x",
    ];
    fuzz("promql", &seeds, tokens, runs(60_000), |input| {
        let text = String::from_utf8_lossy(input);
        let _ = autopilot::spec::promql::parse_matchers(&text);
        let _ = autopilot::spec::promql::identity_selector(&text);
        let _ = autopilot::spec::promql::quote(&text);
        Ok(())
    });
}

#[test]
fn prometheus_range_query_exports() {
    let seeds = corpus("prom-export", &[]);
    let tokens: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"matrix\"",
        "\"vector\"",
        "\"values\"",
        "\"metric\"",
        "\"NaN\"",
        "\"+Inf\"",
        "\"-Inf\"",
        "1e400",
        "-1700000000",
        "[1,\"1\"]",
        "null",
        "true",
    ];
    let path = Path::new("export.json");
    fuzz("prom-export", &seeds, tokens, runs(800_000), |input| {
        let text = String::from_utf8_lossy(input);
        if let Ok(series) = autopilot::sim::replay::parse_export(path, &text) {
            let refs: Vec<_> = series.iter().collect();
            let at = autopilot::sim::replay::timestamps(&refs);
            let _ = autopilot::sim::replay::sum_at(&refs, &at);
        }
        let _ = autopilot::sim::replay::parse(path, &text);
        Ok(())
    });
}

const JSON: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "{\"a\":",
    "[[[[[[[[",
    "]]]]]]]]",
    "\\u0000",
    "\\ud800",
    "1.5",
    "\"refs/heads/main\"",
    "\"0000000000000000000000000000000000000000\"",
    "\"ref\"",
    "\"after\"",
    "\"pusher\"",
];

/// A store, the repository's specs, and a token per role, for the API targets.
struct Api {
    _dir: tempfile::TempDir,
    router: axum::Router,
    store: SqlStore,
    operator: String,
    admin: String,
    rt: tokio::runtime::Runtime,
}

const SECRET: &str = "fuzz-secret";

fn api() -> Api {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (router, store, operator, admin) = rt.block_on(async {
        let dirs: Vec<PathBuf> = ["objectives", "sensors", "controllers"]
            .iter()
            .map(|d| root().join(d))
            .collect();
        let catalog = autopilot::spec::load(&dirs).unwrap();
        let specs: Vec<PlanSpec> = catalog
            .services
            .keys()
            .filter_map(|s| PlanSpec::resolve(&catalog, s))
            .collect();
        let store = SqlStore::open(&format!("sqlite://{}", dir.path().join("f.db").display()))
            .await
            .unwrap();
        let operator = store.create_token("op", "operator", &[]).await.unwrap();
        let admin = store.create_token("root", "admin", &[]).await.unwrap();
        let state = ApiState {
            store: store.clone(),
            catalog: Arc::new(catalog),
            specs: Arc::new(specs),
            settings: Arc::new(ApiSettings {
                open_reads: false,
                webhook_secret: Some(SECRET.into()),
                webhook_secret_variable: "AUTOPILOT_WEBHOOK_SECRET".into(),
                domain: "example.test".into(),
                public_port: None,
                scheme: "http",
            }),
            clock: Arc::new(|| Time::from_secs(1_800_000_000)),
            discovery: None,
            streams: Default::default(),
        };
        (autopilot::app::router(state), store, operator, admin)
    });
    Api {
        _dir: dir,
        router,
        store,
        operator,
        admin,
        rt,
    }
}

impl Api {
    /// (status, body) of one request.
    fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        self.rt.block_on(async {
            let res = self.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }
}

/// An answer keeps the API's promises: never a 5xx for any body, and an error is JSON with its
/// code and words.
fn answered(status: StatusCode, body: &str) -> Result<(), String> {
    if status.is_server_error() {
        return Err(format!("{status}: {body}"));
    }
    if status.is_client_error() {
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("{status}, not JSON ({e}): {body}"))?;
        if !v["code"].is_string() || !v["message"].is_string() {
            return Err(format!("{status} without code and message: {body}"));
        }
    }
    Ok(())
}

#[test]
fn push_webhook_bodies_signed_after_mutation() {
    let a = api();
    let seeds = corpus("webhook-push", &[]);
    let mut delivery = 0u64;
    fuzz("webhook-push", &seeds, JSON, runs(20_000), |input| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(input);
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        delivery += 1;
        let headers = [
            ("x-github-event", "push".to_owned()),
            ("x-github-delivery", format!("fuzz-{delivery}")),
            ("x-hub-signature-256", format!("sha256={sig}")),
            ("content-type", "application/json".to_owned()),
        ];
        let (status, body) = a.call(Method::POST, "/v1/webhooks/push/checkout", &headers, input);
        answered(status, &body)?;
        if status == StatusCode::ACCEPTED && !body.contains("\"fetching\":\"main\"") {
            return Err(format!("accepted without fetching the branch: {body}"));
        }
        Ok(())
    });
    // whatever the bodies said, nothing they named was asked to be built
    let asks = a.rt.block_on(a.store.build_requests("checkout", 0)).unwrap();
    assert!(asks.iter().all(|r| r.fetch && r.commit.is_empty()), "{asks:?}");
}

#[test]
fn registry_notifications() {
    let a = api();
    let seeds = corpus("webhook-registry", &[]);
    let auth = format!("Bearer {}", a.operator);
    fuzz("webhook-registry", &seeds, JSON, runs(15_000), |input| {
        let headers = [
            ("authorization", auth.clone()),
            (
                "content-type",
                "application/vnd.docker.distribution.events.v1+json".to_owned(),
            ),
        ];
        let (status, body) = a.call(Method::POST, "/v1/webhooks/registry", &headers, input);
        answered(status, &body)
    });
}

#[test]
fn api_json_bodies() {
    let a = api();
    let seeds = corpus("api-json", &[]);
    let (op, admin) = (format!("Bearer {}", a.operator), format!("Bearer {}", a.admin));
    let targets = [
        ("/v1/services/checkout/environments/prod/actions", &op),
        ("/v1/services/checkout/environments/dev/actions", &op),
        ("/v1/services/checkout/builds", &op),
        ("/v1/services/search/releases", &op),
        ("/v1/tokens", &admin),
        ("/v1/session", &op),
    ];
    let mut i = 0usize;
    fuzz("api-json", &seeds, JSON, runs(18_000), |input| {
        i += 1;
        let (path, auth) = targets[i % targets.len()];
        let headers = [
            ("authorization", auth.clone()),
            ("content-type", "application/json".to_owned()),
        ];
        let (status, body) = a.call(Method::POST, path, &headers, input);
        answered(status, &body)
    });
}

#[test]
fn jwts_and_key_sets() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])
    }]});
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let key = "the-api-key";
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let settings: autopilot::spec::routes::AuthSettings = serde_json::from_value(serde_json::json!({
        "issuer": "https://id.test", "audience": "autopilot", "algorithms": ["ES256"], "jwks": "jwks.json",
        "apiKeys": {"app": digest}
    }))
    .unwrap();
    let auth = autopilot::proxy::auth::Authenticator::new(&settings, &set).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let good = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "ann", "iss": "https://id.test", "aud": "autopilot", "exp": now + 3600, "groups": ["shop"]}),
        &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
    )
    .unwrap();
    assert!(auth.verify(Some(key), Some(&format!("Bearer {good}"))).is_ok());
    let mut seeds = corpus("jwt", &[]);
    seeds.push(good.clone().into_bytes());
    let tokens: &[&str] = &[
        ".",
        "..",
        "eyJ",
        "-",
        "_",
        "=",
        "A",
        "\"alg\":\"none\"",
        "\"kid\":",
        "\"kty\":\"oct\"",
    ];
    fuzz("jwt", &seeds, tokens, runs(250_000), |input| {
        let text = String::from_utf8_lossy(input);
        // as a bearer token: only the untouched token passes (space around it is the header's,
        // not the token's)
        if auth.verify(Some(key), Some(&format!("Bearer {text}"))).is_ok() && text.trim() != good {
            return Err(format!("a changed token was accepted: {text}"));
        }
        // as a key set: unusable keys are skipped or refused, never a panic
        if let Ok(set) = serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text) {
            let _ = autopilot::proxy::auth::Authenticator::new(&settings, &set);
        }
        Ok(())
    });
}

#[test]
fn oci_manifests() {
    let seeds = corpus("oci-manifest", &[]);
    let tokens: &[&str] = &[
        "\"sha256:",
        "\"digest\"",
        "\"layers\"",
        "\"manifests\"",
        "\"platform\"",
        "\"size\":",
        "-1",
    ];
    fuzz("oci-manifest", &seeds, tokens, runs(1_200_000), |input| {
        let _ = autopilot::release::oci::platform_manifest(input);
        let _ = autopilot::release::oci::blobs_of(input);
        Ok(())
    });
}

#[test]
fn tar_layers_stay_inside_their_folder() {
    let seeds = corpus("tar-layer", &[]);
    let tokens: &[&str] = &[
        "../",
        "/etc/passwd",
        ".wh.",
        ".wh..wh..opq",
        "ustar\u{0}00",
        "0000755\u{0}",
        "2",
        "5",
    ];
    let mut n = 0;
    fuzz("tar-layer", &seeds, tokens, runs(8000), |input| {
        n += 1;
        let dir = tempfile::tempdir().unwrap();
        let into = dir.path().join("layer");
        std::fs::create_dir_all(&into).unwrap();
        let _ = autopilot::release::oci::unpack_layer(input, &into);
        // nothing but the layer's own folder beside it
        let beside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if beside.len() != 1 {
            return Err(format!("wrote outside its folder: {beside:?}"));
        }
        Ok(())
    });
}

//! The API as a client uses it: through `Router::oneshot` on SQLite, and over a real socket on
//! a real PostgreSQL server; the same suite on both.

use autopilot::api::{self, ApiSettings, ApiState};
use autopilot::control::plan::PlanSpec;
use autopilot::control::ports::Store;
use autopilot::control::rollout::*;
use autopilot::control::time::Time;
use autopilot::spec::units::Weight;
use autopilot::store::SqlStore;
use autopilot::store::postgres::TempPostgres;
use axum::body::Body;
use hmac::{KeyInit, Mac};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

const SECRET: &str = "webhook-secret";

enum Client {
    Oneshot(axum::Router),
    Socket(String, reqwest::Client),
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        match self {
            Client::Oneshot(router) => {
                let mut req = Request::builder().method(method).uri(path);
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                if body.is_some() {
                    req = req.header("content-type", "application/json");
                }
                let req = req
                    .body(body.map(Body::from).unwrap_or_else(Body::empty))
                    .unwrap();
                let res = router.clone().oneshot(req).await.unwrap();
                let status = res.status();
                let headers = res.headers().clone();
                let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
                Answer {
                    status,
                    headers,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                }
            }
            Client::Socket(base, client) => {
                let mut req = client.request(method, format!("{base}{path}"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                if let Some(b) = body {
                    req = req.header("content-type", "application/json").body(b);
                }
                let res = req.send().await.unwrap();
                Answer {
                    status: res.status(),
                    headers: res.headers().clone(),
                    text: res.text().await.unwrap(),
                }
            }
        }
    }
    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, path, token, None, &[]).await
    }
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            token,
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await
    }
}

/// The API served over a real socket on a free loopback port, until [`Served::stop`].
struct Served {
    addr: std::net::SocketAddr,
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(state: ApiState) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(autopilot::app::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Served {
            addr,
            base: format!("http://{addr}"),
            stop,
            server,
        }
    }

    /// Stops the server and waits for it to end cleanly.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

struct Tokens {
    admin: String,
    operator: String,
    viewer: String,
}

fn specs_dir() -> Vec<std::path::PathBuf> {
    ["objectives", "sensors", "controllers"]
        .map(|d| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(d))
        .to_vec()
}

/// A store with checkout's r1 stable everywhere and r2 a canary at 20% in prod, two builds,
/// one transition history, and one token per role.
async fn seeded(url: &str) -> (ApiState, Tokens) {
    let catalog = autopilot::spec::load(&specs_dir()).unwrap();
    let specs: Vec<PlanSpec> = catalog
        .services
        .keys()
        .filter_map(|s| PlanSpec::resolve(&catalog, s))
        .collect();
    let mut store = SqlStore::open(url).await.unwrap();
    let mut state = ServiceState::default();
    for (i, id) in ["r1", "r2"].iter().enumerate() {
        state.releases.push(Release {
            id: (*id).into(),
            commit: format!("{:040x}", i + 1),
            digest: format!("sha256:{:064x}", i + 1),
        });
        sqlx::query(
            "INSERT INTO builds (service, commit_sha, status, started_at, finished_at, digest, release, output, config) \
             VALUES ('checkout', $1, 'built', $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!("{:040x}", i + 1))
        .bind(1000 * i as i64)
        .bind(1000 * i as i64 + 500)
        .bind(format!("sha256:{:064x}", i + 1))
        .bind(*id)
        .bind(format!("building {id}\nok\n"))
        .bind("kind: Service\nname: checkout\n")
        .execute(store.pool())
        .await
        .unwrap();
    }
    for env in ["dev", "staging", "prod"] {
        let e = state.environments.entry(env.into()).or_default();
        e.stable = Some("r1".into());
    }
    state.environments.get_mut("prod").unwrap().rollout = Some(Rollout {
        release: "r2".into(),
        phase: Phase::Canary {
            step: 1,
            weight: Weight(20),
            since: Time::from_secs(60),
        },
        started_at: Time::from_secs(50),
        judges: Default::default(),
        watches: Default::default(),
        excess_bad: 0.0,
    });
    let plan = Plan {
        state,
        actions: Vec::new(),
        transitions: vec![
            Transition {
                environment: "prod".into(),
                release: "r2".into(),
                from: None,
                to: PhaseKind::Deploying,
                weight: Weight(0),
                cause: Cause::GatesOpen,
                at: Time::from_secs(50),
            },
            Transition {
                environment: "prod".into(),
                release: "r2".into(),
                from: Some(PhaseKind::Deploying),
                to: PhaseKind::Canary,
                weight: Weight(20),
                cause: Cause::Ready,
                at: Time::from_secs(60),
            },
        ],
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: Time::ZERO,
        consumed: Vec::new(),
    };
    store.record("checkout", 0, &plan, &[]).await.unwrap();
    let tokens = Tokens {
        admin: store.create_token("root", "admin", &[]).await.unwrap(),
        operator: store
            .create_token("ann", "operator", &["sre".into()])
            .await
            .unwrap(),
        viewer: store.create_token("vic", "viewer", &[]).await.unwrap(),
    };
    let state = ApiState {
        store,
        catalog: Arc::new(catalog),
        specs: Arc::new(specs),
        settings: Arc::new(ApiSettings {
            open_reads: false,
            webhook_secret: Some(SECRET.into()),
            webhook_secret_variable: "AUTOPILOT_WEBHOOK_SECRET".into(),
            domain: "example.test".into(),
            public_port: Some(8080),
            scheme: "http",
        }),
        clock: Arc::new(|| Time::from_secs(1_800_000_000)),
        discovery: None,
        streams: Default::default(),
    };
    (state, tokens)
}

fn assert_error(a: &Answer, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(a.status, status, "{}", a.text);
    let j = a.json();
    assert_eq!(j["code"], code, "{}", a.text);
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
    if let Some(f) = field {
        assert_eq!(j["field"], f, "{}", a.text);
    }
}

async fn suite(c: &Client, t: &Tokens, store: &SqlStore) {
    let act = "/v1/services/checkout/environments/prod/actions";
    // builds of every outcome, newest first, each with its output
    let builds = c
        .get("/v1/services/checkout/builds?limit=1", Some(&t.viewer))
        .await;
    assert_eq!(builds.status, StatusCode::OK, "{}", builds.text);
    let page = builds.json();
    assert_eq!(page["items"][0]["release"], "r2", "{page}");
    assert_eq!(page["items"][0]["status"], "built");
    let older = c
        .get(
            &format!(
                "/v1/services/checkout/builds?limit=1&cursor={}",
                page["next_cursor"].as_str().unwrap()
            ),
            Some(&t.viewer),
        )
        .await
        .json();
    assert_eq!(older["items"][0]["release"], "r1", "{older}");
    let logs = c
        .get(page["items"][0]["logs"].as_str().unwrap(), Some(&t.viewer))
        .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(logs.text, "building r2\nok\n");
    assert_error(
        &c.get("/v1/services/checkout/builds/999/logs", Some(&t.viewer))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path.number"),
    );
    // who may do what
    assert_error(
        &c.get("/v1/services", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    assert_error(
        &c.get("/v1/services", Some("ap_nope")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let pause = json!({"action": "pause", "reason": "looking at a latency graph"});
    let refused = c.post(act, Some(&t.viewer), pause.clone()).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden", None);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("vic is a viewer; this needs an operator token"),
        "{}",
        refused.text
    );
    let refused = c
        .post(
            "/v1/tokens",
            Some(&t.operator),
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden", None);
    assert!(
        refused
            .text
            .contains("ann is an operator; this needs an admin token"),
        "{}",
        refused.text
    );
    // a token's name is shown everywhere: no control, bidi or odd characters
    for name in ["ann\u{202e}gpj.exe", "a b", "x\u{1b}[2J", "名前\u{7}"] {
        assert_error(
            &c.post(
                "/v1/tokens",
                Some(&t.admin),
                json!({"name": name, "role": "viewer"}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("body.name"),
        );
    }

    // reading
    let list = c.get("/v1/services", Some(&t.viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let services = list.json();
    let checkout = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "checkout")
        .unwrap()
        .clone();
    let prod = checkout["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "prod")
        .unwrap();
    assert_eq!(prod["stable"], "r1");
    assert_eq!(prod["rollout"]["release"], "r2");
    assert_eq!(prod["rollout"]["state"], "canary");
    assert_eq!(prod["rollout"]["weight"], 20);
    assert_eq!(prod["url"], "http://checkout.prod.example.test:8080/");
    assert_error(
        &c.get("/v1/services/nope", Some(&t.viewer)).await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path.service"),
    );

    // acting: pause, audited with who, why and from where; the state shows it
    let a = c.post(act, Some(&t.operator), pause.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let j = a.json();
    assert_eq!(j["changed"], true);
    assert_eq!(j["environment"]["overrides"]["paused"]["who"], "ann");
    assert!(
        j["environment"]["waiting_for_person"]
            .as_str()
            .unwrap()
            .contains("pause by ann")
    );
    assert!(
        store
            .clone()
            .load("checkout")
            .await
            .unwrap()
            .overrides
            .environments["prod"]
            .pause
            .is_some()
    );
    // the same pause made regardless holds through a regression, and says so
    let regardless = json!({"action": "pause", "reason": "hold it", "regardless": true});
    let a = c.post(act, Some(&t.operator), regardless).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["changed"], true);
    assert_eq!(a.json()["environment"]["overrides"]["paused_regardless"], true);
    // conflicts: resume twice, promote while a rollback waits
    let resume = json!({"action": "resume", "reason": "graph is fine"});
    assert_eq!(
        c.post(act, Some(&t.operator), resume.clone()).await.status,
        StatusCode::OK
    );
    assert_error(
        &c.post(act, Some(&t.operator), resume).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    // bad input names the field; nothing is written
    let audits_before = store
        .audit(Some("checkout"), None, None, 200)
        .await
        .unwrap()
        .len();
    for (body, field) in [
        (
            json!({"action": "weight", "reason": "r", "percent": 200}),
            "body.percent",
        ),
        (json!({"action": "weight", "reason": "r"}), "body.percent"),
        (json!({"action": "pin", "reason": "r"}), "body.release"),
        (json!({"action": "jump", "reason": "r"}), "body.action"),
        (
            json!({"action": "pause", "reason": "r", "colour": "red"}),
            "body.colour",
        ),
        (json!({"action": "pause", "reason": "  "}), "body.reason"),
        (
            json!({"action": "resume", "reason": "r", "regardless": true}),
            "body.regardless",
        ),
        (json!({"action": "pause"}), "body"),
    ] {
        assert_error(
            &c.post(act, Some(&t.operator), body.clone()).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(field),
        );
    }
    assert_error(
        &c.call(
            Method::POST,
            act,
            Some(&t.operator),
            Some(b"{not json".to_vec()),
            &[],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("body"),
    );
    assert_error(
        &c.post(
            "/v1/services/checkout/environments/production/actions",
            Some(&t.operator),
            json!({"action": "pause", "reason": "r"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path.environment"),
    );
    assert_error(
        &c.post(
            act,
            Some(&t.operator),
            json!({"action": "pin", "reason": "r", "release": "r9"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("body.release"),
    );
    let huge = vec![b' '; api::BODY_LIMIT + 10];
    assert_error(
        &c.call(Method::POST, act, Some(&t.operator), Some(huge), &[])
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    assert_eq!(
        store
            .audit(Some("checkout"), None, None, 200)
            .await
            .unwrap()
            .len(),
        audits_before,
        "a refusal was audited"
    );

    // an approval counts for the token's groups
    let ok = c
        .post(
            act,
            Some(&t.operator),
            json!({"action": "approve", "reason": "reviewed", "release": "r2"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(
        ok.json()["environment"]["overrides"]["approvals"][0]["groups"],
        json!(["sre"])
    );
    let audits_before = audits_before + 1;

    // idempotent retries: the same answer, one audit record; a reused key for another request
    let weight = json!({"action": "weight", "reason": "hold here", "percent": 30})
        .to_string()
        .into_bytes();
    let key = [("idempotency-key", "retry-1")];
    let first = c
        .call(Method::POST, act, Some(&t.operator), Some(weight.clone()), &key)
        .await;
    let again = c
        .call(Method::POST, act, Some(&t.operator), Some(weight), &key)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.text, again.text);
    assert_eq!(
        store
            .audit(Some("checkout"), None, None, 200)
            .await
            .unwrap()
            .len(),
        audits_before + 1
    );
    let other = json!({"action": "weight", "reason": "hold here", "percent": 40})
        .to_string()
        .into_bytes();
    assert_error(
        &c.call(Method::POST, act, Some(&t.operator), Some(other), &key)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        None,
    );

    // releases, newest first, paged
    let page = c
        .get("/v1/services/checkout/releases?limit=1", Some(&t.viewer))
        .await
        .json();
    assert_eq!(page["items"][0]["id"], "r2");
    assert_eq!(page["items"][0]["running"][0], "prod (canary 20%)");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page2 = c
        .get(
            &format!("/v1/services/checkout/releases?limit=1&cursor={cursor}"),
            Some(&t.viewer),
        )
        .await
        .json();
    assert_eq!(page2["items"][0]["id"], "r1");
    assert!(page2.get("next_cursor").is_none());
    assert_error(
        &c.get("/v1/services/checkout/releases?limit=0", Some(&t.viewer))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("query.limit"),
    );
    assert_error(
        &c.get("/v1/services/checkout/releases?cursor=zz", Some(&t.viewer))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("query.cursor"),
    );

    // one release's story
    let r = c.get("/v1/releases/r2", Some(&t.viewer)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = r.json();
    assert_eq!(r["service"], "checkout");
    assert_eq!(r["config"], "kind: Service\nname: checkout\n");
    assert_eq!(r["build"]["status"], "built");
    assert_eq!(r["deployments"][0]["environment"], "prod");
    assert_eq!(r["deployments"][0]["state"], "canary");
    assert_eq!(r["deployments"][0]["transitions"][1]["cause"], "instances ready");
    let actions: Vec<&str> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["weight", "approve", "resume", "pause-regardless", "pause"]
    );
    assert_eq!(r["actions"][0]["who"], "ann");
    let urls: Vec<&str> = r["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&"http://r2.checkout.prod.example.test:8080/"),
        "{urls:?}"
    );
    let logs = c.get("/v1/releases/r2/logs", Some(&t.viewer)).await;
    assert_eq!(logs.text, "building r2\nok\n");
    assert_error(
        &c.get("/v1/releases/r9", Some(&t.viewer)).await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path.release"),
    );

    // the audit trail, narrowed and paged
    let audit = c
        .get("/v1/audit?service=checkout&limit=2", Some(&t.viewer))
        .await
        .json();
    assert_eq!(audit["items"].as_array().unwrap().len(), 2);
    assert!(audit["next_cursor"].is_string());

    // a hotfix build of a named commit, and a push webhook
    let b = c
        .post(
            "/v1/services/checkout/builds",
            Some(&t.operator),
            json!({"commit": "ABCDEF12", "reason": "hotfix"}),
        )
        .await;
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.text);
    assert_error(
        &c.post(
            "/v1/services/checkout/builds",
            Some(&t.operator),
            json!({"commit": "main; rm -rf /", "reason": "x"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("body.commit"),
    );
    let payload = json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567", "pusher": {"name": "dev"}})
        .to_string()
        .into_bytes();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&payload);
    let sig = format!(
        "sha256={}",
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let hook = "/v1/webhooks/push/checkout";
    let gh = [
        ("x-github-event", "push"),
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ];
    let w = c.call(Method::POST, hook, None, Some(payload.clone()), &gh).await;
    assert_eq!(w.status, StatusCode::ACCEPTED, "{}", w.text);
    assert_eq!(
        w.json(),
        json!({"fetching": "main"}),
        "a hint to fetch, naming no commit"
    );
    // the same delivery again (a replay of a captured one): refused, nothing recorded
    assert_error(
        &c.call(Method::POST, hook, None, Some(payload.clone()), &gh).await,
        StatusCode::CONFLICT,
        "delivery_repeated",
        None,
    );
    // a signed push without its delivery id cannot be told from a replay
    assert_error(
        &c.call(Method::POST, hook, None, Some(payload.clone()), &gh[..2])
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("header.X-GitHub-Delivery"),
    );
    let forged = [
        ("x-github-event", "push"),
        ("x-hub-signature-256", "sha256=00"),
        ("x-github-delivery", "forged-1"),
    ];
    assert_error(
        &c.call(Method::POST, hook, None, Some(payload.clone()), &forged)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let gitlab = [
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", SECRET),
        ("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
    ];
    let other_branch = json!({"ref": "refs/heads/feature", "after": "0123456789abcdef0123456789abcdef01234567", "user_username": "gl"});
    let w = c
        .call(
            Method::POST,
            hook,
            None,
            Some(other_branch.to_string().into_bytes()),
            &gitlab,
        )
        .await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text);
    assert!(
        w.json()["ignored"]
            .as_str()
            .unwrap()
            .contains("not checkout's branch")
    );
    // the operator's build names its commit; the push names none: the builder fetches the
    // branch and builds the tip it finds there, whatever `after` claimed
    let requests = store.build_requests("checkout", 0).await.unwrap();
    let asks: Vec<(&str, bool)> = requests.iter().map(|r| (r.commit.as_str(), r.fetch)).collect();
    assert_eq!(asks, [("abcdef12", false), ("", true)]);
    let audit = c
        .get("/v1/audit?service=checkout&limit=200", Some(&t.viewer))
        .await
        .json();
    let pushes: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "push")
        .collect();
    assert_eq!(pushes.len(), 1, "one delivery, one audit row: {pushes:?}");
    assert_eq!(
        pushes[0]["detail"]["claimed"],
        "0123456789abcdef0123456789abcdef01234567"
    );

    // releases built elsewhere (objectives/search.yaml has no build): announced by digest, by
    // an operator or by the registry's push notification; tags, other repositories refused
    let digest = format!("sha256:{}", "5e".repeat(32));
    let image = format!("registry.example.com/shop/search@{digest}");
    let w = c
        .post(
            "/v1/services/search/releases",
            Some(&t.operator),
            json!({"image": image, "commit": "ABCDEF12", "reason": "CI run 7"}),
        )
        .await;
    assert_eq!(w.status, StatusCode::ACCEPTED, "{}", w.text);
    assert_eq!(w.json()["release"], "r5e5e5e5e5e5e");
    for (body, field) in [
        (
            json!({"image": "registry.example.com/shop/search:latest", "reason": "x"}),
            "body.image",
        ),
        (
            json!({"image": "registry.example.com/shop/search@sha256:12", "reason": "x"}),
            "body.image",
        ),
        (
            json!({"image": format!("registry.example.com/other/search@{digest}"), "reason": "x"}),
            "body.image",
        ),
        (
            json!({"image": image, "commit": "not-hex", "reason": "x"}),
            "body.commit",
        ),
    ] {
        assert_error(
            &c.post("/v1/services/search/releases", Some(&t.operator), body)
                .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(field),
        );
    }
    assert_error(
        &c.post(
            "/v1/services/search/releases",
            Some(&t.viewer),
            json!({"image": image, "reason": "x"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let w = c
        .post(
            "/v1/services/checkout/releases",
            Some(&t.operator),
            json!({"image": image, "reason": "x"}),
        )
        .await;
    assert_eq!(
        w.status,
        StatusCode::CONFLICT,
        "checkout builds its own releases: {}",
        w.text
    );
    let w = c
        .post(
            "/v1/services/search/builds",
            Some(&t.operator),
            json!({"commit": "abcdef12", "reason": "x"}),
        )
        .await;
    assert_eq!(w.status, StatusCode::CONFLICT, "search has no build: {}", w.text);
    let pushed = format!("sha256:{}", "7a".repeat(32));
    let events = json!({"events": [
        {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed,
            "repository": "shop/search", "url": format!("https://registry.example.com/v2/shop/search/manifests/{pushed}"), "tag": "1.4.2"},
         "request": {"host": "registry.example.com"}},
        {"action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed,
            "repository": "shop/search", "url": "https://registry.example.com/v2/shop/search/manifests/x", "tag": "1.4.2"}},
        {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed,
            "repository": "shop/search", "url": "https://registry.example.com/v2/shop/search/manifests/x"}},
        {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": pushed,
            "repository": "shop/unknown", "url": "https://registry.example.com/v2/shop/unknown/manifests/x", "tag": "1"}}
    ]});
    let hook = "/v1/webhooks/registry";
    assert_error(
        &c.post(hook, None, events.clone()).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let w = c.post(hook, Some(&t.operator), events).await;
    assert_eq!(w.status, StatusCode::ACCEPTED, "{}", w.text);
    assert_eq!(
        w.json()["announced"][0]["image"],
        format!("registry.example.com/shop/search@{pushed}")
    );
    assert_eq!(w.json()["ignored"].as_array().unwrap().len(), 3, "{}", w.text);
    let asks = store.build_requests("search", 0).await.unwrap();
    let images: Vec<(&str, Option<&str>)> = asks
        .iter()
        .map(|a| (a.commit.as_str(), a.image.as_deref()))
        .collect();
    let pushed_image = format!("registry.example.com/shop/search@{pushed}");
    assert_eq!(
        images,
        [
            ("abcdef12", Some(image.as_str())),
            ("", Some(pushed_image.as_str()))
        ]
    );

    // tokens: an admin makes one, and it works at once
    let made = c
        .post(
            "/v1/tokens",
            Some(&t.admin),
            json!({"name": "ci", "role": "viewer"}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let ci = made.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(c.get("/v1/services", Some(&ci)).await.status, StatusCode::OK);
    // revoked: it stops working at once
    let gone = c
        .call(Method::DELETE, "/v1/tokens/ci", Some(&t.admin), None, &[])
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    assert_error(
        &c.get("/v1/services", Some(&ci)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    assert_error(
        &c.call(Method::DELETE, "/v1/tokens/ci", Some(&t.admin), None, &[])
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        Some("path.name"),
    );
    // regression: revoking the last admin token locked everyone out (a restart makes none)
    assert_error(
        &c.call(Method::DELETE, "/v1/tokens/root", Some(&t.admin), None, &[])
            .await,
        StatusCode::CONFLICT,
        "conflict",
        Some("path.name"),
    );
    assert_error(
        &c.post(
            "/v1/tokens",
            Some(&t.admin),
            json!({"name": "root", "role": "viewer"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        Some("body.role"),
    );
    assert_eq!(c.get("/v1/services", Some(&t.admin)).await.status, StatusCode::OK);
    let second = c
        .post(
            "/v1/tokens",
            Some(&t.admin),
            json!({"name": "second-admin", "role": "admin"}),
        )
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    let gone = c
        .call(
            Method::DELETE,
            "/v1/tokens/second-admin",
            Some(&t.admin),
            None,
            &[],
        )
        .await;
    assert_eq!(
        gone.status,
        StatusCode::NO_CONTENT,
        "one of two admins: {}",
        gone.text
    );

    // everything else is JSON too
    assert_error(
        &c.get("/v1/nothing", Some(&t.viewer)).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &c.call(Method::DELETE, "/v1/services", Some(&t.viewer), None, &[])
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    let doc = c.get("/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(
        doc.json()["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
}

#[tokio::test]
async fn the_api_through_oneshot_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let (state, tokens) = seeded(&url).await;
    let store = state.store.clone();
    suite(&Client::Oneshot(autopilot::app::router(state)), &tokens, &store).await;
}

async fn over_a_socket(url: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (state, tokens) = seeded(url).await;
    let store = state.store.clone();
    let served = Served::start(state).await;
    let addr = served.addr;
    let client = reqwest::Client::builder().build().unwrap();
    suite(&Client::Socket(format!("http://{addr}"), client), &tokens, &store).await;
    // over a socket the audit knows where the request came from
    let audit = store.audit(Some("checkout"), None, None, 1).await.unwrap();
    assert_eq!(audit[0].origin, "127.0.0.1");
    served.stop().await;
}

/// The real `autopilot` binary run with `args` from the folder `cwd` against the API at `base`,
/// with `token` (or none at all, whatever the environment has), without colour.
async fn cli(base: &str, token: Option<&str>, cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"));
    command
        .args(args)
        .current_dir(cwd)
        .env("AUTOPILOT_URL", base)
        .env("NO_COLOR", "1");
    match token {
        Some(t) => command.env("AUTOPILOT_TOKEN", t),
        None => command.env_remove("AUTOPILOT_TOKEN"),
    };
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Regression: the CLI looked for `up`'s admin token only in `.autopilot/`, not in the data
/// directory `autopilot.yaml` names, and said "a bearer token is needed" without saying where it
/// had looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_token_up_wrote_in_its_data_directory_and_says_where_it_looked() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (state, t) = seeded(&format!("sqlite://{}", dir.path().join("a.db").display())).await;
    let served = Served::start(state).await;
    let base = served.base.clone();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = cli(&base, None, &work, &["status"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("no token given") && err.contains(".autopilot/admin.token"),
        "{err}"
    );
    std::fs::write(
        work.join("autopilot.yaml"),
        "apiVersion: autopilot/v1\nkind: Autopilot\ndataDir: state\n",
    )
    .unwrap();
    std::fs::create_dir_all(work.join("state")).unwrap();
    std::fs::write(work.join("state/admin.token"), format!("{}\n", t.viewer)).unwrap();
    let out = cli(&base, None, &work, &["status"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    served.stop().await;
}

/// Regression: `autopilot audit` printed an operator's reason (or a pusher's name) with its raw
/// ESC/OSC sequences, which the terminal then acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_hostile_text_with_its_control_characters_escaped() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (state, t) = seeded(&format!("sqlite://{}", dir.path().join("a.db").display())).await;
    let served = Served::start(state).await;
    let base = served.base.clone();
    let c = Client::Socket(base.clone(), reqwest::Client::new());
    // an OSC 52 clipboard write, a screen clear, an 8-bit CSI, a carriage return over the line
    let reason = "fine\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u{9b}8m\rall good";
    let a = c
        .post(
            "/v1/services/checkout/environments/prod/actions",
            Some(&t.operator),
            json!({"action": "pause", "reason": reason}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for args in [&["audit"][..], &["status"][..]] {
        let audit = args[0] == "audit";
        let out = cli(&base, Some(&t.admin), dir.path(), args).await;
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{stdout}");
        assert!(
            !stdout.contains(['\x1b', '\x07', '\r', '\u{9b}']),
            "raw control characters reach the terminal: {stdout:?}"
        );
        if audit {
            assert!(stdout.contains("fine\\u{1b}]52;c;"), "{stdout}");
        }
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_through_oneshot_and_over_a_socket_on_postgres() {
    let pg = TempPostgres::start().expect("PostgreSQL starts (scripts/test installs it)");
    let (state, tokens) = seeded(&pg.database().await.unwrap()).await;
    let store = state.store.clone();
    suite(&Client::Oneshot(autopilot::app::router(state)), &tokens, &store).await;
    over_a_socket(&pg.database().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_a_socket_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    over_a_socket(&format!("sqlite://{}", dir.path().join("s.db").display())).await;
}

/// Regression: with no webhook secret configured (the default), an unsigned push naming a
/// commit from an unmerged branch was built and became the dev canary.
#[tokio::test]
async fn without_a_webhook_secret_every_push_is_refused_and_the_service_list_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, t) = seeded(&format!("sqlite://{}", dir.path().join("a.db").display())).await;
    let mut settings = (*state.settings).clone();
    settings.webhook_secret = None;
    state.settings = Arc::new(settings);
    let store = state.store.clone();
    let c = Client::Oneshot(autopilot::app::router(state));
    let payload = json!({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567", "pusher": {"login": "mallory"}});
    for headers in [
        &[("x-github-event", "push"), ("x-github-delivery", "d-1")][..],
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-event-uuid", "d-2")][..],
        &[][..],
    ] {
        assert_error(
            &c.call(
                Method::POST,
                "/v1/webhooks/push/checkout",
                None,
                Some(payload.to_string().into_bytes()),
                headers,
            )
            .await,
            StatusCode::FORBIDDEN,
            "webhooks_off",
            None,
        );
    }
    assert!(store.build_requests("checkout", 0).await.unwrap().is_empty());
    let audit = c.get("/v1/audit?limit=200", Some(&t.viewer)).await.json();
    assert!(
        !audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "push"),
        "{audit}"
    );
    let services = c.get("/v1/services", Some(&t.viewer)).await.json();
    assert_eq!(services["push_webhooks"]["accepted"], false);
    assert!(
        services["push_webhooks"]["note"]
            .as_str()
            .unwrap()
            .contains("AUTOPILOT_WEBHOOK_SECRET"),
        "{services}"
    );
}

#[tokio::test]
async fn open_reads_need_no_token_but_actions_still_do() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, _) = seeded(&format!("sqlite://{}", dir.path().join("o.db").display())).await;
    let mut settings = (*state.settings).clone();
    settings.open_reads = true;
    state.settings = Arc::new(settings);
    let c = Client::Oneshot(autopilot::app::router(state));
    assert_eq!(c.get("/v1/services/checkout", None).await.status, StatusCode::OK);
    // the pages too: read without signing in
    let page = c.get("/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text.contains("not signed in (reads are open)"),
        "{}",
        page.text
    );
    let a = c
        .post(
            "/v1/services/checkout/environments/prod/actions",
            None,
            json!({"action": "pause", "reason": "r"}),
        )
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized", None);
}

#[test]
fn the_checked_in_openapi_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == api::openapi_json(),
        "src/api/openapi.json has drifted from the API: run `cargo run -- api --openapi > src/api/openapi.json`"
    );
}

/// The pages read what the API reads, with the same tokens: through the session cookie the
/// sign-in sets, which serves reads only (an action with it alone is refused).
async fn pages(c: &Client, t: &Tokens) {
    // signing in checks the token and sets a session cookie that scripts cannot read and other
    // sites cannot send; it holds a session id, never the token (regression: the sign-in script
    // kept the whole token, an admin's too, in a cookie that was none of these)
    let sign_in = |tok: String| {
        let body = json!({ "token": tok }).to_string().into_bytes();
        async move {
            let a = c.call(Method::POST, "/v1/session", None, Some(body), &[]).await;
            assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
            let set = a.headers[http::header::SET_COOKIE].to_str().unwrap().to_owned();
            for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
                assert!(set.contains(attribute), "{set}");
            }
            assert!(!set.contains(&tok), "the cookie holds the token: {set}");
            let pair = set.split(';').next().unwrap().to_owned();
            assert!(pair.starts_with("autopilot_session="), "{set}");
            pair
        }
    };
    let viewer_session = sign_in(t.viewer.clone()).await;
    let admin_session = sign_in(t.admin.clone()).await;
    let refused = c
        .call(
            Method::POST,
            "/v1/session",
            None,
            Some(json!({"token": "ap_wrong"}).to_string().into_bytes()),
            &[],
        )
        .await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let https = c
        .call(
            Method::POST,
            "/v1/session",
            None,
            Some(json!({"token": t.viewer}).to_string().into_bytes()),
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        https.headers[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Secure")
    );
    let cookie = |session: &str| format!("theme=dark; {session}");
    let page = |path: &'static str, tok: Option<String>| async move {
        let headers = tok.map(|t| vec![("cookie".to_owned(), t)]).unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        c.call(Method::GET, path, None, None, &headers).await
    };
    // strict headers on pages and JSON alike
    for a in [page("/", None).await, c.get("/v1/services", None).await] {
        let csp = a.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
        assert_eq!(a.headers["referrer-policy"], "no-referrer");
    }
    // a raw token in a cookie is no longer a way in
    let a = page("/", Some(format!("autopilot_token={}", t.viewer))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // no token: the sign-in page, with 401
    let a = page("/", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.contains("sign-in-form"), "{}", a.text);
    let a = page("/", Some(cookie("autopilot_session=0123"))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.text.contains("the session has ended"), "{}", a.text);
    // the central page: where each environment stands, what the judge says, the buttons
    let a = page("/", Some(cookie(&viewer_session))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for needle in [
        "Reading as vic (viewer)",
        "href=\"/releases/r1\"",
        "data-environment=\"prod\"",
        "canary",
        "aria-label=\"canary weight 20%\"",
        "data-action=\"pause\"",
        "data-action=\"rollback\"",
        "data-events=\"/v1/events\"",
    ] {
        assert!(
            a.text.contains(needle),
            "the central page lacks `{needle}`:\n{}",
            a.text
        );
    }
    // a release's page: its build output and config, its deployments, escaped
    let a = page("/releases/r2", Some(cookie(&viewer_session))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    for needle in [
        "building r2",
        "kind: Service",
        "prod, attempt 1",
        "instances ready",
    ] {
        assert!(
            a.text.contains(needle),
            "the release page lacks `{needle}`:\n{}",
            a.text
        );
    }
    let a = page("/releases/nope", Some(cookie(&viewer_session))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.text.contains("no release `nope`"), "{}", a.text);
    let a = page("/services/checkout", Some(cookie(&viewer_session))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.text.contains("Releases of checkout, newest first"),
        "{}",
        a.text
    );
    // the API reads with the cookie too, but never acts with it
    let h = cookie(&admin_session);
    let a = c
        .call(Method::GET, "/v1/services", None, None, &[("cookie", h.as_str())])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = c
        .call(
            Method::POST,
            "/v1/services/checkout/environments/prod/actions",
            None,
            Some(
                json!({"action": "pause", "reason": "from a cookie"})
                    .to_string()
                    .into_bytes(),
            ),
            &[("cookie", h.as_str())],
        )
        .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized", None);
    // signed out: the session is over, on the server too
    let out = c
        .call(
            Method::DELETE,
            "/v1/session",
            None,
            None,
            &[("cookie", h.as_str())],
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let a = c
        .call(Method::GET, "/v1/services", None, None, &[("cookie", h.as_str())])
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_pages_read_with_the_cookie_and_never_act_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (state, tokens) = seeded(&format!("sqlite://{}", dir.path().join("p.db").display())).await;
    pages(&Client::Oneshot(autopilot::app::router(state)), &tokens).await;
}

/// Reads `stream` until an event of `kind` arrives (bounded); returns (id, data).
async fn next_event(
    res: &mut reqwest::Response,
    buffer: &mut String,
    kind: &str,
) -> (Option<String>, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
            };
            if field("event:").as_deref() == Some(kind) {
                return (field("id:"), field("data:").unwrap_or_default());
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no `{kind}` event in 15 s");
        match tokio::time::timeout(left, res.chunk()).await {
            Ok(Ok(Some(c))) => buffer.push_str(&String::from_utf8_lossy(&c)),
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => panic!("no `{kind}` event in 15 s"),
        }
    }
}

/// Regression: a revoked token's open event streams went on sending (25 events over 25 s after
/// the revocation), and one token could open streams without limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_event_streams_and_one_token_holds_a_bounded_number() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (state, t) = seeded(&format!("sqlite://{}", dir.path().join("e.db").display())).await;
    let streams = state.streams.clone();
    let served = Served::start(state).await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let made = client
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&t.admin)
        .json(&json!({"name": "dashboard", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let token = made.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let open = || client.get(format!("{base}/v1/events")).bearer_auth(&token).send();
    let mut held = Vec::new();
    for _ in 0..autopilot::api::events::MAX_STREAMS_PER_TOKEN {
        let mut res = open().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut buf = String::new();
        next_event(&mut res, &mut buf, "ready").await;
        held.push(res);
    }
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "too_many_streams");
    // another token is not held back by this one
    let other = client
        .get(format!("{base}/v1/events"))
        .bearer_auth(&t.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);
    // revoked: every stream of the token ends at its next look
    let gone = client
        .delete(format!("{base}/v1/tokens/dashboard"))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    for mut res in held {
        let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
            while let Ok(Some(_)) = res.chunk().await {}
        })
        .await;
        assert!(ended.is_ok(), "a revoked token's stream went on");
    }
    // and their places are given back
    let hash = autopilot::store::api::token_hash(&token);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while streams.open_for(&hash) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "ended streams kept their places"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_each_new_transition_once_and_resumes_after_the_last_event_id() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (state, t) = seeded(&format!("sqlite://{}", dir.path().join("e.db").display())).await;
    let mut store = state.store.clone();
    let served = Served::start(state).await;
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let open = |last: Option<&str>, query: &str| {
        let mut r = client
            .get(format!("{base}/v1/events{query}"))
            .bearer_auth(&t.viewer);
        if let Some(l) = last {
            r = r.header("last-event-id", l);
        }
        r.send()
    };
    let mut res = open(None, "?service=checkout").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let (_, ready) = next_event(&mut res, &mut buf, "ready").await;
    let after: i64 = serde_json::from_str::<Value>(&ready).unwrap()["after"]
        .as_i64()
        .unwrap();
    // the loop promotes r2 in prod: the stream says so, then that something changed
    let loaded = store.load("checkout").await.unwrap();
    let mut state = loaded.state.clone();
    let prod = state.environments.get_mut("prod").unwrap();
    prod.rollout.as_mut().unwrap().phase = Phase::Promoting {
        since: Time::from_secs(120),
    };
    let plan = Plan {
        state,
        actions: Vec::new(),
        transitions: vec![Transition {
            environment: "prod".into(),
            release: "r2".into(),
            from: Some(PhaseKind::Canary),
            to: PhaseKind::Promoting,
            weight: Weight(100),
            cause: Cause::Completed,
            at: Time::from_secs(120),
        }],
        evidence: Vec::new(),
        notes: Vec::new(),
        next_check: Time::ZERO,
        consumed: Vec::new(),
    };
    store
        .record("checkout", loaded.version, &plan, &[])
        .await
        .unwrap();
    let (id, data) = next_event(&mut res, &mut buf, "transition").await;
    let id = id.expect("a transition carries its number as the event id");
    assert_eq!(id, (after + 1).to_string());
    let e: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (
            e["service"].as_str(),
            e["environment"].as_str(),
            e["release"].as_str(),
            e["to"].as_str()
        ),
        (Some("checkout"), Some("prod"), Some("r2"), Some("promoting")),
        "{e}"
    );
    next_event(&mut res, &mut buf, "change").await;
    // a client that lost the connection before that event gets it again, and only it
    let mut again = open(Some(&after.to_string()), "").await.unwrap();
    let mut buf2 = String::new();
    let (id2, _) = next_event(&mut again, &mut buf2, "transition").await;
    assert_eq!(id2.as_deref(), Some(id.as_str()));
    // refused: no token, an id this API did not give, a service it does not run
    let plain = client.get(format!("{base}/v1/events")).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    let bad = open(Some("yesterday"), "").await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["field"], "header.Last-Event-ID");
    let nope = open(None, "?service=nope").await.unwrap();
    assert_eq!(nope.status(), StatusCode::NOT_FOUND);
    // stopping the server ends the open streams instead of waiting on them
    served.stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), served.server)
        .await
        .expect("the server stops with streams open")
        .unwrap()
        .unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = res.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended with the server");
    drop(again);
}

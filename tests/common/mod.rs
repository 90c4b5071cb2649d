//! Helpers shared by the proxy tests: small upstream servers, free ports, a client, and
//! bounded waits on real servers.
#![allow(dead_code)]

pub mod image;
pub mod up;

use autopilot::proxy::routes::RouteSpec;
use autopilot::proxy::server::{ProxyConfig, ProxyHandle, RELEASE_HEADER};
use autopilot::spec::objectives::Auth;
use autopilot::spec::units::Weight;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A small upstream: answers with its name and the headers it received; `/healthz` follows a
/// switch.
pub struct Upstream {
    pub addr: SocketAddr,
    pub ready: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct UpState {
    name: String,
    pub ready: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
}

pub async fn upstream(name: &str) -> Upstream {
    let ready = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU64::new(0));
    let state = UpState {
        name: name.to_owned(),
        ready: ready.clone(),
        hits: hits.clone(),
    };
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(|State(s): State<UpState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .fallback(
            |State(s): State<UpState>, req: axum::extract::Request| async move {
                s.hits.fetch_add(1, Ordering::Relaxed);
                // `/slow…` answers after a second (a request in flight for a while), `/hang…`
                // after an hour (a hung release)
                if req.uri().path().starts_with("/slow") {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if req.uri().path().starts_with("/hang") {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let h: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let version = format!("{:?}", req.version());
                axum::Json(serde_json::json!({ "name": s.name, "headers": h, "version": version }))
                    .into_response()
            },
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Upstream {
        addr,
        ready,
        hits,
        stop,
    }
}

/// The settings every test proxy starts from: loopback port 0 (a free port, which the proxy
/// holds from its first step: no port picked here can be taken before it binds), `/healthz` probed every
/// 100 ms, two workers on one work-stealing runtime (many proxies run one after another in one
/// test process, which Pingora's single-threaded runtimes do not survive: cloudflare/pingora#981).
pub fn config(admin_token: &str, routes_file: Option<std::path::PathBuf>) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        admin_token: admin_token.into(),
        routes_file,
        probe_interval: Duration::from_millis(100),
        probe_path: "/healthz".into(),
        threads: 2,
        work_stealing: true,
        access: None,
        tls: None,
        drain: Duration::ZERO,
    }
}

/// `service` in `environment` served by one release, `v1`, at `addr`.
pub fn route_v1(service: &str, environment: &str, addr: SocketAddr, auth: Auth) -> RouteSpec {
    RouteSpec {
        service: service.into(),
        environment: environment.into(),
        stable: Some("v1".into()),
        canary: None,
        weight: Weight(0),
        sticky: None,
        releases: BTreeMap::from([("v1".into(), vec![addr])]),
        auth,
        allow: None,
        pass_credentials: false,
        timeout: None,
        readiness: None,
        mirror: None,
        segment: None,
    }
}

/// Binds a free loopback port and hands every connection accepted there to `serve`, each on a
/// task of its own; returns the address (the test upstreams built on hyper).
pub async fn serve_connections<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// A request is counted after its answer has gone (Pingora's logging phase): a client that
/// has its last answer may read the counters a moment before that answer is in them. Polls
/// `count` (every 10 ms, for at most 5 s) until it reaches `expected`; returns what it read
/// last, so the caller's assertion says what was seen.
pub async fn counted(count: impl Fn() -> u64, expected: u64) -> u64 {
    for _ in 0..500 {
        let n = count();
        if n >= expected {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    count()
}

/// The admin listener's `/metrics` text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn free_port() -> SocketAddr {
    autopilot::net::free_loopback().unwrap()
}

/// A client (reqwest is built without a TLS crypto provider of its own: the process installs
/// ring, the one Pingora's rustls uses).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// GET through the proxy for `host`; returns (status, release header, body JSON).
pub async fn get(
    c: &reqwest::Client,
    proxy: &ProxyHandle,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = c
        .get(format!("http://{}/hello", proxy.listen))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let release = resp
                .headers()
                .get(RELEASE_HEADER)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.json().await.unwrap_or(serde_json::Value::Null);
            (status, release, body)
        }
        Err(_) => (0, None, serde_json::Value::Null),
    }
}

/// Polls until `host` answers 200 (the proxy is listening and the prober has passed).
pub async fn wait_ready(c: &reqwest::Client, proxy: &ProxyHandle, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if get(c, proxy, host, &[]).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host} never became ready through the proxy");
}

/// Checks an exposition with Prometheus' own linter (promtool comes with the `prometheus`
/// package that the test command installs).
pub fn promtool_check(text: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs the prometheus package)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

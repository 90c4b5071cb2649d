//! The proxy with real upstream servers and a real HTTP client on loopback: one proxy per test
//! on free ports, stopped at the end. Waits poll real servers with a bounded deadline.

mod common;

use autopilot::proxy::routes::{RouteSpec, RoutesFile, Sticky};
use autopilot::proxy::server::{self, ProxyHandle};
use autopilot::spec::routes::ForwardingHeaders;
use autopilot::spec::units::Weight;
use common::{client, get, upstream, wait_ready};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DOMAIN: &str = "example.test";
const TOKEN: &str = "test-admin-token";

fn route(
    service: &str,
    env: &str,
    stable: &str,
    canary: Option<&str>,
    weight: u8,
    releases: &[(&str, Vec<SocketAddr>)],
) -> RouteSpec {
    RouteSpec {
        service: service.into(),
        environment: env.into(),
        stable: Some(stable.into()),
        canary: canary.map(Into::into),
        weight: Weight(weight),
        sticky: None,
        releases: releases.iter().map(|(r, a)| (r.to_string(), a.clone())).collect(),
        auth: autopilot::spec::objectives::Auth::None,
        allow: None,
        pass_credentials: false,
        timeout: None,
        readiness: None,
        mirror: None,
        segment: None,
    }
}

fn routes(routes: Vec<RouteSpec>) -> RoutesFile {
    RoutesFile::new(DOMAIN, routes)
}

fn start(r: RoutesFile, file: Option<std::path::PathBuf>) -> ProxyHandle {
    let config = common::config(TOKEN, file);
    server::start(config, r).expect("the proxy starts")
}

/// `{service}` in `prod` served by one release, `v1`, at `addrs`.
fn start_v1(service: &str, addrs: Vec<SocketAddr>) -> ProxyHandle {
    start(
        routes(vec![route(service, "prod", "v1", None, 0, &[("v1", addrs)])]),
        None,
    )
}

/// checkout/prod served by one release `v1`, ready; returns the upstream (keep it alive), the
/// proxy, a client and the host.
async fn one_release() -> (common::Upstream, ProxyHandle, reqwest::Client, &'static str) {
    let v1 = upstream("v1").await;
    let proxy = start_v1("checkout", vec![v1.addr]);
    let c = client();
    let host = "checkout.prod.example.test";
    wait_ready(&c, &proxy, host).await;
    (v1, proxy, c, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_many_services_and_environments_by_host_and_hides_the_rest() {
    let mut ups = Vec::new();
    let mut specs = Vec::new();
    for service in ["checkout", "payments", "search"] {
        for env in ["staging", "prod"] {
            let u = upstream(&format!("{service}-{env}-v1")).await;
            specs.push(route(service, env, "v1", None, 0, &[("v1", vec![u.addr])]));
            ups.push(u);
        }
    }
    let preview = upstream("checkout-prod-v2").await;
    specs[1].releases.insert("v2".into(), vec![preview.addr]);
    let proxy = start(routes(specs), None);
    let c = client();
    wait_ready(&c, &proxy, "search.prod.example.test").await;
    for service in ["checkout", "payments", "search"] {
        for env in ["staging", "prod"] {
            let (status, release, body) = get(&c, &proxy, &format!("{service}.{env}.{DOMAIN}"), &[]).await;
            assert_eq!((status, release.as_deref()), (200, Some("v1")));
            assert_eq!(body["name"], format!("{service}-{env}-v1"));
        }
    }
    let (status, release, body) = get(&c, &proxy, "v2.checkout.prod.example.test", &[]).await;
    assert_eq!(
        (status, release.as_deref(), body["name"].as_str()),
        (200, Some("v2"), Some("checkout-prod-v2"))
    );
    // a public environment's unknown release is simply not found …
    assert_eq!(get(&c, &proxy, "v9.checkout.prod.example.test", &[]).await.0, 404);
    // … while a caller without credentials learns nothing about hosts that are not public
    for host in [
        "billing.prod.example.test",
        "checkout.dev.example.test",
        "checkout.prod.other.test",
    ] {
        assert_eq!(get(&c, &proxy, host, &[]).await.0, 401, "{host}");
    }
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_split_follows_the_weight_and_headers_and_stickiness_override_it() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let mut spec = route(
        "checkout",
        "prod",
        "v1",
        Some("v2"),
        20,
        &[("v1", vec![v1.addr]), ("v2", vec![v2.addr])],
    );
    spec.sticky = Some(Sticky::Header("x-user".into()));
    let proxy = start(routes(vec![spec]), None);
    let c = client();
    let host = "checkout.prod.example.test";
    wait_ready(&c, &proxy, host).await;
    // 10,000 requests without a sticky key: binomial(10000, 0.2), sd 40; 5 sd tolerance
    let mut canary = 0;
    for i in 0..10_000 {
        let (status, release, _) = get(&c, &proxy, host, &[]).await;
        assert_eq!(status, 200, "request {i}");
        canary += usize::from(release.as_deref() == Some("v2"));
    }
    assert!(
        (canary as i64 - 2000).abs() <= 200,
        "canary got {canary} of 10,000 at weight 20"
    );
    // header and cookie overrides
    for _ in 0..20 {
        assert_eq!(
            get(&c, &proxy, host, &[("x-canary", "always")])
                .await
                .1
                .as_deref(),
            Some("v2")
        );
        assert_eq!(
            get(&c, &proxy, host, &[("x-canary", "never")]).await.1.as_deref(),
            Some("v1")
        );
        // … and the cookie, read from a real `Cookie` header among others
        assert_eq!(
            get(
                &c,
                &proxy,
                host,
                &[("cookie", "session=abc; canary=always; theme=dark")]
            )
            .await
            .1
            .as_deref(),
            Some("v2")
        );
        assert_eq!(
            get(&c, &proxy, host, &[("cookie", "canary=never")])
                .await
                .1
                .as_deref(),
            Some("v1")
        );
    }
    // stickiness: each user always lands on the same side …
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut side = BTreeMap::new();
    for u in &users {
        let first = get(&c, &proxy, host, &[("x-user", u)]).await.1.unwrap();
        for _ in 0..3 {
            assert_eq!(
                get(&c, &proxy, host, &[("x-user", u)]).await.1.unwrap(),
                first,
                "{u} moved"
            );
        }
        side.insert(u.clone(), first);
    }
    // … and raising the weight never moves a canary user back
    let mut raised = route(
        "checkout",
        "prod",
        "v1",
        Some("v2"),
        60,
        &[("v1", vec![v1.addr]), ("v2", vec![v2.addr])],
    );
    raised.sticky = Some(Sticky::Header("x-user".into()));
    admin_put_route(&proxy, &raised).await;
    for u in &users {
        let now = get(&c, &proxy, host, &[("x-user", u)]).await.1.unwrap();
        if side[u] == "v2" {
            assert_eq!(now, "v2", "{u} went back to stable when the weight rose");
        }
    }
    proxy.stop();
}

async fn admin_put_route(proxy: &ProxyHandle, r: &RouteSpec) {
    let resp = common::client()
        .put(format!(
            "http://{}/routes/{}/{}",
            proxy.admin, r.service, r.environment
        ))
        .bearer_auth(TOKEN)
        .json(r)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "{}", resp.text().await.unwrap());
}

/// Steady load from `clients` loops until `stop`; returns (ok, failed).
fn load(
    proxy: &ProxyHandle,
    host: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let url = format!("http://{}/hello", proxy.listen);
    tokio::spawn(async move {
        let c = client();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (c, url, stop) = (c.clone(), url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url).header("host", host).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let mut total = (0, 0);
        for t in tasks {
            let (o, f) = t.await.unwrap();
            total = (total.0 + o, total.1 + f);
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_change_under_load_without_a_failed_request() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let releases = [("v1", vec![v1.addr]), ("v2", vec![v2.addr])];
    let proxy = start(
        routes(vec![route("checkout", "prod", "v1", Some("v2"), 0, &releases)]),
        None,
    );
    let c = client();
    wait_ready(&c, &proxy, "checkout.prod.example.test").await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&proxy, "checkout.prod.example.test", 8, stop.clone());
    for w in [5, 10, 25, 50, 75, 100, 50, 0, 30, 100] {
        admin_put_route(&proxy, &route("checkout", "prod", "v1", Some("v2"), w, &releases)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 200, "the load ran ({ok} requests)");
    assert!(v1.hits.load(Ordering::Relaxed) > 0 && v2.hits.load(Ordering::Relaxed) > 0);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_upstream_costs_at_most_the_requests_in_flight() {
    let (a, b) = (upstream("v1-a").await, upstream("v1-b").await);
    let proxy = start_v1("checkout", vec![a.addr, b.addr]);
    let c = client();
    wait_ready(&c, &proxy, "checkout.prod.example.test").await;
    let clients = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&proxy, "checkout.prod.example.test", clients, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = a.stop.send(());
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert!(
        failed <= clients as u64,
        "{failed} failures (at most one in flight per client)"
    );
    assert!(ok > 100);
    // afterwards everything goes to the survivor
    let before = b.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get(&c, &proxy, "checkout.prod.example.test", &[]).await.0, 200);
    }
    assert_eq!(b.hits.load(Ordering::Relaxed) - before, 20);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_ready_upstreams_get_traffic_and_none_ready_is_a_clear_503() {
    let (ready, starting) = (upstream("ready").await, upstream("starting").await);
    starting.ready.store(false, Ordering::Relaxed);
    let proxy = start_v1("checkout", vec![ready.addr, starting.addr]);
    let c = client();
    let host = "checkout.prod.example.test";
    wait_ready(&c, &proxy, host).await;
    for _ in 0..30 {
        assert_eq!(get(&c, &proxy, host, &[]).await.2["name"], "ready");
    }
    assert_eq!(starting.hits.load(Ordering::Relaxed), 0);
    // the other becomes ready: it starts getting traffic
    starting.ready.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while starting.hits.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        get(&c, &proxy, host, &[]).await;
    }
    assert!(starting.hits.load(Ordering::Relaxed) > 0);
    // nobody ready: 503 at once, with a reason, not a hang
    ready.ready.store(false, Ordering::Relaxed);
    starting.ready.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let resp = c
            .get(format!("http://{}/", proxy.listen))
            .header("host", host)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 503 {
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(resp.headers()["retry-after"], "1");
            assert!(resp.text().await.unwrap().contains("no ready instance"));
            break;
        }
        assert!(Instant::now() < deadline, "never 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_headers_are_set_and_spoofed_ones_replaced() {
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-forwarded-host", "evil.test"),
        ("x-autopilot-user", "admin"),
    ];
    // the default: the X-Forwarded family; a client's own `Forwarded` is removed all the same
    let (_v1, proxy, c, host) = one_release().await;
    let (_, release, body) = get(&c, &proxy, host, &spoofed).await;
    let h = &body["headers"];
    assert_eq!(release.as_deref(), Some("v1"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], host);
    assert!(
        h.get("forwarded").is_none(),
        "a spoofed Forwarded is dropped: {h}"
    );
    assert!(
        h.get("x-autopilot-user").is_none(),
        "identity headers from clients are dropped"
    );
    proxy.stop();

    // both families, as a routes file may ask
    let v1 = upstream("v1").await;
    let mut file = routes(vec![route(
        "checkout",
        "prod",
        "v1",
        None,
        0,
        &[("v1", vec![v1.addr])],
    )]);
    file.forwarding_headers = vec![ForwardingHeaders::XForwarded, ForwardingHeaders::Forwarded];
    let proxy = start(file, None);
    wait_ready(&c, &proxy, host).await;
    let (_, _, body) = get(&c, &proxy, host, &spoofed).await;
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{host}\"")
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_per_release_and_the_admin_api_wants_its_token() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let releases = [("v1", vec![v1.addr]), ("v2", vec![v2.addr])];
    let proxy = start(
        routes(vec![route("checkout", "prod", "v1", Some("v2"), 50, &releases)]),
        None,
    );
    let c = client();
    let host = "checkout.prod.example.test";
    wait_ready(&c, &proxy, host).await;
    for _ in 0..100 {
        get(&c, &proxy, host, &[]).await;
    }
    let text = common::metrics_text(proxy.admin).await;
    let count = |release: &str| -> u64 {
        let needle = format!(
            "autopilot_proxy_requests_total{{service=\"checkout\",environment=\"prod\",release=\"{release}\",code=\"2xx\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count("v1") + count("v2") >= 100, "{text}");
    common::promtool_check(&text);
    // in process: the built-in sensor's counts
    let m = proxy.shared.registry.get("checkout", "prod", "v2").unwrap();
    assert_eq!(m.errors().bad, 0);
    assert_eq!(m.errors().total, count("v2"));
    // the control API
    let admin = format!("http://{}/routes", proxy.admin);
    assert_eq!(c.get(&admin).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(
        c.get(&admin)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        c.get(&admin)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let bad = c
        .put(format!("{admin}/checkout/prod"))
        .bearer_auth(TOKEN)
        .body("{\"service\": \"checkout\", \"environment\": \"prod\", \"weight\": 150, \"releases\": {}}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let msg = bad.text().await.unwrap();
    assert!(
        msg.contains("weight 150 is outside 0..=100") && msg.contains("request body:1:"),
        "{msg}"
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_routes_file_is_reloaded_when_it_changes_and_a_broken_one_is_refused() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let write = |weight: u8| {
        let text = format!(
            "apiVersion: autopilot/v1\nkind: Routes\ndomain: example.test\nroutes:\n  - service: checkout\n    environment: prod\n    stable: v1\n    canary: v2\n    weight: {weight}\n    auth: none\n    releases:\n      v1: [\"{}\"]\n      v2: [\"{}\"]\n",
            v1.addr, v2.addr
        );
        std::fs::write(&path, text).unwrap();
    };
    write(0);
    let proxy = start(server::load_routes(&path).unwrap(), Some(path.clone()));
    let c = client();
    let host = "checkout.prod.example.test";
    wait_ready(&c, &proxy, host).await;
    assert_eq!(get(&c, &proxy, host, &[]).await.1.as_deref(), Some("v1"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&c, &proxy, host, &[]).await.1.as_deref() != Some("v2") {
        assert!(Instant::now() < deadline, "the new weight never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a broken file is refused: the last good routes stay
    std::fs::write(&path, "apiVersion: autopilot/v1\nkind: Routes\ndomain: [oops\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&c, &proxy, host, &[]).await.1.as_deref(), Some("v2"));
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_callers_are_served_and_grpc_reaches_the_upstream_over_http2() {
    let (_v1, proxy, c, host) = one_release().await;
    // in HTTP/2 the host travels as `:authority`: address the proxy by name
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve(host, proxy.listen)
        .build()
        .unwrap();
    let url = format!("http://{host}:{}/x", proxy.listen.port());
    // an HTTP/2 (h2c) caller is served; the upstream, which may speak only HTTP/1.1, gets 1.1
    let resp = h2.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-autopilot-release"], "v1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["version"], "HTTP/1.1");
    // gRPC goes to the upstream over HTTP/2
    let resp = h2
        .post(&url)
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["version"], "HTTP/2.0",
        "gRPC reached the upstream over HTTP/2"
    );
    // HTTP/1.1 callers on the same port
    let (status, _, body) = get(&c, &proxy, host, &[]).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("HTTP/1.1")));
    proxy.stop();
}

/// A gRPC upstream: HTTP/1.1 for the readiness probe, HTTP/2 for calls; answers a unary call
/// with a length-prefixed message and `grpc-status` trailers.
async fn grpc_upstream() -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    common::serve_connections(|tcp| async move {
        let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let version = format!("{:?}", req.version());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            // echo the request's message, framed: 0 (uncompressed), length, bytes
            let payload = body.get(5..).unwrap_or_default().to_vec();
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            framed.extend_from_slice(&payload);
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-upstream-version", version.parse().unwrap());
            let body = Full::new(bytes::Bytes::from(framed)).with_trailers(async move { Some(Ok(trailers)) });
            Ok::<_, std::convert::Infallible>(
                hyper::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap(),
            )
        });
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grpc_call_passes_through_with_its_trailers() {
    let up = grpc_upstream().await;
    let proxy = start_v1("payments", vec![up]);
    let host = "payments.prod.example.test";
    // wait for the probe (HTTP/1.1 GET /healthz gets a 200 from this upstream)
    wait_ready(&client(), &proxy, host).await;
    let tcp = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(format!("http://{host}/shop.Payments/Authorize"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = sender.send_request(request, false).unwrap();
    let message = b"card=4111";
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    stream.send_data(bytes::Bytes::from(framed), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-autopilot-release"], "v1");
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    assert_eq!(&data[5..], message, "the reply came back framed");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-upstream-version"], "HTTP/2.0");
    proxy.stop();
}

/// What a recording upstream received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// An upstream that records every request (but its probe) and answers 500 on `/fail…` and
/// never on `/hang…` — or never at all once `hang` is set.
async fn recording_upstream(hang: Arc<AtomicBool>) -> (SocketAddr, Arc<std::sync::Mutex<Vec<Received>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let log = seen.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(move |req: axum::extract::Request| {
            let (log, hang) = (log.clone(), hang.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                log.lock().unwrap().push(Received {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                        .collect(),
                    body: body.to_vec(),
                });
                if hang.load(Ordering::Relaxed) || parts.uri.path().starts_with("/hang") {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                if parts.uri.path().starts_with("/fail") {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "broken")
                } else {
                    (axum::http::StatusCode::OK, "fine")
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

/// checkout/prod: stable `v1` serves every user, `v2` is held at weight 0; once both are
/// ready, the mirror is switched on through the admin API (as the controller does), so that
/// no request of the readiness wait is copied.
async fn mirrored(
    v1: SocketAddr,
    v2: SocketAddr,
    mirror: autopilot::spec::routes::Mirror,
) -> (ProxyHandle, reqwest::Client) {
    let mut spec = route(
        "checkout",
        "prod",
        "v1",
        Some("v2"),
        0,
        &[("v1", vec![v1]), ("v2", vec![v2])],
    );
    let proxy = start(routes(vec![spec.clone()]), None);
    let c = client();
    wait_ready(&c, &proxy, "checkout.prod.example.test").await;
    wait_ready(&c, &proxy, "v2.checkout.prod.example.test").await;
    spec.mirror = Some(mirror);
    admin_put_route(&proxy, &spec).await;
    (proxy, c)
}

/// Polls until `f` holds, for at most 15 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "not within 15 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_copies_live_reads_to_the_held_release_and_users_only_ever_meet_stable() {
    use autopilot::spec::routes::{Method, Mirror};
    use autopilot::spec::units::{ByteSize, Percent};
    let v1 = upstream("v1").await;
    let (v2, seen) = recording_upstream(Arc::new(AtomicBool::new(false))).await;
    let mirror = Mirror {
        share: Percent(1.0),
        max_body: ByteSize(1024),
        methods: vec![Method::GET, Method::POST],
    };
    let (proxy, c) = mirrored(v1.addr, v2, mirror).await;
    let host = "checkout.prod.example.test";
    // the held release answers at its preview URL (weight 0 keeps it routed)
    let preview = c
        .get(format!("http://{}/preview", proxy.listen))
        .header("host", "v2.checkout.prod.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(preview.headers()[server::RELEASE_HEADER], "v2");
    let before = seen.lock().unwrap().len();

    // live reads: every one answered by v1; every one copied to v2, half of them failing there
    for i in 0..40 {
        let path = if i % 2 == 0 { "/fail/x?q=1" } else { "/ok?q=2" };
        let r = c
            .get(format!("http://{}{path}", proxy.listen))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), &r.headers()[server::RELEASE_HEADER]),
            (200, &"v1".parse::<reqwest::header::HeaderValue>().unwrap())
        );
    }
    eventually("40 copies reach v2", || seen.lock().unwrap().len() >= before + 40).await;
    let copies: Vec<Received> = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(copies.len(), 40);
    for copy in &copies {
        assert_eq!(copy.method, "GET");
        assert!(copy.path == "/fail/x?q=1" || copy.path == "/ok?q=2", "{copy:?}");
        assert_eq!(
            copy.headers.get("x-autopilot-mirror").map(String::as_str),
            Some("1")
        );
        assert_eq!(
            copy.headers.get("x-forwarded-host").map(String::as_str),
            Some(host),
            "the forwarding headers the release would get"
        );
    }
    // v2's answers are counted as v2's: 20 failures, 20 successes, none seen by a user
    let m = proxy.shared.registry.get("checkout", "prod", "v2").unwrap();
    eventually("v2's answers recorded", || m.errors().bad >= 20).await;
    assert_eq!(m.errors().bad, 20, "the copies' 500s are v2's evidence");
    // a copy is counted when handed to the mirror's worker, just after the hand-over: the
    // worker may deliver it first (under load the request's thread can be preempted between)
    eventually("40 copies counted sent", || {
        m.mirror_sent.load(Ordering::Relaxed) >= 40
    })
    .await;
    assert_eq!(m.mirror_sent.load(Ordering::Relaxed), 40);
    assert_eq!(
        proxy
            .shared
            .registry
            .get("checkout", "prod", "v1")
            .unwrap()
            .errors()
            .bad,
        0
    );

    // a write within the limit is copied with its body; one over the limit, or with a method
    // not listed, is served and not copied
    let before = seen.lock().unwrap().len();
    let post = |body: Vec<u8>| {
        c.post(format!("http://{}/orders", proxy.listen))
            .header("host", host)
            .body(body)
            .send()
    };
    assert_eq!(
        post(b"{\"sku\": 7}".to_vec()).await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(post(vec![b'x'; 2048]).await.unwrap().status().as_u16(), 200);
    let put = c
        .put(format!("http://{}/orders/1", proxy.listen))
        .header("host", host)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    eventually("the small write's copy reaches v2", || {
        seen.lock().unwrap().len() > before
    })
    .await;
    // copies are counted when handed over: 40 reads and the small write, nothing else
    eventually("41 copies counted sent", || {
        m.mirror_sent.load(Ordering::Relaxed) >= 41
    })
    .await;
    let text = common::metrics_text(proxy.admin).await;
    assert!(
        text.contains("autopilot_proxy_mirror_copies_total{service=\"checkout\",environment=\"prod\",release=\"v2\",result=\"sent\"} 41"),
        "{text}"
    );
    let writes: Vec<Received> = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        (writes[0].method.as_str(), writes[0].body.as_slice()),
        ("POST", &b"{\"sku\": 7}"[..])
    );
    common::promtool_check(&text);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_mirrored_release_neither_slows_nor_fails_a_live_request() {
    use autopilot::spec::routes::Mirror;
    let v1 = upstream("v1").await;
    let hang = Arc::new(AtomicBool::new(false));
    let (v2, seen) = recording_upstream(hang.clone()).await;
    let (proxy, c) = mirrored(v1.addr, v2, Mirror::all_safe_requests()).await;
    let host = "checkout.prod.example.test";
    // from now on v2 answers nothing: its copies pile up in flight, then in the queue, then
    // are dropped; the users' requests go on being answered by v1
    hang.store(true, Ordering::Relaxed);
    let n = 2_000;
    for i in 0..n {
        let (status, release, _) = get(&c, &proxy, host, &[]).await;
        assert_eq!((status, release.as_deref()), (200, Some("v1")), "request {i}");
    }
    let m = proxy.shared.registry.get("checkout", "prod", "v2").unwrap();
    // a copy is handed over after its live request is answered, so the last ones may follow
    // the client's last answer by a moment
    let handed = || m.mirror_sent.load(Ordering::Relaxed) + m.mirror_dropped.load(Ordering::Relaxed);
    eventually("every copy handed over or dropped", || handed() >= n).await;
    let (sent, dropped) = (
        m.mirror_sent.load(Ordering::Relaxed),
        m.mirror_dropped.load(Ordering::Relaxed),
    );
    assert_eq!(sent + dropped, n, "every request was copied or its copy dropped");
    assert!(
        dropped > 0 && sent >= 256,
        "in flight and queued are bounded: sent {sent}, dropped {dropped}"
    );
    assert!(sent <= 256 + 1024 + 1, "sent {sent}: the queue is bounded");
    eventually("the copies in flight reached v2", || {
        seen.lock().unwrap().len() >= 256
    })
    .await;
    // the copies' thread yields the CPU to the live requests' workers, which keep theirs
    let mirror = nice_of_threads(|name| name == &autopilot::proxy::mirror::THREAD[..15]);
    assert!(!mirror.is_empty(), "the mirror's thread is running");
    assert!(
        mirror
            .iter()
            .all(|n| *n == i64::from(autopilot::proxy::mirror::NICE)),
        "the mirror's thread runs at the lowest priority: {mirror:?}"
    );
    let live = nice_of_threads(|name| name.starts_with("Pingora"));
    assert!(!live.is_empty() && live.iter().all(|n| *n == 0), "{live:?}");
    proxy.stop();
}

/// The nice values of this process's threads whose name (as `/proc` has it: cut to 15 bytes)
/// passes `named`.
fn nice_of_threads(named: impl Fn(&str) -> bool) -> Vec<i64> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !named(name.trim_end()) {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // after the name's closing parenthesis come the fields from the third on; the
            // nice value is the nineteenth
            let fields = &stat[stat.rfind(')')? + 2..];
            fields.split(' ').nth(19 - 3)?.parse().ok()
        })
        .collect()
}

/// A taken port is refused at once with its address (Pingora alone retries for 30 s, then
/// serves nothing); a start that succeeds returns only once the proxy accepts connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_port_fails_the_start_at_once_and_a_start_returns_listening() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = server::ProxyConfig {
        listen: taken.local_addr().unwrap(),
        ..common::config(TOKEN, None)
    };
    let started = Instant::now();
    let err = match server::start(config, routes(vec![])) {
        Err(e) => e,
        Ok(_) => panic!("a taken port was accepted"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("listen {}: ", taken.local_addr().unwrap())),
        "{text}"
    );
    assert!(text.contains("in use"), "{text}");

    let proxy = start(routes(vec![]), None);
    assert_ne!(proxy.listen.port(), 0, "port 0 is told as the port taken");
    // no poll: the start returned with the listener accepting
    std::net::TcpStream::connect(proxy.listen).expect("listening when start returns");

    // a second proxy on the first one's port is refused too (both would bind beside each
    // other if the port were shared before the check), and the first serves on
    let twin = server::ProxyConfig {
        listen: proxy.listen,
        ..common::config(TOKEN, None)
    };
    match server::start(twin, routes(vec![])) {
        Err(e) => assert!(
            e.to_string().starts_with(&format!("listen {}: ", proxy.listen))
                && e.to_string().contains("in use"),
            "{e}"
        ),
        Ok(_) => panic!("two proxies started on one port"),
    }
    std::net::TcpStream::connect(proxy.listen).expect("the first proxy still listens");
    // and no one binds the port while the proxy holds it
    let err = std::net::TcpListener::bind(proxy.listen).expect_err("the port is the proxy's");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    proxy.stop();
}

/// A restarted proxy takes its port again at once although its last connections linger there
/// in TIME_WAIT (a proxy that closed its side first, or was killed, leaves them for a minute):
/// in use means someone listens, as for every server.
#[test]
fn a_port_left_in_time_wait_is_taken_again_at_once() {
    use std::io::Read;
    let before = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = before.local_addr().unwrap();
    let mut client = std::net::TcpStream::connect(port).unwrap();
    let (served, _) = before.accept().unwrap();
    drop(before);
    // the server's side closes first: its socket on the port goes to TIME_WAIT
    drop(served);
    assert_eq!(client.read(&mut [0; 1]).unwrap(), 0, "the server's close");
    drop(client);
    let lingering = || {
        let hex = format!(":{:04X} ", port.port());
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| format!("{local} ").ends_with(&hex))
                    && l.split_whitespace().nth(3) == Some("06")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lingering() {
        assert!(Instant::now() < deadline, "no TIME_WAIT on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let config = server::ProxyConfig {
        listen: port,
        ..common::config(TOKEN, None)
    };
    let proxy = server::start(config, routes(vec![])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(proxy.listen, port);
    std::net::TcpStream::connect(port).expect("listening on the port it took again");
    proxy.stop();
}

//! Keys from a JWKS URL: an HTTPS identity-provider stand-in on loopback (a certificate from a
//! CA made for the run, trusted through `jwksCa`), the real proxy, real clients. Covers the first
//! fetch, key rotation picked up when a token names a new key, a provider that is down at start
//! (refuse, then recover) and one that fails later (keep the last good keys). Every wait polls
//! with a bounded deadline.

mod common;

use autopilot::proxy::auth::{AuthSettings, SignatureAlgorithm};
use autopilot::proxy::routes::RoutesFile;
use autopilot::proxy::server::{self, ProxyHandle};
use autopilot::proxy::tls::{LocalCa, SniResolver, certified_key};
use autopilot::spec::objectives::Auth;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::upstream;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use sha2::Digest;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API_KEY: &str = "jwks-test-key";
const HOST: &str = "checkout.prod.example.test";

/// A signing key and its public JWK.
struct Key {
    kid: &'static str,
    signing: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &'static str) -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    Key {
        kid,
        signing: EncodingKey::from_ec_der(&kp.serialize_der()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])
        }),
    }
}

fn jwks(keys: &[&Key]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn token(k: &Key) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(k.kid.into());
    let claims =
        serde_json::json!({ "sub": "ann", "iss": "https://id.example.test", "aud": "autopilot", "exp": exp });
    encode(&h, &claims, &k.signing).unwrap()
}

/// What the provider answers: status and body; and how often it was asked.
#[derive(Clone)]
struct Provider {
    answer: Arc<Mutex<(u16, String)>>,
    asked: Arc<std::sync::atomic::AtomicU64>,
    addr: SocketAddr,
}

impl Provider {
    fn set(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

/// An HTTPS server for `/jwks.json` with a certificate for 127.0.0.1 from `ca`.
async fn provider(ca: &LocalCa, status: u16, body: String) -> Provider {
    let (cert, key) = ca.issue(&["127.0.0.1".to_owned()]).unwrap();
    let resolver = SniResolver::new(vec![(
        vec!["127.0.0.1".to_owned()],
        Arc::new(certified_key(&cert, &key).unwrap()),
    )]);
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let answer = Arc::new(Mutex::new((status, body)));
    let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (a, n) = (answer.clone(), asked.clone());
    let addr = common::serve_connections(move |tcp| {
        let (acceptor, p) = (acceptor.clone(), (a.clone(), n.clone()));
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |_req| {
                let (answer, asked) = p.clone();
                async move {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body) = answer.lock().unwrap().clone();
                    hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        }
    })
    .await;
    Provider { answer, asked, addr }
}

fn start(
    dir: &std::path::Path,
    ca: &LocalCa,
    provider: &Provider,
    refresh: &str,
    upstream: SocketAddr,
) -> ProxyHandle {
    std::fs::write(dir.join("idp-ca.pem"), &ca.ca_pem).unwrap();
    let digest: String = sha2::Sha256::digest(API_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut file = RoutesFile::new(
        "example.test",
        vec![common::route_v1("checkout", "prod", upstream, Auth::Required)],
    );
    file.auth = Some(AuthSettings {
        issuer: "https://id.example.test".into(),
        audience: "autopilot".into(),
        algorithms: vec![SignatureAlgorithm::ES256],
        jwks: format!("https://{}/jwks.json", provider.addr),
        jwks_refresh: refresh.parse().unwrap(),
        jwks_ca: Some("idp-ca.pem".into()),
        api_keys: BTreeMap::from([("checkout-cli".into(), digest)]),
        api_key_header: "x-api-key".into(),
        client_token_header: "x-client-token".into(),
        client_claim: "client_id".into(),
        clients: vec![],
        groups_claim: "groups".into(),
    });
    let path = dir.join("routes.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let config = common::config("t", Some(path.clone()));
    server::start(config, server::load_routes(&path).unwrap()).expect("the proxy starts")
}

async fn status(proxy: &ProxyHandle, token: &str) -> u16 {
    common::client()
        .get(format!("http://{}/x", proxy.listen))
        .header("host", HOST)
        .header("x-api-key", API_KEY)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Polls until the call answers `want`, for at most 15 s.
async fn eventually(proxy: &ProxyHandle, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = status(proxy, token).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(proxy: &ProxyHandle, result: &str) -> u64 {
    let text = common::metrics_text(proxy.admin).await;
    let line = format!("autopilot_proxy_jwks_fetches_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {text}"))
        .parse()
        .unwrap()
}

/// Waits (at most 15 s) until `more` further fetches have failed.
async fn failed_fetches(proxy: &ProxyHandle, more: u64) {
    let failed = metric(proxy, "error").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(proxy, "error").await < failed + more {
        assert!(Instant::now() < deadline, "no refresh was tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_url_are_fetched_at_start_and_a_rotated_key_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(&dir.path().join("idp-ca")).unwrap();
    let (k1, k2) = (key("k1"), key("k2"));
    let idp = provider(&ca, 200, jwks(&[&k1])).await;
    let up = upstream("v1").await;
    // refreshed only hourly: within this test only a token naming a new key can cause a fetch
    let proxy = start(dir.path(), &ca, &idp, "1h", up.addr);
    eventually(&proxy, &token(&k1), 200).await;
    assert_eq!(status(&proxy, &token(&k2)).await, 401, "k2 is not published yet");
    // the provider rotates: publishes k2 next to k1; the first k2 token triggers a fetch
    idp.set(200, jwks(&[&k1, &k2]));
    eventually(&proxy, &token(&k2), 200).await;
    assert_eq!(status(&proxy, &token(&k1)).await, 200);
    assert_eq!(
        metric(&proxy, "ok").await,
        2,
        "the first fetch and the one for k2"
    );
    assert_eq!(metric(&proxy, "error").await, 0);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_at_start_means_refusal_until_it_answers_and_later_failures_keep_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(&dir.path().join("idp-ca")).unwrap();
    let k1 = key("k1");
    let idp = provider(&ca, 503, "down".into()).await;
    let up = upstream("v1").await;
    let proxy = start(dir.path(), &ca, &idp, "1s", up.addr);
    // it started although the provider is down, and refuses: no keys, no entry (polled until the
    // listener, bound on Pingora's own thread, answers at all)
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        match status(&proxy, &token(&k1)).await {
            0 => assert!(Instant::now() < deadline, "the proxy never answered"),
            s => break s,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first, 401);
    assert!(metric(&proxy, "error").await >= 1);
    // the provider comes back: the retry (1 s, doubling) picks the keys up
    idp.set(200, jwks(&[&k1]));
    eventually(&proxy, &token(&k1), 200).await;
    // the provider fails again: refreshes fail, the keys last fetched stay in force
    idp.set(500, "oops".into());
    failed_fetches(&proxy, 2).await;
    assert_eq!(status(&proxy, &token(&k1)).await, 200);
    // a provider answering garbage is a failure too, not an empty key set
    idp.set(200, "{\"keys\": [{\"kty\": \"EC\"}]}".into());
    failed_fetches(&proxy, 1).await;
    assert_eq!(status(&proxy, &token(&k1)).await, 200);
    assert!(idp.asked.load(std::sync::atomic::Ordering::SeqCst) >= 4);
    proxy.stop();
}

#[test]
fn plain_http_keys_are_refused_unless_from_loopback() {
    let mut file = RoutesFile::new("example.test", vec![]);
    let mut auth = AuthSettings {
        issuer: "i".into(),
        audience: "a".into(),
        algorithms: vec![SignatureAlgorithm::ES256],
        jwks: "http://id.example.test/jwks.json".into(),
        jwks_refresh: "5m".parse().unwrap(),
        jwks_ca: None,
        api_keys: BTreeMap::new(),
        api_key_header: "x-api-key".into(),
        client_token_header: "x-client-token".into(),
        client_claim: "client_id".into(),
        clients: vec![],
        groups_claim: "groups".into(),
    };
    file.auth = Some(auth.clone());
    let err = file.check().unwrap_err();
    assert!(
        err.contains("auth.jwks") && err.contains("only from loopback"),
        "{err}"
    );
    auth.jwks = "http://127.0.0.1:9/jwks.json".into();
    file.auth = Some(auth);
    assert!(file.check().is_ok());
}

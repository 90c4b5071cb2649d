//! Credentials at the real proxy: the issue's auth matrix (missing, expired, wrong issuer or
//! audience, wrong signature, `alg: none`, HMAC/RSA-style key confusion, valid but not allowed)
//! with keys made for each run, a JWKS file, and real clients and upstreams on loopback.

mod common;

use autopilot::proxy::auth::{AccessRule, AuthSettings, SignatureAlgorithm};
use autopilot::proxy::routes::{RouteSpec, RoutesFile, RoutesKind};
use autopilot::proxy::server::{self, ProxyHandle};
use autopilot::spec::ApiVersion;
use autopilot::spec::objectives::Auth;
use autopilot::spec::routes::ForwardingHeaders;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{client, upstream};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use sha2::Digest;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API_KEY: &str = "key-of-the-checkout-cli";
const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "autopilot";

struct Keys {
    signing: EncodingKey,
    other: EncodingKey,
    jwks: String,
    public_x: Vec<u8>,
}

fn keys() -> Keys {
    let make = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (kp, other) = (make(), make());
    let raw = kp.public_key_raw(); // 0x04 || x || y
    let (x, y) = (&raw[1..33], &raw[33..65]);
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": B64.encode(x), "y": B64.encode(y)
    }]});
    Keys {
        signing: EncodingKey::from_ec_der(&kp.serialize_der()),
        other: EncodingKey::from_ec_der(&other.serialize_der()),
        jwks: jwks.to_string(),
        public_x: x.to_vec(),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(groups: &[&str]) -> serde_json::Value {
    serde_json::json!({ "sub": "ann", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "groups": groups, "team": "shop" })
}

fn token(key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    encode(&h, claims, key).unwrap()
}

fn route(
    service: &str,
    env: &str,
    addr: std::net::SocketAddr,
    auth: Auth,
    allow: Option<AccessRule>,
) -> RouteSpec {
    RouteSpec {
        allow,
        ..common::route_v1(service, env, addr, auth)
    }
}

async fn start(dir: &std::path::Path, keys: &Keys, routes: Vec<RouteSpec>) -> ProxyHandle {
    std::fs::write(dir.join("jwks.json"), &keys.jwks).unwrap();
    let digest: String = sha2::Sha256::digest(API_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = RoutesFile {
        api_version: ApiVersion::V1,
        kind: RoutesKind::Routes,
        domain: "example.test".into(),
        trusted_proxies: vec![],
        forwarding_headers: vec![ForwardingHeaders::XForwarded],
        auth: Some(AuthSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec![SignatureAlgorithm::ES256, SignatureAlgorithm::RS256],
            jwks: "jwks.json".into(),
            jwks_refresh: "5m".parse().unwrap(),
            jwks_ca: None,
            api_keys: BTreeMap::from([("checkout-cli".into(), digest)]),
            api_key_header: "x-api-key".into(),
            client_token_header: "x-client-token".into(),
            client_claim: "client_id".into(),
            clients: vec!["billing-job".into()],
            groups_claim: "groups".into(),
        }),
        routes,
    };
    let path = dir.join("routes.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let config = common::config("t", Some(path.clone()));
    server::start(config, server::load_routes(&path).unwrap()).expect("the proxy starts")
}

/// (status, headers without `date`, body)
async fn call(
    proxy: &ProxyHandle,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, BTreeMap<String, String>, String) {
    let mut req = client()
        .get(format!("http://{}/x", proxy.listen))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    (status, headers, resp.text().await.unwrap())
}

/// Polls (tolerating a proxy that is still starting) until `host` answers 200.
async fn wait_ready(proxy: &ProxyHandle, host: &str, headers: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        let mut req = client()
            .get(format!("http://{}/x", proxy.listen))
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(r) if r.status().as_u16() == 200 => return,
            Ok(r) => last = Some(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host} never ready; last answer: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_auth_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let (staging, prod, public) = (
        upstream("staging").await,
        upstream("prod").await,
        upstream("public").await,
    );
    let only_sre = Some(AccessRule {
        groups: vec!["sre".into()],
        claims: BTreeMap::new(),
    });
    let proxy = start(
        dir.path(),
        &keys,
        vec![
            route("checkout", "staging", staging.addr, Auth::Required, None),
            route("checkout", "prod", prod.addr, Auth::Required, only_sre),
            route("checkout", "dev", public.addr, Auth::None, None),
            RouteSpec {
                pass_credentials: true,
                ..route("checkout", "passthrough", staging.addr, Auth::Required, None)
            },
        ],
    )
    .await;
    let good = format!("Bearer {}", token(&keys.signing, &claims(&["shop"])));
    let creds = |bearer: &str| {
        vec![
            ("x-api-key", API_KEY.to_owned()),
            ("authorization", bearer.to_owned()),
        ]
    };
    let as_refs =
        |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let with = |v: &Vec<(&'static str, String)>| as_refs(v);
    let c = creds(&good);
    let good_headers: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_ready(&proxy, "checkout.staging.example.test", &good_headers).await;
    let _ = with;

    // a public environment needs nothing
    assert_eq!(call(&proxy, "checkout.dev.example.test", &[]).await.0, 200);

    // valid credentials: served, with the verified identity for the upstream (client copies
    // of identity headers replaced)
    let mut h = good_headers.clone();
    h.push(("x-autopilot-user", "root"));
    let (status, _, body) = call(&proxy, "checkout.staging.example.test", &h).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["headers"]["x-autopilot-user"], "ann");
    assert_eq!(body["headers"]["x-autopilot-app"], "checkout-cli");
    // regression: the caller's API key and bearer token reached every release, canaries too;
    // what the proxy verified stays in the proxy
    assert!(body["headers"]["x-api-key"].is_null(), "{body}");
    assert!(body["headers"]["authorization"].is_null(), "{body}");
    // ... unless the route asks for them
    let (status, _, body) = call(&proxy, "checkout.passthrough.example.test", &good_headers).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["headers"]["x-api-key"], API_KEY);
    assert_eq!(body["headers"]["authorization"], good.as_str());

    // every way of not being authenticated gives the same 401, on every host
    let mut expired = claims(&["shop"]);
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut wrong_iss = claims(&["shop"]);
    wrong_iss["iss"] = serde_json::json!("https://evil.test");
    let mut wrong_aud = claims(&["shop"]);
    wrong_aud["aud"] = serde_json::json!("someone-else");
    let mut no_exp = claims(&["shop"]);
    no_exp.as_object_mut().unwrap().remove("exp");
    // valid signature, issuer and audience, but not valid for another hour (nbf)
    let mut not_yet = claims(&["shop"]);
    not_yet["nbf"] = serde_json::json!(now() + 3600);
    let mut nbf_garbage = claims(&["shop"]);
    nbf_garbage["nbf"] = serde_json::json!("soon");
    // an attacker's key, advertised by `jku`/`x5u`: never fetched, so never trusted
    let with_header = |edit: &dyn Fn(&mut Header)| {
        let mut hdr = Header::new(Algorithm::ES256);
        hdr.kid = Some("k1".into());
        edit(&mut hdr);
        encode(&hdr, &claims(&["shop"]), &keys.other).unwrap()
    };
    // `crit` and `typ` are not in jsonwebtoken's Header: sign a hand-made header
    let signed_with_raw_header = |raw: &str| {
        let good = token(&keys.signing, &claims(&["shop"]));
        let mut parts = good.split('.');
        let (_, body) = (parts.next().unwrap(), parts.next().unwrap());
        let signing_input = format!("{}.{body}", B64.encode(raw));
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &keys.signing, Algorithm::ES256).unwrap();
        format!("{signing_input}.{sig}")
    };
    let crit = signed_with_raw_header(r#"{"alg":"ES256","kid":"k1","crit":["exp"],"exp":1}"#);
    let wrong_typ = signed_with_raw_header(r#"{"alg":"ES256","kid":"k1","typ":"id+jwt"}"#);
    let jku = with_header(&|h| h.jku = Some("https://evil.test/jwks.json".into()));
    let x5u = with_header(&|h| h.x5u = Some("https://evil.test/cert.pem".into()));
    let oversized = {
        let mut big = claims(&["shop"]);
        big["padding"] = serde_json::json!("x".repeat(10_000));
        token(&keys.signing, &big)
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        B64.encode(claims(&["shop"]).to_string())
    );
    let confusion = {
        // HS256 "signed" with the public key's bytes, as if the verifier took the public key
        // for an HMAC secret
        let mut hdr = Header::new(Algorithm::HS256);
        hdr.kid = Some("k1".into());
        encode(
            &hdr,
            &claims(&["shop"]),
            &EncodingKey::from_secret(&keys.public_x),
        )
        .unwrap()
    };
    let bearers = [
        ("expired", format!("Bearer {}", token(&keys.signing, &expired))),
        (
            "wrong issuer",
            format!("Bearer {}", token(&keys.signing, &wrong_iss)),
        ),
        (
            "wrong audience",
            format!("Bearer {}", token(&keys.signing, &wrong_aud)),
        ),
        ("no exp", format!("Bearer {}", token(&keys.signing, &no_exp))),
        (
            "nbf an hour ahead",
            format!("Bearer {}", token(&keys.signing, &not_yet)),
        ),
        (
            "nbf not a number",
            format!("Bearer {}", token(&keys.signing, &nbf_garbage)),
        ),
        ("crit header", format!("Bearer {crit}")),
        ("typ of another token kind", format!("Bearer {wrong_typ}")),
        ("over 8 KiB", format!("Bearer {oversized}")),
        ("attacker key by jku", format!("Bearer {jku}")),
        ("attacker key by x5u", format!("Bearer {x5u}")),
        (
            "wrong signature",
            format!("Bearer {}", token(&keys.other, &claims(&["shop"]))),
        ),
        ("alg none", format!("Bearer {alg_none}")),
        ("HMAC confusion", format!("Bearer {confusion}")),
        ("garbage", "Bearer not.a.jwt".to_owned()),
        ("not bearer", format!("Basic {}", B64.encode("ann:pw"))),
    ];
    let reference = call(&proxy, "checkout.staging.example.test", &[]).await;
    assert_eq!(reference.0, 401);
    assert_eq!(
        reference.1.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    for (what, bearer) in &bearers {
        let c = creds(bearer);
        let h: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            call(&proxy, "checkout.staging.example.test", &h).await,
            reference,
            "{what}"
        );
    }
    // a good token without the application credential, or with a wrong one
    assert_eq!(
        call(
            &proxy,
            "checkout.staging.example.test",
            &[("authorization", &good)]
        )
        .await,
        reference
    );
    assert_eq!(
        call(
            &proxy,
            "checkout.staging.example.test",
            &[("authorization", &good), ("x-api-key", "guess")]
        )
        .await,
        reference
    );
    // the same 401 for hosts that do not exist
    assert_eq!(call(&proxy, "billing.prod.example.test", &[]).await, reference);

    // authenticated but not allowed into prod (not in `sre`): the same 404, byte for byte, as
    // an environment that does not exist
    let not_allowed = call(&proxy, "checkout.prod.example.test", &good_headers).await;
    let nonexistent = call(&proxy, "checkout.qa.example.test", &good_headers).await;
    assert_eq!(not_allowed.0, 404);
    assert_eq!(not_allowed, nonexistent);
    assert_eq!(prod.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    // an sre may enter
    let sre = format!("Bearer {}", token(&keys.signing, &claims(&["sre"])));
    let c = creds(&sre);
    let h: Vec<(&str, &str)> = c.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(call(&proxy, "checkout.prod.example.test", &h).await.0, 200);

    // an application may present a client token instead of an API key
    let client_claims = |client: &str| serde_json::json!({ "sub": "svc", "client_id": client, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600 });
    let client_token = token(&keys.signing, &client_claims("billing-job"));
    let (status, _, body) = call(
        &proxy,
        "checkout.staging.example.test",
        &[("x-client-token", &client_token), ("authorization", &good)],
    )
    .await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["headers"]["x-autopilot-app"], "billing-job");
    assert_eq!(body["headers"]["x-autopilot-user"], "ann");
    assert!(body["headers"]["x-client-token"].is_null(), "{body}");
    for bad_client in [
        token(&keys.signing, &client_claims("someone-else")),
        token(&keys.other, &client_claims("billing-job")),
    ] {
        let r = call(
            &proxy,
            "checkout.staging.example.test",
            &[("x-client-token", &bad_client), ("authorization", &good)],
        )
        .await;
        assert_eq!(r, reference, "a client token that is not allowed or not valid");
    }

    // gRPC callers get trailers-only answers with grpc-status
    let grpc = call(
        &proxy,
        "checkout.staging.example.test",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(
        (grpc.0, grpc.1.get("grpc-status").map(String::as_str)),
        (200, Some("16"))
    );
    let mut h = good_headers.clone();
    h.push(("content-type", "application/grpc"));
    let grpc = call(&proxy, "checkout.prod.example.test", &h).await;
    assert_eq!(
        (grpc.0, grpc.1.get("grpc-status").map(String::as_str)),
        (200, Some("5"))
    );
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_jwks_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (keys(), keys());
    let up = upstream("staging").await;
    let proxy = start(
        dir.path(),
        &old,
        vec![route("checkout", "staging", up.addr, Auth::Required, None)],
    )
    .await;
    let bearer = |k: &Keys| format!("Bearer {}", token(&k.signing, &claims(&[])));
    let (b_old, b_new) = (bearer(&old), bearer(&new));
    let h_old = [("x-api-key", API_KEY), ("authorization", b_old.as_str())];
    let h_new = [("x-api-key", API_KEY), ("authorization", b_new.as_str())];
    wait_ready(&proxy, "checkout.staging.example.test", &h_old).await;
    assert_eq!(call(&proxy, "checkout.staging.example.test", &h_new).await.0, 401);
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(dir.path().join("jwks.json"), &new.jwks).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&proxy, "checkout.staging.example.test", &h_new).await.0 != 200 {
        assert!(Instant::now() < deadline, "the new keys were never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&proxy, "checkout.staging.example.test", &h_old).await.0,
        401,
        "the old key is gone"
    );
    proxy.stop();
}

/// The release that answered, from the proxy's response header.
async fn release_of(proxy: &ProxyHandle, host: &str, headers: &[(&str, &str)]) -> String {
    let (status, h, body) = call(proxy, host, headers).await;
    assert_eq!(status, 200, "{body}");
    h["x-autopilot-release"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ab_segment_is_picked_by_claim_header_or_cookie_split_with_stable_and_counted_apart() {
    use autopilot::proxy::routes::{Attribute, NameValue, Segment};
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let nv = |name: &str, value: &str| NameValue {
        name: name.into(),
        value: value.into(),
    };
    let shop = RouteSpec {
        canary: Some("v2".into()),
        releases: BTreeMap::from([("v1".into(), vec![v1.addr]), ("v2".into(), vec![v2.addr])]),
        sticky: Some(autopilot::proxy::routes::Sticky::Header("x-user".into())),
        segment: Some(Segment {
            name: "staff".into(),
            rules: vec![
                Attribute::Claim(nv("groups", "staff")),
                Attribute::Header(nv("X-Staff", "1")),
                Attribute::Cookie(nv("beta", "opted-in")),
            ],
            share: "50%".parse().unwrap(),
        }),
        ..common::route_v1("shop", "prod", v1.addr, Auth::Required)
    };
    let proxy = start(dir.path(), &keys, vec![shop]).await;
    let host = "shop.prod.example.test";
    let bearer = |groups: &[&str]| format!("Bearer {}", token(&keys.signing, &claims(groups)));
    let (customer, staff) = (bearer(&["shop"]), bearer(&["shop", "staff"]));
    let as_customer = [("x-api-key", API_KEY), ("authorization", customer.as_str())];
    wait_ready(&proxy, host, &as_customer).await;
    wait_ready(&proxy, "v2.shop.prod.example.test", &as_customer).await;

    // outside the segment the weight (0) decides: stable only, whatever the sticky key
    for i in 0..100 {
        let user = format!("customer-{i}");
        let h = [as_customer[0], as_customer[1], ("x-user", user.as_str())];
        assert_eq!(release_of(&proxy, host, &h).await, "v1");
    }
    // a header with another value, or a claim that is not the rule's, is not the segment
    let h = [as_customer[0], as_customer[1], ("x-staff", "2")];
    assert_eq!(release_of(&proxy, host, &h).await, "v1");

    // each rule picks the segment; half of it meets v2, the other half stays on v1 as its
    // baseline; a caller keeps its side (sticky by `x-user`)
    let mut seen: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let by_claim = [("x-api-key", API_KEY), ("authorization", staff.as_str())];
    for (rule, base, extra) in [
        ("claim", by_claim, None),
        ("header", as_customer, Some(("x-staff", "1"))),
        (
            "cookie",
            as_customer,
            Some(("cookie", "theme=dark; beta=opted-in")),
        ),
    ] {
        for i in 0..120 {
            let user = format!("{rule}-{i}");
            let mut h = vec![base[0], base[1], ("x-user", user.as_str())];
            h.extend(extra);
            let first = release_of(&proxy, host, &h).await;
            assert_eq!(release_of(&proxy, host, &h).await, first, "{user} keeps its side");
            let e = seen.entry(rule).or_default();
            if first == "v2" { e.0 += 2 } else { e.1 += 2 }
        }
    }
    for (rule, (on_v2, on_v1)) in &seen {
        // 120 callers, each side's count Binomial(120, 1/2): outside 30..90 once in 10^7
        assert!(
            (60..=180).contains(on_v2) && (60..=180).contains(on_v1),
            "{rule}: {on_v2} requests on v2, {on_v1} on v1"
        );
    }

    // the segment's requests are counted apart, by release; the rest are not in those series
    let registry = &proxy.shared.registry;
    let segment = |release: &str| {
        registry
            .get_segment("shop", "prod", release, "staff")
            .map_or(0, |m| m.total())
    };
    let (on_v2, on_v1): (u32, u32) = seen.values().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
    assert_eq!(
        common::counted(|| segment("v2"), u64::from(on_v2)).await,
        u64::from(on_v2)
    );
    assert_eq!(
        common::counted(|| segment("v1"), u64::from(on_v1)).await,
        u64::from(on_v1)
    );
    let v1_rest = registry.get("shop", "prod", "v1").unwrap().total();
    assert!(v1_rest >= 101, "{v1_rest}");
    let exposition = common::metrics_text(proxy.admin).await;
    let line = format!(
        "autopilot_proxy_requests_total{{service=\"shop\",environment=\"prod\",release=\"v2\",segment=\"staff\",code=\"2xx\"}} {on_v2}"
    );
    assert!(exposition.contains(&line), "{line} in:\n{exposition}");
}

//! The Kubernetes runtime against kube's mock service (no API server can run here): every
//! request the adapter makes is asserted — method, path and query (field manager, force,
//! label selectors), content type and body — and answered as an API server would.
//! What this does not show (it needs a real cluster) is listed in the README.

mod common;

use autopilot::control::ports::{PortError, Runtime};
use autopilot::control::rollout::{Readiness, Release};
use autopilot::control::time::Time;
use autopilot::runtime::kubernetes::{FilesOnKubernetes, KubeRuntime, KubernetesConfig, Placement};
use autopilot::spec::objectives::ServiceSpec;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tower_test::mock::{self, Handle};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const APPLY: &str = "application/apply-patch+yaml";

fn release(digest: &str, commit: &str) -> Release {
    Release {
        id: autopilot::release::release_id(digest),
        commit: commit.to_owned(),
        digest: digest.to_owned(),
    }
}

fn services() -> Vec<ServiceSpec> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let catalog = autopilot::spec::load(&[
        root.join("objectives"),
        root.join("sensors"),
        root.join("controllers"),
    ])
    .expect("the examples load");
    catalog.services.into_values().collect()
}

/// One request the adapter must make, and the answer it gets.
struct Exchange {
    method: Method,
    /// Path and query, exactly.
    uri: String,
    /// For applies: the body must be JSON equal to this.
    body: Option<Value>,
    status: StatusCode,
    answer: Value,
}

fn apply(uri: &str, body: Value) -> Exchange {
    Exchange {
        method: Method::PATCH,
        uri: uri.to_owned(),
        answer: body.clone(),
        body: Some(body),
        status: StatusCode::OK,
    }
}

fn get(uri: &str, answer: Value) -> Exchange {
    Exchange {
        method: Method::GET,
        uri: uri.to_owned(),
        body: None,
        status: StatusCode::OK,
        answer,
    }
}

fn delete(uri: &str) -> Exchange {
    Exchange {
        method: Method::DELETE,
        uri: uri.to_owned(),
        body: None,
        status: StatusCode::OK,
        answer: json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message, "metadata": {}})
}

/// Answers the adapter's requests from `script`, asserting each; returns how many were made.
fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    script: Vec<Exchange>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        for (i, x) in script.into_iter().enumerate() {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("request {i} ({} {}) was never made", x.method, x.uri));
            let uri = req.uri().to_string();
            assert_eq!(
                (req.method(), uri.as_str()),
                (&x.method, x.uri.as_str()),
                "request {i}"
            );
            if let Some(want) = &x.body {
                let ct = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(
                    ct.as_deref(),
                    Some(APPLY),
                    "request {i} ({uri}) is a server-side apply"
                );
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let got: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(&got, want, "request {i} ({uri}): the applied object");
            }
            send.send_response(
                Response::builder()
                    .status(x.status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&x.answer).unwrap()))
                    .unwrap(),
            );
            n += 1;
        }
        n
    })
}

fn mock_client() -> (kube::Client, Handle<Request<Body>, Response<Body>>) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(svc, "default"), handle)
}

/// The `search` example (an image built elsewhere, 3 replicas, resources) in staging and prod.
fn search_runtime(config: KubernetesConfig, clients: BTreeMap<String, kube::Client>) -> KubeRuntime {
    // every look lists (the once-a-second reuse has its own test)
    KubeRuntime::with_clients(&services(), config, None, clients)
        .with_clock(|| Time::from_secs(1_800_000_000))
        .with_min_look(std::time::Duration::ZERO)
}

/// The `search` runtime with staging and prod in one (mock) cluster.
fn one_cluster(config: KubernetesConfig) -> (KubeRuntime, Handle<Request<Body>, Response<Body>>) {
    let (client, handle) = mock_client();
    let clients = BTreeMap::from([
        ("staging".to_owned(), client.clone()),
        ("prod".to_owned(), client),
    ]);
    (search_runtime(config, clients), handle)
}

/// The labels of everything `search` release `r` is made of in `env`.
fn search_labels(env: &str, r: &Release) -> Value {
    json!({
        "app.kubernetes.io/instance": format!("search-{}", r.id),
        "app.kubernetes.io/managed-by": "autopilot",
        "app.kubernetes.io/name": "search",
        "autopilot.dev/environment": env,
        "autopilot.dev/release": r.id,
        "autopilot.dev/service": "search",
    })
}

/// The Deployment autopilot applies for `search` release `r` in `env`.
fn search_deployment(ns: &str, env: &str, r: &Release, replicas: i64, retired: Option<&str>) -> Value {
    let name = format!("search-{}", r.id);
    let labels = search_labels(env, r);
    let mut annotations = json!({"autopilot.dev/commit": r.commit, "autopilot.dev/digest": r.digest});
    if let Some(at) = retired {
        annotations["autopilot.dev/retired-at"] = json!(at);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {
                "autopilot.dev/environment": env, "autopilot.dev/release": r.id, "autopilot.dev/service": "search"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "search",
                    "image": format!("registry.example.com/shop/search@{}", r.digest),
                    "env": [
                        {"name": "PORT", "value": "8080"},
                        {"name": "AUTOPILOT_SERVICE", "value": "search"},
                        {"name": "AUTOPILOT_ENVIRONMENT", "value": env},
                        {"name": "AUTOPILOT_RELEASE", "value": r.id},
                    ],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": "http"},
                        "periodSeconds": 2, "failureThreshold": 3},
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                }]},
            },
        },
    })
}

fn search_service(ns: &str, env: &str, r: &Release) -> Value {
    let name = format!("search-{}", r.id);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": search_labels(env, r)},
        "spec": {
            "selector": {"autopilot.dev/environment": env, "autopilot.dev/release": r.id, "autopilot.dev/service": "search"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

fn namespace(ns: &str, env: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "app.kubernetes.io/managed-by": "autopilot", "autopilot.dev/environment": env}}})
}

/// The three applies of a release, in order: namespace (not forced), Service, Deployment.
fn applies(ns: &str, env: &str, r: &Release, replicas: i64, retired: Option<&str>) -> Vec<Exchange> {
    let name = format!("search-{}", r.id);
    vec![
        apply(
            &format!("/api/v1/namespaces/{ns}?&fieldManager=autopilot"),
            namespace(ns, env),
        ),
        apply(
            &format!("/api/v1/namespaces/{ns}/services/{name}?&force=true&fieldManager=autopilot"),
            search_service(ns, env, r),
        ),
        apply(
            &format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}?&force=true&fieldManager=autopilot"),
            search_deployment(ns, env, r, replicas, retired),
        ),
    ]
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

const SELECTOR: &str = "labelSelector=autopilot.dev%2Fservice%3Dsearch%2Cautopilot.dev%2Fenvironment%3D";

/// The three lists of one environment's look: Deployments, Pods, EndpointSlices.
fn look(ns: &str, env: &str, deployments: Vec<Value>, pods: Vec<Value>, slices: Vec<Value>) -> Vec<Exchange> {
    vec![
        get(
            &format!("/apis/apps/v1/namespaces/{ns}/deployments?&{SELECTOR}{env}"),
            list("Deployment", deployments),
        ),
        get(
            &format!("/api/v1/namespaces/{ns}/pods?&{SELECTOR}{env}"),
            list("Pod", pods),
        ),
        get(
            &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?&{SELECTOR}{env}"),
            list("EndpointSlice", slices),
        ),
    ]
}

fn slice(service: &str, endpoints: &[(&str, Option<bool>)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("{service}-abcde"), "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| match ready {
            Some(r) => json!({"addresses": [ip], "conditions": {"ready": r}}),
            None => json!({"addresses": [ip]}),
        }).collect::<Vec<_>>(),
    })
}

fn pod(name: &str, release: &str, waiting: Option<(&str, &str)>) -> Value {
    let state = match waiting {
        Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
        None => json!({"running": {}}),
    };
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"autopilot.dev/release": release, "autopilot.dev/service": "search"}},
        "status": {"containerStatuses": [{"name": "search", "image": "x", "imageID": "", "ready": false,
            "restartCount": 4, "state": state}]}})
}

#[tokio::test]
async fn a_release_is_applied_by_digest_with_server_side_apply_and_a_new_digest_is_a_new_deployment() {
    let (mut rt, handle) = one_cluster(KubernetesConfig::default());
    let (r1, r2) = (release(D1, "c1"), release(D2, "c2"));
    let mut script = applies("search-staging", "staging", &r1, 3, None);
    script.extend(applies("search-staging", "staging", &r2, 3, None));
    let server = serve(handle, script);
    rt.deploy("search", "staging", &r1).await.unwrap();
    rt.deploy("search", "staging", &r2).await.unwrap();
    drop(rt);
    assert_eq!(server.await.unwrap(), 6);
}

#[tokio::test]
async fn readiness_comes_from_endpoint_slices_a_crash_loop_is_failed_with_its_reason_and_old_releases_are_deleted()
 {
    let (mut rt, handle) = one_cluster(KubernetesConfig {
        retention: autopilot::spec::units::Duration(std::time::Duration::from_secs(3600)),
        ..KubernetesConfig::default()
    });
    let (r1, r2) = (release(D1, "c1"), release(D2, "c2"));
    let r0 = release(
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "c0",
    );
    let now = Time::from_secs(1_800_000_000);
    let two_hours_ago = jiff::Timestamp::from_second(now.millis() as i64 / 1000 - 7200)
        .unwrap()
        .to_string();
    let ten_minutes_ago = jiff::Timestamp::from_second(now.millis() as i64 / 1000 - 600)
        .unwrap()
        .to_string();
    let mut script = look(
        "search-staging",
        "staging",
        vec![
            search_deployment("search-staging", "staging", &r1, 3, None),
            search_deployment("search-staging", "staging", &r2, 3, None),
            // retired two hours ago, past the hour of retention: deleted
            search_deployment("search-staging", "staging", &r0, 0, Some(&two_hours_ago)),
        ],
        vec![
            pod("search-r1-a", &r1.id, None),
            pod(
                "search-r2-a",
                &r2.id,
                Some(("CrashLoopBackOff", "back-off 40s restarting failed container")),
            ),
        ],
        vec![slice(
            &format!("search-{}", r1.id),
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", None),
                ("10.0.0.3", Some(false)),
            ],
        )],
    );
    script.push(delete(&format!(
        "/apis/apps/v1/namespaces/search-staging/deployments/search-{}?",
        r0.id
    )));
    script.push(delete(&format!(
        "/api/v1/namespaces/search-staging/services/search-{}?",
        r0.id
    )));
    script.extend(look(
        "search-prod",
        "prod",
        // retired ten minutes ago: kept, but not running
        vec![search_deployment(
            "search-prod",
            "prod",
            &r1,
            0,
            Some(&ten_minutes_ago),
        )],
        vec![],
        vec![],
    ));
    let server = serve(handle, script);
    let instances = rt.instances("search").await.unwrap();
    let r1_ready = &instances[&("staging".to_owned(), r1.id.clone())];
    assert_eq!(
        r1_ready,
        &Readiness {
            ready: 2,
            desired: 3,
            failed: false,
            reason: None
        },
        "two endpoints are ready (an absent condition is ready), one is not"
    );
    let r2_ready = &instances[&("staging".to_owned(), r2.id.clone())];
    assert!(r2_ready.failed);
    assert_eq!(
        r2_ready.reason.as_deref(),
        Some("pod search-r2-a, container search: CrashLoopBackOff back-off 40s restarting failed container")
    );
    assert_eq!(
        instances.len(),
        2,
        "retired releases are not running: {instances:?}"
    );
    let addrs: Vec<SocketAddr> = vec!["10.0.0.1:8080".parse().unwrap(), "10.0.0.2:8080".parse().unwrap()];
    assert_eq!(rt.ready_endpoints("search", "staging", &r1.id), addrs);
    drop(rt);
    assert_eq!(server.await.unwrap(), 8);
}

#[tokio::test]
async fn retiring_scales_to_zero_from_what_the_cluster_says_not_from_memory() {
    // a fresh runtime (as after a restart) retires a release it never deployed
    let (mut rt, handle) = one_cluster(KubernetesConfig::default());
    let r1 = release(D1, "c1");
    let name = format!("search-{}", r1.id);
    let at = "2027-01-15T08:00:00Z";
    let mut script = vec![get(
        &format!("/apis/apps/v1/namespaces/search-prod/deployments/{name}"),
        search_deployment("search-prod", "prod", &r1, 3, None),
    )];
    script.extend(applies("search-prod", "prod", &r1, 0, Some(at)));
    // retiring again: already retired, nothing applied; a release that is gone: nothing to do
    script.push(get(
        &format!("/apis/apps/v1/namespaces/search-prod/deployments/{name}"),
        search_deployment("search-prod", "prod", &r1, 0, Some(at)),
    ));
    script.push(Exchange {
        status: StatusCode::NOT_FOUND,
        ..get(
            "/apis/apps/v1/namespaces/search-prod/deployments/search-r222222222222",
            status(
                404,
                "NotFound",
                "deployments.apps \"search-r222222222222\" not found",
            ),
        )
    });
    let server = serve(handle, script);
    rt.retire("search", "prod", &r1.id).await.unwrap();
    rt.retire("search", "prod", &r1.id).await.unwrap();
    rt.retire("search", "prod", "r222222222222").await.unwrap();
    drop(rt);
    assert_eq!(server.await.unwrap(), 6);
}

#[tokio::test]
async fn each_environment_talks_to_its_own_cluster_and_namespace() {
    let (staging, staging_handle) = mock_client();
    let (prod, prod_handle) = mock_client();
    let config = KubernetesConfig {
        environments: BTreeMap::from([(
            "prod".to_owned(),
            Placement {
                context: Some("prod-eu".into()),
                namespace: Some("shop".into()),
                ..Placement::default()
            },
        )]),
        ..KubernetesConfig::default()
    };
    assert_eq!(config.cluster_of("prod").context.as_deref(), Some("prod-eu"));
    assert_eq!(config.cluster_of("staging").context, None);
    let mut rt = search_runtime(
        config,
        BTreeMap::from([("staging".to_owned(), staging), ("prod".to_owned(), prod)]),
    );
    let r1 = release(D1, "c1");
    let staging_server = serve(staging_handle, applies("search-staging", "staging", &r1, 3, None));
    let prod_server = serve(prod_handle, applies("shop", "prod", &r1, 3, None));
    rt.deploy("search", "staging", &r1).await.unwrap();
    rt.deploy("search", "prod", &r1).await.unwrap();
    drop(rt);
    assert_eq!(staging_server.await.unwrap(), 3);
    assert_eq!(prod_server.await.unwrap(), 3);
}

#[tokio::test]
async fn refusals_are_fatal_outages_are_retried_and_an_unreadable_cluster_is_unknown() {
    let (mut rt, handle) = one_cluster(KubernetesConfig::default());
    let r1 = release(D1, "c1");
    let forbidden = status(
        403,
        "Forbidden",
        "namespaces \"search-staging\" is forbidden: no permission to patch",
    );
    let script = vec![
        Exchange {
            status: StatusCode::FORBIDDEN,
            ..apply(
                "/api/v1/namespaces/search-staging?&fieldManager=autopilot",
                namespace("search-staging", "staging"),
            )
        },
        Exchange {
            status: StatusCode::SERVICE_UNAVAILABLE,
            answer: status(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            ..apply(
                "/api/v1/namespaces/search-staging?&fieldManager=autopilot",
                namespace("search-staging", "staging"),
            )
        },
        Exchange {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..get(
                &format!("/apis/apps/v1/namespaces/search-staging/deployments?&{SELECTOR}staging"),
                status(503, "ServiceUnavailable", "etcd is down"),
            )
        },
    ];
    let mut script = script;
    script[0].answer = forbidden;
    let server = serve(handle, script);
    let e: PortError = rt.deploy("search", "staging", &r1).await.unwrap_err();
    assert!(!e.retryable && e.message.contains("forbidden"), "{e:?}");
    let e = rt.deploy("search", "staging", &r1).await.unwrap_err();
    assert!(e.retryable, "{e:?}");
    let e = rt.instances("search").await.unwrap_err();
    assert!(
        e.retryable && e.message.contains("etcd is down"),
        "unknown, never `not ready`: {e:?}"
    );
    drop(rt);
    assert_eq!(server.await.unwrap(), 3);
}

#[test]
fn files_artifacts_run_in_a_base_image_after_an_init_container_pulls_them_by_digest() {
    let services = services();
    let checkout = services.iter().find(|s| s.name == "checkout").unwrap();
    let r = release(D1, "c1");
    let repository = Some("reg.example.com/autopilot/checkout");
    let staging = |config: &KubernetesConfig, repository: Option<&str>| {
        autopilot::runtime::manifests::manifests(checkout, "staging", &r, config, repository, None)
    };
    let err = staging(&KubernetesConfig::default(), repository).unwrap_err();
    assert!(err.contains("runtime.kubernetes.files"), "{err}");
    let config = KubernetesConfig {
        files: Some(FilesOnKubernetes {
            image: "debian:bookworm-slim".into(),
            fetcher: "ghcr.io/example/autopilot:1".into(),
        }),
        ..KubernetesConfig::default()
    };
    let err = staging(&config, None).unwrap_err();
    assert!(err.contains("`registry`"), "{err}");
    let m = staging(&config, repository).unwrap();
    let pod = m.deployment.spec.template.spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!(
        init.args.as_deref().unwrap(),
        [
            "artifact",
            "pull",
            &format!("reg.example.com/autopilot/checkout@{D1}"),
            "--into",
            "/release"
        ]
    );
    let main = &pod.containers[0];
    assert_eq!(main.image.as_deref(), Some("debian:bookworm-slim"));
    assert_eq!(main.working_dir.as_deref(), Some("/release"));
    assert_eq!(
        main.command.as_deref().unwrap()[..2],
        ["sh".to_owned(), "-c".to_owned()]
    );
    // a bad digest or environment is refused with what is wrong
    let bad = Release {
        digest: "sha256:abc".into(),
        ..r.clone()
    };
    let err = autopilot::runtime::manifests::manifests(checkout, "staging", &bad, &config, Some("x/y"), None)
        .unwrap_err();
    assert!(err.contains("not a digest"), "{err}");
    let err =
        autopilot::runtime::manifests::manifests(checkout, "qa", &r, &config, Some("x/y"), None).unwrap_err();
    assert!(err.contains("no environment `qa`"), "{err}");
}

/// `autopilot render kubernetes` against its golden files; `UPDATE_GOLDEN=1` rewrites them
/// (and the diff is then reviewed like code).
#[test]
fn render_prints_exactly_what_is_applied_and_matches_its_golden_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cases: [(&str, &str, &[&str]); 2] = [
        (
            "search-prod.yaml",
            "objectives/search.yaml",
            &["--environment", "prod"],
        ),
        (
            "checkout-staging.yaml",
            "objectives/checkout.yaml",
            &[
                "--environment",
                "staging",
                "--config",
                "docs/autopilot-kubernetes.yaml",
            ],
        ),
    ];
    for (golden, file, args) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
            .current_dir(&root)
            .args([
                "render",
                "kubernetes",
                file,
                "--release",
                &digest,
                "--commit",
                "0a1b2c3",
            ])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {stderr}");
        let yaml = String::from_utf8(out.stdout).unwrap();
        let path = root.join("tests/golden").join(golden);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &yaml).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            yaml, want,
            "`render` changed for {file}: if intended, rerun with UPDATE_GOLDEN=1 and review the diff"
        );
        // each document reads back as the Kubernetes object it claims to be
        let docs: Vec<&str> = yaml.split("---\n").collect();
        assert_eq!(docs.len(), 3);
        let _: k8s_openapi::api::core::v1::Namespace = serde_saphyr::from_str(docs[0]).unwrap();
        let _: k8s_openapi::api::core::v1::Service = serde_saphyr::from_str(docs[1]).unwrap();
        let d: k8s_openapi::api::apps::v1::Deployment = serde_saphyr::from_str(docs[2]).unwrap();
        // pinned by digest: the image, or (files) what the init container pulls
        let pod = d.spec.template.spec.unwrap();
        let image = pod.containers[0].image.clone().unwrap();
        let pulled = pod
            .init_containers
            .iter()
            .flatten()
            .flat_map(|c| c.args.iter().flatten())
            .any(|a| a.ends_with(&format!("@{digest}")));
        assert!(
            image.ends_with(&format!("@{digest}")) || pulled,
            "pinned by digest: {image}"
        );
    }
    // a tag instead of a digest, an unknown environment: refused, with what is wrong
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
        .current_dir(&root)
        .args([
            "render",
            "kubernetes",
            "objectives/search.yaml",
            "--environment",
            "qa",
            "--release",
            &digest,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment `qa` (it has staging, prod)"));
}

/// What a files release's init container runs, against a real registry (docker-registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_container_s_artifact_pull_fetches_by_digest_and_refuses_what_does_not_match() {
    use autopilot::release::oci::Layout;
    use autopilot::release::registry::{Credentials, Registry, TempRegistry};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = TempRegistry::start().expect("docker-registry starts (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("config")).unwrap();
    std::fs::write(src.join("checkout"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(src.join("config/checkout.toml"), "port = 1\n").unwrap();
    let layout = Layout::open(&dir.path().join("layout")).unwrap();
    let digest = layout
        .pack(&src, &["checkout".into(), "config".into()], "checkout:c1")
        .unwrap();
    let r = Registry::new(&registry.host(), "shop", Credentials::Anonymous).unwrap();
    let reference = r.push(&layout, "checkout", &digest, "c1").await.unwrap();
    let pull = |reference: String, into: PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_autopilot"))
                .args(["artifact", "pull", &reference, "--into"])
                .arg(&into)
                .output()
                .unwrap()
        })
    };
    let into = dir.path().join("release");
    let out = pull(reference.clone(), into.clone()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&digest));
    assert_eq!(
        std::fs::read_to_string(into.join("config/checkout.toml")).unwrap(),
        "port = 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(into.join("checkout")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    // a tag, and a digest the registry does not have: refused, exit 1, nothing unpacked
    let tag = format!("{}/shop/checkout:c1", registry.host());
    let missing = format!("{}/shop/checkout@sha256:{}", registry.host(), "0".repeat(64));
    for bad in [tag, missing] {
        let empty = dir.path().join("empty");
        let out = pull(bad.clone(), empty.clone()).await.unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(!empty.join("checkout").exists());
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{bad}"
        );
    }
}

/// Pods move (a restart, a reschedule): the proxy's upstreams follow the EndpointSlices without
/// a rollout step. The real proxy, real upstreams, the Kubernetes adapter on the mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_pods_that_move_to_new_addresses() {
    use autopilot::control::ports::{Route, Router};
    use autopilot::live::ProxyRouter;
    use autopilot::runtime::AnyRuntime;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (a, b) = (common::upstream("pod-a").await, common::upstream("pod-b").await);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let catalog = autopilot::spec::load(&[
        root.join("objectives"),
        root.join("sensors"),
        root.join("controllers"),
    ])
    .unwrap();
    let mut config = common::config("token", None);
    config.access = Some(std::sync::Arc::new(catalog.clone()));
    let proxy = autopilot::proxy::server::start(
        config,
        autopilot::proxy::routes::RoutesFile::new("example.test", Vec::new()),
    )
    .unwrap();
    let (kube, handle) = one_cluster(KubernetesConfig::default());
    let r1 = release(D1, "c1");
    let at = |addr: SocketAddr| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "x", "labels": {"kubernetes.io/service-name": format!("search-{}", r1.id)}},
            "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
        })
    };
    let deployment = search_deployment("search-prod", "prod", &r1, 1, None);
    let mut script = Vec::new();
    for pod in [a.addr, b.addr] {
        script.extend(look("search-staging", "staging", vec![], vec![], vec![]));
        script.extend(look(
            "search-prod",
            "prod",
            vec![deployment.clone()],
            vec![],
            vec![at(pod)],
        ));
    }
    let server = serve(handle, script);
    let mut runtime = AnyRuntime::Kubernetes(kube);
    let mut router = ProxyRouter::new(proxy.shared.clone(), runtime.clone(), &catalog);
    let c = common::client();
    let host = "search.prod.example.test";

    runtime.instances("search").await.unwrap();
    let route = Route::decide(None, &r1.id, autopilot::spec::units::Weight::MAX, None);
    router.set_route("search", "prod", &route).await.unwrap();
    let (status, release, body) = common::get(&c, &proxy, host, &[]).await;
    assert_eq!(
        (status, release.as_deref(), body["name"].as_str()),
        (200, Some(r1.id.as_str()), Some("pod-a"))
    );

    // the pod is rescheduled: the next look sees it elsewhere, and the route follows
    runtime.instances("search").await.unwrap();
    assert_eq!(router.refresh_upstreams(), 1);
    assert_eq!(
        router.refresh_upstreams(),
        0,
        "a route that matches is left alone"
    );
    let (status, _, body) = common::get(&c, &proxy, host, &[]).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("pod-b")));
    drop((runtime, router));
    assert_eq!(server.await.unwrap(), 12);
    proxy.stop();
}

#[tokio::test]
async fn a_service_is_listed_at_most_once_a_second_unless_it_was_just_changed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let clock = Arc::new(AtomicU64::new(1_800_000_000_000));
    let c = clock.clone();
    let (client, handle) = mock_client();
    let clients = BTreeMap::from([
        ("staging".to_owned(), client.clone()),
        ("prod".to_owned(), client),
    ]);
    let mut rt = KubeRuntime::with_clients(&services(), KubernetesConfig::default(), None, clients)
        .with_clock(move || Time::from_millis(c.load(Relaxed)));
    let r1 = release(D1, "c1");
    let both = || {
        let mut v = look("search-staging", "staging", vec![], vec![], vec![]);
        v.extend(look("search-prod", "prod", vec![], vec![], vec![]));
        v
    };
    // a look; none 500 ms later; one a second after the first; the deploy; a look right after
    let mut script = both();
    script.extend(both());
    script.extend(applies("search-staging", "staging", &r1, 3, None));
    script.extend(both());
    let server = serve(handle, script);
    rt.instances("search").await.unwrap();
    clock.fetch_add(500, Relaxed);
    rt.instances("search").await.unwrap();
    clock.fetch_add(500, Relaxed);
    rt.instances("search").await.unwrap();
    rt.deploy("search", "staging", &r1).await.unwrap();
    rt.instances("search").await.unwrap();
    drop(rt);
    assert_eq!(server.await.unwrap(), 6 + 6 + 3 + 6);
}

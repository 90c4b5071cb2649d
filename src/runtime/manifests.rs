//! What a release is on Kubernetes: its environment's Namespace, a Service and a Deployment
//! whose pod template names the image **by digest**. Pure: [`manifests`] is what the
//! Kubernetes runtime applies and what `autopilot render kubernetes` prints, so an operator
//! reads exactly what would be applied.
//!
//! - Names: the Deployment and the Service are `{service}-{release}` (the release id is made of
//!   the digest), in the environment's namespace (`runtime.kubernetes.namespace`, default
//!   `{service}-{environment}`).
//! - Labels: `app.kubernetes.io/name` (the service), `app.kubernetes.io/instance`
//!   (`{service}-{release}`), `app.kubernetes.io/managed-by: autopilot`, and autopilot's own
//!   `autopilot.dev/service`, `/environment` and `/release`, by which everything autopilot made
//!   is found again after a restart.
//! - The container listens on port [`CONTAINER_PORT`] (named `http`), told through
//!   `run.portVariable`; the readiness probe is `run.readiness` on that port.
//! - An image artifact runs as its image's own entrypoint. A files artifact runs `run.command`
//!   (with `sh -c`) in a base image, in `/release`, where an init container first pulls the
//!   artifact by digest with `autopilot artifact pull`.

use super::kube_config::KubernetesConfig;
use crate::control::rollout::Release;
use crate::spec::objectives::{Artifact, ServiceSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Namespace, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Service, ServicePort, ServiceSpec as KubeServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The port every instance listens on inside its pod.
pub const CONTAINER_PORT: i32 = 8080;
/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "autopilot";
pub const LABEL_SERVICE: &str = "autopilot.dev/service";
pub const LABEL_ENVIRONMENT: &str = "autopilot.dev/environment";
pub const LABEL_RELEASE: &str = "autopilot.dev/release";
/// When a release was retired (scaled to zero); it is deleted once the retention has passed.
pub const ANNOTATION_RETIRED: &str = "autopilot.dev/retired-at";
pub const ANNOTATION_DIGEST: &str = "autopilot.dev/digest";
pub const ANNOTATION_COMMIT: &str = "autopilot.dev/commit";
/// Where a files artifact is unpacked in the pod.
pub const FILES_DIR: &str = "/release";

/// What one release of one service is in one environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifests {
    pub namespace: Namespace,
    pub service: Service,
    pub deployment: Deployment,
}

/// What the pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// An image, `repository@sha256:…`, run as its own entrypoint.
    Image(String),
    /// A files artifact (`repository@sha256:…`) pulled by `fetcher` into a volume that `base`
    /// runs `run.command` in.
    Files {
        artifact: String,
        base: String,
        fetcher: String,
    },
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The Deployment's and Service's name of a release.
pub fn object_name(service: &str, release: &str) -> String {
    format!("{service}-{release}")
}

/// The labels of everything a release is made of.
pub fn labels(service: &str, environment: &str, release: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", service.to_owned()),
        ("app.kubernetes.io/instance", object_name(service, release)),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER.to_owned()),
        (LABEL_SERVICE, service.to_owned()),
        (LABEL_ENVIRONMENT, environment.to_owned()),
        (LABEL_RELEASE, release.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The labels that select a release's pods (a subset of [`labels`], never changed).
fn selector(service: &str, environment: &str, release: &str) -> BTreeMap<String, String> {
    [
        (LABEL_SERVICE, service),
        (LABEL_ENVIRONMENT, environment),
        (LABEL_RELEASE, release),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// What runs for `release`: an image by digest, or a files artifact in a base image. Files
/// need the registry they were pushed to (`files_repository`: `host/namespace/service`) and a
/// base and fetcher image.
pub fn workload(
    spec: &ServiceSpec,
    release: &Release,
    config: &KubernetesConfig,
    files_repository: Option<&str>,
) -> Result<Workload, String> {
    if !is_digest(&release.digest) {
        return Err(format!(
            "`{}` is not a digest (`sha256:` and 64 hex digits)",
            release.digest
        ));
    }
    let pinned = |repository: &str| format!("{repository}@{}", release.digest);
    match spec.build.as_ref().map(|b| &b.artifact) {
        Some(Artifact::Image(repository)) => Ok(Workload::Image(pinned(repository))),
        None => match &spec.run.image {
            Some(repository) => Ok(Workload::Image(pinned(repository))),
            None => Err(format!("`{}` has neither `build` nor `run.image`", spec.name)),
        },
        Some(Artifact::Files(_)) => {
            let files = config.files.as_ref().ok_or_else(|| {
                format!(
                    "`{}` builds files: running them on Kubernetes needs `runtime.kubernetes.files` \
                     (the base image they run in and the image that fetches them)",
                    spec.name
                )
            })?;
            let repository = files_repository.ok_or_else(|| {
                format!(
                    "`{}` builds files: on Kubernetes they are fetched from the registry, so \
                     autopilot.yaml needs `registry`",
                    spec.name
                )
            })?;
            Ok(Workload::Files {
                artifact: pinned(repository),
                base: spec.run.image.clone().unwrap_or_else(|| files.image.clone()),
                fetcher: files.fetcher.clone(),
            })
        }
    }
}

fn meta(name: &str, namespace: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

/// The objects of `release` of `spec` in `environment`, with `replicas` instances (the
/// service's `run.replicas` unless retiring: 0, with the time it was retired).
pub fn manifests(
    spec: &ServiceSpec,
    environment: &str,
    release: &Release,
    config: &KubernetesConfig,
    files_repository: Option<&str>,
    retired_at: Option<&str>,
) -> Result<Manifests, String> {
    if !spec.environments.iter().any(|e| e.name == environment) {
        let names: Vec<_> = spec.environments.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "`{}` has no environment `{environment}` (it has {})",
            spec.name,
            names.join(", ")
        ));
    }
    let workload = workload(spec, release, config, files_repository)?;
    let service = spec.name.as_str();
    let namespace = config.namespace_of(service, environment);
    let name = object_name(service, &release.id);
    if name.len() > 63 {
        return Err(format!("`{name}` is longer than a Kubernetes name may be (63)"));
    }
    let labels = labels(service, environment, &release.id);
    let selector = selector(service, environment, &release.id);
    let run = &spec.run;

    let mut env: Vec<EnvVar> = run
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..EnvVar::default()
        })
        .collect();
    for (k, v) in [
        (run.port_variable.as_str(), CONTAINER_PORT.to_string()),
        ("AUTOPILOT_SERVICE", service.to_owned()),
        ("AUTOPILOT_ENVIRONMENT", environment.to_owned()),
        ("AUTOPILOT_RELEASE", release.id.clone()),
    ] {
        env.retain(|e| e.name != k);
        env.push(EnvVar {
            name: k.to_owned(),
            value: Some(v),
            ..EnvVar::default()
        });
    }
    let resources = run.resources.as_ref().map(|r| ResourceRequirements {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
        ..ResourceRequirements::default()
    });
    let mut container = Container {
        name: service.to_owned(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(run.readiness.clone()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources,
        ..Container::default()
    };
    let mut pod = PodSpec::default();
    match workload {
        Workload::Image(image) => container.image = Some(image),
        Workload::Files {
            artifact,
            base,
            fetcher,
        } => {
            let mount = VolumeMount {
                name: "release".into(),
                mount_path: FILES_DIR.into(),
                ..VolumeMount::default()
            };
            container.image = Some(base);
            container.command = Some(vec!["sh".into(), "-c".into(), run.command.clone()]);
            container.working_dir = Some(FILES_DIR.into());
            container.volume_mounts = Some(vec![mount.clone()]);
            pod.init_containers = Some(vec![Container {
                name: "fetch".into(),
                image: Some(fetcher),
                args: Some(vec![
                    "artifact".into(),
                    "pull".into(),
                    artifact,
                    "--into".into(),
                    FILES_DIR.into(),
                ]),
                volume_mounts: Some(vec![mount]),
                ..Container::default()
            }]);
            pod.volumes = Some(vec![Volume {
                name: "release".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]);
        }
    }
    pod.containers = vec![container];

    let mut annotations = BTreeMap::from([
        (ANNOTATION_DIGEST.to_owned(), release.digest.clone()),
        (ANNOTATION_COMMIT.to_owned(), release.commit.clone()),
    ]);
    if let Some(at) = retired_at {
        annotations.insert(ANNOTATION_RETIRED.to_owned(), at.to_owned());
    }
    let mut deployment_meta = meta(&name, Some(&namespace), labels.clone());
    deployment_meta.annotations = Some(annotations);
    let deployment = Deployment {
        metadata: deployment_meta,
        spec: DeploymentSpec {
            replicas: Some(if retired_at.is_some() {
                0
            } else {
                run.replicas as i32
            }),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(meta_labels(labels.clone())),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let kube_service = Service {
        metadata: meta(&name, Some(&namespace), labels),
        spec: Some(KubeServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..KubeServiceSpec::default()
        }),
        ..Service::default()
    };
    let namespace = Namespace {
        metadata: meta(
            &namespace,
            None,
            BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
                (LABEL_ENVIRONMENT.to_owned(), environment.to_owned()),
            ]),
        ),
        ..Namespace::default()
    };
    Ok(Manifests {
        namespace,
        service: kube_service,
        deployment,
    })
}

fn meta_labels(labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The manifests as YAML documents (Namespace, Service, Deployment), fields in a stable order.
pub fn to_yaml(m: &Manifests) -> Result<String, String> {
    // plain scalars (a long image reference folded over two lines reads as two things)
    let options = || serde_saphyr::ser_options! { prefer_block_scalars: false };
    let docs = [
        serde_saphyr::to_string_with_options(&m.namespace, options()),
        serde_saphyr::to_string_with_options(&m.service, options()),
        serde_saphyr::to_string_with_options(&m.deployment, options()),
    ];
    let mut out = String::new();
    for (i, d) in docs.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&d.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

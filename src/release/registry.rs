//! Artifacts in an OCI registry (oci-client): the embedded builder pushes each release's
//! artifact — config, layers, then the manifest byte for byte, so its digest is the one packed
//! on disk — and pins the release to `registry/namespace/service@sha256:…`.
//!
//! # Guarantees
//! - A push is complete or the release is not deployable: the manifest goes last, and is read
//!   back by digest and checked before the push counts.
//! - Blobs already in the registry are not sent again; a failed push may be repeated.
//! - Plain HTTP only to a loopback registry (`127.0.0.1`, `localhost`, `[::1]`); anything else
//!   is HTTPS.
//! - Pulls by digest are verified: the manifest's and every blob's bytes against their digests.

use super::oci::{self, Layout};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

/// How autopilot signs in to a registry.
#[derive(Clone)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A bearer token (a registry's own, or an identity token of a cloud's registry).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // secrets never reach a log
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::Basic { .. } => "Basic(***)",
            Credentials::Bearer(_) => "Bearer(***)",
        })
    }
}

/// One registry, and where autopilot's artifacts go in it.
#[derive(Clone)]
pub struct Registry {
    host: String,
    namespace: String,
    auth: RegistryAuth,
    client: Client,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({}/{})", self.host, self.namespace)
    }
}

/// A registry host that may be spoken to in plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:5000` or `127.0.0.1:5000`
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn sha256(bytes: &[u8]) -> String {
    let d: [u8; 32] = Sha256::digest(bytes).into();
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl Registry {
    /// A registry at `host` (`registry.example.com`, `127.0.0.1:5000`), artifacts under
    /// `host/namespace/SERVICE`.
    pub fn new(host: &str, namespace: &str, credentials: Credentials) -> Result<Registry, String> {
        let host = host
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "`{host}` is not a registry host (write `registry.example.com` or `127.0.0.1:5000`)"
            ));
        }
        let namespace = namespace.trim_matches('/');
        let probe = if namespace.is_empty() {
            format!("{host}/x")
        } else {
            format!("{host}/{namespace}/x")
        };
        probe
            .parse::<Reference>()
            .map_err(|e| format!("`{probe}` is not a repository name: {e}"))?;
        let protocol = if is_loopback(host) {
            ClientProtocol::HttpsExcept(vec![host.to_owned()])
        } else {
            ClientProtocol::Https
        };
        // oci-client's HTTP client needs a TLS provider: ours (ring), unless one is set already
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = match credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
            Credentials::Bearer(t) => RegistryAuth::Bearer(t),
        };
        Ok(Registry {
            host: host.to_owned(),
            namespace: namespace.to_owned(),
            auth,
            client: Client::new(ClientConfig {
                protocol,
                // one request per blob: a quarter faster than chunks here (bench registry),
                // as fast as skopeo, and what the big registries accept
                use_monolithic_push: true,
                ..Default::default()
            }),
        })
    }

    /// The repository of a service's artifacts: `host/namespace/service`.
    pub fn repository(&self, service: &str) -> String {
        if self.namespace.is_empty() {
            format!("{}/{service}", self.host)
        } else {
            format!("{}/{}/{service}", self.host, self.namespace)
        }
    }

    fn reference(&self, service: &str, at: &str) -> Result<Reference, String> {
        let sep = if at.starts_with("sha256:") { '@' } else { ':' };
        let text = format!("{}{sep}{at}", self.repository(service));
        text.parse::<Reference>()
            .map_err(|e| format!("`{text}` is not a reference: {e}"))
    }

    /// Pushes the artifact `digest` of `layout` to `service`'s repository, tagged `tag` (the
    /// commit), and checks it back. Returns the reference to pull it with
    /// (`host/namespace/service@sha256:…`).
    pub async fn push(
        &self,
        layout: &Layout,
        service: &str,
        digest: &str,
        tag: &str,
    ) -> Result<String, String> {
        let (manifest, blobs) = layout.parts(digest).map_err(|e| e.to_string())?;
        let tagged = self.reference(service, tag)?;
        let pinned = self.reference(service, digest)?;
        let failed = |what: &str, e: oci_client::errors::OciDistributionError| {
            format!("pushing {what} to {}: {e}", self.repository(service))
        };
        self.client
            .auth(&tagged, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| failed("(signing in)", e))?;
        for b in &blobs {
            let there = self
                .client
                .blob_exists(&tagged, &b.digest)
                .await
                .map_err(|e| failed(&b.digest, e))?;
            if !there {
                let bytes = layout.blob(&b.digest).map_err(|e| e.to_string())?;
                self.client
                    .push_blob(&tagged, bytes, &b.digest)
                    .await
                    .map_err(|e| failed(&b.digest, e))?;
            }
        }
        let content_type = http::HeaderValue::from_static(oci::MANIFEST_TYPE);
        self.client
            .push_manifest_raw(&tagged, manifest.clone(), content_type)
            .await
            .map_err(|e| failed("the manifest", e))?;
        // read back by digest: the registry holds exactly what was packed
        let (back, said) = self
            .client
            .pull_manifest_raw(&pinned, &self.auth, &[oci::MANIFEST_TYPE])
            .await
            .map_err(|e| format!("reading back {pinned}: {e}"))?;
        if back.as_ref() != manifest.as_slice() || said != digest {
            return Err(format!(
                "the registry answered {pinned} with other content (digest {said})"
            ));
        }
        Ok(format!("{}@{digest}", self.repository(service)))
    }

    /// The registry host (`registry.example.com`, `127.0.0.1:5000`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A client for the registry `reference` lives in: this one (its credentials) when it is
    /// the same host, else an anonymous one (HTTPS, plain HTTP only on loopback).
    pub fn for_reference(reference: &str, known: Option<&Registry>) -> Result<Registry, String> {
        let r: Reference = reference
            .parse()
            .map_err(|e| format!("`{reference}` is not an image reference: {e}"))?;
        match known {
            Some(k) if k.host == r.registry() => Ok(k.clone()),
            _ => Registry::new(r.registry(), "", Credentials::Anonymous),
        }
    }

    /// The manifest digest a reference (`repo:tag`) names now.
    pub async fn resolve(&self, reference: &str) -> Result<String, PullError> {
        let r: Reference = reference
            .parse()
            .map_err(|e| PullError::permanent(format!("`{reference}` is not an image reference: {e}")))?;
        self.client
            .fetch_manifest_digest(&r, &self.auth)
            .await
            .map_err(|e| PullError::from_oci(&format!("resolving {reference}"), e))
    }

    async fn manifest(&self, r: &Reference, what: &str) -> Result<Vec<u8>, PullError> {
        let digest = r.digest().unwrap_or_default().to_owned();
        let (bytes, _) = self
            .client
            .pull_manifest_raw(r, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| PullError::from_oci(&format!("pulling {what}"), e))?;
        if sha256(&bytes) != digest {
            return Err(PullError::permanent(format!(
                "{what}: the registry's manifest does not match its digest"
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Pulls the artifact or image `reference` (`host/repository@sha256:…`, by digest only)
    /// into `layout`, named `name`, verifying every byte against its digest. An image index
    /// (several platforms) is kept with the manifest of this machine's platform. Returns the
    /// digest pinned (the index's, for an index) and the bytes pulled.
    pub async fn pull(
        &self,
        reference: &str,
        layout: &Layout,
        name: &str,
    ) -> Result<(String, u64), PullError> {
        let r: Reference = reference
            .parse()
            .map_err(|e| PullError::permanent(format!("`{reference}` is not a reference: {e}")))?;
        if r.digest().is_none() {
            return Err(PullError::permanent(format!(
                "`{reference}` names no digest (`…@sha256:…`): a tag may move"
            )));
        }
        let top = self.manifest(&r, reference).await?;
        let (manifest, index) = match oci::platform_manifest(&top)
            .map_err(|e| PullError::permanent(format!("{reference}: {e}")))?
        {
            None => (top, None),
            Some(chosen) => {
                let pinned = Reference::with_digest(
                    r.registry().to_owned(),
                    r.repository().to_owned(),
                    chosen.clone(),
                );
                let what = format!("{reference} (platform manifest {chosen})");
                (self.manifest(&pinned, &what).await?, Some(top))
            }
        };
        let blobs = oci::blobs_of(&manifest).map_err(|e| PullError::permanent(e.to_string()))?;
        let mut contents = Vec::new();
        let mut size = manifest.len() as u64;
        for b in &blobs {
            let mut bytes = Vec::with_capacity(b.size as usize);
            self.client
                .pull_blob(&r, b.digest.as_str(), &mut bytes)
                .await
                .map_err(|e| PullError::from_oci(&format!("pulling {} of {reference}", b.digest), e))?;
            if sha256(&bytes) != b.digest {
                return Err(PullError::permanent(format!(
                    "{reference}: blob {} does not match its digest",
                    b.digest
                )));
            }
            size += bytes.len() as u64;
            contents.push(bytes);
        }
        let added = layout
            .add(&manifest, &contents, name)
            .map_err(|e| PullError::permanent(e.to_string()))?;
        match index {
            None => Ok((added, size)),
            Some(index) => {
                let at = layout
                    .add_index(&index, name)
                    .map_err(|e| PullError::permanent(e.to_string()))?;
                Ok((at, size + index.len() as u64))
            }
        }
    }
}

/// The manifests a pull accepts: OCI and Docker, single images and indexes.
const MANIFEST_TYPES: &[&str] = &[
    oci::MANIFEST_TYPE,
    oci::INDEX_TYPE,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Why a pull (or a resolve) failed, and whether trying again may help (the registry down or
/// overloaded) or not (no such image, a digest that does not match, no access).
#[derive(Debug, Clone, PartialEq)]
pub struct PullError {
    pub message: String,
    pub transient: bool,
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl PullError {
    pub fn permanent(message: String) -> PullError {
        PullError {
            message,
            transient: false,
        }
    }

    fn from_oci(what: &str, e: oci_client::errors::OciDistributionError) -> PullError {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode};
        let transient = match &e {
            E::RequestError(_) | E::IoError(_) => true,
            E::ServerError { code, .. } => *code >= 500 || *code == 429,
            E::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|x| matches!(x.code, OciErrorCode::Toomanyrequests)),
            _ => false,
        };
        PullError {
            message: format!("{what}: {e}"),
            transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_spoken_to_in_plain_http() {
        for h in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
            "ghcr.io",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn a_registry_is_a_host_and_a_namespace() {
        let r = Registry::new("127.0.0.1:5000", "team/apps", Credentials::Anonymous).unwrap();
        assert_eq!(r.repository("shop"), "127.0.0.1:5000/team/apps/shop");
        let r = Registry::new("https://ghcr.io/", "", Credentials::Anonymous).unwrap();
        assert_eq!(r.repository("shop"), "ghcr.io/shop");
        let e = Registry::new("ghcr.io/acme", "x", Credentials::Anonymous).unwrap_err();
        assert!(e.contains("not a registry host"), "{e}");
        let e = Registry::new("127.0.0.1:5000", "Bad Name", Credentials::Anonymous).unwrap_err();
        assert!(e.contains("not a repository name"), "{e}");
        assert_eq!(
            format!(
                "{:?}",
                Credentials::Basic {
                    username: "u".into(),
                    password: "secret".into()
                }
            ),
            "Basic(***)"
        );
    }
}

/// A throwaway OCI registry (Debian's `docker-registry`, the CNCF distribution) on a loopback
/// port with filesystem storage in a temporary directory, for the tests and the registry
/// benchmark. It can be stopped and started again on the same port and storage, as a registry
/// that went down and came back.
#[derive(Debug)]
pub struct TempRegistry {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl TempRegistry {
    /// Starts a registry on a free loopback port.
    pub fn start() -> Result<TempRegistry, String> {
        Self::start_with(None)
    }

    /// Starts a registry that asks for HTTP basic auth, checked against `htpasswd` (lines of
    /// `user:bcrypt-hash`).
    pub fn start_with_htpasswd(htpasswd: &str) -> Result<TempRegistry, String> {
        Self::start_with(Some(htpasswd))
    }

    fn start_with(htpasswd: Option<&str>) -> Result<TempRegistry, String> {
        let dir = tempfile::Builder::new()
            .prefix("autopilot-registry-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = crate::net::free_loopback().map_err(|e| e.to_string())?.port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some(lines) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, lines).map_err(|e| e.to_string())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: autopilot-test\n    path: {}\n",
                path.display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).map_err(|e| e.to_string())?;
        let mut r = TempRegistry {
            child: None,
            dir,
            port,
        };
        r.resume()?;
        Ok(r)
    }

    /// Restarts the registry (same port, same storage) sending its push notifications to `url`
    /// with `Authorization: Bearer TOKEN`, as an operator configures docker-registry to tell
    /// autopilot of new images.
    pub fn notify(&mut self, url: &str, token: &str) -> Result<(), String> {
        let path = self.dir.path().join("config.yml");
        let mut config = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        config.push_str(&format!(
            "notifications:\n  endpoints:\n    - name: autopilot\n      url: {url}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
        ));
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        self.resume()
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage, and waits until it answers.
    pub fn resume(&mut self) -> Result<(), String> {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("docker-registry (apt-get install docker-registry): {e}"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
                return Err(format!("docker-registry exited ({status}): {log}"));
            }
            if std::time::Instant::now() > deadline {
                return Err("docker-registry did not answer within 30 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for TempRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

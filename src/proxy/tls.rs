//! HTTPS for the proxy (rustls, through Pingora; no OpenSSL).
//!
//! Certificates come from PEM files, each for a set of names, chosen per connection by SNI
//! (exact names first, then a one-label wildcard such as `*.prod.example.test`). For the
//! embedded default, [`LocalCa`] keeps a certificate authority in a state folder, made at the
//! first start and reused, and signs a leaf certificate for the routes' host patterns at every
//! start, and one for any other environment or preview host at its first handshake (routes
//! added later): trust the CA once (`ca.pem`) and every environment and preview host validates.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One certificate and the names it serves.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Host names, exact or `*.` one-label wildcards.
    pub names: Vec<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate: {0}")]
    Certificate(String),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Builds a rustls certified key from PEM texts.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    use pingora::tls::CertificateDer as C;
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = C::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Certificate("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("reading the private key: {e}")))?;
    pingora::tls::install_default_crypto_provider();
    let provider =
        CryptoProvider::get_default().ok_or_else(|| TlsError::Certificate("no crypto provider".into()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Certificate(format!("unusable private key: {e}")))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Picks a certificate by SNI.
#[derive(Debug)]
pub struct SniResolver {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    on_demand: Option<OnDemand>,
}

/// Certificates the local CA signs when a handshake names a host under the domain that no
/// certificate covers yet: an environment or preview added after the start. Any well-formed
/// name gets one, routed or not, so that a handshake never tells which environments exist
/// (they must look alike down to the 404).
pub struct OnDemand {
    ca: LocalCa,
    /// The current base domain (routes may be reloaded).
    domain: Box<dyn Fn() -> String + Send + Sync>,
    /// Host pattern → certificate; starts over past [`ON_DEMAND_CACHE`] patterns.
    issued: std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand").finish_non_exhaustive()
    }
}

/// Patterns kept signed at most (memory stays bounded whatever names clients send).
const ON_DEMAND_CACHE: usize = 4096;

impl OnDemand {
    pub fn new(ca: LocalCa, domain: Box<dyn Fn() -> String + Send + Sync>) -> OnDemand {
        OnDemand {
            ca,
            domain,
            issued: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The certificate for `name` (lowercase) if it is `{service}.{environment}.{domain}` or
    /// `{release}.{service}.{environment}.{domain}`: one for its wildcard pattern, signed once.
    fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let domain = (self.domain)().trim_end_matches('.').to_ascii_lowercase();
        let prefix = name.strip_suffix(&domain)?.strip_suffix('.')?;
        let labels: Vec<&str> = prefix.split('.').collect();
        if !(2..=3).contains(&labels.len()) || !labels.iter().all(|l| crate::spec::is_dns_label(l)) {
            return None;
        }
        let pattern = format!("*.{}.{domain}", labels[1..].join("."));
        let mut issued = self.issued.lock().ok()?;
        if let Some(k) = issued.get(&pattern) {
            return Some(k.clone());
        }
        let (cert, key) = self.ca.issue(std::slice::from_ref(&pattern)).ok()?;
        let key = Arc::new(certified_key(&cert, &key).ok()?);
        if issued.len() >= ON_DEMAND_CACHE {
            issued.clear();
        }
        issued.insert(pattern, key.clone());
        Some(key)
    }
}

impl SniResolver {
    pub fn new(entries: Vec<(Vec<String>, Arc<CertifiedKey>)>) -> Self {
        SniResolver {
            entries,
            on_demand: None,
        }
    }

    /// Signs certificates for names no entry covers (the local CA).
    pub fn with_on_demand(mut self, on_demand: OnDemand) -> Self {
        self.on_demand = Some(on_demand);
        self
    }

    /// Loads certificates from files.
    pub fn from_files(files: &[CertFiles]) -> Result<Self, TlsError> {
        let mut entries = Vec::new();
        for f in files {
            let cert = std::fs::read_to_string(&f.cert).map_err(|e| file_err(&f.cert, e))?;
            let key = std::fs::read_to_string(&f.key).map_err(|e| file_err(&f.key, e))?;
            let ck = certified_key(&cert, &key).map_err(|e| file_err(&f.cert, e))?;
            entries.push((
                f.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                Arc::new(ck),
            ));
        }
        Ok(SniResolver::new(entries))
    }

    /// `other`'s entries first, then these (certificates configured from files win over the
    /// local CA's patterns).
    pub fn merged_after(mut self, other: SniResolver) -> SniResolver {
        let mut entries = other.entries;
        entries.append(&mut self.entries);
        SniResolver {
            entries,
            on_demand: self.on_demand.or(other.on_demand),
        }
    }

    /// The certificate for a server name: an exact match, else a one-label wildcard, else the
    /// first certificate.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            if let Some((_, k)) = self.entries.iter().find(|(names, _)| names.contains(&name)) {
                return Some(k.clone());
            }
            let parent = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            if let Some(w) = parent
                && let Some((_, k)) = self.entries.iter().find(|(names, _)| names.contains(&w))
            {
                return Some(k.clone());
            }
            if let Some(k) = self.on_demand.as_ref().and_then(|o| o.certificate(&name)) {
                return Some(k);
            }
        }
        self.entries.first().map(|(_, k)| k.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// A local certificate authority for the embedded default.
pub struct LocalCa {
    /// The CA certificate (PEM) clients trust.
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl LocalCa {
    /// Loads the CA from `dir` (`ca.pem`, `ca.key`), or makes and stores one.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let ca_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, e))?;
            let issuer =
                rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| file_err(&cert_path, e))?;
            return Ok(LocalCa { ca_pem, issuer });
        }
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "autopilot local CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let ca_pem = cert.pem();
        std::fs::write(&cert_path, &ca_pem).map_err(|e| file_err(&cert_path, e))?;
        write_private(&key_path, &key.serialize_pem())?;
        let issuer = rcgen::Issuer::new(params, key);
        Ok(LocalCa { ca_pem, issuer })
    }

    /// Signs a leaf certificate for `names`; returns (certificate chain PEM, key PEM).
    pub fn issue(&self, names: &[String]) -> Result<(String, String), TlsError> {
        let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok((format!("{}{}", cert.pem(), self.ca_pem), key.serialize_pem()))
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| file_err(path, e))
}

/// The names a leaf certificate needs for a domain's environments and previews:
/// `*.{environment}.{domain}` and `*.{service}.{environment}.{domain}`.
pub fn host_patterns(routes: &super::routes::RoutesFile) -> Vec<String> {
    let mut names = Vec::new();
    for r in &routes.routes {
        names.push(format!("*.{}.{}", r.environment, routes.domain));
        names.push(format!("*.{}.{}.{}", r.service, r.environment, routes.domain));
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_prefers_an_exact_name_then_a_wildcard_then_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let key = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let (c, k) = ca.issue(&names).unwrap();
            (names, Arc::new(certified_key(&c, &k).unwrap()))
        };
        let (a, b, c) = (
            key(&["*.prod.example.test"]),
            key(&["checkout.prod.example.test"]),
            key(&["*.staging.example.test"]),
        );
        let r = SniResolver::new(vec![a.clone(), b.clone(), c.clone()]);
        assert!(Arc::ptr_eq(
            &r.pick(Some("checkout.prod.example.test")).unwrap(),
            &b.1
        ));
        assert!(Arc::ptr_eq(
            &r.pick(Some("search.prod.example.test")).unwrap(),
            &a.1
        ));
        assert!(Arc::ptr_eq(
            &r.pick(Some("search.staging.example.test")).unwrap(),
            &c.1
        ));
        assert!(Arc::ptr_eq(&r.pick(None).unwrap(), &a.1));
    }

    #[test]
    fn the_local_ca_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::load_or_create(dir.path()).unwrap();
        let again = LocalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem, again.ca_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private");
        }
    }
}

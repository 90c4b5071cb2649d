//! Credentials at the proxy: an environment with `auth: required` needs a valid application
//! credential (an API key) *and* a valid user credential (a bearer JWT).
//!
//! # Guarantees
//! - A token is accepted only with an algorithm on the configured allow-list, which holds only
//!   asymmetric algorithms (no `none`, no HMAC: a shared secret on a proxy would let anyone who
//!   reads it mint tokens, and mixing HMAC with public keys is the classic confusion attack); the
//!   key named by `kid` must be of the algorithm's family; `iss`, `aud` and `exp` are required.
//! - API keys are stored as SHA-256 digests, never in clear.
//! - The caller learns nothing about environments it may not enter: without valid credentials
//!   every host answers the same 401; with valid credentials but no right to enter, the same 404
//!   as an environment that does not exist (see `server`).

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use crate::spec::routes::{AccessRule, AuthSettings, JwksSource, SignatureAlgorithm};

impl SignatureAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            SignatureAlgorithm::RS256 => Algorithm::RS256,
            SignatureAlgorithm::RS384 => Algorithm::RS384,
            SignatureAlgorithm::RS512 => Algorithm::RS512,
            SignatureAlgorithm::PS256 => Algorithm::PS256,
            SignatureAlgorithm::PS384 => Algorithm::PS384,
            SignatureAlgorithm::PS512 => Algorithm::PS512,
            SignatureAlgorithm::ES256 => Algorithm::ES256,
            SignatureAlgorithm::ES384 => Algorithm::ES384,
            SignatureAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl AccessRule {
    /// Empty rules admit every authenticated caller.
    pub fn admits(&self, id: &Identity) -> bool {
        if self.groups.is_empty() && self.claims.is_empty() {
            return true;
        }
        let by_group = self.groups.iter().any(|g| id.groups.contains(g));
        let by_claims = !self.claims.is_empty()
            && self
                .claims
                .iter()
                .all(|(k, v)| id.claims.get(k).and_then(|c| c.as_str()) == Some(v.as_str()));
        by_group || by_claims
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: Arc<str>,
    pub app: Arc<str>,
    /// Shared, so that a cached identity is cheap to hand out on every request.
    pub groups: Arc<Vec<String>>,
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Why credentials were refused (for logs; the caller only ever sees 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("no application credential")]
    NoAppCredential,
    #[error("unknown application credential")]
    UnknownApp,
    #[error("client token: {0}")]
    ClientToken(String),
    #[error("no bearer token")]
    NoToken,
    #[error("token: {0}")]
    Token(String),
}

/// `hex` (64 hex digits, either case) as 32 bytes.
fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Refuses header parameters this verifier does not honour: `crit` (RFC 7515 §4.1.11: an
/// extension the recipient does not understand makes the token invalid), and a `typ` other than
/// a JWT access token's (RFC 8725 §3.11: no token of another kind passes for one). `jku`,
/// `x5u`, `x5c` and `jwk` are never followed: keys come only from the configured JWKS.
fn check_header_parameters(token: &str) -> Result<(), Refused> {
    use base64::Engine as _;
    let first = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .map_err(|_| Refused::Token("the header is not base64url".into()))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|_| Refused::Token("the header is not a JSON object".into()))?;
    if header.contains_key("crit") {
        return Err(Refused::Token(
            "critical header extensions (`crit`) are not supported".into(),
        ));
    }
    if let Some(typ) = header.get("typ") {
        let ok = typ
            .as_str()
            .map(|t| t.to_ascii_lowercase())
            .is_some_and(|t| matches!(t.as_str(), "jwt" | "at+jwt" | "application/at+jwt"));
        if !ok {
            return Err(Refused::Token(format!("`typ` {typ} is not a JWT access token")));
        }
    }
    Ok(())
}

/// Why a JWKS key must not verify signatures, if it must not: a key published for encryption,
/// a shared secret (`oct`: in a public key set, anyone could sign with it), an RSA modulus under
/// 2048 bits, EC coordinates of the wrong size for the curve, a key type not known here.
fn unusable(jwk: &jsonwebtoken::jwk::Jwk) -> Option<String> {
    use base64::Engine as _;
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, PublicKeyUse};
    let len = |b64: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()
            .map(|b| b.iter().skip_while(|x| **x == 0).count())
    };
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Some("its `use` is not `sig`".into());
    }
    match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            Some("a shared secret (`oct`) has no place in a public key set".into())
        }
        AlgorithmParameters::RSA(rsa) => match len(&rsa.n) {
            Some(bytes) if bytes * 8 >= 2048 => None,
            Some(bytes) => Some(format!(
                "an RSA key of {} bits; at least 2048 are needed",
                bytes * 8
            )),
            None => Some("its RSA modulus is not base64url".into()),
        },
        AlgorithmParameters::EllipticCurve(ec) => {
            let size = match ec.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                EllipticCurve::P521 => 66,
                _ => return Some("an EC key on a curve not used for signatures here".into()),
            };
            // leading zero bytes may be dropped by some encoders: never longer, never empty
            match (len(&ec.x), len(&ec.y)) {
                (Some(x), Some(y)) if (1..=size).contains(&x) && (1..=size).contains(&y) => None,
                _ => Some("EC coordinates of the wrong size for its curve".into()),
            }
        }
        AlgorithmParameters::OctetKeyPair(_) => None,
        _ => Some("a key type not known here".into()),
    }
}

/// Clock skew tolerated on `exp`/`nbf` between the issuer and the proxy.
const CLOCK_SKEW_SECS: u64 = 30;

/// Verified tokens kept for reuse, at most this many (then the cache starts over): a
/// signature check costs far more than proxying a request, and clients send the same token
/// many times.
const TOKEN_CACHE_SIZE: usize = 10_000;

/// The longest bearer token looked at: a real one is well under 2 KiB; a larger one is refused
/// before any decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Hashes a token by its length and its last [`TailHash::BYTES`] bytes (SipHash, with a random
/// key, as the standard map does), not all of it: a JWT ends in its signature, which is all
/// but unique, and hashing half a kilobyte of token on every request cost more than the rest of
/// the lookup. Still exact: a hit compares the whole token. Nor can it be aimed at: only tokens
/// whose signature verified are stored, and their tails are those signatures.
#[derive(Default, Clone)]
struct TailHash(std::hash::RandomState);

impl TailHash {
    const BYTES: usize = 32;
}

impl std::hash::BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(std::hash::DefaultHasher);

impl std::hash::Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(TailHash::BYTES)..];
        self.0.write(tail);
        self.0.write_usize(bytes.len());
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// A configured header name, parsed, or what is wrong with it and where.
fn header_name(name: &str, at: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{at}: `{name}` is not a header name"))
}

/// Verified tokens: identity, `nbf`, `exp`.
type TokenCache = HashMap<Box<str>, (Identity, u64, u64), TailHash>;

/// Verifies credentials; built from the settings and the JWKS (a JWKS change builds a new one,
/// which also drops the cache).
pub struct Authenticator {
    settings: AuthSettings,
    keys: HashMap<String, DecodingKey>,
    /// SHA-256 of an API key → its application.
    apps: HashMap<[u8; 32], Arc<str>>,
    /// A verified token → its identity, `nbf` and `exp`. Re-verifying the same bytes gives the
    /// same answer but for time, so the validity window is checked again on a hit. Keyed by the
    /// token itself, hashed by its tail ([`TailHash`]): a digest of it cost more than the rest
    /// of the lookup, on every request.
    verified: std::sync::RwLock<TokenCache>,
    /// Told when a token names a key not in the set (a fetched JWKS may be out of date).
    pub unknown_key: Option<Arc<tokio::sync::Notify>>,
    /// The credential headers' names (parsed once: a look-up by a parsed name skips parsing it
    /// on every request).
    api_key_header: http::HeaderName,
    client_token_header: http::HeaderName,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("apps", &self.apps.len())
            .finish()
    }
}

impl Authenticator {
    /// Builds from settings, reading a JWKS file relative to `base`; a JWKS URL's keys are
    /// `fetched` (none yet: every token is refused until the first fetch succeeds).
    pub fn load(
        settings: &AuthSettings,
        base: &Path,
        fetched: Option<&JwkSet>,
    ) -> Result<Authenticator, String> {
        match settings.jwks_source(base) {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
                Authenticator::new(settings, &set)
            }
            JwksSource::Url(_) => {
                Authenticator::new(settings, fetched.unwrap_or(&JwkSet { keys: Vec::new() }))
            }
        }
    }

    pub fn new(settings: &AuthSettings, set: &JwkSet) -> Result<Authenticator, String> {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or("a JWKS key without `kid`")?;
            // one unusable key must not take the provider's other keys down with it
            if let Some(why) = unusable(jwk) {
                tracing::warn!(%kid, "JWKS key ignored: {why}");
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key `{kid}`: {e}"))?;
            keys.insert(kid, key);
        }
        let mut apps = HashMap::new();
        for (app, digest) in &settings.api_keys {
            let digest = digest_from_hex(digest)
                .ok_or_else(|| format!("auth.apiKeys.{app}: not a SHA-256 digest (64 hex digits)"))?;
            apps.insert(digest, Arc::from(app.as_str()));
        }
        Ok(Authenticator {
            settings: settings.clone(),
            keys,
            apps,
            verified: std::sync::RwLock::new(HashMap::default()),
            unknown_key: None,
            api_key_header: header_name(&settings.api_key_header, "auth.apiKeyHeader")?,
            client_token_header: header_name(&settings.client_token_header, "auth.clientTokenHeader")?,
        })
    }

    /// The header carrying the API key.
    pub fn api_key_header(&self) -> &http::HeaderName {
        &self.api_key_header
    }

    /// The header carrying a client token.
    pub fn client_token_header(&self) -> &http::HeaderName {
        &self.client_token_header
    }

    /// The application behind a client token.
    fn client_app(&self, token: &str) -> Result<Arc<str>, Refused> {
        let id = self
            .verified_token(token)
            .map_err(|e| Refused::ClientToken(e.to_string()))?;
        let app = id
            .claims
            .get(&self.settings.client_claim)
            .and_then(|c| c.as_str())
            .ok_or_else(|| Refused::ClientToken(format!("no `{}` claim", self.settings.client_claim)))?;
        if !self.settings.clients.iter().any(|c| c == app) {
            return Err(Refused::UnknownApp);
        }
        Ok(Arc::from(app))
    }

    /// Checks an application credential (an API key, or else a client token) and a bearer
    /// token (the `Authorization` header's value).
    pub fn verify_with_client(
        &self,
        api_key: Option<&str>,
        client_token: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Identity, Refused> {
        match (
            api_key.filter(|k| !k.is_empty()),
            client_token.filter(|t| !t.is_empty()),
        ) {
            (None, Some(t)) => {
                let app = self.client_app(t)?;
                let user = self.user(authorization)?;
                Ok(Identity { app, ..user })
            }
            _ => self.verify(api_key, authorization),
        }
    }

    /// Checks an API key and a bearer token (the `Authorization` header's value).
    pub fn verify(&self, api_key: Option<&str>, authorization: Option<&str>) -> Result<Identity, Refused> {
        let key = api_key
            .filter(|k| !k.is_empty())
            .ok_or(Refused::NoAppCredential)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let app = self.apps.get(&digest).cloned().ok_or(Refused::UnknownApp)?;
        let user = self.user(authorization)?;
        Ok(Identity { app, ..user })
    }

    /// The user behind a bearer token.
    fn user(&self, authorization: Option<&str>) -> Result<Identity, Refused> {
        let token = authorization
            .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refused::NoToken)?;
        self.verified_token(token)
    }

    /// A verified token's identity, from the cache when this exact token was verified before.
    fn verified_token(&self, token: &str) -> Result<Identity, Refused> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some((id, nbf, exp)) = self
            .verified
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            && *nbf <= now + CLOCK_SKEW_SECS
            && *exp > now
        {
            return Ok(id.clone());
        }
        let identity = self.verify_token(token)?;
        let exp = identity.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
        let nbf = identity.claims.get("nbf").and_then(|e| e.as_u64()).unwrap_or(0);
        let mut cache = self
            .verified
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= TOKEN_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(Box::from(token), (identity.clone(), nbf, exp));
        Ok(identity)
    }

    /// Checks a bearer token's signature and claims.
    fn verify_token(&self, token: &str) -> Result<Identity, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::Token(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        check_header_parameters(token)?;
        let header = decode_header(token).map_err(|e| Refused::Token(e.to_string()))?;
        let allowed: Vec<Algorithm> = self.settings.algorithms.iter().map(|a| a.jwt()).collect();
        if !allowed.contains(&header.alg) {
            return Err(Refused::Token(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let kid = header.kid.ok_or_else(|| Refused::Token("no `kid`".into()))?;
        let key = self.keys.get(&kid).ok_or_else(|| {
            if let Some(n) = &self.unknown_key {
                n.notify_one();
            }
            Refused::Token(format!("unknown key `{kid}`"))
        })?;
        if key.family() != header.alg.family() {
            return Err(Refused::Token(
                "the key does not belong to the token's algorithm".into(),
            ));
        }
        // exactly the token's algorithm: it is on the allow-list and matches the key's family
        // (jsonwebtoken refuses a validation whose algorithms span several families)
        let validation_alg = header.alg;
        let mut validation = Validation::new(validation_alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = CLOCK_SKEW_SECS;
        // a token is valid from `nbf` (jsonwebtoken checks it only when asked)
        validation.validate_nbf = true;
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)
            .map_err(|e| Refused::Token(e.to_string()))?;
        let claims = data.claims;
        let user = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned();
        let groups = claims
            .get(&self.settings.groups_claim)
            .and_then(|g| g.as_array())
            .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok(Identity {
            user: user.into(),
            app: Arc::from(""),
            groups: Arc::new(groups),
            claims: Arc::new(claims),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(algorithms: Vec<SignatureAlgorithm>) -> AuthSettings {
        AuthSettings {
            issuer: "iss".into(),
            audience: "aud".into(),
            algorithms,
            jwks: String::new(),
            jwks_refresh: "5m".parse().unwrap(),
            jwks_ca: None,
            api_keys: BTreeMap::from([(
                "app".into(),
                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            )]),
            api_key_header: "x-api-key".into(),
            client_token_header: "x-client-token".into(),
            client_claim: "client_id".into(),
            clients: vec!["billing-job".into()],
            groups_claim: "groups".into(),
        }
    }

    #[test]
    fn api_keys_are_checked_by_digest_and_missing_credentials_say_which() {
        let a = Authenticator::new(
            &settings(vec![SignatureAlgorithm::ES256]),
            &JwkSet { keys: vec![] },
        )
        .unwrap();
        assert_eq!(a.verify(None, Some("Bearer x")), Err(Refused::NoAppCredential));
        assert_eq!(a.verify(Some("bar"), Some("Bearer x")), Err(Refused::UnknownApp));
        // sha256("foo") is the digest above
        assert_eq!(a.verify(Some("foo"), None), Err(Refused::NoToken));
        assert!(matches!(
            a.verify(Some("foo"), Some("Bearer a.b.c")),
            Err(Refused::Token(_))
        ));
    }

    #[test]
    fn an_api_key_digest_that_is_not_one_is_refused_with_its_place() {
        let mut bad = settings(vec![SignatureAlgorithm::ES256]);
        bad.api_keys.insert("ops".into(), "not-hex".into());
        let err = Authenticator::new(&bad, &JwkSet { keys: vec![] }).unwrap_err();
        assert_eq!(err, "auth.apiKeys.ops: not a SHA-256 digest (64 hex digits)");
        // upper-case hex is the same digest
        let mut upper = settings(vec![SignatureAlgorithm::ES256]);
        for d in upper.api_keys.values_mut() {
            *d = d.to_ascii_uppercase();
        }
        let a = Authenticator::new(&upper, &JwkSet { keys: vec![] }).unwrap();
        assert_eq!(a.verify(Some("foo"), None), Err(Refused::NoToken));
    }

    #[test]
    fn unusable_jwks_keys_are_left_out_and_the_good_ones_kept() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let (x, y) = (b64.encode(&raw[1..33]), b64.encode(&raw[33..65]));
        let mut modulus = vec![0xc5u8; 128];
        modulus[127] |= 1;
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "good", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "for-encryption", "use": "enc", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "long-x", "x": b64.encode([7u8; 40]), "y": y},
            {"kty": "oct", "kid": "secret", "k": b64.encode(b"anyone can sign with this")},
            {"kty": "RSA", "kid": "rsa-1024", "n": b64.encode(&modulus), "e": "AQAB"},
        ]}))
        .unwrap();
        let a = Authenticator::new(
            &settings(vec![SignatureAlgorithm::ES256, SignatureAlgorithm::RS256]),
            &set,
        )
        .unwrap();
        let kept: Vec<&String> = a.keys.keys().collect();
        assert_eq!(kept, ["good"], "only the usable key");
        let why = |i: usize| unusable(&set.keys[i]).unwrap();
        assert!(why(1).contains("`use`"));
        assert!(why(2).contains("wrong size"));
        assert!(why(3).contains("shared secret"));
        assert_eq!(why(4), "an RSA key of 1024 bits; at least 2048 are needed");
    }

    /// Regression: an allow-list mixing families (ES256 + RS256) once made every token fail,
    /// since jsonwebtoken refuses a validation spanning several key families.
    /// An authenticator trusting one new P-256 key (kid `k`) for `algorithms`, and that key's
    /// signature of `claims`.
    fn es256_signed(
        algorithms: Vec<SignatureAlgorithm>,
        claims: serde_json::Value,
    ) -> (Authenticator, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k", "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])
        }]}))
        .unwrap();
        let a = Authenticator::new(&settings(algorithms), &set).unwrap();
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some("k".into());
        let t = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&kp.serialize_der()),
        )
        .unwrap();
        (a, t)
    }

    fn in_a_minute() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60
    }

    #[test]
    fn a_mixed_family_allow_list_still_verifies() {
        let claims = serde_json::json!({"sub": "ann", "iss": "iss", "aud": "aud", "exp": in_a_minute()});
        let (a, t) = es256_signed(vec![SignatureAlgorithm::RS256, SignatureAlgorithm::ES256], claims);
        assert_eq!(
            &*a.verify(Some("foo"), Some(&format!("Bearer {t}"))).unwrap().user,
            "ann"
        );
    }

    #[test]
    fn a_cached_token_s_signature_on_other_claims_is_refused() {
        // the cache hashes a token by its tail, the signature: a forgery that keeps a cached
        // token's signature lands in its bucket, and must still be compared whole
        let claims = serde_json::json!({"sub": "ann", "iss": "iss", "aud": "aud", "exp": in_a_minute()});
        let (a, t) = es256_signed(vec![SignatureAlgorithm::ES256], claims);
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(&*a.verify(Some("foo"), Some(&bearer(&t))).unwrap().user, "ann");
        let (head, rest) = t.split_once('.').unwrap();
        let signature = rest.split_once('.').unwrap().1;
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::json!({"sub": "mallory", "iss": "iss", "aud": "aud", "exp": in_a_minute()})
                .to_string(),
        );
        let forged = format!("{head}.{payload}.{signature}");
        assert!(signature.len() >= TailHash::BYTES, "the tails are the same");
        assert!(matches!(
            a.verify(Some("foo"), Some(&bearer(&forged))),
            Err(Refused::Token(_))
        ));
        // and the real one is still served from the cache
        assert_eq!(&*a.verify(Some("foo"), Some(&bearer(&t))).unwrap().user, "ann");
        assert_eq!(a.verified.read().unwrap().len(), 1, "the forgery was not cached");
    }
}

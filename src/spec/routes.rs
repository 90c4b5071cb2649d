//! The proxy's routes file (`kind: Routes`): where each release of each service and
//! environment runs, how traffic splits, and how callers are verified. The format lives here
//! with the other kinds; the proxy (`crate::proxy`) builds its route table and authenticator
//! from it.

use super::ApiVersion;
use super::units::{ByteSize, Percent, Weight};
use super::yaml::{Seg, recover_vec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// The routes file: where each release of each service and environment runs, and how traffic
/// splits. The controller writes it (or sets the same through the admin API); people may too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutesFile {
    /// Version of this file format. Always `autopilot/v1`.
    pub api_version: ApiVersion,
    /// What this file declares. Always `Routes`.
    pub kind: RoutesKind,
    /// The base domain: `{service}.{environment}.{domain}` reaches an environment,
    /// `{release}.{service}.{environment}.{domain}` one release of it.
    pub domain: String,
    /// Peers (exact IP addresses) whose forwarding headers are kept and extended; from anyone
    /// else they are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The forwarding headers set on every request sent upstream: `x-forwarded`
    /// (`X-Forwarded-For`, `-Proto` and `-Host`, what nginx, Envoy and most frameworks read)
    /// and `forwarded` (RFC 7239). Default: `[x-forwarded]`. A family left out is still removed
    /// from the requests of callers other than trusted proxies, so an upstream never reads a
    /// spoofed one.
    #[serde(default = "default_forwarding_headers")]
    pub forwarding_headers: Vec<ForwardingHeaders>,
    /// How callers of `auth: required` environments are verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSettings>,
    /// One entry per service and environment.
    #[serde(deserialize_with = "recover_vec")]
    pub routes: Vec<RouteSpec>,
}

impl RoutesFile {
    /// A routes file for `domain` with these routes (no auth settings, no trusted proxies).
    pub fn new(domain: &str, routes: Vec<RouteSpec>) -> RoutesFile {
        RoutesFile {
            api_version: ApiVersion::V1,
            kind: RoutesKind::Routes,
            domain: domain.to_owned(),
            trusted_proxies: Vec::new(),
            forwarding_headers: default_forwarding_headers(),
            auth: None,
            routes,
        }
    }

    /// What the parser cannot see: names that are not DNS labels (they become host names),
    /// a stable or canary release without upstreams listed, one service and environment named
    /// twice. Every problem, each with its place (`routes[1].canary`).
    pub fn check(&self) -> Result<(), String> {
        let problems: Vec<String> = self
            .problems()
            .into_iter()
            .map(|(path, message)| {
                let mut text = String::new();
                for seg in &path {
                    match seg {
                        Seg::Key(k) if text.is_empty() => text.push_str(k),
                        Seg::Key(k) => {
                            text.push('.');
                            text.push_str(k);
                        }
                        Seg::Index(i) => text.push_str(&format!("[{i}]")),
                    }
                }
                format!("{text}: {message}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The problems [`RoutesFile::check`] reports, each with the path of the value at fault
    /// (for `autopilot validate`, which turns it into file:line:column).
    pub fn problems(&self) -> Vec<(Vec<Seg>, String)> {
        use crate::spec::is_dns_label;
        let key = |k: &str| Seg::Key(k.to_owned());
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = |rest: &[&str]| {
                let mut path = vec![key("routes"), Seg::Index(i)];
                path.extend(rest.iter().map(|k| key(k)));
                path
            };
            for (field, name) in [("service", &r.service), ("environment", &r.environment)] {
                if !is_dns_label(name) {
                    problems.push((
                        at(&[field]),
                        format!("`{name}` is not a DNS label (lowercase letters, digits, `-`)"),
                    ));
                }
            }
            for name in r.releases.keys() {
                if !is_dns_label(name) {
                    problems.push((
                        at(&["releases", name]),
                        format!("`{name}` is not a DNS label (it becomes the preview host name)"),
                    ));
                }
            }
            for (field, name) in [("stable", &r.stable), ("canary", &r.canary)] {
                if let Some(name) = name
                    && !r.releases.contains_key(name)
                {
                    problems.push((at(&[field]), format!("release `{name}` is not among `releases`")));
                }
            }
            if r.mirror.is_some() && r.canary.is_none() {
                problems.push((
                    at(&["mirror"]),
                    "copies go to the route's `canary`, and it names none".to_owned(),
                ));
            }
            if let Some(seg) = &r.segment {
                problems.extend(seg.problems().into_iter().map(|(rest, m)| {
                    let mut path = at(&["segment"]);
                    path.extend(rest);
                    (path, m)
                }));
                if r.canary.is_none() {
                    problems.push((
                        at(&["segment"]),
                        "the segment is split with the route's `canary`, and it names none".to_owned(),
                    ));
                }
            }
            if !seen.insert((r.service.as_str(), r.environment.as_str())) {
                problems.push((
                    at(&[]),
                    format!("`{}` in `{}` is routed twice", r.service, r.environment),
                ));
            }
        }
        if let Some(auth) = &self.auth {
            for (field, name) in [
                ("apiKeyHeader", &auth.api_key_header),
                ("clientTokenHeader", &auth.client_token_header),
            ] {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push((
                        vec![key("auth"), key(field)],
                        format!("`{name}` is not a header name"),
                    ));
                }
            }
        }
        if let Some(auth) = &self.auth
            && (auth.jwks.starts_with("http://") || auth.jwks.starts_with("https://"))
        {
            let at = vec![key("auth"), key("jwks")];
            match reqwest::Url::parse(&auth.jwks) {
                Err(e) => problems.push((at, format!("`{}` is not a URL: {e}", auth.jwks))),
                Ok(url) if url.scheme() == "http" => {
                    let loopback = match url.host() {
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        Some(url::Host::Domain(d)) => d == "localhost",
                        None => false,
                    };
                    if !loopback {
                        problems.push((
                            at,
                            format!(
                                "`{}`: keys over plain http only from loopback; use https",
                                auth.jwks
                            ),
                        ));
                    }
                }
                Ok(_) => {}
            }
        }
        problems
    }
}

/// A family of forwarding headers (`forwardingHeaders`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardingHeaders {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    XForwarded,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

fn default_forwarding_headers() -> Vec<ForwardingHeaders> {
    vec![ForwardingHeaders::XForwarded]
}

/// The `kind` of a routes file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RoutesKind {
    Routes,
}

/// One service in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub service: String,
    pub environment: String,
    /// The release serving the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The release being rolled out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// The canary's share of traffic, 0–100.
    #[serde(default = "zero")]
    pub weight: Weight,
    /// Keep each user on one side: hash this header's or cookie's value into buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Upstream addresses per release.
    pub releases: BTreeMap<String, Vec<SocketAddr>>,
    /// `required`: callers need an application and a user credential (the default: closed).
    #[serde(default)]
    pub auth: crate::spec::objectives::Auth,
    /// Who may enter, with `auth: required` (default: every authenticated caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AccessRule>,
    /// Pass the credentials the proxy verified (API key, client token, `Authorization`) on to
    /// the releases (default: removed; the verified identity headers say who called).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_credentials: bool,
    /// How long an upstream may stay silent while its answer is due (between reads) before the
    /// request fails with 504 and counts against its release (default 60s, as nginx's
    /// `proxy_read_timeout`): a hung release shows up in its metrics instead of holding
    /// requests forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::spec::units::Duration>,
    /// The path probed on this route's upstreams (2xx: ready); default: the proxy's
    /// `--probe-path`. Services whose readiness paths differ need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
    /// Shadow traffic: copies of live requests served by `stable` are also sent to `canary`,
    /// whose answers are discarded and whose statuses and latencies count as the canary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// A/B: requests matching the segment's rule are split between `canary` and `stable`
    /// before the weight applies to everyone else; each side's segment requests are counted
    /// apart (`segment` label), so the judge compares the segment's canary with the segment's
    /// stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<Segment>,
}

/// A/B by request attributes: the requests that match `match` (any one rule) form the
/// segment; `share` of them go to the canary, the rest stay on stable as the canary's
/// baseline. Everyone outside the segment is routed by the weight as usual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Segment {
    /// The segment's name: the `segment` label of its requests' metrics.
    #[serde(default = "default_segment_name")]
    pub name: String,
    /// A request is in the segment when any of these rules matches it.
    #[serde(rename = "match", deserialize_with = "recover_vec")]
    pub rules: Vec<Attribute>,
    /// The segment's share sent to the canary (below 100%: the rest is the baseline the canary
    /// is judged against). A caller keeps its side when the route is sticky.
    #[serde(default = "half")]
    pub share: Percent,
}

impl Segment {
    /// What the parser cannot see: a segment that matches nothing, a share that leaves no
    /// baseline or sends nobody, a name that is not a label value people can type. Each with
    /// its path below the segment.
    pub fn problems(&self) -> Vec<(Vec<Seg>, String)> {
        let key = |k: &str| Seg::Key(k.to_owned());
        let mut problems = Vec::new();
        if self.rules.is_empty() {
            problems.push((
                vec![key("match")],
                "no rule: the segment would be empty".to_owned(),
            ));
        }
        let share = self.share.fraction();
        if share <= 0.0 {
            problems.push((
                vec![key("share")],
                "a share of 0% sends the canary nobody".to_owned(),
            ));
        } else if share >= 1.0 {
            problems.push((
                vec![key("share")],
                "a share of 100% leaves the segment no stable requests to judge the canary against"
                    .to_owned(),
            ));
        }
        if !crate::spec::is_dns_label(&self.name) {
            problems.push((
                vec![key("name")],
                format!(
                    "`{}` is not a DNS label (lowercase letters, digits, `-`)",
                    self.name
                ),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let nv = match rule {
                Attribute::Header(nv) | Attribute::Cookie(nv) | Attribute::Claim(nv) => nv,
            };
            if nv.name.trim().is_empty() {
                problems.push((vec![key("match"), Seg::Index(i)], "the name is empty".to_owned()));
            }
        }
        problems
    }

    /// Does a request with these attributes belong to the segment?
    pub fn matches(
        &self,
        header: Lookup<String>,
        cookie: Lookup<String>,
        claim: Lookup<serde_json::Value>,
    ) -> bool {
        self.rules.iter().any(|rule| rule.matches(header, cookie, claim))
    }
}

fn default_segment_name() -> String {
    "ab".to_owned()
}

fn half() -> Percent {
    Percent(0.5)
}

/// One rule of a segment: a header, a cookie, or a claim of the caller's verified token equals
/// a value. Header names are case-insensitive; values are compared exactly. A claim that is a
/// list (e.g. `groups`) matches when it contains the value; a number or a boolean matches its
/// text. Claims are known only where the environment has `auth: required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Attribute {
    Header(NameValue),
    Cookie(NameValue),
    Claim(NameValue),
}

/// A name and the value it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// Looks up a request's header (by lowercase name), cookie or verified claim.
pub type Lookup<'a, T> = &'a dyn Fn(&str) -> Option<T>;

impl Attribute {
    pub fn matches(
        &self,
        header: Lookup<String>,
        cookie: Lookup<String>,
        claim: Lookup<serde_json::Value>,
    ) -> bool {
        match self {
            Attribute::Header(nv) => header(&nv.name.to_ascii_lowercase()).is_some_and(|v| v == nv.value),
            Attribute::Cookie(nv) => cookie(&nv.name).is_some_and(|v| v == nv.value),
            Attribute::Claim(nv) => claim(&nv.name).is_some_and(|v| claim_has(&v, &nv.value)),
        }
    }
}

/// Does a claim's value equal `want` (a list: contain it)?
fn claim_has(v: &serde_json::Value, want: &str) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|i| claim_has(i, want)),
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        Value::Null | Value::Object(_) => false,
    }
}

/// Copies of live requests sent to a release that serves no user: its answers are discarded,
/// its statuses and latencies counted as its own. A copy is made after the live request is
/// answered and sent by a worker of its own, so mirroring never slows or fails a live request;
/// when that worker is behind, copies are dropped (and counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// The share of eligible live requests copied (`100%`: every one).
    pub share: Percent,
    /// Requests with a larger body, or a body of unknown length, are not copied.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Only requests with these methods are copied. The default is the safe methods (`GET`,
    /// `HEAD`, `OPTIONS`): a copied write would be written twice, once by each release. List
    /// `POST`, `PUT`, `PATCH` or `DELETE` only for a release whose writes go nowhere real.
    #[serde(default = "safe_methods", deserialize_with = "recover_vec")]
    pub methods: Vec<Method>,
}

impl Mirror {
    /// Every safe request, bodies up to the default size.
    pub fn all_safe_requests() -> Mirror {
        Mirror {
            share: Percent(1.0),
            max_body: default_max_body(),
            methods: safe_methods(),
        }
    }
}

fn default_max_body() -> ByteSize {
    ByteSize(64 * 1024)
}

fn safe_methods() -> Vec<Method> {
    vec![Method::GET, Method::HEAD, Method::OPTIONS]
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Method {
    GET,
    HEAD,
    OPTIONS,
    POST,
    PUT,
    PATCH,
    DELETE,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
        }
    }
}

/// The cookie that, like the `x-canary` header (which wins), sends a caller to the canary
/// (`always`) or keeps it on stable (`never`).
pub const CANARY_COOKIE: &str = "canary";

/// The upstream silence a route allows unless it says otherwise.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn zero() -> Weight {
    Weight(0)
}

/// Where the stickiness key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

/// Applies the objectives' access rules (`auth`, `allow`) to the routes of the environments they
/// declare; returns a warning per route whose service or environment the objectives lack.
pub fn apply_access(routes: &mut RoutesFile, catalog: &crate::spec::Catalog) -> Vec<String> {
    let mut warnings = Vec::new();
    for r in &mut routes.routes {
        let env = catalog
            .services
            .get(&r.service)
            .and_then(|s| s.environments.iter().find(|e| e.name == r.environment));
        match env {
            Some(env) => {
                r.auth = env.auth;
                r.pass_credentials = env.pass_credentials;
                r.allow = env.allow.as_ref().map(|a| AccessRule {
                    groups: a.groups.clone(),
                    claims: a.claims.clone(),
                });
            }
            None => warnings.push(format!(
                "routes for {}/{} have no environment in the objectives; their own `auth` applies",
                r.service, r.environment
            )),
        }
    }
    warnings
}

/// The `auth:` section of a routes file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSettings {
    /// The token issuer that must appear in `iss`.
    pub issuer: String,
    /// The audience that must appear in `aud`.
    pub audience: String,
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<SignatureAlgorithm>,
    /// The issuer's public keys (JWKS): a file (relative to the routes file), re-read when it
    /// changes, or an `https://` URL (`http://` only on loopback), fetched at start, every
    /// `jwksRefresh`, and at once (at most every 10 s) when a token names a key it does not
    /// know (key rotation). A failed fetch keeps the keys last fetched.
    pub jwks: String,
    /// How often a JWKS URL is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: crate::spec::units::Duration,
    /// A PEM file of CA certificates to trust for the JWKS URL instead of the system's (an
    /// in-house identity provider); relative to the routes file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca: Option<String>,
    /// Application credentials: application name → SHA-256 (hex) of its API key.
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
    /// The header carrying the API key.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Applications may instead present a client JWT (client-credentials grant, same issuer,
    /// audience and keys) in this header; the claim named by `clientClaim` names the application,
    /// which must be listed in `clients`.
    #[serde(default = "default_client_token_header")]
    pub client_token_header: String,
    /// The client token claim naming the application.
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Applications allowed to authenticate with a client token.
    #[serde(default)]
    pub clients: Vec<String>,
    /// The token claim listing the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_jwks_refresh() -> crate::spec::units::Duration {
    crate::spec::units::Duration(std::time::Duration::from_secs(300))
}

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(std::path::PathBuf),
    Url(String),
}

impl AuthSettings {
    /// The JWKS source, a path resolved against `base`.
    pub fn jwks_source(&self, base: &Path) -> JwksSource {
        if self.jwks.starts_with("https://") || self.jwks.starts_with("http://") {
            JwksSource::Url(self.jwks.clone())
        } else {
            JwksSource::File(base.join(&self.jwks))
        }
    }
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

fn default_client_token_header() -> String {
    "x-client-token".into()
}

fn default_client_claim() -> String {
    "client_id".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Asymmetric JWT signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SignatureAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Who may enter an environment (from the objectives' `allow`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// Members of any of these groups may enter.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Callers whose token has all these claims with these values may enter.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_header_names_must_be_header_names() {
        let file: RoutesFile = crate::spec::parse_document(
            "routes.yaml",
            "apiVersion: autopilot/v1\nkind: Routes\ndomain: example.test\nauth:\n  issuer: https://id.example.test\n  audience: a\n  algorithms: [ES256]\n  jwks: jwks.json\n  apiKeyHeader: \"x api key\"\nroutes: []\n",
        )
        .unwrap();
        assert_eq!(
            file.check().unwrap_err(),
            "auth.apiKeyHeader: `x api key` is not a header name"
        );
    }
}

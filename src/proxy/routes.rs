//! The proxy's routing: which release, and which upstream of it, serves a request.
//!
//! The route table is an immutable snapshot; the proxy holds it in an `ArcSwap` and a change
//! (a routes file reload, an admin API call) builds a new snapshot and swaps it in. Requests
//! read the current snapshot without locks. Health and metrics live in `Arc`s that a new
//! snapshot takes over from the old one, so they survive every swap.
//!
//! The decision itself ([`RouteTable::choose`]) is a plain function of the snapshot, the
//! request's host, headers and cookies, and a random draw: tested without a network.

use crate::control::traffic::{self, Arm, BUCKETS};
pub use crate::spec::routes::*;
use crate::spec::units::Weight;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// An upstream's health, shared by every snapshot that lists it.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Set by the active readiness probe; a new upstream starts not ready.
    pub ready: AtomicBool,
    /// Consecutive failed connections (passive detection); reset by a passing probe.
    pub failures: AtomicUsize,
}

impl Upstream {
    fn new(addr: SocketAddr) -> Self {
        Upstream {
            addr,
            ready: AtomicBool::new(false),
            failures: AtomicUsize::new(0),
        }
    }

    /// Ready and not failing.
    pub fn usable(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.failures.load(Ordering::Relaxed) < PASSIVE_FAILURE_LIMIT
    }
}

/// After this many consecutive connection failures an upstream gets no traffic until its probe
/// passes again (one failure may be a blip; a dead process fails every time).
pub const PASSIVE_FAILURE_LIMIT: usize = 2;

/// One release's upstreams in one environment.
#[derive(Debug)]
pub struct ReleaseRoute {
    pub release: String,
    /// The release as a response header value (made once, shared by every response).
    pub header_value: http::HeaderValue,
    /// The route's upstream timeout.
    pub timeout: std::time::Duration,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Round-robin position.
    next: AtomicU64,
    pub metrics: Arc<super::metrics::ReleaseMetrics>,
}

impl ReleaseRoute {
    /// A release with no upstreams, for tests.
    #[cfg(test)]
    pub fn for_tests(release: &str) -> ReleaseRoute {
        ReleaseRoute {
            release: release.to_owned(),
            header_value: http::HeaderValue::from_static("test"),
            timeout: DEFAULT_TIMEOUT,
            upstreams: Vec::new(),
            next: AtomicU64::new(0),
            metrics: Default::default(),
        }
    }

    /// A usable upstream, round-robin, skipping `tried`.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.usable() && !tried.contains(&u.addr))
            .cloned()
    }
}

/// One service and environment in a snapshot.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    pub environment: String,
    pub stable: Option<String>,
    pub canary: Option<String>,
    pub weight: Weight,
    pub sticky: Option<Sticky>,
    pub releases: BTreeMap<String, Arc<ReleaseRoute>>,
    pub auth: crate::spec::objectives::Auth,
    pub allow: super::auth::AccessRule,
    /// The caller's verified credentials go on to the releases (default: removed).
    pub pass_credentials: bool,
    /// The readiness path of this route's upstreams, if not the proxy's default.
    pub readiness: Option<String>,
    /// Copies of live requests to the canary (shadow traffic), if the route mirrors.
    pub mirror: Option<MirrorRoute>,
    /// The A/B segment split between canary and stable before the weight, if any.
    pub segment: Option<SegmentRoute>,
    /// Identifies the rollout for sticky bucketing: a new canary reshuffles, a weight change
    /// does not.
    rollout_id: String,
}

/// A route's mirror, ready for the request path.
#[derive(Debug)]
pub struct MirrorRoute {
    pub to: Arc<ReleaseRoute>,
    /// A request is copied when its draw (in `0..BUCKETS`) is below this.
    pub below: u32,
    pub max_body: u64,
    pub methods: Vec<http::Method>,
}

impl MirrorRoute {
    fn build(spec: &Mirror, to: Arc<ReleaseRoute>) -> MirrorRoute {
        MirrorRoute {
            to,
            below: (spec.share.fraction().clamp(0.0, 1.0) * f64::from(BUCKETS)).round() as u32,
            max_body: spec.max_body.0,
            methods: spec
                .methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.as_str().as_bytes()).ok())
                .collect(),
        }
    }
}

/// A route's A/B segment, ready for the request path.
#[derive(Debug)]
pub struct SegmentRoute {
    pub spec: Segment,
    /// A segment request goes to the canary when its bucket (in `0..BUCKETS`) is below this.
    pub below: u32,
    /// Per release of the route: the metrics of the segment's requests it serves (labelled
    /// `segment`; they are not in the release's other series).
    pub metrics: BTreeMap<String, Arc<super::metrics::ReleaseMetrics>>,
}

/// An immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub domain: String,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// By `{service}.{environment}` (lowercase).
    pub routes: HashMap<String, Route>,
    /// The forwarding headers set on requests sent upstream.
    pub forwarding: Families,
    /// Verifies credentials; `None` refuses every `auth: required` request.
    pub authenticator: Option<Arc<super::auth::Authenticator>>,
}

/// What the host name names: `[{release}.]{service}.{environment}`, borrowed from the host
/// (copied only when it has capitals: this runs on every request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// `[{release}.]{service}.{environment}`, lowercase.
    name: Cow<'a, str>,
    /// Where `{service}.{environment}` starts in `name` (0 without a release).
    key_at: usize,
}

impl Target<'_> {
    /// The release the host names, if it names one.
    pub fn release(&self) -> Option<&str> {
        (self.key_at > 0).then(|| &self.name[..self.key_at - 1])
    }

    /// `{service}.{environment}`: the route's key in the table.
    pub fn key(&self) -> &str {
        &self.name[self.key_at..]
    }
}

/// The route table's key of a service and environment.
fn route_key(service: &str, environment: &str) -> String {
    format!(
        "{}.{}",
        service.to_ascii_lowercase(),
        environment.to_ascii_lowercase()
    )
}

/// Parses `{service}.{environment}.{domain}` or `{release}.{service}.{environment}.{domain}`
/// (a port and a trailing dot are ignored; case-insensitive).
pub fn parse_host<'a>(host: &'a str, domain: &str) -> Option<Target<'a>> {
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let (host, domain) = (host.trim_end_matches('.'), domain.trim_end_matches('.'));
    let cut = host.len().checked_sub(domain.len())?;
    let (prefix, suffix) = (host.get(..cut)?, host.get(cut..)?);
    if !suffix.eq_ignore_ascii_case(domain) {
        return None;
    }
    let prefix = prefix.strip_suffix('.')?;
    let name: Cow<str> = if prefix.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(prefix.to_ascii_lowercase())
    } else {
        Cow::Borrowed(prefix)
    };
    let key_at = match name.bytes().filter(|b| *b == b'.').count() {
        1 => 0,
        2 => name.find('.')? + 1,
        _ => return None,
    };
    Some(Target { name, key_at })
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Send it to this release; a request of the route's A/B segment is counted in the
    /// segment's metrics (`segment`) instead of the release's own.
    Release {
        release: Arc<ReleaseRoute>,
        segment: Option<Arc<super::metrics::ReleaseMetrics>>,
    },
    /// No such service, environment or release (or, later, not allowed to see it).
    NotFound,
    /// The release exists but none of its upstreams is ready.
    Unavailable { release: String },
}

/// What the split looks at in a request.
pub struct RequestFacts<'a> {
    pub host: &'a str,
    /// `x-canary: always|never`.
    pub canary_header: Option<&'a str>,
    /// Looks up a header by (lowercase) name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// Looks up a cookie by name.
    pub cookie: &'a dyn Fn(&str) -> Option<String>,
    /// Looks up a claim of the caller's verified token (none without `auth: required`).
    pub claim: &'a dyn Fn(&str) -> Option<serde_json::Value>,
    /// A uniform random draw in `0..BUCKETS` for requests without a sticky key.
    pub draw: u32,
}

impl RouteTable {
    /// Builds a snapshot from a routes file, taking over health and metrics from `previous`
    /// for upstreams and releases it already knew.
    pub fn build(
        file: &RoutesFile,
        previous: Option<&RouteTable>,
        registry: &super::metrics::Registry,
    ) -> RouteTable {
        // one upstream per address, shared by every route naming it (the prober probes each
        // address once and marks that one ready: a second copy would never be)
        let mut known_upstreams: HashMap<SocketAddr, Arc<Upstream>> = previous
            .into_iter()
            .flat_map(|t| t.routes.values())
            .flat_map(|r| r.releases.values())
            .flat_map(|rel| rel.upstreams.iter())
            .map(|u| (u.addr, u.clone()))
            .collect();
        let mut routes = HashMap::new();
        for spec in &file.routes {
            let mut releases = BTreeMap::new();
            for (release, addrs) in &spec.releases {
                let upstreams = addrs
                    .iter()
                    .map(|a| {
                        known_upstreams
                            .entry(*a)
                            .or_insert_with(|| Arc::new(Upstream::new(*a)))
                            .clone()
                    })
                    .collect();
                releases.insert(
                    release.clone(),
                    Arc::new(ReleaseRoute {
                        timeout: spec.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
                        header_value: http::HeaderValue::from_str(release)
                            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
                        release: release.clone(),
                        upstreams,
                        next: AtomicU64::new(0),
                        metrics: registry.release(&spec.service, &spec.environment, release),
                    }),
                );
            }
            let segment = spec
                .segment
                .as_ref()
                .filter(|_| spec.canary.is_some())
                .map(|s| SegmentRoute {
                    spec: s.clone(),
                    below: (s.share.fraction().clamp(0.0, 1.0) * f64::from(BUCKETS)).round() as u32,
                    metrics: spec
                        .releases
                        .keys()
                        .map(|r| {
                            let m = registry.segment(&spec.service, &spec.environment, r, &s.name);
                            (r.clone(), m)
                        })
                        .collect(),
                });
            let mirror = match (&spec.mirror, &spec.canary) {
                (Some(m), Some(canary)) => releases.get(canary).map(|to| MirrorRoute::build(m, to.clone())),
                _ => None,
            };
            routes.insert(
                route_key(&spec.service, &spec.environment),
                Route {
                    mirror,
                    segment,
                    rollout_id: format!(
                        "{}/{}/{}/{}",
                        spec.service,
                        spec.environment,
                        spec.stable.as_deref().unwrap_or("-"),
                        spec.canary.as_deref().unwrap_or("-")
                    ),
                    service: spec.service.clone(),
                    environment: spec.environment.clone(),
                    stable: spec.stable.clone(),
                    canary: spec.canary.clone(),
                    weight: spec.weight,
                    sticky: spec.sticky.clone(),
                    releases,
                    auth: spec.auth,
                    allow: spec.allow.clone().unwrap_or_default(),
                    pass_credentials: spec.pass_credentials,
                    readiness: spec.readiness.clone(),
                },
            );
        }
        RouteTable {
            domain: file.domain.clone(),
            trusted_proxies: file.trusted_proxies.clone(),
            forwarding: Families::of(&file.forwarding_headers),
            routes,
            authenticator: None,
        }
    }

    /// Every upstream in the snapshot with the path that tells it is ready (its route's, else
    /// `default`), for the health prober.
    pub fn probe_targets(&self, default: &str) -> Vec<(Arc<Upstream>, String)> {
        let mut v: Vec<(Arc<Upstream>, String)> = self
            .routes
            .values()
            .flat_map(|r| {
                let path = r.readiness.clone().unwrap_or_else(|| default.to_owned());
                r.releases.values().flat_map(move |rel| {
                    rel.upstreams
                        .iter()
                        .map(|u| (u.clone(), path.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        v.sort_by_key(|(u, _)| u.addr);
        v.dedup_by_key(|(u, _)| u.addr);
        v
    }

    /// Every upstream in the snapshot (for the health prober).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut v: Vec<Arc<Upstream>> = self
            .routes
            .values()
            .flat_map(|r| r.releases.values())
            .flat_map(|rel| rel.upstreams.iter().cloned())
            .collect();
        v.sort_by_key(|u| u.addr);
        v.dedup_by_key(|u| u.addr);
        v
    }

    /// Which release serves this request. Matches first (`x-canary: always|never`, else a
    /// `canary` cookie with the same values), then the A/B segment (its share of it to the
    /// canary), then, for everyone else, stickiness, then the random draw against the weight.
    pub fn choose(&self, req: &RequestFacts) -> Decision {
        let Some(target) = parse_host(req.host, &self.domain) else {
            return Decision::NotFound;
        };
        match self.route(&target) {
            Some(route) => Self::choose_in(&target, route, req),
            None => Decision::NotFound,
        }
    }

    /// The route a host names, if any.
    pub fn route(&self, target: &Target) -> Option<&Route> {
        self.routes.get(target.key())
    }

    /// [`RouteTable::choose`] for a host already parsed and looked up.
    pub fn choose_in(target: &Target, route: &Route, req: &RequestFacts) -> Decision {
        let (release, in_segment) = match target.release() {
            Some(r) => (route.releases.get(r), false),
            None => {
                let (name, in_segment) = Self::split(route, req);
                (name.and_then(|r| route.releases.get(r)), in_segment)
            }
        };
        let Some(release) = release else {
            return Decision::NotFound;
        };
        if !release.upstreams.iter().any(|u| u.usable()) {
            return Decision::Unavailable {
                release: release.release.clone(),
            };
        }
        let segment = route
            .segment
            .as_ref()
            .filter(|_| in_segment)
            .and_then(|s| s.metrics.get(&release.release).cloned());
        Decision::Release {
            release: release.clone(),
            segment,
        }
    }

    /// The release a request is split to, and whether it came by the A/B segment.
    fn split<'r>(route: &'r Route, req: &RequestFacts) -> (Option<&'r str>, bool) {
        let (stable, canary) = (route.stable.as_deref(), route.canary.as_deref());
        // the header, else the cookie (the conventions of nginx-ingress canaries); anything
        // other than `always`/`never` is ignored
        let forced = |v: &str| {
            let v = v.trim();
            if v.eq_ignore_ascii_case("always") {
                Some(Arm::Canary)
            } else if v.eq_ignore_ascii_case("never") {
                Some(Arm::Stable)
            } else {
                None
            }
        };
        let forced = req
            .canary_header
            .and_then(forced)
            .or_else(|| (req.cookie)(CANARY_COOKIE).as_deref().and_then(forced));
        let bucket = || {
            let key = route.sticky.as_ref().and_then(|s| match s {
                Sticky::Header(h) => (req.header)(&h.to_ascii_lowercase()),
                Sticky::Cookie(c) => (req.cookie)(c),
            });
            match key {
                Some(k) => traffic::bucket(&route.rollout_id, &k),
                None => req.draw % BUCKETS,
            }
        };
        let mut in_segment = false;
        let arm = if let Some(arm) = forced {
            arm
        } else if let Some(seg) = &route.segment
            && seg.spec.matches(req.header, req.cookie, req.claim)
        {
            in_segment = true;
            if bucket() < seg.below {
                Arm::Canary
            } else {
                Arm::Stable
            }
        } else {
            traffic::arm(bucket(), route.weight)
        };
        let chosen = match arm {
            Arm::Canary => canary.or(stable),
            Arm::Stable => stable.or(canary),
        };
        (chosen, in_segment)
    }
}

/// The forwarding-header families a route table sets (`forwardingHeaders`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// `Forwarded` (RFC 7239).
    pub forwarded: bool,
}

impl Families {
    pub fn of(list: &[ForwardingHeaders]) -> Families {
        Families {
            x_forwarded: list.contains(&ForwardingHeaders::XForwarded),
            forwarded: list.contains(&ForwardingHeaders::Forwarded),
        }
    }
}

impl Default for Families {
    /// As a routes file that does not say.
    fn default() -> Families {
        Families {
            x_forwarded: true,
            forwarded: false,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn each_route_is_probed_on_its_own_readiness_path() {
        let mut a = RouteSpec {
            service: "a".into(),
            environment: "dev".into(),
            stable: Some("v1".into()),
            canary: None,
            weight: Weight(0),
            sticky: None,
            releases: [("v1".to_owned(), vec!["127.0.0.1:9001".parse().unwrap()])].into(),
            auth: crate::spec::objectives::Auth::None,
            allow: None,
            pass_credentials: false,
            timeout: None,
            readiness: Some("/ready".into()),
            mirror: None,
            segment: None,
        };
        let mut b = a.clone();
        b.service = "b".into();
        b.readiness = None;
        b.releases = [("v1".to_owned(), vec!["127.0.0.1:9002".parse().unwrap()])].into();
        a.releases
            .get_mut("v1")
            .unwrap()
            .push("127.0.0.1:9003".parse().unwrap());
        let table = RouteTable::build(&RoutesFile::new("x.test", vec![a, b]), None, &Default::default());
        let targets: Vec<(u16, String)> = table
            .probe_targets("/healthz")
            .into_iter()
            .map(|(u, p)| (u.addr.port(), p))
            .collect();
        assert_eq!(
            targets,
            vec![
                (9001, "/ready".into()),
                (9002, "/healthz".into()),
                (9003, "/ready".into())
            ]
        );
    }
    use super::*;

    fn table(weight: u8, sticky: Option<Sticky>) -> RouteTable {
        let file = RoutesFile::new(
            "example.test",
            vec![RouteSpec {
                service: "checkout".into(),
                environment: "prod".into(),
                stable: Some("v1".into()),
                canary: Some("v2".into()),
                weight: Weight(weight),
                sticky,
                releases: BTreeMap::from([
                    ("v1".into(), vec!["127.0.0.1:1001".parse().unwrap()]),
                    ("v2".into(), vec!["127.0.0.1:1002".parse().unwrap()]),
                ]),
                auth: crate::spec::objectives::Auth::None,
                allow: None,
                pass_credentials: false,
                timeout: None,
                readiness: None,
                mirror: None,
                segment: None,
            }],
        );
        let t = RouteTable::build(&file, None, &super::super::metrics::Registry::default());
        for u in t.upstreams() {
            u.ready.store(true, Ordering::Relaxed);
        }
        t
    }

    fn choose(t: &RouteTable, host: &str, canary: Option<&str>, user: Option<&str>, draw: u32) -> String {
        choose_with_cookie(t, host, canary, None, user, draw)
    }

    fn choose_with_cookie(
        t: &RouteTable,
        host: &str,
        canary: Option<&str>,
        canary_cookie: Option<&str>,
        user: Option<&str>,
        draw: u32,
    ) -> String {
        let user = user.map(str::to_owned);
        let header = move |h: &str| if h == "x-user" { user.clone() } else { None };
        let jar = canary_cookie.map(str::to_owned);
        let cookie = move |c: &str| if c == CANARY_COOKIE { jar.clone() } else { None };
        match t.choose(&RequestFacts {
            host,
            canary_header: canary,
            header: &header,
            cookie: &cookie,
            claim: &|_| None,
            draw,
        }) {
            Decision::Release { release, .. } => release.release.clone(),
            Decision::NotFound => "404".into(),
            Decision::Unavailable { .. } => "503".into(),
        }
    }

    #[test]
    fn the_objectives_access_rules_apply_to_their_routes() {
        let catalog = crate::spec::load(&[
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("objectives"),
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sensors"),
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("controllers"),
        ])
        .map_err(|_| ())
        .unwrap();
        let mut file = RoutesFile::new("example.test", vec![]);
        for (svc, env) in [
            ("checkout", "dev"),
            ("checkout", "staging"),
            ("inventory", "prod"),
        ] {
            file.routes.push(RouteSpec {
                service: svc.into(),
                environment: env.into(),
                stable: None,
                canary: None,
                weight: Weight(0),
                sticky: None,
                releases: BTreeMap::new(),
                auth: crate::spec::objectives::Auth::Required,
                allow: None,
                pass_credentials: false,
                timeout: None,
                readiness: None,
                mirror: None,
                segment: None,
            });
        }
        let warnings = apply_access(&mut file, &catalog);
        assert_eq!(
            file.routes[0].auth,
            crate::spec::objectives::Auth::None,
            "checkout/dev is public"
        );
        assert_eq!(file.routes[1].allow.as_ref().unwrap().groups, ["shop-engineers"]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("inventory/prod"));
    }

    #[test]
    fn a_routes_file_names_every_problem_with_its_place() {
        let mut file = RoutesFile::new("example.test", vec![table_spec(), table_spec()]);
        assert!(
            RoutesFile::new("example.test", vec![table_spec()])
                .check()
                .is_ok()
        );
        file.routes[0].canary = Some("v9".into());
        file.routes[1].releases.insert("V 2".into(), vec![]);
        file.routes[1].environment = "Prod".into();
        let err = file.check().unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            [
                "routes[0].canary: release `v9` is not among `releases`",
                "routes[1].environment: `Prod` is not a DNS label (lowercase letters, digits, `-`)",
                "routes[1].releases.V 2: `V 2` is not a DNS label (it becomes the preview host name)",
            ],
            "{err}"
        );
        let twice = RoutesFile::new("example.test", vec![table_spec(), table_spec()]);
        assert_eq!(
            twice.check().unwrap_err(),
            "routes[1]: `checkout` in `prod` is routed twice"
        );
    }

    fn table_spec() -> RouteSpec {
        RouteSpec {
            service: "checkout".into(),
            environment: "prod".into(),
            stable: Some("v1".into()),
            canary: None,
            weight: Weight(0),
            sticky: None,
            releases: [("v1".to_owned(), vec!["127.0.0.1:1".parse().unwrap()])].into(),
            auth: crate::spec::objectives::Auth::None,
            allow: None,
            pass_credentials: false,
            timeout: None,
            readiness: None,
            mirror: None,
            segment: None,
        }
    }

    #[test]
    fn hosts_name_a_service_environment_and_maybe_a_release() {
        let t = |r: Option<&str>, s: &str, e: &str| Some((r.map(str::to_owned), format!("{s}.{e}")));
        let parse_host = |host, domain| {
            parse_host(host, domain).map(|t| (t.release().map(str::to_owned), t.key().to_owned()))
        };
        assert_eq!(
            parse_host("checkout.prod.example.test", "example.test"),
            t(None, "checkout", "prod")
        );
        assert_eq!(
            parse_host("Checkout.Prod.Example.Test:8443", "example.test"),
            t(None, "checkout", "prod")
        );
        assert_eq!(
            parse_host("v2.checkout.prod.example.test.", "example.test"),
            t(Some("v2"), "checkout", "prod")
        );
        assert_eq!(parse_host("prod.example.test", "example.test"), None);
        assert_eq!(parse_host("checkout.prod.evil.test", "example.test"), None);
        assert_eq!(parse_host("a.b.c.d.example.test", "example.test"), None);
        // the domain must start at a label: `prodexample.test` is not under `example.test`
        assert_eq!(parse_host("shop.prodexample.test", "example.test"), None);
        assert_eq!(parse_host("example.test", "example.test"), None);
        assert_eq!(parse_host("shop.prod.exämple.test", "example.test"), None);
        assert_eq!(parse_host("checkout.prodexample.test", "example.test"), None);
    }

    #[test]
    fn headers_first_then_stickiness_then_the_draw() {
        let t = table(0, Some(Sticky::Header("x-user".into())));
        assert_eq!(
            choose(&t, "checkout.prod.example.test", Some("always"), None, 0),
            "v2"
        );
        assert_eq!(
            choose(&t, "checkout.prod.example.test", None, None, 0),
            "v1",
            "weight 0: no canary"
        );
        let t = table(100, None);
        assert_eq!(
            choose(&t, "checkout.prod.example.test", Some("never"), None, 0),
            "v1"
        );
        assert_eq!(choose(&t, "checkout.prod.example.test", None, None, 9_999), "v2");
        // the cookie, when no header says otherwise; the header wins; other values are ignored
        let host = "checkout.prod.example.test";
        assert_eq!(
            choose_with_cookie(&t, host, None, Some("never"), None, 9_999),
            "v1"
        );
        let zero = table(0, None);
        for (header, cookie, want) in [
            (None, Some("Always"), "v2"),
            (Some("never"), Some("always"), "v1"),
            (None, Some("maybe"), "v1"),
            (Some("maybe"), Some("always"), "v2"),
        ] {
            assert_eq!(
                choose_with_cookie(&zero, host, header, cookie, None, 0),
                want,
                "x-canary {header:?}, cookie {cookie:?}"
            );
        }
        // a preview host reaches one release directly
        assert_eq!(
            choose(&table(0, None), "v2.checkout.prod.example.test", None, None, 0),
            "v2"
        );
        assert_eq!(
            choose(&table(0, None), "v9.checkout.prod.example.test", None, None, 0),
            "404"
        );
        assert_eq!(
            choose(&table(0, None), "billing.prod.example.test", None, None, 0),
            "404"
        );
    }

    #[test]
    fn sticky_users_stay_on_the_canary_as_the_weight_grows() {
        let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let on_canary = |w: u8| -> Vec<bool> {
            let t = table(w, Some(Sticky::Header("x-user".into())));
            users
                .iter()
                .map(|u| choose(&t, "checkout.prod.example.test", None, Some(u), 0) == "v2")
                .collect()
        };
        let (at10, at50) = (on_canary(10), on_canary(50));
        assert!(at10.iter().zip(&at50).all(|(a, b)| !a || *b));
        let share = at50.iter().filter(|x| **x).count() as f64 / users.len() as f64;
        assert!((share - 0.5).abs() < 0.05, "{share}");
    }

    #[test]
    fn a_release_without_a_ready_upstream_is_unavailable() {
        let t = table(100, None);
        for u in t.upstreams() {
            u.ready.store(false, Ordering::Relaxed);
        }
        assert_eq!(choose(&t, "checkout.prod.example.test", None, None, 0), "503");
    }

    #[test]
    fn a_new_snapshot_keeps_health_of_known_upstreams_and_starts_new_ones_unready() {
        let reg = super::super::metrics::Registry::default();
        let t1 = table(10, None);
        let mut file = RoutesFile::new("example.test", vec![]);
        file.routes.push(RouteSpec {
            releases: BTreeMap::from([(
                "v1".into(),
                vec![
                    "127.0.0.1:1001".parse().unwrap(),
                    "127.0.0.1:1003".parse().unwrap(),
                ],
            )]),
            ..table_spec()
        });
        let t2 = RouteTable::build(&file, Some(&t1), &reg);
        let ups = t2.upstreams();
        assert!(ups[0].usable(), "kept its health");
        assert!(!ups[1].usable(), "new: not ready until probed");
    }

    fn segment_table(share: &str) -> RouteTable {
        let mut spec = table_spec_with_segment();
        spec.sticky = Some(Sticky::Header("x-user".into()));
        spec.segment = Some(Segment {
            name: "staff".into(),
            rules: vec![
                Attribute::Claim(NameValue {
                    name: "groups".into(),
                    value: "staff".into(),
                }),
                Attribute::Claim(NameValue {
                    name: "level".into(),
                    value: "3".into(),
                }),
            ],
            share: share.parse().unwrap(),
        });
        let file = RoutesFile::new("example.test", vec![spec]);
        let t = RouteTable::build(&file, None, &super::super::metrics::Registry::default());
        for u in t.upstreams() {
            u.ready.store(true, Ordering::Relaxed);
        }
        t
    }

    /// (release, counted in the segment) for a caller with these claims.
    fn choose_by_claims(
        t: &RouteTable,
        claims: serde_json::Value,
        forced: Option<&str>,
        draw: u32,
    ) -> (String, bool) {
        let claims = claims.as_object().unwrap().clone();
        let claim = move |name: &str| claims.get(name).cloned();
        match t.choose(&RequestFacts {
            host: "checkout.prod.example.test",
            canary_header: forced,
            header: &|_| None,
            cookie: &|_| None,
            claim: &claim,
            draw,
        }) {
            Decision::Release { release, segment } => (release.release.clone(), segment.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_segment_is_split_by_its_share_before_the_weight_and_counted_apart() {
        use serde_json::json;
        let t = segment_table("30%");
        let below = BUCKETS * 3 / 10;
        // a list claim contains the value; a number matches its text
        for claims in [json!({"groups": ["shop", "staff"]}), json!({"level": 3})] {
            assert_eq!(
                choose_by_claims(&t, claims.clone(), None, below - 1),
                ("v2".into(), true)
            );
            assert_eq!(choose_by_claims(&t, claims, None, below), ("v1".into(), true));
        }
        // outside the segment: the weight (0), and not counted in the segment's series
        for claims in [
            json!({"groups": ["shop"]}),
            json!({"groups": "staffing"}),
            json!({"level": 4}),
            json!({}),
        ] {
            assert_eq!(choose_by_claims(&t, claims, None, 0), ("v1".into(), false));
        }
        // `x-canary` still wins, and is not the segment's evidence
        assert_eq!(
            choose_by_claims(&t, json!({"groups": ["staff"]}), Some("never"), 0),
            ("v1".into(), false)
        );
        assert_eq!(
            choose_by_claims(&t, json!({}), Some("always"), 0),
            ("v2".into(), false)
        );
    }

    #[test]
    fn a_segment_needs_a_canary_to_split_with() {
        let mut file = RoutesFile::new("example.test", Vec::new());
        let mut spec = table_spec_with_segment();
        spec.canary = None;
        file.routes.push(spec);
        let err = file.check().unwrap_err();
        assert!(
            err.contains("routes[0].segment: the segment is split with the route's `canary`"),
            "{err}"
        );
    }

    fn table_spec_with_segment() -> RouteSpec {
        RouteSpec {
            canary: Some("v2".into()),
            releases: BTreeMap::from([
                ("v1".into(), vec!["127.0.0.1:1001".parse().unwrap()]),
                ("v2".into(), vec!["127.0.0.1:1002".parse().unwrap()]),
            ]),
            segment: Some(Segment {
                name: "ab".into(),
                rules: vec![Attribute::Header(NameValue {
                    name: "x-staff".into(),
                    value: "1".into(),
                })],
                share: "50%".parse().unwrap(),
            }),
            ..table_spec()
        }
    }
}

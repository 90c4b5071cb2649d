//! The proxy's shared state: the routing snapshot (swapped whole, read without a lock), the
//! routes it was built from, the metrics registry, and the authenticator with its keys.

use super::auth::{Authenticator, JwksSource};
use super::metrics::Registry;
use super::routes::{RouteSpec, RouteTable, RoutesFile};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use pingora::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// State shared by the proxy, the prober, the reloader and the admin API.
pub struct Shared {
    pub table: ArcSwap<RouteTable>,
    pub registry: Registry,
    /// The routes as last loaded or set (the source of the snapshot).
    pub routes: Mutex<RoutesFile>,
    /// Where paths in the routes file (the JWKS) start.
    pub(super) base: PathBuf,
    /// Access rules from the objectives, applied to every routes change.
    pub(super) access: Option<Arc<crate::spec::Catalog>>,
    pub(super) draws: AtomicU64,
    /// The key set last fetched from a JWKS URL, with the URL.
    pub(super) fetched_jwks: Mutex<Option<(String, JwkSet)>>,
    /// Raised when a token names a key the current set lacks.
    pub(super) unknown_key: Arc<tokio::sync::Notify>,
    /// Sends copies of live requests to mirrored releases (its worker starts on first use).
    pub(super) mirror: super::mirror::Mirror,
}

impl Shared {
    pub fn new(
        mut routes: RoutesFile,
        base: PathBuf,
        access: Option<Arc<crate::spec::Catalog>>,
    ) -> Result<Arc<Shared>, String> {
        if let Some(catalog) = &access {
            for w in super::routes::apply_access(&mut routes, catalog) {
                tracing::warn!("{w}");
            }
        }
        let registry = Registry::default();
        routes.check()?;
        let unknown_key = Arc::new(tokio::sync::Notify::new());
        let mut table = RouteTable::build(&routes, None, &registry);
        table.authenticator = authenticator(&routes, &base, None, &unknown_key)?;
        Ok(Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            registry,
            routes: Mutex::new(routes),
            base,
            access,
            draws: AtomicU64::new(0x9e37_79b9),
            fetched_jwks: Mutex::new(None),
            unknown_key,
            mirror: Default::default(),
        }))
    }

    /// Replaces the routes and swaps in a new snapshot (health and metrics carried over). On
    /// an error (an unreadable JWKS) nothing changes.
    pub fn set_routes(&self, mut routes: RoutesFile) -> Result<(), String> {
        routes.check()?;
        if let Some(catalog) = &self.access {
            super::routes::apply_access(&mut routes, catalog);
        }
        let mut current = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.table.load_full();
        let mut table = RouteTable::build(&routes, Some(&previous), &self.registry);
        let fetched = self
            .fetched_jwks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fetched = fetched.as_ref().and_then(|(url, set)| {
            routes
                .auth
                .as_ref()
                .is_some_and(|a| &a.jwks == url)
                .then_some(set)
        });
        table.authenticator = authenticator(&routes, &self.base, fetched, &self.unknown_key)?;
        self.table.store(Arc::new(table));
        *current = routes;
        Ok(())
    }

    /// Rebuilds the snapshot from the current routes (after the JWKS changed).
    pub fn refresh(&self) -> Result<(), String> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.set_routes(routes)
    }

    /// Upserts one service/environment route.
    pub fn set_route(&self, route: RouteSpec) -> Result<(), String> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        routes
            .routes
            .retain(|r| !(r.service == route.service && r.environment == route.environment));
        routes.routes.push(route);
        self.set_routes(routes)
    }

    /// The JWKS file the routes name, if any.
    pub(super) fn jwks_path(&self) -> Option<PathBuf> {
        match self.jwks_source()? {
            JwksSource::File(path) => Some(path),
            JwksSource::Url(_) => None,
        }
    }

    pub(super) fn jwks_source(&self) -> Option<JwksSource> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.auth.as_ref().map(|a| a.jwks_source(&self.base))
    }

    /// A cheap, well-mixed draw in `0..BUCKETS` (splitmix64 over a counter).
    pub(super) fn draw(&self) -> u32 {
        let mut z = self.draws.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % u64::from(crate::control::traffic::BUCKETS)) as u32
    }
}

pub(super) fn authenticator(
    routes: &RoutesFile,
    base: &std::path::Path,
    fetched: Option<&JwkSet>,
    unknown_key: &Arc<tokio::sync::Notify>,
) -> Result<Option<Arc<Authenticator>>, String> {
    match &routes.auth {
        None => Ok(None),
        Some(settings) => {
            let mut a = Authenticator::load(settings, base, fetched)?;
            a.unknown_key = Some(unknown_key.clone());
            Ok(Some(Arc::new(a)))
        }
    }
}

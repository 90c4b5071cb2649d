//! The proxy's background work, on the admin thread's runtime: the readiness prober, the JWKS
//! fetcher and the routes-file reloader.

use super::auth::{Authenticator, JwksSource};
use super::routes::RoutesFile;
use super::state::Shared;
use jsonwebtoken::jwk::JwkSet;
use pingora::prelude::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

/// Probes one upstream's readiness path: a 2xx within the timeout is ready.
/// One readiness probe over HTTP/1.1 (hyper's client): 2xx within 800 ms is ready.
async fn probe(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "autopilot-probe")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        // the connection is driven beside the request, and dropped with it (no task outlives a
        // probe of an upstream that never answers); if it ends first (an upstream that answers
        // and closes), the answer it read is still there to take
        let response = sender.send_request(request);
        tokio::pin!(response);
        let response = tokio::select! {
            response = &mut response => response,
            _ = conn => response.await,
        };
        Some(response.ok()?.status().is_success())
    };
    tokio::time::timeout(Duration::from_millis(800), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

pub(super) async fn probe_loop(
    shared: Arc<Shared>,
    every: Duration,
    path: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let targets = shared.table.load().probe_targets(&path);
        let upstreams: Vec<_> = targets.iter().map(|(u, _)| u.clone()).collect();
        // probed together, so one dead upstream does not delay the others
        let mut probes = tokio::task::JoinSet::new();
        for (i, (u, path)) in targets.into_iter().enumerate() {
            let addr = u.addr;
            probes.spawn(async move { (i, probe(addr, &path).await) });
        }
        while let Some(Ok((i, ok))) = probes.join_next().await {
            upstreams[i].ready.store(ok, Ordering::Relaxed);
            if ok {
                upstreams[i].failures.store(0, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reloads the routes file when it changes; a broken file is reported and the old routes stay.
/// How long a start waits for the first fetch of a JWKS URL.
pub(super) const FIRST_FETCH_WAIT: Duration = Duration::from_secs(10);
/// A token naming an unknown key fetches the JWKS again at most this often.
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(10);

/// Keeps a JWKS URL's keys fresh: fetched at start, every `jwksRefresh`, at once when the URL
/// changes, and (rate-limited) when a token names a key the set lacks. A failure keeps the
/// last good keys and retries with a doubling delay (1 s up to the refresh period).
pub(super) async fn jwks_loop(
    shared: Arc<Shared>,
    first: std::sync::mpsc::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut first = Some(first);
    let mut next = Instant::now();
    let mut last = None::<Instant>;
    // the URL last tried: a new one (a routes change) is fetched at once
    let mut tried: Option<String> = None;
    let mut backoff = Duration::from_secs(1);
    let mut unknown_key = false;
    // one HTTP client (and its connection pool) for every fetch, rebuilt when the CA changes
    let mut client: Option<JwksClient> = None;
    loop {
        let settings = shared
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .auth
            .clone();
        let url = settings.as_ref().and_then(|a| match a.jwks_source(&shared.base) {
            JwksSource::Url(u) => Some(u),
            JwksSource::File(_) => None,
        });
        if let (Some(settings), Some(url)) = (settings, url) {
            let rotated = unknown_key && last.is_none_or(|l| l.elapsed() >= UNKNOWN_KEY_REFETCH);
            if tried.as_ref() != Some(&url) || Instant::now() >= next || rotated {
                unknown_key = false;
                last = Some(Instant::now());
                tried = Some(url.clone());
                match fetch_jwks(&settings, &shared.base, &url, &mut client).await {
                    Ok(set) => {
                        shared.registry.jwks_fetched.fetch_add(1, Ordering::Relaxed);
                        backoff = Duration::from_secs(1);
                        next = Instant::now() + settings.jwks_refresh.0;
                        let changed = shared
                            .fetched_jwks
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .as_ref()
                            .is_none_or(|(u, old)| u != &url || old != &set);
                        if changed {
                            *shared.fetched_jwks.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some((url, set));
                            if let Err(e) = shared.refresh() {
                                tracing::warn!("keeping the current keys: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        shared.registry.jwks_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "JWKS {url}: {e}; keeping the keys last fetched, again in {} s",
                            backoff.as_secs()
                        );
                        next = Instant::now() + backoff;
                        backoff = (backoff * 2).min(settings.jwks_refresh.0.max(Duration::from_secs(1)));
                    }
                }
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = shared.unknown_key.notified() => unknown_key = true,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One fetch of a JWKS URL: a 200 with a key set the authenticator accepts, within 5 s and
/// 1 MiB.
/// The JWKS fetcher's HTTP client, with the CA bundle it trusts (`None`: the system roots).
struct JwksClient {
    ca: Option<Vec<u8>>,
    client: reqwest::Client,
}

async fn fetch_jwks(
    settings: &super::auth::AuthSettings,
    base: &std::path::Path,
    url: &str,
    cached: &mut Option<JwksClient>,
) -> Result<JwkSet, String> {
    // the process-wide TLS crypto provider (ring, as Pingora's rustls uses); set once
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = match &settings.jwks_ca {
        Some(ca) => {
            let path = base.join(ca);
            Some(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let client = match cached {
        Some(c) if c.ca == ca => c.client.clone(),
        _ => {
            let mut builder = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = &ca {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    format!(
                        "{}: not PEM certificates: {e}",
                        settings.jwks_ca.as_deref().unwrap_or_default()
                    )
                })?;
                builder = builder.tls_certs_only(certs);
            }
            let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
            *cached = Some(JwksClient {
                ca,
                client: client.clone(),
            });
            client
        }
    };
    let mut resp = client.get(url).send().await.map_err(|e| format!("{e}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            return Err("larger than 1 MiB".into());
        }
    }
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
    Authenticator::new(settings, &set)?;
    Ok(set)
}

pub(super) async fn reload_loop(
    shared: Arc<Shared>,
    file: Option<PathBuf>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = file else {
        let _ = stop.wait_for(|s| *s).await;
        return;
    };
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut seen_jwks = shared.jwks_path().and_then(|p| modified(&p));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = modified(&path);
        if now != seen {
            seen = now;
            let result = load_routes(&path).and_then(|routes| shared.set_routes(routes));
            if let Err(e) = result {
                tracing::warn!("keeping the current routes: {e}");
            }
        }
        let jwks_now = shared.jwks_path().and_then(|p| modified(&p));
        if jwks_now != seen_jwks {
            seen_jwks = jwks_now;
            if let Err(e) = shared.refresh() {
                tracing::warn!("keeping the current keys: {e}");
            }
        }
    }
}

/// Reads and validates a routes file.
pub fn load_routes(path: &std::path::Path) -> Result<RoutesFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let routes = crate::spec::parse_document::<RoutesFile>(&path.display().to_string(), &text)
        .map_err(|r| r.render_text())?;
    routes.check().map_err(|e| {
        e.lines()
            .map(|l| format!("{}: error: {l}\n", path.display()))
            .collect::<String>()
    })?;
    Ok(routes)
}

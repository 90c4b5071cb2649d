//! Shadow traffic: copies of live requests sent to a release that serves no user.
//!
//! The request path only decides (a pure function, [`eligible`]) and, once the live request is
//! answered, hands the copy over without waiting ([`Mirror::send`]: a non-blocking send on a
//! bounded channel). A worker thread of its own, with its own runtime and HTTP client, sends the
//! copies, discards the answers and records their statuses and latencies in the target
//! release's metrics, where the sensors read them as the release's evidence. So a copy can
//! neither slow nor fail the live request: when the worker is behind (a slow or hung release),
//! the channel fills and further copies are dropped and counted, never queued without bound.
//!
//! The worker starts with the first copy: a proxy that mirrors nothing runs no thread for it.
//! It runs at the lowest priority of its process (nice 19), so that it takes only the CPU the
//! live requests leave: a proxy that live traffic saturates drops copies (counted) rather than
//! slowing its users down.

use super::metrics::ReleaseMetrics;
use super::routes::ReleaseRoute;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Copies waiting for the worker; beyond this they are dropped.
const QUEUE: usize = 1024;
/// Copies in flight at once.
const IN_FLIGHT: usize = 256;

/// Headers not forwarded on a copy: hop-by-hop (RFC 9110 §7.6.1) and the body's framing (the
/// client sets its own from the buffered body).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// The header that tells the release a request is a copy (its answer goes nowhere).
pub const MIRROR_HEADER: &str = "x-autopilot-mirror";

/// One copy, built while the live request passes.
#[derive(Debug)]
pub struct Copy {
    pub to: Arc<ReleaseRoute>,
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: BytesMut,
    /// Most body bytes to buffer; past it the copy is abandoned.
    pub max_body: u64,
    /// The whole body has been seen.
    pub complete: bool,
}

impl Copy {
    /// Adds a piece of the live request's body; `false` once the copy must be abandoned (the
    /// body is larger than the limit).
    pub fn push(&mut self, piece: Option<&Bytes>, end_of_stream: bool) -> bool {
        if let Some(piece) = piece {
            if (self.body.len() + piece.len()) as u64 > self.max_body {
                return false;
            }
            self.body.extend_from_slice(piece);
        }
        if end_of_stream {
            self.complete = true;
        }
        true
    }
}

/// Why a request is not copied, or `Ok(expected body length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCopied {
    Method,
    BodyTooLarge,
    /// A body of unknown length (chunked): it could not be bounded before it is read.
    BodyOfUnknownLength,
    Upgrade,
}

/// Whether a request may be copied, from its method and headers alone: an allowed method, no
/// protocol upgrade, and a body of known length within the limit.
pub fn eligible(
    method: &http::Method,
    headers: &http::HeaderMap,
    methods: &[http::Method],
    max_body: u64,
) -> Result<u64, NotCopied> {
    if !methods.contains(method) {
        return Err(NotCopied::Method);
    }
    if headers.contains_key(http::header::UPGRADE) {
        return Err(NotCopied::Upgrade);
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(NotCopied::BodyOfUnknownLength);
    }
    let length = match headers.get(http::header::CONTENT_LENGTH) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(NotCopied::BodyOfUnknownLength)?,
    };
    if length > max_body {
        return Err(NotCopied::BodyTooLarge);
    }
    Ok(length)
}

/// The copies' sender, shared by every request; the worker starts on first use.
#[derive(Debug, Default)]
pub struct Mirror {
    worker: OnceLock<Option<tokio::sync::mpsc::Sender<Copy>>>,
}

impl Mirror {
    /// Hands a finished copy to the worker without waiting; a full queue (or a worker that
    /// could not start) drops it, counted in the target's metrics.
    pub fn send(&self, copy: Copy) {
        let metrics = copy.to.metrics.clone();
        let sender = self.worker.get_or_init(start_worker);
        let sent = sender.as_ref().is_some_and(|tx| tx.try_send(copy).is_ok());
        let counter = if sent {
            &metrics.mirror_sent
        } else {
            &metrics.mirror_dropped
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The copies' worker thread's name.
pub const THREAD: &str = "autopilot-mirror";
/// The copies' worker thread's nice value: the lowest priority.
pub const NICE: i32 = 19;

/// Lowers the calling thread (on Linux the nice value is a thread's, not its process's) to
/// [`NICE`]: the live requests' workers then always come first on a busy core, and the copies
/// run on the time they leave. A failure leaves the thread as it was, said once.
fn yield_to_live_traffic() {
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(
            "the mirror's thread keeps its priority (copies may compete with live requests for the CPU): {e}"
        );
    }
}

fn start_worker() -> Option<tokio::sync::mpsc::Sender<Copy>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("the mirror's runtime could not start, copies are dropped: {e}");
            return None;
        }
    };
    // copies go over plain HTTP, but the client is built with rustls, which needs a provider
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("the mirror's HTTP client could not be built, copies are dropped: {e}");
            return None;
        }
    };
    let spawned = std::thread::Builder::new().name(THREAD.into()).spawn(move || {
        yield_to_live_traffic();
        runtime.block_on(work(rx, client))
    });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!("the mirror's thread could not start, copies are dropped: {e}");
            None
        }
    }
}

/// Sends copies until every sender is gone (the proxy's state dropped).
async fn work(mut rx: tokio::sync::mpsc::Receiver<Copy>, client: reqwest::Client) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(copy) = rx.recv().await {
        // waits for a free slot: meanwhile the queue fills and the request path drops copies
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            deliver(&client, copy).await;
            drop(slot);
        });
    }
}

/// Sends one copy to a usable upstream of its release and records the outcome.
async fn deliver(client: &reqwest::Client, copy: Copy) {
    let route = copy.to.clone();
    let metrics: &ReleaseMetrics = &route.metrics;
    let Some(upstream) = route.pick(&[]) else {
        // no ready instance: the live path would have answered 503, counted the same way
        metrics.record(Some(503), Duration::ZERO);
        return;
    };
    let url = format!("http://{}{}", upstream.addr, copy.path_and_query);
    let mut headers = copy.headers;
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.insert(MIRROR_HEADER, http::HeaderValue::from_static("1"));
    let started = Instant::now();
    let sent = client
        .request(copy.method, url)
        .headers(headers)
        .body(copy.body.freeze())
        .timeout(route.timeout)
        .send()
        .await;
    let status = match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            // the answer is read to its end (latency to the last byte, as for live requests)
            // and discarded
            match response.bytes().await {
                Ok(_) => Some(status),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    metrics.record(status, started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_allowed_methods_and_bounded_bodies_are_copied() {
        let safe = [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];
        assert_eq!(eligible(&http::Method::GET, &headers(&[]), &safe, 1024), Ok(0));
        assert_eq!(
            eligible(
                &http::Method::POST,
                &headers(&[("content-length", "3")]),
                &safe,
                1024
            ),
            Err(NotCopied::Method),
            "a write is not copied unless its method is listed"
        );
        let all = [http::Method::GET, http::Method::POST];
        assert_eq!(
            eligible(
                &http::Method::POST,
                &headers(&[("content-length", "3")]),
                &all,
                1024
            ),
            Ok(3)
        );
        assert_eq!(
            eligible(
                &http::Method::POST,
                &headers(&[("content-length", "1025")]),
                &all,
                1024
            ),
            Err(NotCopied::BodyTooLarge)
        );
        assert_eq!(
            eligible(
                &http::Method::POST,
                &headers(&[("transfer-encoding", "chunked")]),
                &all,
                1024
            ),
            Err(NotCopied::BodyOfUnknownLength)
        );
        assert_eq!(
            eligible(
                &http::Method::POST,
                &headers(&[("content-length", "x")]),
                &all,
                1024
            ),
            Err(NotCopied::BodyOfUnknownLength)
        );
        assert_eq!(
            eligible(
                &http::Method::GET,
                &headers(&[("upgrade", "websocket")]),
                &safe,
                1024
            ),
            Err(NotCopied::Upgrade)
        );
    }

    #[test]
    fn a_body_past_the_limit_abandons_the_copy() {
        let route = Arc::new(ReleaseRoute::for_tests("v2"));
        let mut copy = Copy {
            to: route,
            method: http::Method::POST,
            path_and_query: "/".into(),
            headers: http::HeaderMap::new(),
            body: BytesMut::new(),
            max_body: 4,
            complete: false,
        };
        assert!(copy.push(Some(&Bytes::from_static(b"abc")), false));
        assert!(!copy.complete);
        assert!(!copy.push(Some(&Bytes::from_static(b"de")), true), "5 bytes > 4");
        let mut ok = Copy {
            complete: false,
            body: BytesMut::new(),
            ..copy
        };
        assert!(ok.push(Some(&Bytes::from_static(b"abcd")), false));
        assert!(ok.push(None, true));
        assert!(ok.complete);
        assert_eq!(&ok.body[..], b"abcd");
    }
}

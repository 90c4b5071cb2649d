//! A fixed-rate HTTP/1.1 load generator for the proxy benchmark (BENCHMARKS.md §2), free of
//! coordinated omission.
//!
//! A closed-loop client (wrk) sends the next request only when the previous one returns, so a
//! stalled server is asked less and its stall is under-counted. Here request `i` is *due* at
//! `start + i / rate`, whatever happened before; it goes out on connection `i mod C` as soon as
//! that connection is free, and its latency runs from when it was due. A server that falls
//! behind shows every queued request's wait (the approach of wrk2 and `oha -q`).
//!
//! Timers have millisecond granularity, so sends come in millisecond batches. A request whose
//! connection was free when it fell due starts its clock when the timer lets it go (the
//! timer's lateness is the client's); one whose connection was still busy starts it when it fell
//! due (the server's backlog counts).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// `Host` header (and SNI with TLS).
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Requests per second, all connections together.
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// HTTPS, trusting these CA certificates (PEM).
    pub tls_ca: Option<String>,
}

/// Latencies (from when each request was due) and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub sent: u64,
    /// Answers with a status other than 2xx/3xx, and requests that failed on the wire.
    pub errors: u64,
    /// Achieved answers per second.
    pub throughput: f64,
    /// Latency quantiles in milliseconds: p50, p90, p99, p99.9, max.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("the CA certificates: {0}")]
    Ca(String),
    #[error("{0}")]
    Spec(String),
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(
    spec: &LoadSpec,
    tls: Option<&Arc<pingora::tls::ClientConfig>>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, LoadError> {
    let fail = |e: &dyn std::fmt::Display| LoadError::Connect {
        addr: spec.addr,
        message: e.to_string(),
    };
    let tcp = tokio::net::TcpStream::connect(spec.addr)
        .await
        .map_err(|e| fail(&e))?;
    tcp.set_nodelay(true).map_err(|e| fail(&e))?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = pingora::tls::ServerName::try_from(spec.host.clone()).map_err(|e| fail(&e))?;
            let stream = pingora::tls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| fail(&e))?;
            Box::new(stream)
        }
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn tls_config(ca_pem: &str) -> Result<Arc<pingora::tls::ClientConfig>, LoadError> {
    use rustls_pki_types::pem::PemObject;
    pingora::tls::install_default_crypto_provider();
    let mut roots = pingora::tls::RootCertStore::empty();
    for cert in pingora::tls::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| LoadError::Ca(e.to_string()))?)
            .map_err(|e| LoadError::Ca(e.to_string()))?;
    }
    let mut config = pingora::tls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs the load on the current runtime and reports it.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    if !(spec.rate > 0.0 && spec.rate.is_finite()) || spec.connections == 0 {
        return Err(LoadError::Spec(
            "the rate and the connections must be positive".into(),
        ));
    }
    let tls = spec.tls_ca.as_deref().map(tls_config).transpose()?;
    let mut senders = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        senders.push(connect(spec, tls.as_ref()).await?);
    }
    drive(spec, senders, tls).await
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Sends on the schedule over `senders` (one per connection).
async fn drive(
    spec: &LoadSpec,
    senders: Vec<Sender>,
    tls: Option<Arc<pingora::tls::ClientConfig>>,
) -> Result<LoadReport, LoadError> {
    let total = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let interval = 1.0 / spec.rate;
    let conns = spec.connections as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let (spec, tls) = (spec.clone(), tls.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity((total / conns + 1) as usize);
            let mut errors = 0u64;
            let mut i = c as u64;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 * interval);
                // the clock starts when the request fell due if the connection was still busy
                // then (the server's delay counts); if it was free, when the timer let it go
                // (the timer's lateness is the client's, not the server's)
                let clock = if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                } else {
                    due
                };
                // a connection the server closed (keep-alive limit) is replaced first
                if sender.ready().await.is_err() {
                    match connect(&spec, tls.as_ref()).await {
                        Ok(fresh) => sender = fresh,
                        Err(_) => {
                            errors += 1;
                            latencies.push(clock.elapsed().as_micros() as u64);
                            i += conns;
                            continue;
                        }
                    }
                }
                let mut req = hyper::Request::get(&spec.path).header("host", &spec.host);
                for (k, v) in &spec.headers {
                    req = req.header(k, v);
                }
                let ok = match req.body(Empty::<Bytes>::new()) {
                    Ok(req) => match sender.send_request(req).await {
                        Ok(resp) => {
                            let good = resp.status().as_u16() < 400;
                            good && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                latencies.push(clock.elapsed().as_micros() as u64);
                if !ok {
                    errors += 1;
                }
                i += conns;
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.map_err(|e| LoadError::Spec(e.to_string()))?;
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(report(all, errors, elapsed))
}

fn report(mut micros: Vec<u64>, errors: u64, elapsed: f64) -> LoadReport {
    micros.sort_unstable();
    let q = |p: f64| {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    LoadReport {
        sent: micros.len() as u64,
        errors,
        throughput: micros.len() as f64 / elapsed.max(1e-9),
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: micros.last().map_or(0.0, |m| *m as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let r = report((1..=1000).map(|v| v * 1000).collect(), 2, 2.0);
        assert_eq!(
            (r.p50, r.p90, r.p99, r.p999, r.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!((r.sent, r.errors, r.throughput), (1000, 2, 500.0));
        assert_eq!(report(vec![], 0, 1.0).p99, 0.0);
    }

    /// A server that stalls: a closed loop would send nothing while it stalls and count the
    /// stall once; the fixed schedule counts every request that fell due during it.
    /// (In-memory connections on paused time: deterministic.)
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stall_is_counted_for_every_request_due_during_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut s) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut served = 0u32;
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                served += 1;
                // the 10th request stalls the server for one second
                if served == 10 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let spec = LoadSpec {
            addr: "127.0.0.1:9".parse().unwrap(),
            host: "x".into(),
            path: "/".into(),
            headers: vec![],
            rate: 100.0,
            duration: Duration::from_secs(3),
            connections: 1,
            tls_ca: None,
        };
        let r = drive(&spec, vec![sender], None).await.unwrap();
        assert_eq!((r.sent, r.errors), (300, 0));
        // ~100 requests fell due during the stall: they waited 1 s down to ~0; a closed loop
        // would report one slow request in 300 (p99 fast). Here p90 is far above 10 ms.
        assert!(r.max >= 1000.0, "{r:?}");
        assert!(r.p90 > 100.0, "{r:?}");
        assert!(r.p50 < 1.0, "{r:?}");
    }
}

//! The benchmark's reference for what Pingora itself costs: a Pingora proxy that does nothing
//! but forward every request to one upstream (no routing, split, auth or metrics).
//! `scripts/bench-proxy` measures it next to the autopilot proxy in the same run, so the table
//! separates the framework's cost from ours. With `headers`, it also sets the headers the
//! autopilot proxy sets on an authenticated request (fixed values), which tells what of our
//! cost is Pingora's price for those headers; with `forwarding` only, it sets the three
//! `X-Forwarded-*` headers every proxy of this kind sets (nginx in the benchmark too). Not for
//! serving traffic.

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

/// Which headers the reference sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headers {
    /// None: forwarding only.
    None,
    /// The three `X-Forwarded-*` headers.
    Forwarding,
    /// Those, the two identity headers upstream and the release header downstream: all the
    /// autopilot proxy sets on an authenticated request.
    All,
}

struct Forward {
    upstream: SocketAddr,
    headers: Headers,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.headers != Headers::None {
            upstream.insert_header("x-forwarded-for", "127.0.0.1")?;
            upstream.insert_header("x-forwarded-proto", "http")?;
            upstream.insert_header("x-forwarded-host", "bench.prod.example.test")?;
        }
        if self.headers == Headers::All {
            upstream.insert_header("x-autopilot-user", "bench-user")?;
            upstream.insert_header("x-autopilot-app", "bench")?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.headers == Headers::All {
            response.insert_header("x-autopilot-release", "v1")?;
        }
        Ok(())
    }
}

/// Serves on `listen` until the process ends, with `threads` workers on the same runtime
/// choice as `autopilot proxy` (one single-threaded runtime per worker).
pub fn run(listen: SocketAddr, upstream: SocketAddr, threads: usize, headers: Headers) -> ! {
    let conf = ServerConf {
        threads: threads.max(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Forward { upstream, headers });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}

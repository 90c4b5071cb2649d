//! The benchmark's reference for what Pingora itself costs: a Pingora proxy that does nothing
//! but forward every request to one upstream (no routing, split, auth, headers or metrics).
//! `scripts/bench-proxy` measures it next to the autopilot proxy in the same run, so the table
//! separates the framework's cost from ours. Not for serving traffic.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Forward(SocketAddr);

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

/// Serves on `listen` until the process ends, with `threads` workers on the same runtime
/// choice as `autopilot proxy` (one single-threaded runtime per worker).
pub fn run(listen: SocketAddr, upstream: SocketAddr, threads: usize) -> ! {
    let conf = ServerConf {
        threads: threads.max(1),
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Forward(upstream));
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}

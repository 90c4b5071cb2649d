//! HTTPS at the real proxy with a real rustls client: the local CA made at the first start
//! (and reused), SNI per host (environments and previews), ALPN h2, and a request through with
//! `X-Forwarded-Proto: https` and `Forwarded: proto=https`.

mod common;

use autopilot::proxy::routes::{ForwardingHeaders, RoutesFile};
use autopilot::proxy::server::{self, ProxyConfig, ProxyHandle, TlsListen};
use autopilot::spec::objectives::Auth;
use common::upstream;
use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start(addr: std::net::SocketAddr, ca_dir: &std::path::Path) -> (ProxyHandle, std::net::SocketAddr) {
    let tls_listen: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut routes = RoutesFile::new(
        "example.test",
        vec![common::route_v1("checkout", "prod", addr, Auth::None)],
    );
    // both families, so that RFC 7239's `proto=https` is checked over TLS too
    routes.forwarding_headers = vec![ForwardingHeaders::XForwarded, ForwardingHeaders::Forwarded];
    let config = ProxyConfig {
        tls: Some(TlsListen {
            listen: tls_listen,
            certs: vec![],
            local_ca: Some(ca_dir.to_path_buf()),
        }),
        ..common::config("t", None)
    };
    let proxy = server::start(config, routes).expect("the proxy starts");
    let tls_listen = proxy.tls_listen.expect("an HTTPS listener");
    (proxy, tls_listen)
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in pingora::tls::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS handshake to `addr` for `name`; returns the negotiated ALPN protocol or the error.
async fn handshake(
    config: Arc<ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<
    (
        Option<Vec<u8>>,
        pingora::tls::ClientTlsStream<tokio::net::TcpStream>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok((tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec), tls))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_a_local_ca_sni_and_alpn() {
    let up = upstream("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, tls_addr) = start(up.addr, dir.path());
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();

    // environment and preview names validate against the local CA (SNI picks the certificate)
    let deadline = Instant::now() + Duration::from_secs(10);
    let h2 = loop {
        match handshake(
            client_config(&ca, &[b"h2", b"http/1.1"]),
            tls_addr,
            "checkout.prod.example.test",
        )
        .await
        {
            Ok((alpn, _)) => break alpn,
            Err(e) => {
                assert!(Instant::now() < deadline, "no TLS listener: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(h2.as_deref(), Some(&b"h2"[..]), "ALPN prefers HTTP/2");
    assert!(
        handshake(
            client_config(&ca, &[b"http/1.1"]),
            tls_addr,
            "v1.checkout.prod.example.test"
        )
        .await
        .is_ok()
    );
    // a name the proxy has no certificate for is refused by the client's verification
    let err = handshake(client_config(&ca, &[b"http/1.1"]), tls_addr, "www.evil.test")
        .await
        .err()
        .unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // a request over HTTPS (HTTP/1.1), once the upstream is ready
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, mut tls) = handshake(
            client_config(&ca, &[b"http/1.1"]),
            tls_addr,
            "checkout.prod.example.test",
        )
        .await
        .unwrap();
        tls.write_all(b"GET /hi HTTP/1.1\r\nHost: checkout.prod.example.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        let _ = tls.read_to_string(&mut response).await;
        if response.starts_with("HTTP/1.1 200") {
            let lower = response.to_lowercase();
            assert!(lower.contains("x-autopilot-release: v1"), "{response}");
            assert!(response.contains(r#""x-forwarded-proto":"https""#), "{response}");
            assert!(response.contains("proto=https"), "{response}");
            break;
        }
        assert!(Instant::now() < deadline, "never served: {response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // an environment added after the start: the local CA signs for it at its first handshake;
    // a name that is not routed gets one just the same (a handshake must not tell which
    // environments exist), a name of the wrong shape does not
    proxy
        .shared
        .set_route(common::route_v1("search", "staging", up.addr, Auth::None))
        .unwrap();
    for name in [
        "search.staging.example.test",
        "v1.search.staging.example.test",
        "nothing.hidden.example.test",
    ] {
        let got = handshake(client_config(&ca, &[b"http/1.1"]), tls_addr, name).await;
        assert!(got.is_ok(), "{name}: {:?}", got.err());
    }
    let err = handshake(
        client_config(&ca, &[b"http/1.1"]),
        tls_addr,
        "a.b.c.d.example.test",
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    proxy.stop();

    // the CA is reused by the next start
    let (again, _) = start(up.addr, dir.path());
    assert_eq!(std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(), ca);
    again.stop();
}

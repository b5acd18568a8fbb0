//! TLSRoute over real sockets: TLS listeners route raw TLS streams by SNI
//! (Passthrough: the backend's own certificate reaches the client), close
//! what they cannot route, and terminate where the listener says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Answers every line it reads with `<name>: <line>`.
async fn answer_lines<S: AsyncRead + AsyncWrite + Unpin>(stream: S, name: &str) {
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    while let Ok(n) = lines.read_line(&mut line).await {
        if n == 0 {
            return;
        }
        let reply = format!("{name}: {line}");
        if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        line.clear();
    }
}

/// A TLS server terminating with its own certificate: what a Passthrough
/// route's backend is.
async fn start_tls_backend(name: &'static str, cert_pem: &str, key_pem: &str) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    answer_lines(tls, name).await;
                }
            });
        }
    });
    addr
}

/// A plaintext TCP server: what a Terminate route's backend is.
async fn start_tcp_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(answer_lines(tcp, name));
        }
    });
    addr
}

fn tls_route(name: &str, hostnames: &str, service: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: {hostnames}
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

const PASSTHROUGH_LISTENER: &str = "  - name: tls
    protocol: TLS
    port: ${TLS_PORT}
    tls: {mode: Passthrough}";

/// Connects with `sni` trusting only `pki`, sends one line and returns the
/// answer line and the certificate the server presented.
async fn exchange(
    pki: &TestPki,
    port: u16,
    sni: &str,
    line: &str,
) -> std::io::Result<(String, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[]));
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("a server certificate");
    tls.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reader = BufReader::new(tls);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("answer timed out"))??;
    Ok((answer.trim_end().to_string(), presented))
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn passthrough_reaches_the_backend_that_terminates_and_sni_picks_it() {
    // The backends' CA is the only one the client trusts; the gateway has
    // no certificate at all: a successful handshake can only be the
    // backend's.
    let backend_pki = TestPki::new();
    let (cert_a, key_a) = backend_pki.server_cert(&["a.example.com"]);
    let (cert_b, key_b) = backend_pki.server_cert(&["b.example.com"]);
    let backend_a = start_tls_backend("backend-a", &cert_a, &key_a).await;
    let backend_b = start_tls_backend("backend-b", &cert_b, &key_b).await;
    let yaml = [
        gateway(PASSTHROUGH_LISTENER),
        service_yaml("svc-a", &[backend_a], None),
        service_yaml("svc-b", &[backend_b], None),
        tls_route("route-a", "[a.example.com]", "svc-a"),
        tls_route("route-b", "[b.example.com]", "svc-b"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["TLS_PORT"]).await;
    let port = gw.port("TLS_PORT");

    let (answer, presented) = exchange(&backend_pki, port, "a.example.com", "hello")
        .await
        .expect("passthrough to a");
    assert_eq!(answer, "backend-a: hello");
    assert_eq!(presented, der(&cert_a), "the backend's own certificate");

    let (answer, presented) = exchange(&backend_pki, port, "B.Example.com", "second")
        .await
        .expect("passthrough to b (SNI is case-insensitive)");
    assert_eq!(answer, "backend-b: second");
    assert_eq!(presented, der(&cert_b));
}

/// A connection the gateway closes: the handshake fails with EOF or reset,
/// never with a certificate from anyone.
async fn assert_closed(port: u16, server_name: ServerName<'static>) {
    let pki = TestPki::new();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[]));
    let result = tokio::time::timeout(Duration::from_secs(5), connector.connect(server_name, tcp))
        .await
        .expect("the gateway closes instead of waiting");
    let err = result.expect_err("no handshake");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ),
        "closed, not answered: {err:?}"
    );
}

#[tokio::test]
async fn unknown_sni_and_missing_sni_are_closed() {
    let backend_pki = TestPki::new();
    let (cert, key) = backend_pki.server_cert(&["a.example.com"]);
    let backend = start_tls_backend("backend-a", &cert, &key).await;
    let yaml = [
        gateway(PASSTHROUGH_LISTENER),
        service_yaml("svc-a", &[backend], None),
        tls_route("route-a", "[a.example.com]", "svc-a"),
        // A route whose backend does not exist: its SNI is closed too.
        tls_route("route-missing", "[missing.example.com]", "nowhere"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["TLS_PORT"]).await;
    let port = gw.port("TLS_PORT");

    assert_closed(port, ServerName::try_from("other.example.com").unwrap()).await;
    assert_closed(port, ServerName::try_from("missing.example.com").unwrap()).await;
    // rustls sends no SNI for an IP address.
    assert_closed(port, ServerName::IpAddress(LOOPBACK.into())).await;
    // Not TLS at all.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(read.is_err() || buf.is_empty(), "nothing answered: {buf:?}");
    // The routed name still works next to all that.
    let (answer, _) = exchange(&backend_pki, port, "a.example.com", "still")
        .await
        .unwrap();
    assert_eq!(answer, "backend-a: still");
}

#[tokio::test]
async fn exact_hostname_beats_wildcard_and_listener_hostnames_isolate() {
    let backend_pki = TestPki::new();
    let (cert, key) = backend_pki.server_cert(&["*.example.com", "abc.example.com"]);
    let exact = start_tls_backend("exact", &cert, &key).await;
    let wildcard = start_tls_backend("wildcard", &cert, &key).await;
    // Two listeners on one port: `*.example.com` and the more specific
    // `only.example.com` with no route of its own.
    let listeners = "  - name: wild
    protocol: TLS
    port: ${TLS_PORT}
    hostname: \"*.example.com\"
    tls: {mode: Passthrough}
  - name: only
    protocol: TLS
    port: ${TLS_PORT}
    hostname: only.example.com
    tls: {mode: Passthrough}
    allowedRoutes: {namespaces: {from: Same}}";
    let route = |name: &str, hostnames: &str, service: &str| {
        format!(
            "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: wild}}]
  hostnames: {hostnames}
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
        )
    };
    let yaml = [
        gateway(listeners),
        service_yaml("exact", &[exact], None),
        service_yaml("wildcard", &[wildcard], None),
        route("to-exact", "[abc.example.com]", "exact"),
        route("to-wildcard", "[\"*.example.com\"]", "wildcard"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["TLS_PORT"]).await;
    let port = gw.port("TLS_PORT");
    let (answer, _) = exchange(&backend_pki, port, "abc.example.com", "x")
        .await
        .unwrap();
    assert_eq!(answer, "exact: x");
    let (answer, _) = exchange(&backend_pki, port, "other.example.com", "y")
        .await
        .unwrap();
    assert_eq!(answer, "wildcard: y");
    // Belongs to the `only` listener, which has no route: closed, not
    // taken by the wildcard listener's route.
    assert_closed(port, ServerName::try_from("only.example.com").unwrap()).await;
}

#[tokio::test]
async fn terminate_mode_decrypts_and_forwards_plaintext_next_to_passthrough() {
    let gateway_pki = TestPki::new();
    let (gw_cert, gw_key) = gateway_pki.server_cert(&["plain.example.com"]);
    let backend_pki = TestPki::new();
    let (be_cert, be_key) = backend_pki.server_cert(&["secure.example.com"]);
    let plain = start_tcp_backend("plain").await;
    let secure = start_tls_backend("secure", &be_cert, &be_key).await;
    // Both modes on one port (TLSRouteModeMixed).
    let listeners = "  - name: terminate
    protocol: TLS
    port: ${TLS_PORT}
    hostname: plain.example.com
    tls: {mode: Terminate, certificateRefs: [{name: gw-cert}]}
  - name: passthrough
    protocol: TLS
    port: ${TLS_PORT}
    hostname: secure.example.com
    tls: {mode: Passthrough}";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("gw-cert", &gw_cert, &gw_key),
        service_yaml("plain", &[plain], None),
        service_yaml("secure", &[secure], None),
        tls_route("to-plain", "[plain.example.com]", "plain"),
        tls_route("to-secure", "[secure.example.com]", "secure"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["TLS_PORT"]).await;
    let port = gw.port("TLS_PORT");

    let (answer, presented) = exchange(&gateway_pki, port, "plain.example.com", "in clear")
        .await
        .expect("terminated by the gateway");
    assert_eq!(answer, "plain: in clear", "the backend got plaintext");
    assert_eq!(presented, der(&gw_cert), "the gateway's certificate");

    let (answer, presented) = exchange(&backend_pki, port, "secure.example.com", "sealed")
        .await
        .expect("passed through");
    assert_eq!(answer, "secure: sealed");
    assert_eq!(presented, der(&be_cert));
}

#[tokio::test]
async fn a_long_stream_survives_a_reload_and_weights_choose_backends() {
    let backend_pki = TestPki::new();
    let (cert, key) = backend_pki.server_cert(&["a.example.com"]);
    let first = start_tls_backend("first", &cert, &key).await;
    let second = start_tls_backend("second", &cert, &key).await;
    let route = |weights: (u32, u32)| {
        format!(
            "
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: weighted, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [a.example.com]
  rules:
  - backendRefs:
    - {{name: first, port: 80, weight: {}}}
    - {{name: second, port: 80, weight: {}}}
",
            weights.0, weights.1
        )
    };
    let config = |weights| {
        [
            gateway(PASSTHROUGH_LISTENER),
            service_yaml("first", &[first], None),
            service_yaml("second", &[second], None),
            route(weights),
        ]
        .concat()
    };
    let gw = TestGateway::start(&config((1, 0)), &["TLS_PORT"]).await;
    let port = gw.port("TLS_PORT");

    // A stream opened before the reload.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(backend_pki.client_config(&[]));
    let tls = connector
        .connect(ServerName::try_from("a.example.com").unwrap(), tcp)
        .await
        .unwrap();
    let mut open = BufReader::new(tls);
    let mut line = String::new();
    open.get_mut().write_all(b"before\n").await.unwrap();
    open.read_line(&mut line).await.unwrap();
    assert_eq!(line, "first: before\n");

    gw.reconfigure(&config((0, 1))).await;
    for i in 0..5 {
        let (answer, _) = exchange(&backend_pki, port, "a.example.com", &format!("n{i}"))
            .await
            .unwrap();
        assert_eq!(answer, format!("second: n{i}"), "weight 0 gets nothing");
    }
    // The old stream still talks to its backend.
    line.clear();
    open.get_mut().write_all(b"after\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), open.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "first: after\n");
}

#[tokio::test]
async fn tls_route_status_is_reported() {
    let yaml = [
        gateway(PASSTHROUGH_LISTENER),
        tls_route("no-backend", "[a.example.com]", "nowhere"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["TLS_PORT"]).await;
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    let route = statuses
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "no-backend")
        .cloned()
        .unwrap_or_else(|| panic!("no TLSRoute status: {statuses}"))
        .to_string();
    assert!(route.contains("BackendNotFound"), "{route}");
    assert!(route.contains("\"reason\":\"Accepted\""), "{route}");
}

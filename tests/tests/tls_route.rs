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

/// The access log lines written to `path` so far (complete lines only).
fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (bounded) for an access log line matching `pred`.
async fn wait_for_line(
    path: &std::path::Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..500 {
        if let Some(v) = log_lines(path).into_iter().find(|v| pred(v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no matching access log line in {:?}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// A gateway with an access log file and the given stream idle timeout.
async fn logged_gateway(
    yaml: &str,
    stream_idle_timeout: Duration,
) -> (TestGateway, tempfile::TempDir, std::path::PathBuf) {
    use portcullis_dataplane::access_log::{AccessLog, AccessLogConfig, Destination};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let log = AccessLog::spawn(AccessLogConfig {
        destination: Destination::File(path.clone()),
        ..AccessLogConfig::default()
    })
    .expect("access log");
    let gw = TestGateway::start_with(yaml, &["TLS_PORT"], |c| {
        c.access_log = Some(log);
        c.limits.stream_idle_timeout = stream_idle_timeout;
    })
    .await;
    (gw, dir, path)
}

/// A plaintext backend that answers lines and reports, on `closed`, when
/// the gateway closed its side of a connection.
async fn start_reporting_backend(
    name: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                answer_lines(tcp, name).await;
                let _ = tx.send(()).await;
            });
        }
    });
    (addr, rx)
}

const TERMINATE_LISTENER: &str = "  - name: tls
    protocol: TLS
    port: ${TLS_PORT}
    tls: {mode: Terminate, certificateRefs: [{name: gw-cert}]}";

#[tokio::test]
async fn an_idle_stream_is_closed_on_both_sides_and_logged_with_sni_route_and_bytes() {
    let gateway_pki = TestPki::new();
    let (gw_cert, gw_key) = gateway_pki.server_cert(&["plain.example.com"]);
    let (backend, mut backend_closed) = start_reporting_backend("plain").await;
    let yaml = [
        gateway(TERMINATE_LISTENER),
        tls_secret_yaml("gw-cert", &gw_cert, &gw_key),
        service_yaml("plain", &[backend], None),
        tls_route("to-plain", "[plain.example.com]", "plain"),
    ]
    .concat();
    let (gw, _dir, log) = logged_gateway(&yaml, Duration::from_millis(300)).await;
    let port = gw.port("TLS_PORT");

    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(gateway_pki.client_config(&[]));
    let tls = connector
        .connect(ServerName::try_from("plain.example.com").unwrap(), tcp)
        .await
        .expect("terminated by the gateway");
    let mut stream = BufReader::new(tls);
    stream.get_mut().write_all(b"hello\n").await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert_eq!(line, "plain: hello\n");

    // Then silence from both: the gateway closes the client's side...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the idle stream is closed by the gateway");
    assert!(read.is_err() || rest.is_empty(), "nothing more: {rest:?}");
    // ... and the backend's.
    tokio::time::timeout(Duration::from_secs(10), backend_closed.recv())
        .await
        .expect("the backend connection is closed too")
        .expect("reported");

    let entry = wait_for_line(&log, |v| v["sni"] == "plain.example.com").await;
    assert_eq!(entry["outcome"], "idle-timeout", "{entry}");
    assert_eq!(entry["protocol"], "TLS");
    assert_eq!(entry["tls_mode"], "terminate");
    assert_eq!(entry["port"], port);
    assert_eq!(
        entry["route"], "tlsroute/default/to-plain/rule/0",
        "{entry}"
    );
    assert_eq!(entry["backend"], "default/plain:80", "{entry}");
    assert_eq!(entry["upstream"], backend.to_string());
    // Terminated: the plaintext each way, exactly.
    assert_eq!(entry["bytes_received"], "hello\n".len(), "{entry}");
    assert_eq!(entry["bytes"], "plain: hello\n".len(), "{entry}");
    assert!(
        entry["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{entry}"
    );
    assert!(entry["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert!(entry["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn streams_log_how_they_ended_closed_no_route_and_backend_connect_error() {
    let backend_pki = TestPki::new();
    let (cert, key) = backend_pki.server_cert(&["a.example.com", "down.example.com"]);
    let backend = start_tls_backend("backend-a", &cert, &key).await;
    // A port nothing listens on: bound, then released.
    let down = {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let yaml = [
        gateway(PASSTHROUGH_LISTENER),
        service_yaml("svc-a", &[backend], None),
        service_yaml("svc-down", &[down], None),
        tls_route("route-a", "[a.example.com]", "svc-a"),
        tls_route("route-down", "[down.example.com]", "svc-down"),
    ]
    .concat();
    // Long enough that no stream here ends by it.
    let (gw, _dir, log) = logged_gateway(&yaml, Duration::from_secs(600)).await;
    let port = gw.port("TLS_PORT");

    let (answer, _) = exchange(&backend_pki, port, "a.example.com", "hi")
        .await
        .expect("passthrough");
    assert_eq!(answer, "backend-a: hi");
    // `exchange` dropped its stream: the client closed, the gateway passed
    // the close on.
    let closed = wait_for_line(&log, |v| v["sni"] == "a.example.com").await;
    assert_eq!(closed["outcome"], "closed", "{closed}");
    assert_eq!(closed["tls_mode"], "passthrough");
    assert_eq!(closed["route"], "tlsroute/default/route-a/rule/0");
    assert_eq!(closed["upstream"], backend.to_string());
    // Passthrough counts TLS records: at least the ClientHello one way
    // and the server's handshake and answer the other.
    let received = closed["bytes_received"].as_u64().expect("bytes_received");
    let sent = closed["bytes"].as_u64().expect("bytes");
    assert!(received > "hi\n".len() as u64, "{closed}");
    assert!(sent > "backend-a: hi\n".len() as u64, "{closed}");

    assert_closed(port, ServerName::try_from("other.example.com").unwrap()).await;
    let no_route = wait_for_line(&log, |v| v["sni"] == "other.example.com").await;
    assert_eq!(no_route["outcome"], "no-route", "{no_route}");
    assert!(no_route["route"].is_null(), "{no_route}");
    assert_eq!(no_route["bytes"], 0);

    assert_closed(port, ServerName::try_from("down.example.com").unwrap()).await;
    let refused = wait_for_line(&log, |v| v["sni"] == "down.example.com").await;
    assert_eq!(refused["outcome"], "backend-connect-error", "{refused}");
    assert_eq!(refused["route"], "tlsroute/default/route-down/rule/0");
    assert_eq!(refused["upstream"], down.to_string());

    // A stream without a ClientHello (not TLS) writes no line, like a
    // connection that never sent an HTTP request.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let (answer, _) = exchange(&backend_pki, port, "a.example.com", "last")
        .await
        .expect("passthrough");
    assert_eq!(answer, "backend-a: last");
    wait_for_line(&log, |v| {
        v["outcome"] == "closed" && v["client"] != closed["client"]
    })
    .await;
    assert_eq!(log_lines(&log).len(), 4, "{:?}", log_lines(&log));
}

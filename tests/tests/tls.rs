//! Frontend TLS over real sockets: certificates by SNI, rotation without
//! dropping established connections, per-listener minimum version, cipher
//! suites and ALPN, invalid settings reported, HTTP -> HTTPS redirect and
//! misdirected requests (421) over HTTP/1.1 and HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

fn route(name: &str, section: &str, hostnames: &str, service: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: {section}}}]
  hostnames: {hostnames}
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

/// A client trusting `pki` that speaks only these TLS versions.
fn client(
    pki: &TestPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(config: Arc<rustls::ClientConfig>, port: u16, sni: &str) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("a server certificate")
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// An HTTP/1.1 connection kept open across requests.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    async fn open(tls: Tls) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        H1 { sender }
    }

    async fn get(&mut self, host: &str, path: &str) -> Answer {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), self.sender.send_request(req))
            .await
            .expect("answer in time")
            .expect("request on the open connection");
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

#[tokio::test]
async fn sni_picks_each_listeners_certificate_and_the_catch_all_is_the_default() {
    let pki = TestPki::new();
    let (cert_a, key_a) = pki.server_cert(&["a.example.com"]);
    let (cert_w, key_w) = pki.server_cert(&["*.example.com"]);
    let (cert_d, key_d) = pki.server_cert(&["default.test", "127.0.0.1"]);
    let echo = start_echo("e").await;
    let listeners = "  - name: a
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: a.example.com
    tls: {certificateRefs: [{name: cert-a}]}
  - name: wild
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: \"*.example.com\"
    tls: {certificateRefs: [{name: cert-w}]}
  - name: any
    protocol: HTTPS
    port: ${HTTPS_PORT}
    tls: {certificateRefs: [{name: cert-d}]}";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("cert-a", &cert_a, &key_a),
        tls_secret_yaml("cert-w", &cert_w, &key_w),
        tls_secret_yaml("cert-d", &cert_d, &key_d),
        service_yaml("echo", &[echo], None),
        route("r", "any", "[]", "echo"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let config = pki.client_config(&[b"http/1.1"]);
    let tls = connect(config.clone(), port, "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&cert_a), "exact name");
    let tls = connect(config.clone(), port, "b.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&cert_w), "wildcard");
    let tls = connect(config.clone(), port, "unknown.test").await;
    // The catch-all listener's certificate does not name it: the client
    // refuses, after the gateway offered the default.
    assert!(tls.is_err());
    // No SNI (an IP address): the default certificate, which names it.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(LOOPBACK.into()), tcp)
        .await
        .expect("default certificate for a client without SNI");
    assert_eq!(presented(&tls), der(&cert_d));
    let mut h1 = H1::open(tls).await;
    assert_eq!(h1.get("127.0.0.1", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn one_listener_with_several_certificates_presents_the_one_naming_the_sni() {
    let pki = TestPki::new();
    let (cert_a, key_a) = pki.server_cert(&["a.example.com"]);
    let (cert_b, key_b) = pki.server_cert(&["b.example.com"]);
    let echo = start_echo("e").await;
    let listener = "  - name: https
    protocol: HTTPS
    port: ${HTTPS_PORT}
    tls: {certificateRefs: [{name: cert-a}, {name: cert-b}]}";
    let yaml = [
        gateway(listener),
        tls_secret_yaml("cert-a", &cert_a, &key_a),
        tls_secret_yaml("cert-b", &cert_b, &key_b),
        service_yaml("echo", &[echo], None),
        route("r", "https", "[]", "echo"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let config = pki.client_config(&[b"http/1.1"]);
    let tls = connect(config.clone(), port, "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&cert_a));
    let tls = connect(config.clone(), port, "b.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&cert_b), "the second certificateRef");
    let mut h1 = H1::open(tls).await;
    assert_eq!(h1.get("b.example.com", "/").await.pod(), "e");
    // A name neither certificate has: the first one (the client refuses it).
    assert!(connect(config, port, "c.example.com").await.is_err());
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_stay() {
    let pki = TestPki::new();
    let (old_cert, old_key) = pki.server_cert(&["a.example.com"]);
    let (new_cert, new_key) = pki.server_cert(&["a.example.com"]);
    let echo = start_echo("e").await;
    let listener = "  - name: https
    protocol: HTTPS
    port: ${HTTPS_PORT}
    tls: {certificateRefs: [{name: cert}]}";
    let config = |cert: &str, key: &str| {
        [
            gateway(listener),
            tls_secret_yaml("cert", cert, key),
            service_yaml("echo", &[echo], None),
            route("r", "https", "[]", "echo"),
        ]
        .concat()
    };
    let gw = TestGateway::start(&config(&old_cert, &old_key), &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let client = pki.client_config(&[b"http/1.1"]);

    let tls = connect(client.clone(), port, "a.example.com")
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&old_cert));
    let mut open = H1::open(tls).await;
    assert_eq!(open.get("a.example.com", "/1").await.pod(), "e");

    gw.reconfigure(&config(&new_cert, &new_key)).await;

    let tls = connect(client, port, "a.example.com").await.unwrap();
    assert_eq!(
        presented(&tls),
        der(&new_cert),
        "new handshakes: new certificate"
    );
    let mut fresh = H1::open(tls).await;
    assert_eq!(fresh.get("a.example.com", "/2").await.pod(), "e");
    // The connection made with the old certificate is still served.
    for i in 0..3 {
        let answer = open.get("a.example.com", &format!("/old/{i}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.echo()["path"], format!("/old/{i}"));
    }
}

#[tokio::test]
async fn minimum_version_cipher_suites_and_alpn_are_per_listener() {
    let pki = TestPki::new();
    // rcgen makes ECDSA P-256 keys: ECDSA suites apply under TLS 1.2.
    let (cert, key) = pki.server_cert(&[
        "modern.example.com",
        "legacy.example.com",
        "suite.example.com",
        "h1.example.com",
    ]);
    let echo = start_echo("e").await;
    let listeners = "  - name: modern
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: modern.example.com
    tls:
      certificateRefs: [{name: cert}]
      options: {portcullis.dev/min-tls-version: \"1.3\"}
  - name: legacy
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: legacy.example.com
    tls: {certificateRefs: [{name: cert}]}
  - name: suite
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: suite.example.com
    tls:
      certificateRefs: [{name: cert}]
      options: {portcullis.dev/cipher-suites: \"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\"}
  - name: h1
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: h1.example.com
    tls:
      certificateRefs: [{name: cert}]
      options: {portcullis.dev/alpn: http/1.1}";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("cert", &cert, &key),
        service_yaml("echo", &[echo], None),
        route("r1", "modern", "[]", "echo"),
        route("r2", "legacy", "[]", "echo"),
        route("r3", "suite", "[]", "echo"),
        route("r4", "h1", "[]", "echo"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let tls12 = client(&pki, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let tls13 = client(&pki, &[&rustls::version::TLS13], &[b"http/1.1"]);

    // TLS 1.3 required: a TLS 1.2-only client is refused, 1.3 is served.
    let refused = connect(tls12.clone(), port, "modern.example.com").await;
    let err = refused.expect_err("TLS 1.2 refused where 1.3 is the minimum");
    assert!(
        err.to_string().to_lowercase().contains("protocolversion")
            || err.to_string().to_lowercase().contains("protocol version"),
        "refused for the version: {err}"
    );
    let tls = connect(tls13, port, "modern.example.com").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        H1::open(tls)
            .await
            .get("modern.example.com", "/")
            .await
            .pod(),
        "e"
    );

    // Same port, another listener without the option: TLS 1.2 is fine.
    let tls = connect(tls12.clone(), port, "legacy.example.com")
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_ne!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "the default preference is AES-GCM"
    );

    // Cipher suites: only the listed one is offered.
    let tls = connect(tls12, port, "suite.example.com").await.unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );

    // ALPN: h2 is offered by default, not where the listener says http/1.1.
    let both = pki.client_config(&[b"h2", b"http/1.1"]);
    let tls = connect(both.clone(), port, "legacy.example.com")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let tls = connect(both, port, "h1.example.com").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        H1::open(tls).await.get("h1.example.com", "/").await.pod(),
        "e"
    );
}

#[tokio::test]
async fn invalid_tls_options_are_reported_and_the_other_listeners_serve() {
    let pki = TestPki::new();
    let (cert, key) = pki.server_cert(&["good.example.com", "bad.example.com"]);
    let echo = start_echo("e").await;
    let listeners = "  - name: good
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: good.example.com
    tls: {certificateRefs: [{name: cert}]}
  - name: bad
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: bad.example.com
    tls:
      certificateRefs: [{name: cert}]
      options: {portcullis.dev/min-tls-version: \"1.0\"}";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("cert", &cert, &key),
        service_yaml("echo", &[echo], None),
        route("good", "good", "[]", "echo"),
        route("bad", "bad", "[]", "echo"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let tls = connect(pki.client_config(&[b"http/1.1"]), port, "good.example.com")
        .await
        .unwrap();
    assert_eq!(
        H1::open(tls).await.get("good.example.com", "/").await.pod(),
        "e"
    );

    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let gateway = statuses
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["kind"] == "Gateway")
        .cloned()
        .expect("Gateway status");
    let listeners = gateway["status"]["listeners"].as_array().unwrap();
    let bad = listeners.iter().find(|l| l["name"] == "bad").unwrap();
    let programmed = bad["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "Invalid");
    let message = programmed["message"].as_str().unwrap();
    assert!(message.contains("min-tls-version"), "{message}");
    let good = listeners.iter().find(|l| l["name"] == "good").unwrap();
    assert!(good.to_string().contains("\"reason\":\"Programmed\""));
    // The invalid listener is not served: its routes are unreachable.
    let tls = connect(pki.client_config(&[b"http/1.1"]), port, "bad.example.com")
        .await
        .unwrap();
    assert_eq!(
        H1::open(tls).await.get("bad.example.com", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn http_redirects_to_https_and_the_redirect_target_serves() {
    let pki = TestPki::new();
    let (cert, key) = pki.server_cert(&["a.example.com"]);
    let echo = start_echo("secure").await;
    let listeners = "  - name: http
    protocol: HTTP
    port: ${HTTP_PORT}
  - name: https
    protocol: HTTPS
    port: ${HTTPS_PORT}
    tls: {certificateRefs: [{name: cert}]}";
    let redirect = "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-https, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, port: ${HTTPS_PORT}, statusCode: 301}
";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("cert", &cert, &key),
        service_yaml("echo", &[echo], None),
        redirect.to_string(),
        route("served", "https", "[]", "echo"),
    ]
    .concat();
    let gw = TestGateway::start(&yaml, &["HTTP_PORT", "HTTPS_PORT"]).await;
    let https_port = gw.port("HTTPS_PORT");

    let answer = get(&gw.url("HTTP_PORT", "/account?x=1"), "a.example.com", &[]).await;
    assert_eq!(answer.status, StatusCode::MOVED_PERMANENTLY);
    let location = answer.headers["location"].to_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("https://a.example.com:{https_port}/account?x=1")
    );
    // Follow it over real TLS.
    let uri: http::Uri = location.parse().unwrap();
    let tls = connect(
        pki.client_config(&[b"http/1.1"]),
        uri.port_u16().unwrap(),
        uri.host().unwrap(),
    )
    .await
    .unwrap();
    let answer = H1::open(tls)
        .await
        .get("a.example.com", uri.path_and_query().unwrap().as_str())
        .await;
    assert_eq!(answer.pod(), "secure");
    assert_eq!(answer.echo()["path"], "/account?x=1");
}

/// Two listeners with their own certificates on one port; the `a`
/// certificate also names `b` (so a browser would reuse its connection
/// for `b`: HTTP/2 connection coalescing).
async fn coalescing_gateway(pki: &TestPki) -> TestGateway {
    let (cert_a, key_a) = pki.server_cert(&["a.example.com", "b.example.com"]);
    let (cert_b, key_b) = pki.server_cert(&["b.example.com"]);
    let echo_a = start_echo("a").await;
    let echo_b = start_echo("b").await;
    let listeners = "  - name: a
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: a.example.com
    tls: {certificateRefs: [{name: cert-a}]}
  - name: b
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: b.example.com
    tls: {certificateRefs: [{name: cert-b}]}";
    let yaml = [
        gateway(listeners),
        tls_secret_yaml("cert-a", &cert_a, &key_a),
        tls_secret_yaml("cert-b", &cert_b, &key_b),
        service_yaml("svc-a", &[echo_a], None),
        service_yaml("svc-b", &[echo_b], None),
        route("ra", "a", "[]", "svc-a"),
        route("rb", "b", "[]", "svc-b"),
    ]
    .concat();
    TestGateway::start(&yaml, &["HTTPS_PORT"]).await
}

#[tokio::test]
async fn a_host_of_another_certificate_is_misdirected_over_http1() {
    let pki = TestPki::new();
    let gw = coalescing_gateway(&pki).await;
    let port = gw.port("HTTPS_PORT");
    let tls = connect(pki.client_config(&[b"http/1.1"]), port, "a.example.com")
        .await
        .unwrap();
    let mut conn = H1::open(tls).await;
    assert_eq!(conn.get("a.example.com", "/").await.pod(), "a");
    let answer = conn.get("b.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    // With the right SNI, b is served.
    let tls = connect(pki.client_config(&[b"http/1.1"]), port, "b.example.com")
        .await
        .unwrap();
    assert_eq!(
        H1::open(tls).await.get("b.example.com", "/").await.pod(),
        "b"
    );
    // The connection stays usable for its own host (and port suffixes do
    // not matter).
    assert_eq!(
        conn.get(&format!("a.example.com:{port}"), "/").await.pod(),
        "a"
    );
}

#[tokio::test]
async fn a_host_of_another_certificate_is_misdirected_over_http2() {
    let pki = TestPki::new();
    let gw = coalescing_gateway(&pki).await;
    let port = gw.port("HTTPS_PORT");
    let tls = connect(pki.client_config(&[b"h2"]), port, "a.example.com")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut get = |authority: &str| {
        let req = Request::get(format!("https://{authority}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = sender.send_request(req);
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(5), fut)
                .await
                .unwrap()
                .unwrap();
            resp.status()
        }
    };
    assert_eq!(get("a.example.com").await, StatusCode::OK);
    assert_eq!(get("b.example.com").await, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(get("a.example.com").await, StatusCode::OK);
}

//! Mutual TLS both ways, over real sockets with certificates made here:
//! the Gateway's client certificate validation (`spec.tls.frontend`) with
//! the verified identity in authorization and an opt-in header, and TLS to
//! backends (`BackendTLSPolicy`) including the Gateway's backend client
//! certificate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "api.example.com";

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A ConfigMap holding `ca.crt`.
fn ca_config_map(name: &str, pem: &str) -> String {
    format!(
        "
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: default}}
data:
  ca.crt: |
{}
",
        indent(pem, 4)
    )
}

/// Gateway `default/gw` with one HTTPS listener (certificate for HOST),
/// `spec_tls` as its `spec.tls` (YAML at 2-space indent, may be empty),
/// `listener_tls_options` added to the listener's `tls`, a route to
/// `service` and whatever `extra` holds.
fn config(
    pki: &TestPki,
    spec_tls: &str,
    listener_tls_options: &str,
    service: &str,
    extra: &str,
) -> String {
    let (cert, key) = pki.server_cert(&[HOST]);
    format!(
        "{GATEWAY_CLASS}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
{spec_tls}
  listeners:
  - name: https
    protocol: HTTPS
    port: ${{HTTPS_PORT}}
    tls:
      certificateRefs: [{{name: server-cert}}]
{listener_tls_options}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
{}{extra}",
        tls_secret_yaml("server-cert", &cert, &key)
    )
}

fn frontend_validation(mode: &str) -> String {
    format!(
        "  tls:
    frontend:
      default:
        validation:
          mode: {mode}
          caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: client-ca}}]"
    )
}

/// A client TLS config trusting `server_pki`, presenting `cert` if given.
fn client_tls(server_pki: &TestPki, cert: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_pki.ca_cert.der().clone()).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client chain"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key"),
            )
            .expect("client auth"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTPS request; `Err` when the handshake or the request fails (a
/// client certificate refused by the server surfaces on first I/O with
/// TLS 1.3).
async fn https(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from(HOST).expect("name"), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Full::new(Bytes::new())).expect("request")),
    )
    .await
    .map_err(|_| "request timed out".to_string())?
    .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

struct Frontend {
    gw: TestGateway,
    server_pki: TestPki,
    client_pki: TestPki,
}

async fn frontend(mode: &str, listener_options: &str, extra: &str) -> Frontend {
    let server_pki = TestPki::new();
    let client_pki = TestPki::new();
    let echo = start_echo("echo").await;
    let yaml = format!(
        "{}{}{}",
        config(
            &server_pki,
            &frontend_validation(mode),
            listener_options,
            "echo",
            extra
        ),
        service_yaml("echo", &[echo], None),
        ca_config_map("client-ca", &client_pki.ca_cert.pem()),
    );
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    Frontend {
        gw,
        server_pki,
        client_pki,
    }
}

#[tokio::test]
async fn a_required_client_certificate_is_accepted_and_a_missing_one_refused() {
    let f = frontend("AllowValidOnly", "", "").await;
    let port = f.gw.port("HTTPS_PORT");
    let cert = f.client_pki.client_cert("client-a", &[]);
    let ok = https(port, client_tls(&f.server_pki, Some(&cert)), &[])
        .await
        .expect("a valid client certificate is served");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.pod(), "echo");

    let refused = https(port, client_tls(&f.server_pki, None), &[]).await;
    assert!(
        refused.is_err(),
        "no client certificate must end the connection, got {refused:?}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let f = frontend("AllowValidOnly", "", "").await;
    let stranger = TestPki::new();
    let cert = stranger.client_cert("client-a", &[]);
    let refused = https(
        f.gw.port("HTTPS_PORT"),
        client_tls(&f.server_pki, Some(&cert)),
        &[],
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate of an untrusted CA must end the connection, got {refused:?}"
    );
}

/// An AuthPolicy on the Gateway whose authorization needs a client
/// certificate (any) or, for /admin, one with a given URI SAN.
fn certificate_policy() -> &'static str {
    "
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: mtls, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  authorization:
    defaultAction: Deny
    rules:
    - name: billing-only
      action: Allow
      clientCertificate: {sans: [\"spiffe://acme/billing\"]}
"
}

#[tokio::test]
async fn optional_mode_serves_without_a_certificate_and_authorization_can_still_deny() {
    let f = frontend("AllowInsecureFallback", "", certificate_policy()).await;
    let port = f.gw.port("HTTPS_PORT");

    // No certificate: the handshake passes, the rule needing one denies.
    let anonymous = https(port, client_tls(&f.server_pki, None), &[])
        .await
        .expect("optional mode accepts a connection without certificate");
    assert_eq!(anonymous.status, 403);

    // A certificate from an untrusted CA: accepted by the handshake
    // (fallback), but it is no identity.
    let stranger = TestPki::new().client_cert("billing", &["spiffe://acme/billing"]);
    let untrusted = https(port, client_tls(&f.server_pki, Some(&stranger)), &[])
        .await
        .expect("optional mode accepts a certificate that does not verify");
    assert_eq!(untrusted.status, 403);

    let billing = f
        .client_pki
        .client_cert("billing", &["spiffe://acme/billing"]);
    let ok = https(port, client_tls(&f.server_pki, Some(&billing)), &[])
        .await
        .expect("served");
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn the_verified_identity_decides_authorization_rules() {
    let f = frontend("AllowValidOnly", "", certificate_policy()).await;
    let port = f.gw.port("HTTPS_PORT");
    let billing = f
        .client_pki
        .client_cert("billing", &["spiffe://acme/billing"]);
    let other = f
        .client_pki
        .client_cert("frontend", &["spiffe://acme/frontend"]);
    let allowed = https(port, client_tls(&f.server_pki, Some(&billing)), &[])
        .await
        .expect("served");
    assert_eq!(allowed.status, 200);
    let denied = https(port, client_tls(&f.server_pki, Some(&other)), &[])
        .await
        .expect("served");
    assert_eq!(denied.status, 403, "a valid certificate with another SAN");
}

#[tokio::test]
async fn the_identity_header_is_forwarded_when_configured_and_a_spoofed_one_is_stripped() {
    let options = "      options: {portcullis.dev/client-certificate-header: x-client-cert}";
    let f = frontend("AllowInsecureFallback", options, "").await;
    let port = f.gw.port("HTTPS_PORT");
    let spoof = [("x-client-cert", "Hash=00;Subject=\"CN=admin\"")];

    let cert = f.client_pki.client_cert("client-a", &["spiffe://acme/a"]);
    let with_cert = https(port, client_tls(&f.server_pki, Some(&cert)), &spoof)
        .await
        .expect("served");
    let forwarded = with_cert
        .echoed_header("x-client-cert")
        .expect("identity header forwarded");
    assert!(forwarded.contains("Subject=\"CN=client-a\""), "{forwarded}");
    assert!(forwarded.contains("URI=spiffe://acme/a"), "{forwarded}");
    assert!(!forwarded.contains("CN=admin"), "{forwarded}");

    let anonymous = https(port, client_tls(&f.server_pki, None), &spoof)
        .await
        .expect("served");
    assert_eq!(anonymous.status, 200);
    assert_eq!(
        anonymous.echoed_header("x-client-cert"),
        None,
        "a client-sent identity header never reaches the backend"
    );
}

// ------------------------------------------------------------ backend TLS

/// A TLS backend: answers 200 with `sni=<name> client=<presented|none>`
/// and requires a client certificate of `client_ca` when given.
async fn start_tls_backend(cert: (String, String), client_ca: Option<&TestPki>) -> SocketAddr {
    start_counting_tls_backend(cert, client_ca).await.0
}

/// [`start_tls_backend`], also counting the requests for `/healthz` (which
/// can only arrive over TLS).
async fn start_counting_tls_backend(
    cert: (String, String),
    client_ca: Option<&TestPki>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let health_hits = Arc::new(AtomicUsize::new(0));
    let hits = health_hits.clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_cert.der().clone()).expect("add CA");
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier"),
            )
        }
    };
    let mut config = builder
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.0.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain"),
            PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).expect("key"),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("none").to_string();
                let client = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|_| "presented")
                    .unwrap_or("none");
                let body = format!("sni={sni} client={client}");
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    if req.uri().path() == "/healthz" {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, health_hits)
}

fn backend_tls_policy(name: &str, validation: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: secure}}]
  validation:
{validation}
"
    )
}

/// An HTTP listener routing to Service `secure` at `backend`, plus `extra`.
fn plain_gateway(backend: SocketAddr, spec_tls: &str, extra: &str) -> String {
    format!(
        "{GATEWAY_CLASS}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
{spec_tls}
  listeners:
  - name: http
    protocol: HTTP
    port: ${{HTTP_PORT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: secure, port: 80}}]
{}{extra}",
        service_yaml("secure", &[backend], None)
    )
}

async fn status_of(gw: &TestGateway, name: &str) -> serde_json::Value {
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    statuses
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for {name}: {statuses}"))
}

#[tokio::test]
async fn backend_tls_with_a_ca_ref_verifies_the_hostname() {
    let backend_pki = TestPki::new();
    let backend = start_tls_backend(backend_pki.server_cert(&["secure.internal"]), None).await;
    let validation = |hostname: &str| {
        format!(
            "    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: backend-ca}}]
    hostname: {hostname}"
        )
    };
    let ca = ca_config_map("backend-ca", &backend_pki.ca_cert.pem());
    let yaml = plain_gateway(
        backend,
        "",
        &format!(
            "{ca}{}",
            backend_tls_policy("secure", &validation("secure.internal"))
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let ok = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, "sni=secure.internal client=none");
    let status = status_of(&gw, "secure").await.to_string();
    assert!(status.contains("\"reason\":\"Accepted\""), "{status}");
    assert!(status.contains("\"reason\":\"ResolvedRefs\""), "{status}");

    // The certificate does not name the policy's hostname: refused.
    gw.reconfigure(&plain_gateway(
        backend,
        "",
        &format!(
            "{ca}{}",
            backend_tls_policy("secure", &validation("other.internal"))
        ),
    ))
    .await;
    let mismatch = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(mismatch.status, 502);
    assert!(
        String::from_utf8_lossy(&mismatch.body).contains("upstream TLS error"),
        "{:?}",
        mismatch.body
    );
}

#[tokio::test]
async fn backend_tls_refuses_a_certificate_from_another_ca() {
    let backend_pki = TestPki::new();
    let other = TestPki::new();
    let backend = start_tls_backend(backend_pki.server_cert(&["secure.internal"]), None).await;
    let yaml = plain_gateway(
        backend,
        "",
        &format!(
            "{}{}",
            ca_config_map("backend-ca", &other.ca_cert.pem()),
            backend_tls_policy(
                "secure",
                "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: backend-ca}]
    hostname: secure.internal"
            )
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let refused = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(refused.status, 502);
}

#[tokio::test]
async fn backend_tls_subject_alt_names_replace_the_hostname_check() {
    let backend_pki = TestPki::new();
    // The certificate names san.internal only; SNI is secure.internal.
    let backend = start_tls_backend(backend_pki.server_cert(&["san.internal"]), None).await;
    let policy = |san: &str| {
        backend_tls_policy(
            "secure",
            &format!(
                "    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: backend-ca}}]
    hostname: secure.internal
    subjectAltNames: [{{type: Hostname, hostname: {san}}}]"
            ),
        )
    };
    let ca = ca_config_map("backend-ca", &backend_pki.ca_cert.pem());
    let gw = TestGateway::start(
        &plain_gateway(backend, "", &format!("{ca}{}", policy("san.internal"))),
        &["HTTP_PORT"],
    )
    .await;
    let ok = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, "sni=secure.internal client=none");

    gw.reconfigure(&plain_gateway(
        backend,
        "",
        &format!("{ca}{}", policy("nope.internal")),
    ))
    .await;
    let refused = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(refused.status, 502);
}

#[tokio::test]
async fn a_system_roots_policy_is_accepted_and_an_invalid_ca_ref_fails_closed() {
    let backend_pki = TestPki::new();
    let backend = start_tls_backend(backend_pki.server_cert(&["secure.internal"]), None).await;
    let system = backend_tls_policy(
        "secure",
        "    wellKnownCACertificates: System
    hostname: secure.internal",
    );
    let gw = TestGateway::start(&plain_gateway(backend, "", &system), &["HTTP_PORT"]).await;
    let status = status_of(&gw, "secure").await.to_string();
    assert!(
        status.contains("\"reason\":\"Accepted\"") && status.contains("\"status\":\"True\""),
        "{status}"
    );
    // The test CA is not a system root.
    let refused = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(refused.status, 502);

    // A missing ConfigMap: the policy is not accepted and traffic to the
    // Service fails instead of going out unverified.
    let missing = backend_tls_policy(
        "secure",
        "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: nowhere}]
    hostname: secure.internal",
    );
    gw.reconfigure(&plain_gateway(backend, "", &missing)).await;
    let status = status_of(&gw, "secure").await.to_string();
    assert!(status.contains("NoValidCACertificate"), "{status}");
    assert!(status.contains("InvalidCACertificateRef"), "{status}");
    let failed = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(failed.status, 502);
}

#[tokio::test]
async fn the_gateway_presents_its_backend_client_certificate() {
    let backend_pki = TestPki::new();
    let gateway_client_pki = TestPki::new();
    let backend = start_tls_backend(
        backend_pki.server_cert(&["secure.internal"]),
        Some(&gateway_client_pki),
    )
    .await;
    let (cert, key) = gateway_client_pki.client_cert("portcullis", &[]);
    let extra = format!(
        "{}{}{}",
        ca_config_map("backend-ca", &backend_pki.ca_cert.pem()),
        tls_secret_yaml("gateway-client", &cert, &key),
        backend_tls_policy(
            "secure",
            "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: backend-ca}]
    hostname: secure.internal"
        )
    );
    let spec_tls = "  tls:
    backend:
      clientCertificateRef: {name: gateway-client}";
    let gw = TestGateway::start(&plain_gateway(backend, spec_tls, &extra), &["HTTP_PORT"]).await;
    let ok = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body, "sni=secure.internal client=presented");
    let status = status_of(&gw, "gw").await.to_string();
    assert!(status.contains("\"type\":\"ResolvedRefs\""), "{status}");

    // Without the Gateway's certificate the backend refuses the handshake.
    gw.reconfigure(&plain_gateway(backend, "", &extra)).await;
    let refused = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(refused.status, 502);
}

#[tokio::test]
async fn http_health_checks_of_a_tls_backend_speak_tls() {
    let backend_pki = TestPki::new();
    let (backend, health_hits) =
        start_counting_tls_backend(backend_pki.server_cert(&["secure.internal"]), None).await;
    let extra = format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: health, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: secure}}]
  defaults:
    healthCheck: {{interval: 50ms, timeout: 1s, jitter: 10ms, unhealthyThreshold: 1, healthyThreshold: 1, http: {{path: /healthz}}}}
",
        ca_config_map("backend-ca", &backend_pki.ca_cert.pem()),
        backend_tls_policy(
            "secure",
            "    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: backend-ca}]
    hostname: secure.internal"
        )
    );
    let gw = TestGateway::start(&plain_gateway(backend, "", &extra), &["HTTP_PORT"]).await;
    // Probes only reach the HTTP layer through a TLS handshake.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health_hits.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no health probe reached the TLS backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = gw.running.dataplane.shared.current();
    let backend_state = state
        .backends
        .get("default/secure:80")
        .expect("backend state");
    let endpoint = backend_state.endpoint(backend).expect("endpoint");
    assert!(endpoint.is_healthy(), "probes over TLS pass");
    let ok = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(ok.status, 200);
}

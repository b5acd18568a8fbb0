//! Test harness: starts real gateways (standalone mode, in-process, on free
//! loopback ports), real echo backends and real clients.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::echo::EchoIdentity;
use portcullis::standalone::Standalone;
use portcullis_dataplane::DataPlaneConfig;
use tokio::net::TcpListener;

pub mod grpc;
pub mod redis;
pub mod websocket;

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Binds a std listener on a free loopback port.
pub fn free_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind((LOOPBACK, 0)).expect("bind a free loopback port")
}

/// Starts an echo backend reporting `pod` as its pod name.
pub async fn start_echo(pod: &str) -> SocketAddr {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    let identity = EchoIdentity {
        namespace: "default".into(),
        pod: pod.into(),
        service: String::new(),
    };
    tokio::spawn(portcullis::echo::serve(listener, identity));
    addr
}

/// A backend that records every request it receives (method, path, headers,
/// body) and answers 200 "recorded".
#[derive(Clone, Default)]
pub struct Recorder {
    pub requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorder {
    pub async fn start() -> (Recorder, SocketAddr) {
        let listener = TcpListener::bind((LOOPBACK, 0))
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder address");
        let recorder = Recorder::default();
        let r = recorder.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let r = r.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let r = r.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                r.requests
                                    .lock()
                                    .expect("recorder lock")
                                    .push(RecordedRequest {
                                        method: parts.method.to_string(),
                                        path: parts
                                            .uri
                                            .path_and_query()
                                            .map(|p| p.to_string())
                                            .unwrap_or_default(),
                                        headers: parts.headers,
                                        body,
                                    });
                                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                    Bytes::from_static(b"recorded"),
                                )))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (recorder, addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("recorder lock").len()
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.count() >= n
    }
}

/// YAML for the GatewayClass every test uses.
pub const GATEWAY_CLASS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: portcullis
spec:
  controllerName: portcullis.dev/gateway-controller
";

/// GatewayClass plus Gateway `default/gw` with these listeners (YAML list
/// items indented by two spaces; `${NAME}` port placeholders allowed).
pub fn gateway(listeners: &str) -> String {
    format!(
        "{GATEWAY_CLASS}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: portcullis
  listeners:
{listeners}
"
    )
}

/// One HTTP listener on the `HTTP_PORT` placeholder.
pub const PLAIN_LISTENER: &str = "  - name: http
    protocol: HTTP
    port: ${HTTP_PORT}";

/// YAML of a selector-less Service `name` (port 80, optional appProtocol)
/// with an EndpointSlice listing `endpoints`.
pub fn service_yaml(name: &str, endpoints: &[SocketAddr], app_protocol: Option<&str>) -> String {
    let app = app_protocol
        .map(|p| format!("\n    appProtocol: {p}"))
        .unwrap_or_default();
    let target_port = endpoints.first().map(|e| e.port()).unwrap_or(8080);
    let addresses: String = endpoints
        .iter()
        .map(|e| {
            format!(
                "\n  - addresses: [\"{}\"]\n    conditions: {{ready: true}}",
                e.ip()
            )
        })
        .collect();
    let endpoints_yaml = if endpoints.is_empty() {
        " []".to_string()
    } else {
        addresses
    };
    format!(
        "
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {target_port}{app}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: http
  port: {target_port}
endpoints:{endpoints_yaml}
"
    )
}

/// A gateway running in-process on a temporary config directory.
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    /// Gateway listener ports by placeholder name (`HTTP_PORT`, ...).
    pub ports: HashMap<String, u16>,
    pub running: Standalone,
}

impl TestGateway {
    /// `yaml` may use `${NAME}` placeholders for listener ports; each gets a
    /// free loopback port (bound before the gateway starts: no race).
    pub async fn start(yaml: &str, port_names: &[&str]) -> TestGateway {
        TestGateway::start_with(yaml, port_names, |_| {}).await
    }

    /// [`TestGateway::start`] with data plane settings adjusted by
    /// `configure` (access log, ...).
    pub async fn start_with(
        yaml: &str,
        port_names: &[&str],
        configure: impl FnOnce(&mut DataPlaneConfig),
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = HashMap::new();
        let mut preopened = HashMap::new();
        for name in port_names {
            let l = free_listener();
            let port = l.local_addr().expect("listener address").port();
            ports.insert(name.to_string(), port);
            preopened.insert(port, l);
        }
        let gw = TestGateway::write_config(dir.path(), yaml, &ports);
        let mut config = DataPlaneConfig {
            bind_ip: LOOPBACK,
            preopened,
            ..DataPlaneConfig::default()
        };
        configure(&mut config);
        let running = portcullis::standalone::start(
            dir.path().to_path_buf(),
            LOOPBACK,
            SocketAddr::new(LOOPBACK, 0),
            Some(config),
        )
        .await
        .expect("start gateway");
        let _ = gw;
        TestGateway {
            dir,
            ports,
            running,
        }
    }

    fn write_config(dir: &Path, yaml: &str, ports: &HashMap<String, u16>) -> PathBuf {
        let path = dir.join("config.yaml");
        std::fs::write(&path, substitute(yaml, ports)).expect("write config");
        path
    }

    /// Replaces the whole configuration; returns once the new table (a
    /// generation above the current one) is being served.
    pub async fn reconfigure(&self, yaml: &str) {
        let before = self.running.dataplane.shared.current().table.generation;
        // Write to a temp file and rename so the watcher never sees a
        // half-written file.
        let tmp = self.dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, substitute(yaml, &self.ports)).expect("write config");
        std::fs::rename(&tmp, self.dir.path().join("config.yaml")).expect("rename config");
        self.wait_for_generation_above(before).await;
    }

    pub async fn wait_for_generation_above(&self, generation: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.running.dataplane.shared.current().table.generation <= generation {
            assert!(
                tokio::time::Instant::now() < deadline,
                "configuration change not picked up within 10s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    pub fn url(&self, port_name: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port(port_name))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }
}

fn substitute(yaml: &str, ports: &HashMap<String, u16>) -> String {
    let mut out = yaml.to_string();
    for (name, port) in ports {
        out = out.replace(&format!("${{{name}}}"), &port.to_string());
    }
    out
}

/// A plain HTTP/1.1 client (keep-alive pool).
pub fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c prior-knowledge client.
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A response read completely.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The echo backend's JSON.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not echo JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Pod name the echo backend reported.
    pub fn pod(&self) -> String {
        self.echo()["pod"].as_str().unwrap_or_default().to_string()
    }

    /// A request header as the backend saw it.
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        let echo = self.echo();
        let headers = echo["headers"].as_object()?;
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v[0].as_str().map(str::to_string))
    }
}

/// Sends a request (bounded by a 10 s timeout) and reads the whole answer.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with `Host: host` and extra headers.
pub async fn get(url: &str, host: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::get(url).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(
        &http1_client(),
        builder.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

/// Counts outcomes of a load loop.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
}

impl Tally {
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A test certificate authority and server certificates signed by it.
pub struct TestPki {
    pub ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca_cert = params.self_signed(&ca_key).expect("ca cert");
        TestPki { ca_cert, ca_key }
    }

    /// (certificate PEM, key PEM) for these DNS names.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate PEM, key PEM) of a client certificate: subject
    /// `CN=common_name`, URI SANs `uris`, signed by this CA.
    pub fn client_cert(&self, common_name: &str, uris: &[&str]) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("URI SAN")))
            .collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls client config trusting only this CA, with the given ALPN.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_cert.der().clone()).expect("add CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// YAML of a kubernetes.io/tls Secret.
pub fn tls_secret_yaml(name: &str, cert_pem: &str, key_pem: &str) -> String {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "
---
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: default
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
",
        indent(cert_pem),
        indent(key_pem)
    )
}

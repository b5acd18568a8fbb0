//! Fixtures shared by the fuzz targets: a routing table compiled once from
//! YAML (the same path a real configuration takes), and a way to split
//! fuzz input into request parts.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Snapshot};
use portcullis_dataplane::router::PortRoutes;
use portcullis_model::RouteTable;

/// Listener port of every fixture.
pub const PORT: u16 = 8080;

/// GatewayClass + Gateway (one HTTP listener on [`PORT`]) + a Service
/// `backend`, followed by `extra` (routes, policies, Secrets).
pub fn config(extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
  listeners:
  - {{name: http, protocol: HTTP, port: {PORT}}}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8081}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels: {{kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{{name: http, port: 8081}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
{extra}"
    )
}

/// Parses and compiles YAML text as the file provider does. `None` when
/// the text is not a valid set of objects.
pub fn compile_yaml(text: &str) -> Option<RouteTable> {
    let objects = parse_documents(text).ok()?;
    let mut snapshot = Snapshot::default();
    for object in objects {
        let _ = snapshot.insert(object);
    }
    Some(compile(&snapshot, &CompileOptions::default()).table)
}

/// The routes of [`PORT`] of a fixture that must compile.
pub fn fixture_routes(extra: &str) -> PortRoutes {
    let table = compile_yaml(&config(extra)).expect("the fixture parses");
    let index = table
        .ports
        .iter()
        .position(|p| p.port == PORT)
        .expect("the fixture serves its port");
    PortRoutes::new(Arc::new(table), index)
}

/// Request parts from fuzz input: lines `host`, `path?query`, `method`,
/// then `name: value` headers.
pub struct FuzzRequest<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: http::Method,
    pub headers: HeaderMap,
}

impl<'a> FuzzRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Option<FuzzRequest<'a>> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.split('\n');
        let host = lines.next().unwrap_or("");
        let target = lines.next().unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let method = http::Method::from_bytes(lines.next().unwrap_or("GET").as_bytes()).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        Some(FuzzRequest {
            host,
            path,
            query,
            method,
            headers,
        })
    }
}

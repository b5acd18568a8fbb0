//! Test harness: load a YAML fixture, compile it, and ask the questions a
//! user would ask ("which route answers GET /foo on host x?", "which reason
//! does my route show?").

#![allow(dead_code)]

use std::path::PathBuf;

use portcullis_controller::file::parse_documents;
use portcullis_controller::{
    compile, CompileOptions, Compiled, Snapshot, StatusKind, StatusUpdate,
};
use portcullis_model::{BackendTarget, PortConfig, Route, VirtualHost};

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The snapshot of `fixtures/base.yaml` + `fixtures/<name>.yaml` (the base
/// is skipped when the fixture starts with `# no-base`).
pub fn snapshot(name: &str) -> Snapshot {
    let dir = fixtures_dir();
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("fixture exists");
    let mut all = String::new();
    if !text.starts_with("# no-base") {
        all.push_str(&std::fs::read_to_string(dir.join("base.yaml")).expect("base fixture exists"));
        all.push_str("\n---\n");
    }
    all.push_str(&text);
    let mut snapshot = Snapshot::default();
    for object in parse_documents(&all).expect("fixture parses") {
        snapshot.insert(object);
    }
    snapshot
}

pub fn fixture(name: &str) -> Compiled {
    compile(&snapshot(name), &CompileOptions::default())
}

pub fn port(c: &Compiled, port: u16) -> &PortConfig {
    c.table
        .port(port)
        .unwrap_or_else(|| panic!("port {port} is served; table: {:#?}", c.table))
}

/// The virtual host the data plane picks for `host`.
pub fn vhost<'a>(c: &'a Compiled, port_number: u16, host: &str) -> Option<&'a VirtualHost> {
    port(c, port_number)
        .virtual_hosts
        .iter()
        .find(|v| v.hostname.matches(host))
}

/// A request, as far as routing is concerned.
#[derive(Default, Clone)]
pub struct Req<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub query: Vec<(&'a str, &'a str)>,
}

pub fn get<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req {
        host,
        method: "GET",
        path,
        ..Default::default()
    }
}

/// The route the data plane would pick: first matching virtual host, then
/// the first matching route, no fallback.
pub fn route_for<'a>(c: &'a Compiled, port_number: u16, req: &Req<'_>) -> Option<&'a Route> {
    let v = vhost(c, port_number, req.host)?;
    v.routes.iter().find(|r| {
        let m = &r.matcher;
        m.path.matches(req.path)
            && m.method
                .as_deref()
                .is_none_or(|method| method == req.method)
            && m.headers.iter().all(|h| {
                req.headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(h.name.0.as_str()) && h.value.matches(v))
            })
            && m.query_params.iter().all(|q| {
                req.query
                    .iter()
                    .any(|(n, v)| *n == q.name && q.value.matches(v))
            })
    })
}

/// `route-name#rule-index` of the route that answers, or "404".
pub fn answer(c: &Compiled, port_number: u16, req: &Req<'_>) -> String {
    match route_for(c, port_number, req) {
        Some(r) => format!("{}#{}", r.rule.id.name, r.rule.id.rule_index),
        None => "404".to_string(),
    }
}

/// Names of the Service backends of the route answering `req`.
pub fn backends(c: &Compiled, port_number: u16, req: &Req<'_>) -> Vec<String> {
    let r = route_for(c, port_number, req).expect("a route answers");
    r.rule
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Service(s) => s.name.clone(),
            BackendTarget::Invalid { reason } => format!("invalid:{reason}"),
        })
        .collect()
}

pub fn status<'a>(
    c: &'a Compiled,
    kind: StatusKind,
    namespace: Option<&str>,
    name: &str,
) -> &'a StatusUpdate {
    c.status(kind, namespace, name).unwrap_or_else(|| {
        panic!(
            "status of {kind} {namespace:?}/{name}; statuses: {:#?}",
            c.statuses
        )
    })
}

pub fn route_status<'a>(c: &'a Compiled, name: &str) -> &'a StatusUpdate {
    status(c, StatusKind::HttpRoute, Some("default"), name)
}

pub fn gateway_status<'a>(c: &'a Compiled, name: &str) -> &'a StatusUpdate {
    status(c, StatusKind::Gateway, Some("default"), name)
}

/// `(status, reason)` of a condition value.
pub fn sr(condition: Option<&serde_json::Value>) -> (String, String) {
    let c = condition.expect("condition present");
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

pub fn is(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

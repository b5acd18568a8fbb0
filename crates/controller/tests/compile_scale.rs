//! A generated configuration of a few hundred routes, checked against a
//! naive reference model of the Gateway API layout rules.
//!
//! `compile()` indexes routes by hostname and listener to stay fast at tens
//! of thousands of routes; this test rebuilds the expected table the slow,
//! obvious way (every route against every listener against every virtual
//! host) and checks that both agree: the set and order of virtual hosts, the
//! routes in each and their precedence order, attached route counts and the
//! number and order of statuses. The configuration mixes exact, wildcard
//! and absent hostnames, two Gateways sharing a port, two listeners on one
//! port with different hostnames, allowedRoutes Same/All/Selector,
//! cross-namespace backendRefs with and without ReferenceGrants, HTTPRoute /
//! GRPCRoute hostname conflicts, invalid routes and parentRefs to Gateways
//! that do not exist.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Compiled, Snapshot, StatusKind};
use portcullis_model::{HostMatch, PathMatch, RouteKind};

const ROUTES: usize = 360;
const TEAMS: usize = 5;

struct Listener {
    gateway: &'static str,
    name: &'static str,
    port: u16,
    hostname: Option<&'static str>,
    /// "All", "Same" or "Selector" (tier=gold).
    from: &'static str,
}

const LISTENERS: &[Listener] = &[
    Listener {
        gateway: "edge",
        name: "any80",
        port: 80,
        hostname: None,
        from: "All",
    },
    Listener {
        gateway: "edge",
        name: "wild8080",
        port: 8080,
        hostname: Some("*.example.com"),
        from: "All",
    },
    Listener {
        gateway: "edge",
        name: "foo8080",
        port: 8080,
        hostname: Some("foo.example.com"),
        from: "All",
    },
    Listener {
        gateway: "edge",
        name: "gold8081",
        port: 8081,
        hostname: Some("*.svc.example.com"),
        from: "Selector",
    },
    Listener {
        gateway: "edge",
        name: "same8082",
        port: 8082,
        hostname: None,
        from: "Same",
    },
    Listener {
        gateway: "side",
        name: "bar8080",
        port: 8080,
        hostname: Some("bar.example.com"),
        from: "All",
    },
    Listener {
        gateway: "grpc",
        name: "grpc8090",
        port: 8090,
        hostname: None,
        from: "All",
    },
    Listener {
        gateway: "grpc",
        name: "grpcfoo8090",
        port: 8090,
        hostname: Some("foo.example.com"),
        from: "All",
    },
];

/// One generated match, with what route precedence looks at.
struct GenMatch {
    /// The path as [`path_string`] shows the compiled one.
    path: String,
    /// Path kind (exact, regex, prefix) and prefix length, for precedence.
    path_rank: (u8, usize),
    method: bool,
    headers: usize,
    query: usize,
    yaml: String,
}

struct GenRoute {
    kind: RouteKind,
    namespace: String,
    name: String,
    created: Option<String>,
    hostnames: Vec<String>,
    /// (gateway, sectionName)
    parents: Vec<(&'static str, Option<&'static str>)>,
    /// Matches of each rule (a rule without matches has one catch-all).
    rules: Vec<Vec<GenMatch>>,
    yaml: String,
}

fn namespace_of(i: usize) -> String {
    if i % 45 == 7 {
        "infra".to_string()
    } else {
        format!("team-{}", i % TEAMS)
    }
}

fn is_gold(namespace: &str) -> bool {
    matches!(namespace, "team-0" | "team-2" | "team-4")
}

fn base_yaml() -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
",
    );
    for t in 0..TEAMS {
        let tier = if is_gold(&format!("team-{t}")) {
            "gold"
        } else {
            "silver"
        };
        let _ = write!(
            y,
            "---
apiVersion: v1
kind: Namespace
metadata: {{name: team-{t}, labels: {{tier: {tier}}}}}
"
        );
        for svc in ["svc-a", "svc-b"] {
            let _ = write!(
                y,
                "---
apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: team-{t}}}
spec: {{ports: [{{name: http, port: 80}}, {{name: admin, port: 9000}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {svc}-1, namespace: team-{t}, labels: {{kubernetes.io/service-name: {svc}}}}}
addressType: IPv4
ports: [{{name: http, port: 3000}}, {{name: admin, port: 3001}}]
endpoints:
- addresses: [10.{t}.0.1, 10.{t}.0.2]
- addresses: [10.{t}.0.3]
  conditions: {{ready: false}}
"
            );
        }
        // A second slice for svc-a: endpoints are merged across slices.
        let _ = write!(
            y,
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-a-2, namespace: team-{t}, labels: {{kubernetes.io/service-name: svc-a}}}}
addressType: IPv4
ports: [{{name: http, port: 3000}}]
endpoints: [{{addresses: [10.{t}.1.1]}}]
"
        );
    }
    // team-1 accepts every Service reference from team-0's HTTPRoutes,
    // team-3 only to svc-a; team-2 grants nothing.
    y.push_str(
        "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-team-0, namespace: team-1}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team-0}]
  to: [{group: '', kind: Service}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: svc-a-only, namespace: team-3}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team-0}]
  to: [{group: '', kind: Service, name: svc-a}]
",
    );
    for gateway in ["edge", "side", "grpc"] {
        let _ = write!(
            y,
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {gateway}, namespace: infra, generation: 2}}
spec:
  gatewayClassName: portcullis
  listeners:
"
        );
        for l in LISTENERS.iter().filter(|l| l.gateway == gateway) {
            let hostname = l
                .hostname
                .map(|h| format!(", hostname: '{h}'"))
                .unwrap_or_default();
            let from = match l.from {
                "Selector" => "{from: Selector, selector: {matchLabels: {tier: gold}}}".to_string(),
                other => format!("{{from: {other}}}"),
            };
            let _ = writeln!(
                y,
                "  - {{name: {}, port: {}, protocol: HTTP{hostname}, allowedRoutes: {{namespaces: {from}}}}}",
                l.name, l.port
            );
        }
    }
    y
}

fn http_match(
    path_type: &str,
    value: &str,
    method: bool,
    headers: usize,
    query: usize,
) -> GenMatch {
    let (path, path_rank) = match path_type {
        "Exact" => (format!("exact {value}"), (0, 0)),
        "PathPrefix" => (format!("prefix {value}"), (2, value.len())),
        _ => (format!("regex {value}"), (1, 0)),
    };
    let mut yaml = format!("{{path: {{type: {path_type}, value: '{value}'}}");
    if method {
        yaml.push_str(", method: GET");
    }
    if headers > 0 {
        let h: Vec<String> = (0..headers)
            .map(|k| format!("{{name: x-h{k}, value: v}}"))
            .collect();
        let _ = write!(yaml, ", headers: [{}]", h.join(", "));
    }
    if query > 0 {
        let q: Vec<String> = (0..query)
            .map(|k| format!("{{name: q{k}, value: '1'}}"))
            .collect();
        let _ = write!(yaml, ", queryParams: [{}]", q.join(", "));
    }
    yaml.push('}');
    GenMatch {
        path,
        path_rank,
        method,
        headers,
        query,
        yaml,
    }
}

fn created(i: usize) -> Option<String> {
    // Many equal timestamps, so that namespace/name break ties.
    (i % 3 != 1).then(|| format!("2024-01-01T{:02}:{:02}:00Z", (i % 40) / 20, (i * 7) % 20))
}

fn http_route(i: usize) -> GenRoute {
    let namespace = namespace_of(i);
    let name = format!("r{i:03}");
    let hostnames: Vec<String> = match i % 7 {
        0 => vec![format!("r{i}.example.com")],
        1 => vec![format!("*.w{}.example.com", i % 5)],
        2 => vec![],
        3 => vec!["foo.example.com".into()],
        4 => vec!["bar.example.com".into(), format!("r{i}.example.com")],
        5 => vec!["*.example.com".into(), format!("r{i}.svc.example.com")],
        _ => vec![format!("r{i}.other.org")],
    };
    let mut parents: Vec<(&'static str, Option<&'static str>)> = if i % 20 == 11 {
        // Only gold namespaces may attach here: team-1 and team-3 are not
        // (NotAllowedByListeners).
        vec![("edge", Some("gold8081"))]
    } else if i % 10 == 9 {
        vec![("edge", Some("foo8080"))]
    } else if i % 10 == 8 {
        vec![("side", None)]
    } else if i.is_multiple_of(13) {
        vec![("edge", None), ("grpc", Some("grpc8090"))]
    } else if i.is_multiple_of(17) {
        vec![("edge", None), ("edge", Some("wild8080"))]
    } else {
        vec![("edge", None)]
    };
    if i.is_multiple_of(29) {
        parents.push(("missing-gw", None));
    }
    let mut rules = vec![vec![http_match(
        "Exact",
        &format!("/r{i}/health"),
        false,
        0,
        0,
    )]];
    if i % 3 >= 1 {
        rules.push(vec![
            http_match(
                "PathPrefix",
                &format!("/r{i}/api"),
                i.is_multiple_of(2),
                1 + i % 2,
                usize::from(i % 4 == 1),
            ),
            http_match("PathPrefix", "/api", false, 0, 0),
        ]);
    }
    if i % 3 == 2 {
        // No matches: one catch-all `PathPrefix /`.
        rules.push(vec![]);
    }
    if i % 31 == 4 {
        rules.push(vec![http_match(
            "RegularExpression",
            &format!("/r{i}/[0-9]+"),
            false,
            0,
            0,
        )]);
    }
    if i % 53 == 10 {
        // An invalid regex: the route is not accepted and serves nothing.
        rules.push(vec![http_match("RegularExpression", "/(", false, 0, 0)]);
    }
    let mut yaml = format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}, generation: 3{}}}
spec:
  parentRefs: [{}]
  hostnames: [{}]
  rules:
",
        created(i)
            .map(|c| format!(", creationTimestamp: '{c}'"))
            .unwrap_or_default(),
        parents_yaml(&parents),
        hostnames
            .iter()
            .map(|h| format!("'{h}'"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for (ri, matches) in rules.iter().enumerate() {
        let backends = backends_yaml(i, ri, &namespace);
        if matches.is_empty() {
            let _ = writeln!(yaml, "  - backendRefs: [{backends}]");
        } else {
            let m: Vec<&str> = matches.iter().map(|m| m.yaml.as_str()).collect();
            let _ = writeln!(
                yaml,
                "  - matches: [{}]\n    backendRefs: [{backends}]",
                m.join(", ")
            );
        }
    }
    let rules = rules
        .into_iter()
        .map(|m| {
            if m.is_empty() {
                vec![http_match("PathPrefix", "/", false, 0, 0)]
            } else {
                m
            }
        })
        .collect();
    GenRoute {
        kind: RouteKind::Http,
        namespace,
        name,
        created: created(i),
        hostnames,
        parents,
        rules,
        yaml,
    }
}

fn parents_yaml(parents: &[(&str, Option<&str>)]) -> String {
    parents
        .iter()
        .map(|(g, s)| match s {
            Some(s) => format!("{{name: {g}, namespace: infra, sectionName: {s}}}"),
            None => format!("{{name: {g}, namespace: infra}}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Same-namespace, granted, not granted and missing backends.
fn backends_yaml(i: usize, rule: usize, namespace: &str) -> String {
    match (rule, namespace) {
        (1, "team-0") => {
            let mut b = vec!["{name: svc-b, namespace: team-1, port: 80}".to_string()];
            if i % 2 == 1 {
                b.push("{name: svc-a, namespace: team-2, port: 80}".into());
            }
            if i.is_multiple_of(3) {
                b.push("{name: svc-b, namespace: team-3, port: 80, weight: 2}".into());
            } else {
                b.push("{name: svc-a, namespace: team-3, port: 80, weight: 3}".into());
            }
            b.join(", ")
        }
        (1, _) if i.is_multiple_of(11) => "{name: svc-missing, port: 80}".into(),
        (1, _) => "{name: svc-b, port: 9000}".into(),
        _ => "{name: svc-a, port: 80}".into(),
    }
}

fn grpc_route(i: usize) -> GenRoute {
    let namespace = namespace_of(i);
    let name = format!("g{i:03}");
    let hostnames: Vec<String> = match (i / 12) % 4 {
        0 => vec![format!("g{i}.example.com")],
        1 => vec!["foo.example.com".into()],
        2 => vec![],
        _ => vec!["*.example.com".into()],
    };
    let mut parents = vec![("grpc", Some("grpc8090"))];
    if i % 24 == 5 {
        parents.push(("grpc", Some("grpcfoo8090")));
    }
    let rules: Vec<Vec<GenMatch>> = (0..2)
        .map(|j| {
            let service = format!("pkg.S{i}");
            let method = format!("M{j}");
            vec![GenMatch {
                path: format!("exact /{service}/{method}"),
                path_rank: (0, 0),
                method: false,
                headers: 0,
                query: 0,
                yaml: format!("{{method: {{service: {service}, method: {method}}}}}"),
            }]
        })
        .collect();
    let mut yaml = format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: {namespace}{}}}
spec:
  parentRefs: [{}]
  hostnames: [{}]
  rules:
",
        created(i)
            .map(|c| format!(", creationTimestamp: '{c}'"))
            .unwrap_or_default(),
        parents_yaml(&parents),
        hostnames
            .iter()
            .map(|h| format!("'{h}'"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for m in &rules {
        let _ = writeln!(
            yaml,
            "  - matches: [{}]\n    backendRefs: [{{name: svc-a, port: 80}}]",
            m[0].yaml
        );
    }
    GenRoute {
        kind: RouteKind::Grpc,
        namespace,
        name,
        created: created(i),
        hostnames,
        parents,
        rules,
        yaml,
    }
}

fn generate() -> (Snapshot, Vec<GenRoute>) {
    let routes: Vec<GenRoute> = (0..ROUTES)
        .map(|i| {
            if i % 12 == 5 {
                grpc_route(i)
            } else {
                http_route(i)
            }
        })
        .collect();
    let mut yaml = base_yaml();
    for r in &routes {
        yaml.push_str(&r.yaml);
    }
    let mut snapshot = Snapshot::default();
    for object in parse_documents(&yaml).expect("generated YAML parses") {
        assert!(
            snapshot.insert(object).is_none(),
            "generated objects are distinct"
        );
    }
    (snapshot, routes)
}

// ---- The reference model: Gateway API hostname rules, written naively. ----

fn host(h: Option<&str>) -> HostMatch {
    HostMatch::parse(h)
}

fn intersect(a: &HostMatch, b: &HostMatch) -> Option<HostMatch> {
    if covers(a, b) {
        Some(b.clone())
    } else if covers(b, a) {
        Some(a.clone())
    } else {
        None
    }
}

fn covers(outer: &HostMatch, inner: &HostMatch) -> bool {
    match (outer, inner) {
        (HostMatch::Any, _) => true,
        (_, HostMatch::Any) => false,
        (HostMatch::Exact(o), HostMatch::Exact(i)) => o == i,
        (HostMatch::Exact(_), HostMatch::Wildcard(_)) => false,
        (HostMatch::Wildcard(o), HostMatch::Exact(i)) => {
            i.len() > o.len() && i.ends_with(o.as_str())
        }
        (HostMatch::Wildcard(o), HostMatch::Wildcard(i)) => i.ends_with(o.as_str()),
    }
}

/// Exact hostnames (alphabetical), then wildcards, longest first, then `*`.
fn specificity(a: &HostMatch, b: &HostMatch) -> Ordering {
    let rank = |h: &HostMatch| match h {
        HostMatch::Exact(s) => (0, Reverse(0), s.clone()),
        HostMatch::Wildcard(s) => (1, Reverse(s.len()), s.clone()),
        HostMatch::Any => (2, Reverse(0), String::new()),
    };
    rank(a).cmp(&rank(b))
}

/// (effective hostname, route hostname it came from) on a listener.
fn effective(listener: &HostMatch, route: &GenRoute) -> Vec<(HostMatch, HostMatch)> {
    if route.hostnames.is_empty() {
        return vec![(listener.clone(), HostMatch::Any)];
    }
    let mut out: Vec<(HostMatch, HostMatch)> = Vec::new();
    for h in &route.hostnames {
        let original = host(Some(h));
        let Some(e) = intersect(listener, &original) else {
            continue;
        };
        match out.iter_mut().find(|(x, _)| *x == e) {
            Some(slot) if specificity(&original, &slot.1).is_lt() => slot.1 = original,
            Some(_) => {}
            None => out.push((e, original)),
        }
    }
    out
}

fn namespace_allowed(l: &Listener, namespace: &str) -> bool {
    match l.from {
        "All" => true,
        "Same" => namespace == "infra",
        _ => is_gold(namespace),
    }
}

/// The status entry of one parentRef (exact name and sectionName).
fn parent_accepted(
    c: &Compiled,
    r: &GenRoute,
    gateway: &str,
    section: Option<&str>,
) -> Option<bool> {
    let kind = match r.kind {
        RouteKind::Http => StatusKind::HttpRoute,
        RouteKind::Grpc => StatusKind::GrpcRoute,
        RouteKind::Tls => StatusKind::TlsRoute,
    };
    let status = c.status(kind, Some(&r.namespace), &r.name)?;
    let parents = status.status["parents"].as_array()?;
    let parent = parents.iter().find(|p| {
        p["parentRef"]["name"].as_str() == Some(gateway)
            && p["parentRef"]["sectionName"].as_str() == section
    })?;
    let accepted = parent["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?;
    Some(accepted["status"] == "True")
}

/// Route precedence, as the Gateway API orders matches.
type PrecedenceKey = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    bool,
    Option<String>,
    String,
    String,
    u8,
    usize,
    usize,
);

fn precedence(r: &GenRoute, rule: usize, index: usize, m: &GenMatch) -> PrecedenceKey {
    let (kind, len) = m.path_rank;
    (
        kind,
        Reverse(len),
        Reverse(m.method),
        Reverse(m.headers),
        Reverse(m.query),
        r.created.is_none(),
        r.created.clone(),
        r.namespace.clone(),
        r.name.clone(),
        u8::from(r.kind == RouteKind::Grpc),
        rule,
        index,
    )
}

/// Kind, namespace, name.
type RouteName = (String, String, String);

/// A route entry as the table shows it: kind, namespace, name, rule, path.
type Shown = (RouteKind, String, String, usize, String);

fn path_string(p: &PathMatch) -> String {
    match p {
        PathMatch::Exact(v) => format!("exact {v}"),
        PathMatch::Prefix(v) => format!("prefix {v}"),
        PathMatch::Regex(v) => format!("regex {}", v.source()),
    }
}

struct Placement<'a> {
    route: &'a GenRoute,
    listener: HostMatch,
    host: HostMatch,
    original: HostMatch,
}

#[test]
fn generated_config_matches_the_reference_model() {
    let (snapshot, routes) = generate();
    let c = compile(&snapshot, &CompileOptions::default());

    // Statuses: the class, every Gateway, every route (all have parentRefs),
    // in that order; routes HTTP then gRPC, each by namespace/name.
    assert_eq!(c.statuses.len(), 1 + 3 + ROUTES);
    let kinds: Vec<StatusKind> = c.statuses.iter().map(|s| s.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(kinds, sorted, "statuses are grouped by kind");
    let route_keys: Vec<(StatusKind, &str, &str)> = c
        .statuses
        .iter()
        .filter(|s| matches!(s.kind, StatusKind::HttpRoute | StatusKind::GrpcRoute))
        .map(|s| {
            (
                s.kind,
                s.namespace.as_deref().unwrap_or(""),
                s.name.as_str(),
            )
        })
        .collect();
    let mut sorted = route_keys.clone();
    sorted.sort();
    assert_eq!(
        route_keys, sorted,
        "route statuses are in kind, namespace/name order"
    );

    // What the config exercises (so that the model below is not vacuous).
    let reasons: BTreeSet<String> = c
        .statuses
        .iter()
        .flat_map(|s| s.status["parents"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            format!(
                "{}={}",
                c["type"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    for expected in [
        "Accepted=Accepted",
        "Accepted=HostnameConflict",
        "Accepted=NoMatchingListenerHostname",
        "Accepted=NotAllowedByListeners",
        "Accepted=UnsupportedValue",
        "ResolvedRefs=RefNotPermitted",
        "ResolvedRefs=BackendNotFound",
        "ResolvedRefs=ResolvedRefs",
    ] {
        assert!(
            reasons.contains(expected),
            "{expected} occurs; seen: {reasons:?}"
        );
    }

    // Placements: every accepted parentRef, on every listener it selects
    // that allows the route and shares a hostname with it. (Cross-kind
    // conflicts only happen through sectionName parentRefs, so Accepted
    // tells exactly whether the listener kept the route.)
    let mut placements: Vec<(&Listener, Placement<'_>)> = Vec::new();
    let mut attached: BTreeMap<(&str, &str), BTreeSet<RouteName>> = BTreeMap::new();
    for r in &routes {
        for (gateway, section) in &r.parents {
            if parent_accepted(&c, r, gateway, *section) != Some(true) {
                continue;
            }
            for l in LISTENERS
                .iter()
                .filter(|l| l.gateway == *gateway && section.is_none_or(|s| s == l.name))
            {
                if !namespace_allowed(l, &r.namespace) {
                    continue;
                }
                let lh = host(l.hostname);
                let hosts = effective(&lh, r);
                if hosts.is_empty() {
                    continue;
                }
                attached.entry((l.gateway, l.name)).or_default().insert((
                    format!("{:?}", r.kind),
                    r.namespace.clone(),
                    r.name.clone(),
                ));
                for (h, original) in hosts {
                    placements.push((
                        l,
                        Placement {
                            route: r,
                            listener: lh.clone(),
                            host: h,
                            original,
                        },
                    ));
                }
            }
        }
    }

    // attachedRoutes of every listener.
    for l in LISTENERS {
        let status = c
            .status(StatusKind::Gateway, Some("infra"), l.gateway)
            .expect("gateway status");
        let listener = status.status["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|x| x["name"] == l.name))
            .expect("listener status");
        let expected = attached.get(&(l.gateway, l.name)).map_or(0, |s| s.len());
        assert_eq!(
            listener["attachedRoutes"], expected,
            "attachedRoutes of {}/{}",
            l.gateway, l.name
        );
    }

    let ports: BTreeSet<u16> = LISTENERS.iter().map(|l| l.port).collect();
    let table_ports: Vec<u16> = c.table.ports.iter().map(|p| p.port).collect();
    assert_eq!(table_ports, ports.iter().copied().collect::<Vec<_>>());
    let mut checked_routes = 0;
    for port in &c.table.ports {
        let listener_hosts: Vec<HostMatch> = LISTENERS
            .iter()
            .filter(|l| l.port == port.port)
            .map(|l| host(l.hostname))
            .collect();
        // Listener isolation: a more specific listener covering a hostname
        // owns it.
        let isolated = |p: &Placement<'_>| {
            listener_hosts.iter().any(|o| {
                *o != p.listener && specificity(o, &p.listener).is_lt() && covers(o, &p.host)
            })
        };
        let mut seen = BTreeSet::new();
        let on_port: Vec<&Placement<'_>> = placements
            .iter()
            .filter(|(l, _)| l.port == port.port)
            .map(|(_, p)| p)
            .filter(|p| !isolated(p))
            .filter(|p| {
                seen.insert((
                    p.route.kind == RouteKind::Grpc,
                    &p.route.namespace,
                    &p.route.name,
                    p.listener.to_string(),
                    p.host.to_string(),
                ))
            })
            .collect();

        let mut vhosts: Vec<HostMatch> = listener_hosts.clone();
        vhosts.extend(on_port.iter().map(|p| p.host.clone()));
        vhosts.sort_by(specificity);
        vhosts.dedup();
        let actual: Vec<&HostMatch> = port.virtual_hosts.iter().map(|v| &v.hostname).collect();
        assert_eq!(
            actual,
            vhosts.iter().collect::<Vec<_>>(),
            "virtual hosts of port {}",
            port.port
        );

        for v in &port.virtual_hosts {
            let owner = listener_hosts
                .iter()
                .filter(|l| covers(l, &v.hostname))
                .min_by(|a, b| specificity(a, b));
            let mut expected: Vec<(&HostMatch, &HostMatch, PrecedenceKey, Shown)> = Vec::new();
            for p in on_port
                .iter()
                .filter(|p| Some(&p.listener) == owner && covers(&p.host, &v.hostname))
            {
                for (ri, matches) in p.route.rules.iter().enumerate() {
                    for (mi, m) in matches.iter().enumerate() {
                        let shown = (
                            p.route.kind,
                            p.route.namespace.clone(),
                            p.route.name.clone(),
                            ri,
                            m.path.clone(),
                        );
                        expected.push((
                            &p.host,
                            &p.original,
                            precedence(p.route, ri, mi, m),
                            shown,
                        ));
                    }
                }
            }
            expected.sort_by(|a, b| {
                specificity(a.0, b.0)
                    .then_with(|| specificity(a.1, b.1))
                    .then_with(|| a.2.cmp(&b.2))
            });
            let expected: Vec<Shown> = expected.into_iter().map(|e| e.3).collect();
            let actual: Vec<Shown> = v
                .routes
                .iter()
                .map(|r| {
                    (
                        r.rule.id.kind,
                        r.rule.id.namespace.clone(),
                        r.rule.id.name.clone(),
                        r.rule.id.rule_index,
                        path_string(&r.matcher.path),
                    )
                })
                .collect();
            assert_eq!(
                actual, expected,
                "routes of virtual host {} on port {}",
                v.hostname, port.port
            );
            checked_routes += actual.len();
        }
    }
    assert!(
        checked_routes > 2 * ROUTES,
        "the table is not vacuous: {checked_routes} entries"
    );
}

#[test]
fn compile_is_deterministic() {
    let (snapshot, _) = generate();
    let dump = |c: &Compiled| {
        serde_json::to_string(&(&c.table, &c.statuses)).expect("the table and statuses serialize")
    };
    let first = dump(&compile(&snapshot, &CompileOptions::default()));
    let second = dump(&compile(&snapshot.clone(), &CompileOptions::default()));
    assert_eq!(first, second);
}

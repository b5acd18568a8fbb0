//! Gateways, listeners and route attachment.

mod common;

use common::*;
use portcullis_controller::{compile, CompileOptions, ObjectKey, StatusKind};
use portcullis_model::HostMatch;

#[test]
fn attach_by_section_name() {
    let c = fixture("attach_by_section_name");
    assert_eq!(answer(&c, 8080, &get("api.example.com", "/")), "api-only#0");
    assert_eq!(answer(&c, 8080, &get("web.example.com", "/")), "404");
    let wrong = route_status(&c, "wrong-section");
    assert_eq!(
        sr(wrong.parent_condition("two", Some("nope"), "Accepted")),
        is("False", "NoMatchingParent")
    );
    assert!(!wrong.problems.is_empty());
}

#[test]
fn attach_by_port() {
    let c = fixture("attach_by_port");
    assert_eq!(answer(&c, 8081, &get("h", "/")), "on-8081#0");
    assert_eq!(answer(&c, 8080, &get("h", "/")), "404");
    assert_eq!(
        sr(route_status(&c, "on-9999").parent_condition("ports", None, "Accepted")),
        is("False", "NoMatchingParent")
    );
}

#[test]
fn hostname_intersection() {
    let c = fixture("hostname_intersection");
    let hosts: Vec<String> = port(&c, 8080)
        .virtual_hosts
        .iter()
        .map(|v| v.hostname.to_string())
        .collect();
    // other.org does not intersect *.example.com and is dropped.
    assert_eq!(
        hosts,
        vec!["foo.example.com", "*.bar.example.com", "*.example.com"]
    );
    assert_eq!(answer(&c, 8080, &get("foo.example.com", "/")), "matching#0");
    assert_eq!(
        answer(&c, 8080, &get("x.bar.example.com", "/")),
        "matching#0"
    );
    assert_eq!(
        answer(&c, 8080, &get("baz.example.com", "/")),
        "404",
        "only the intersection is served"
    );
    assert_eq!(
        sr(route_status(&c, "no-overlap").parent_condition("wild", None, "Accepted")),
        is("False", "NoMatchingListenerHostname")
    );
}

#[test]
fn allowed_routes_same_namespace() {
    let c = fixture("allowed_routes_same_namespace");
    let outsider = status(&c, StatusKind::HttpRoute, Some("team-a"), "outsider");
    assert_eq!(
        sr(outsider.parent_condition("private", None, "Accepted")),
        is("False", "NotAllowedByListeners")
    );
    assert_eq!(
        sr(route_status(&c, "insider").parent_condition("private", None, "Accepted")),
        is("True", "Accepted")
    );
    assert_eq!(answer(&c, 8080, &get("h", "/")), "insider#0");
}

#[test]
fn allowed_routes_selector() {
    let c = fixture("allowed_routes_selector");
    let a = status(&c, StatusKind::HttpRoute, Some("team-a"), "r");
    let b = status(&c, StatusKind::HttpRoute, Some("team-b"), "r");
    assert_eq!(
        sr(a.parent_condition("selective", None, "Accepted")),
        is("True", "Accepted")
    );
    assert_eq!(
        sr(b.parent_condition("selective", None, "Accepted")),
        is("False", "NotAllowedByListeners")
    );
    let served = route_for(&c, 8080, &get("h", "/")).expect("team-a's route serves");
    assert_eq!(served.rule.id.namespace, "team-a");
}

#[test]
fn allowed_routes_kinds() {
    let c = fixture("allowed_routes_kinds");
    let grpc = status(&c, StatusKind::GrpcRoute, Some("default"), "grpc");
    assert_eq!(
        sr(grpc.parent_condition("http-only", None, "Accepted")),
        is("False", "NotAllowedByListeners")
    );
    let gw = gateway_status(&c, "http-only");
    assert_eq!(
        sr(gw.listener_condition("http", "ResolvedRefs")),
        is("False", "InvalidRouteKinds")
    );
    let kinds = &gw.status["listeners"][0]["supportedKinds"];
    assert_eq!(
        kinds,
        &serde_json::json!([{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute" }])
    );
}

#[test]
fn attached_routes_count() {
    let c = fixture("attached_routes_count");
    let gw = gateway_status(&c, "counted");
    let count = |name: &str| {
        gw.status["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .map(|l| l["attachedRoutes"].as_u64().unwrap_or(99))
    };
    assert_eq!(count("a"), Some(2));
    assert_eq!(count("b"), Some(1));
    assert_eq!(
        sr(route_status(&c, "hostless").parent_condition("counted", None, "Accepted")),
        is("False", "NoMatchingListenerHostname")
    );
}

#[test]
fn listeners_merged_on_one_port() {
    let c = fixture("listeners_merged_on_one_port");
    let p = port(&c, 8080);
    assert_eq!(c.table.ports.iter().filter(|p| p.port == 8080).count(), 1);
    assert_eq!(p.virtual_hosts.len(), 2);
    assert_eq!(answer(&c, 8080, &get("foo.example.com", "/")), "foo#0");
    assert_eq!(answer(&c, 8080, &get("bar.example.com", "/")), "bar#0");
    assert_eq!(answer(&c, 8080, &get("baz.example.com", "/")), "404");
}

#[test]
fn listener_isolation() {
    let c = fixture("listener_isolation");
    assert_eq!(answer(&c, 8080, &get("bar.example.com", "/")), "wild#0");
    assert_eq!(
        answer(&c, 8080, &get("foo.example.com", "/")),
        "404",
        "foo.example.com belongs to the foo listener"
    );
    assert_eq!(
        vhost(&c, 8080, "foo.example.com").map(|v| &v.hostname),
        Some(&HostMatch::Exact("foo.example.com".into()))
    );
}

#[test]
fn listener_protocol_conflict() {
    let c = fixture("listener_protocol_conflict");
    let gw = gateway_status(&c, "clash");
    for name in ["plain", "secure"] {
        assert_eq!(
            sr(gw.listener_condition(name, "Conflicted")),
            is("True", "ProtocolConflict"),
            "{name}"
        );
        assert_eq!(
            sr(gw.listener_condition(name, "Accepted")).0,
            "False",
            "{name}"
        );
        assert_eq!(
            sr(gw.listener_condition(name, "Programmed")).0,
            "False",
            "{name}"
        );
    }
    assert_eq!(
        sr(gw.listener_condition("fine", "Conflicted")),
        is("False", "NoConflicts")
    );
    assert_eq!(
        sr(gw.condition("Accepted")),
        is("True", "ListenersNotValid")
    );
    assert!(c.table.port(8443).is_none(), "no conflicting listener wins");
    assert!(c.table.port(8080).is_some());
}

#[test]
fn listener_hostname_conflict() {
    let c = fixture("listener_hostname_conflict");
    let gw = gateway_status(&c, "twins");
    assert_eq!(
        sr(gw.listener_condition("one", "Conflicted")),
        is("True", "HostnameConflict")
    );
    assert_eq!(
        sr(gw.listener_condition("two", "Conflicted")),
        is("True", "HostnameConflict")
    );
    assert_eq!(
        sr(gw.listener_condition("three", "Accepted")),
        is("True", "Accepted")
    );
    let hosts: Vec<String> = port(&c, 8080)
        .virtual_hosts
        .iter()
        .map(|v| v.hostname.to_string())
        .collect();
    assert_eq!(hosts, vec!["other.example.com"]);
}

#[test]
fn listener_unsupported_protocol() {
    let c = fixture("listener_unsupported_protocol");
    let mixed = gateway_status(&c, "mixed");
    assert_eq!(
        sr(mixed.listener_condition("tcp", "Accepted")),
        is("False", "UnsupportedProtocol")
    );
    assert_eq!(
        mixed.status["listeners"][1]["supportedKinds"],
        serde_json::json!([])
    );
    assert_eq!(
        sr(mixed.condition("Accepted")),
        is("True", "ListenersNotValid")
    );
    let only = gateway_status(&c, "only-tcp");
    assert_eq!(
        sr(only.condition("Accepted")),
        is("False", "ListenersNotValid")
    );
    assert_eq!(sr(only.condition("Programmed")).0, "False");
    assert!(c.table.port(9000).is_none() && c.table.port(9001).is_none());
}

#[test]
fn gateway_class_other_controller_ignored() {
    let c = fixture("gateway_class_other_controller_ignored");
    assert!(c.table.ports.is_empty());
    assert!(c
        .status(StatusKind::GatewayClass, None, "someone-else")
        .is_none());
    assert!(c
        .status(StatusKind::Gateway, Some("default"), "theirs")
        .is_none());
    let ours = status(&c, StatusKind::GatewayClass, None, "portcullis");
    assert_eq!(sr(ours.condition("Accepted")), is("True", "Accepted"));
    assert_eq!(
        ours.condition("Accepted")
            .map(|c| c["observedGeneration"].clone()),
        Some(serde_json::json!(3))
    );
}

#[test]
fn parent_ref_to_missing_gateway() {
    let c = fixture("parent_ref_to_missing_gateway");
    let s = route_status(&c, "lost");
    assert_eq!(s.status["parents"], serde_json::json!([]));
    assert!(
        s.problems.iter().any(|p| p.contains("does-not-exist")),
        "{:?}",
        s.problems
    );
}

#[test]
fn gateway_addresses_unsupported() {
    let c = fixture("gateway_addresses_unsupported");
    assert_eq!(
        sr(gateway_status(&c, "pinned").condition("Accepted")),
        is("False", "UnsupportedAddress")
    );
    assert!(c.table.port(8080).is_none());
}

#[test]
fn https_listener_valid_certificate() {
    let c = fixture("https_listener_valid_certificate");
    let p = port(&c, 8443);
    assert_eq!(p.protocol, portcullis_model::Protocol::Https);
    let tls = p.tls.as_ref().expect("TLS configured");
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(
        tls.certificates[0].hostname,
        HostMatch::Exact("secure.example.com".into())
    );
    assert_eq!(tls.certificates[0].source, "default/cert");
    assert!(tls.certificates[0]
        .cert_chain_pem
        .contains("BEGIN CERTIFICATE"));
    let gw = gateway_status(&c, "secure");
    assert_eq!(
        sr(gw.listener_condition("https", "ResolvedRefs")),
        is("True", "ResolvedRefs")
    );
    assert_eq!(
        sr(gw.listener_condition("https", "Programmed")),
        is("True", "Programmed")
    );
    assert!(gw.problems.is_empty(), "{:?}", gw.problems);
    assert_eq!(answer(&c, 8443, &get("secure.example.com", "/")), "app#0");
    // The private key is never dumped.
    let dump = serde_json::to_string(&c.table).expect("serializable");
    assert!(!dump.contains("PRIVATE KEY"));
}

#[test]
fn https_listener_invalid_certificates() {
    let c = fixture("https_listener_invalid_certificates");
    let gw = gateway_status(&c, "broken-tls");
    for name in ["malformed", "missing", "wrong-kind"] {
        assert_eq!(
            sr(gw.listener_condition(name, "ResolvedRefs")),
            is("False", "InvalidCertificateRef"),
            "{name}"
        );
        assert_eq!(
            sr(gw.listener_condition(name, "Programmed")).0,
            "False",
            "{name}"
        );
    }
    assert_eq!(
        sr(gw.listener_condition("cross-namespace", "ResolvedRefs")),
        is("False", "RefNotPermitted")
    );
    assert!(
        c.table.port(8443).is_none(),
        "no usable certificate: the port is not served"
    );
    assert!(c.table.port(8080).is_some(), "the HTTP listener still is");
    assert!(
        gw.problems
            .iter()
            .any(|p| p.contains("default/nonexistent")),
        "{:?}",
        gw.problems
    );
}

#[test]
fn proxy_mode_single_gateway() {
    let snapshot = snapshot("proxy_mode_single_gateway");
    let all = compile(&snapshot, &CompileOptions::default());
    assert!(all.table.port(80).is_some() && all.table.port(9090).is_some());
    let options = CompileOptions {
        gateway: Some(ObjectKey::new("default", "second")),
        generation: 42,
        ..Default::default()
    };
    let one = compile(&snapshot, &options);
    assert_eq!(one.table.generation, 42);
    let ports: Vec<u16> = one.table.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![9090]);
    assert!(one
        .status(StatusKind::Gateway, Some("default"), "gw")
        .is_none());
}

#[test]
fn gateway_frontend_tls_leaves_http_listeners_alone() {
    let c = fixture("gateway_frontend_tls_http_listener");
    let gw = gateway_status(&c, "mtls");
    assert_eq!(sr(gw.condition("Accepted")), is("True", "Accepted"));
    assert_eq!(
        sr(gw.listener_condition("http", "ResolvedRefs")),
        is("True", "ResolvedRefs")
    );
    assert!(c.table.port(8080).is_some(), "the HTTP listener is served");
}

#[test]
fn route_without_parent_refs_is_reported() {
    let mut snapshot = snapshot("path_exact_match");
    let key = ObjectKey::new("default", "exact");
    if let Some(r) = snapshot.http_routes.get_mut(&key) {
        r.spec.parent_refs = None;
    }
    let c = compile(&snapshot, &CompileOptions::default());
    assert!(route_status(&c, "exact")
        .problems
        .iter()
        .any(|p| p.contains("no parentRefs")));
    assert_eq!(answer(&c, 80, &get("h", "/exact")), "404");
}

/// Every fixture at once: many invalid and conflicting objects side by
/// side. compile() must not panic, and must be deterministic.
#[test]
fn all_fixtures_together_compile() {
    let mut all = portcullis_controller::Snapshot::default();
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures")
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
        .collect();
    names.sort();
    for name in &names {
        let s = snapshot(name);
        for (k, v) in s.gateways {
            all.gateways.insert(k, v);
        }
        for (k, v) in s.http_routes {
            all.http_routes.insert(k, v);
        }
        for (k, v) in s.grpc_routes {
            all.grpc_routes.insert(k, v);
        }
        all.gateway_classes.extend(s.gateway_classes);
        all.services.extend(s.services);
        all.endpoint_slices.extend(s.endpoint_slices);
        all.secrets.extend(s.secrets);
        all.reference_grants.extend(s.reference_grants);
        all.namespaces.extend(s.namespaces);
    }
    let a = compile(&all, &CompileOptions::default());
    let b = compile(&all, &CompileOptions::default());
    assert!(!a.table.ports.is_empty());
    assert_eq!(a.statuses, b.statuses);
}

#[test]
fn http_grpc_hostname_conflict() {
    let c = fixture("http_grpc_hostname_conflict");
    let api = status(&c, StatusKind::GrpcRoute, Some("default"), "api");
    assert_eq!(
        sr(api.parent_condition("gw", None, "Accepted")),
        is("False", "HostnameConflict")
    );
    assert!(
        api.problems
            .iter()
            .any(|p| p.contains("HTTPRoute default/web")),
        "{:?}",
        api.problems
    );
    assert_eq!(
        answer(&c, 80, &get("api.example.com", "/pkg.Svc/Call")),
        "web#0"
    );
    assert_eq!(
        sr(route_status(&c, "web").parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
    let elsewhere = status(&c, StatusKind::GrpcRoute, Some("default"), "elsewhere");
    assert_eq!(
        sr(elsewhere.parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
    assert_eq!(
        answer(&c, 80, &get("grpc.example.org", "/pkg.Svc/Call")),
        "elsewhere#0"
    );
    assert_eq!(
        gateway_status(&c, "gw").status["listeners"][0]["attachedRoutes"],
        2
    );
}

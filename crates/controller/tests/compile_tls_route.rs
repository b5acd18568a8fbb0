//! TLS listeners and TLSRoutes: statuses and the SNI table.

mod common;

use common::*;
use portcullis_controller::StatusKind;
use portcullis_model::{BackendTarget, Protocol, TlsMode};

fn tls_route<'a>(
    c: &'a portcullis_controller::Compiled,
    name: &str,
) -> &'a portcullis_controller::StatusUpdate {
    status(c, StatusKind::TlsRoute, Some("default"), name)
}

#[test]
fn tls_route_statuses() {
    let c = fixture("tls_route_statuses");
    let ok = tls_route(&c, "ok");
    assert_eq!(
        sr(ok.parent_condition("tls-gw", Some("tls"), "Accepted")),
        is("True", "Accepted")
    );
    assert_eq!(
        sr(ok.parent_condition("tls-gw", Some("tls"), "ResolvedRefs")),
        is("True", "ResolvedRefs")
    );
    assert_eq!(
        ok.status["parents"][0]["conditions"][0]["observedGeneration"],
        3
    );
    let cases = [
        ("on-http", "gw", None, "Accepted", "NotAllowedByListeners"),
        (
            "wrong-section",
            "tls-gw",
            Some("nope"),
            "Accepted",
            "NoMatchingParent",
        ),
        (
            "no-host",
            "tls-gw",
            Some("tls"),
            "Accepted",
            "NoMatchingListenerHostname",
        ),
        (
            "missing-backend",
            "tls-gw",
            Some("tls"),
            "ResolvedRefs",
            "BackendNotFound",
        ),
        (
            "cross-namespace",
            "tls-gw",
            Some("tls"),
            "ResolvedRefs",
            "RefNotPermitted",
        ),
        (
            "unknown-kind",
            "tls-gw",
            Some("tls"),
            "ResolvedRefs",
            "InvalidKind",
        ),
    ];
    for (route, gateway, section, condition, reason) in cases {
        let s = tls_route(&c, route);
        assert_eq!(
            sr(s.parent_condition(gateway, section, condition)),
            is("False", reason),
            "{route}: {:#}",
            s.status
        );
        assert!(!s.problems.is_empty(), "{route} explains itself");
    }
    // A route with unresolved backends is still accepted (its SNI closes).
    assert_eq!(
        sr(tls_route(&c, "missing-backend").parent_condition("tls-gw", Some("tls"), "Accepted")),
        is("True", "Accepted")
    );
    // An HTTPRoute cannot use a TLS listener.
    assert_eq!(
        sr(route_status(&c, "http-on-tls").parent_condition("tls-gw", Some("tls"), "Accepted")),
        is("False", "NotAllowedByListeners")
    );
}

#[test]
fn tls_listener_statuses() {
    let c = fixture("tls_route_statuses");
    let gw = gateway_status(&c, "tls-gw");
    let listener = |name: &str| {
        gw.status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap()
    };
    let tls = listener("tls");
    assert_eq!(
        tls["supportedKinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}])
    );
    assert_eq!(
        sr(gw.listener_condition("tls", "ResolvedRefs")),
        is("False", "InvalidRouteKinds")
    );
    assert_eq!(
        sr(gw.listener_condition("tls", "Programmed")),
        is("True", "Programmed")
    );
    // ok, missing-backend, cross-namespace, unknown-kind.
    assert_eq!(tls["attachedRoutes"], 4);
    assert_eq!(listener("term")["attachedRoutes"], 1);
    assert_eq!(
        sr(gw.listener_condition("term", "Accepted")),
        is("True", "Accepted")
    );
    // Handshake options on a Passthrough listener: not served, and said so.
    let bad = gw.listener_condition("bad-options", "Programmed").unwrap();
    assert_eq!(sr(Some(bad)), is("False", "Invalid"));
    assert!(bad["message"].as_str().unwrap().contains("Passthrough"));
    assert!(c.table.port(9443).is_none());
    // The base HTTP Gateway had no route attach.
    assert_eq!(
        gateway_status(&c, "gw").status["listeners"][0]["attachedRoutes"],
        0
    );
}

#[test]
fn tls_ports_have_an_sni_table() {
    let c = fixture("tls_route_statuses");
    let passthrough = port(&c, 443);
    assert_eq!(passthrough.protocol, Protocol::Tls);
    assert!(passthrough.tls.is_none(), "nothing to terminate");
    assert!(passthrough.virtual_hosts.is_empty());
    let table: Vec<(String, Option<String>)> = passthrough
        .tls_routes
        .iter()
        .map(|r| {
            assert_eq!(r.mode, TlsMode::Passthrough);
            (
                r.hostname.to_string(),
                r.rule.as_ref().map(|r| r.id.name.clone()),
            )
        })
        .collect();
    let entry = |h: &str, r: Option<&str>| (h.to_string(), r.map(str::to_string));
    assert_eq!(
        table,
        vec![
            entry("abc.example.com", Some("ok")),
            entry("cross.example.com", Some("cross-namespace")),
            entry("kind.example.com", Some("unknown-kind")),
            entry("missing.example.com", Some("missing-backend")),
            // The listener's own hostname: no route serves all of it.
            entry("*.example.com", None),
        ]
    );
    let ok = passthrough.tls_routes[0].rule.as_ref().unwrap();
    let weights: Vec<(u32, String)> = ok
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Service(s) => (b.weight, s.name.clone()),
            BackendTarget::Invalid { reason } => (b.weight, reason.clone()),
        })
        .collect();
    assert_eq!(
        weights,
        vec![
            (3, "default/echo:80".to_string()),
            (1, "default/other:80".to_string())
        ]
    );

    let terminate = port(&c, 8443);
    assert_eq!(terminate.protocol, Protocol::Tls);
    assert_eq!(terminate.tls.as_ref().unwrap().certificates.len(), 1);
    assert_eq!(terminate.tls_routes.len(), 1);
    assert_eq!(terminate.tls_routes[0].mode, TlsMode::Terminate);
    assert_eq!(
        terminate.tls_routes[0].hostname.to_string(),
        "secure.example.com"
    );
}

//! BackendTLSPolicy and the Gateway's `spec.tls` (client certificate
//! validation, backend client certificate): compiled table and statuses
//! from the `backend_tls` fixture.

mod common;

use common::*;
use portcullis_controller::StatusKind;
use portcullis_model::{BackendTarget, SubjectAltName, TrustRoots};
use serde_json::Value;

fn policy(c: &portcullis_controller::Compiled, name: &str) -> Value {
    c.status(StatusKind::BackendTlsPolicy, Some("default"), name)
        .unwrap_or_else(|| panic!("status of BackendTLSPolicy {name}"))
        .status
        .clone()
}

/// (status, reason) of a condition of the ancestor entry for Gateway `gw`.
fn ancestor_condition(status: &Value, gateway: &str, type_: &str) -> (String, String) {
    let ancestors = status["ancestors"].as_array().expect("ancestors");
    let entry = ancestors
        .iter()
        .find(|a| a["ancestorRef"]["name"] == gateway)
        .unwrap_or_else(|| panic!("no ancestor {gateway}: {status}"));
    assert_eq!(entry["ancestorRef"]["kind"], "Gateway");
    assert_eq!(entry["controllerName"], "portcullis.dev/gateway-controller");
    let c = entry["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {entry}"));
    sr(Some(c))
}

#[test]
fn the_oldest_policy_for_a_service_wins_and_the_newer_is_conflicted() {
    let c = fixture("backend_tls");
    let old = policy(&c, "echo-old");
    assert_eq!(
        ancestor_condition(&old, "gw", "Accepted"),
        is("True", "Accepted")
    );
    assert_eq!(
        ancestor_condition(&old, "gw", "ResolvedRefs"),
        is("True", "ResolvedRefs")
    );
    let generation = &old["ancestors"][0]["conditions"][0]["observedGeneration"];
    assert_eq!(generation, 3);
    let new = policy(&c, "echo-new");
    assert_eq!(
        ancestor_condition(&new, "gw", "Accepted"),
        is("False", "Conflicted")
    );

    // The route's backend speaks TLS with the winner's settings.
    let route = route_for(&c, 80, &get("any.example.com", "/echo")).expect("routed");
    let BackendTarget::Service(backend) = &route.rule.backends[0].target else {
        panic!("a Service backend");
    };
    let tls = backend.tls.as_ref().expect("TLS to echo");
    assert_eq!(tls.policy, "default/echo-old");
    assert_eq!(tls.server_name, "echo.internal");
    assert!(matches!(tls.roots, TrustRoots::Pem(_)));
    assert_eq!(
        tls.subject_alt_names,
        [SubjectAltName::Uri("spiffe://cluster/echo".into())]
    );
}

#[test]
fn a_policy_without_a_usable_ca_is_not_accepted_and_its_service_fails_closed() {
    let c = fixture("backend_tls");
    let bad = policy(&c, "other-bad-kind");
    assert_eq!(
        ancestor_condition(&bad, "gw", "Accepted"),
        is("False", "NoValidCACertificate")
    );
    assert_eq!(
        ancestor_condition(&bad, "gw", "ResolvedRefs"),
        is("False", "InvalidKind")
    );
    let route = route_for(&c, 80, &get("any.example.com", "/")).expect("routed");
    let BackendTarget::Service(backend) = &route.rule.backends[0].target else {
        panic!("a Service backend");
    };
    let tls = backend.tls.as_ref().expect("still TLS: never plain text");
    assert!(matches!(tls.roots, TrustRoots::Unusable(_)), "{tls:?}");
}

#[test]
fn a_policy_no_gateway_reaches_has_no_ancestors() {
    let c = fixture("backend_tls");
    assert_eq!(policy(&c, "unused")["ancestors"], serde_json::json!([]));
}

#[test]
fn client_certificate_validation_is_per_port_with_the_spec_reasons() {
    let c = fixture("backend_tls");
    let gw = gateway_status(&c, "mtls");
    // Default validation on 443.
    assert_eq!(
        sr(gw.listener_condition("strict", "Accepted")),
        is("True", "Accepted")
    );
    let strict = port(&c, 443).tls.as_ref().expect("HTTPS");
    let v = strict
        .client_validation
        .as_ref()
        .expect("validation on 443");
    assert!(v.required);
    assert_eq!(v.sources, ["ConfigMap default/backend-ca"]);
    assert_eq!(v.forward_header, None);

    // 8443: one of two references missing; served with the other, optional.
    assert_eq!(
        sr(gw.listener_condition("fallback", "ResolvedRefs")),
        is("False", "InvalidCACertificateRef")
    );
    assert_eq!(
        sr(gw.listener_condition("fallback", "Accepted")),
        is("True", "Accepted")
    );
    let fallback = port(&c, 8443).tls.as_ref().expect("HTTPS");
    let v = fallback
        .client_validation
        .as_ref()
        .expect("validation on 8443");
    assert!(!v.required);
    assert_eq!(
        v.forward_header.as_ref().map(|h| h.0.as_str()),
        Some("x-client-cert")
    );
    assert_eq!(
        sr(gw.condition("InsecureFrontendValidationMode")),
        is("True", "ConfigurationChanged")
    );

    // 9443: no usable reference: not accepted, not served.
    assert_eq!(
        sr(gw.listener_condition("bad-kind", "ResolvedRefs")),
        is("False", "InvalidCACertificateKind")
    );
    assert_eq!(
        sr(gw.listener_condition("bad-kind", "Accepted")),
        is("False", "NoValidCACertificate")
    );
    assert_eq!(
        sr(gw.listener_condition("bad-kind", "Programmed")).0,
        "False"
    );
    assert!(
        c.table.port(9443).is_none(),
        "an unvalidated port is not served"
    );

    // HTTP is untouched; the missing backend client certificate is a
    // Gateway-level ResolvedRefs problem.
    assert_eq!(
        sr(gw.listener_condition("plain", "Accepted")),
        is("True", "Accepted")
    );
    assert_eq!(
        sr(gw.condition("ResolvedRefs")),
        is("False", "InvalidClientCertificateRef")
    );
}

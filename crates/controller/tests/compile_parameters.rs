//! `parametersRef` of GatewayClasses and Gateways: a missing
//! GatewayParameters or a wrong kind is `InvalidParameters` with a message
//! naming what to fix, and the Gateway is not served; valid ones change
//! nothing in the table.

mod common;

use common::*;
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, StatusKind};

fn message(condition: Option<&serde_json::Value>) -> String {
    condition.expect("condition present")["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn gateway_with_valid_parameters_is_served() {
    let c = fixture("parameters_gateway_invalid");
    let s = gateway_status(&c, "sized");
    assert_eq!(sr(s.condition("Accepted")), is("True", "Accepted"));
    assert_eq!(sr(s.condition("Programmed")), is("True", "Programmed"));
    assert!(c.table.port(8081).is_some());
}

#[test]
fn gateway_with_missing_parameters_is_not_accepted_nor_served() {
    let c = fixture("parameters_gateway_invalid");
    let s = gateway_status(&c, "missing-params");
    let accepted = s.condition("Accepted");
    assert_eq!(sr(accepted), is("False", "InvalidParameters"));
    assert_eq!(
        message(accepted),
        "spec.infrastructure.parametersRef: GatewayParameters default/large not found; create it or fix the reference"
    );
    assert_eq!(accepted.expect("present")["observedGeneration"], 3);
    assert_eq!(sr(s.condition("Programmed")).0, "False");
    assert!(c.table.port(8082).is_none());
    assert!(
        s.problems.iter().any(|p| p.contains("InvalidParameters")),
        "{:?}",
        s.problems
    );
    // Its route is told why it cannot attach.
    let r = route_status(&c, "to-missing-params");
    assert_eq!(
        sr(r.parent_condition("missing-params", None, "Accepted")).0,
        "False"
    );
}

#[test]
fn gateway_with_parameters_of_a_wrong_kind_is_not_accepted() {
    let c = fixture("parameters_gateway_invalid");
    let accepted = gateway_status(&c, "wrong-kind").condition("Accepted");
    assert_eq!(sr(accepted), is("False", "InvalidParameters"));
    assert!(
        message(accepted).contains(
            "names a ConfigMap of group core; only portcullis.dev/GatewayParameters is supported"
        ),
        "{}",
        message(accepted)
    );
    assert!(c.table.port(8083).is_none());
}

#[test]
fn class_with_missing_parameters_is_not_accepted_and_neither_are_its_gateways() {
    let c = fixture("parameters_class_missing");
    let class = c
        .status(StatusKind::GatewayClass, None, "sized")
        .expect("class status");
    let accepted = class.condition("Accepted");
    assert_eq!(sr(accepted), is("False", "InvalidParameters"));
    assert_eq!(accepted.expect("present")["observedGeneration"], 4);
    assert!(
        message(accepted).contains("GatewayParameters portcullis-system/class-defaults not found"),
        "{}",
        message(accepted)
    );
    let g = gateway_status(&c, "of-sized").condition("Accepted");
    assert_eq!(sr(g), is("False", "InvalidParameters"));
    assert!(
        message(g).starts_with("GatewayClass sized: "),
        "{}",
        message(g)
    );
    assert!(c.table.port(8081).is_none());

    // The other class and its Gateway are untouched.
    let other = c
        .status(StatusKind::GatewayClass, None, "portcullis")
        .expect("class status");
    assert_eq!(sr(other.condition("Accepted")), is("True", "Accepted"));
    assert!(c.table.port(8082).is_some());
}

#[test]
fn creating_the_missing_parameters_accepts_class_and_gateway() {
    let mut snapshot = common::snapshot("parameters_class_missing");
    for object in parse_documents(
        r#"
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: class-defaults, namespace: portcullis-system}
spec: {replicas: 3}
"#,
    )
    .expect("parses")
    {
        snapshot.insert(object);
    }
    let c = compile(&snapshot, &CompileOptions::default());
    let class = c
        .status(StatusKind::GatewayClass, None, "sized")
        .expect("class status");
    assert_eq!(sr(class.condition("Accepted")), is("True", "Accepted"));
    assert_eq!(
        sr(gateway_status(&c, "of-sized").condition("Accepted")),
        is("True", "Accepted")
    );
    assert!(c.table.port(8081).is_some());
}

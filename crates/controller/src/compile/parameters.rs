//! `parametersRef` of GatewayClasses (`spec.parametersRef`) and Gateways
//! (`spec.infrastructure.parametersRef`): they must name a
//! `portcullis.dev/GatewayParameters` that exists. Anything else is the
//! Gateway API's `InvalidParameters` (Accepted=False), on the class and on
//! every Gateway whose effective parameters it makes invalid. The
//! provisioner reads the merged parameters from the same function, so what
//! the status says and what is provisioned never disagree.

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use portcullis_api::parameters::GROUP;
use portcullis_api::GatewayParametersSpec;

use crate::snapshot::{ObjectKey, Snapshot};

const KIND: &str = "GatewayParameters";

/// The parameters a GatewayClass references (`None` without a
/// parametersRef), or why the reference is invalid.
pub fn class_parameters<'a>(
    snapshot: &'a Snapshot,
    class: &GatewayClass,
) -> Result<Option<&'a GatewayParametersSpec>, String> {
    let Some(r) = class.spec.parameters_ref.as_ref() else {
        return Ok(None);
    };
    let namespace = r.namespace.as_deref().filter(|ns| !ns.is_empty());
    let Some(namespace) = namespace else {
        return Err(format!(
            "parametersRef {KIND} {:?} has no namespace; {KIND} is namespaced, set parametersRef.namespace",
            r.name
        ));
    };
    lookup(snapshot, &r.group, &r.kind, namespace, &r.name).map(Some)
}

/// The effective parameters of a Gateway: its own
/// `infrastructure.parametersRef` over its class's, over the defaults; or
/// why they are invalid (the class's problem is named as such).
pub fn gateway_parameters(
    snapshot: &Snapshot,
    gateway: &Gateway,
    class: Option<&GatewayClass>,
) -> Result<GatewayParametersSpec, String> {
    let class_params = match class {
        Some(class) => class_parameters(snapshot, class).map_err(|e| {
            format!(
                "GatewayClass {}: {e}",
                class.metadata.name.as_deref().unwrap_or("")
            )
        })?,
        None => None,
    };
    let own = match gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        Some(r) => {
            let namespace = ObjectKey::of(&gateway.metadata).namespace;
            Some(
                lookup(snapshot, &r.group, &r.kind, &namespace, &r.name)
                    .map_err(|e| format!("spec.infrastructure.{e}"))?,
            )
        }
        None => None,
    };
    let defaults = GatewayParametersSpec::default();
    let class_params = class_params.unwrap_or(&defaults);
    Ok(own.unwrap_or(&defaults).or(class_params))
}

fn lookup<'a>(
    snapshot: &'a Snapshot,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<&'a GatewayParametersSpec, String> {
    if group != GROUP || kind != KIND {
        let group = if group.is_empty() { "core" } else { group };
        return Err(format!(
            "parametersRef names a {kind} of group {group}; only {GROUP}/{KIND} is supported"
        ));
    }
    snapshot
        .gateway_parameters
        .get(&ObjectKey::new(namespace, name))
        .map(|p| &p.spec)
        .ok_or_else(|| {
            format!("parametersRef: {KIND} {namespace}/{name} not found; create it or fix the reference")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::parse_documents;

    const OBJECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec:
  controllerName: portcullis.dev/gateway-controller
  parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: class-defaults, namespace: portcullis-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a, namespace: infra}
spec:
  gatewayClassName: ours
  listeners: [{name: http, port: 80, protocol: HTTP}]
  infrastructure:
    parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: big}
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: class-defaults, namespace: portcullis-system}
spec: {replicas: 2, image: class-image}
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: big, namespace: infra}
spec: {replicas: 6}
"#;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for o in parse_documents(OBJECTS).expect("fixture parses") {
            s.insert(o);
        }
        s
    }

    fn parts(s: &Snapshot) -> (Gateway, GatewayClass) {
        (
            s.gateways[&ObjectKey::new("infra", "a")].clone(),
            s.gateway_classes["ours"].clone(),
        )
    }

    #[test]
    fn gateway_parameters_win_over_class_parameters() {
        let s = snapshot();
        let (gateway, class) = parts(&s);
        let params = gateway_parameters(&s, &gateway, Some(&class)).expect("valid");
        assert_eq!(params.replicas, Some(6));
        assert_eq!(params.image.as_deref(), Some("class-image"));
    }

    #[test]
    fn a_missing_class_parameters_object_is_named_with_its_class() {
        let mut s = snapshot();
        s.gateway_parameters
            .remove(&ObjectKey::new("portcullis-system", "class-defaults"));
        let (gateway, class) = parts(&s);
        let err = class_parameters(&s, &class).expect_err("missing");
        assert!(
            err.contains("GatewayParameters portcullis-system/class-defaults not found"),
            "{err}"
        );
        let err = gateway_parameters(&s, &gateway, Some(&class)).expect_err("missing");
        assert!(err.starts_with("GatewayClass ours: parametersRef"), "{err}");
    }

    #[test]
    fn a_wrong_kind_or_a_missing_namespace_is_invalid() {
        let s = snapshot();
        let (mut gateway, mut class) = parts(&s);
        if let Some(r) = gateway
            .spec
            .infrastructure
            .as_mut()
            .and_then(|i| i.parameters_ref.as_mut())
        {
            r.kind = "ConfigMap".into();
            r.group = "".into();
        }
        let err = gateway_parameters(&s, &gateway, None).expect_err("wrong kind");
        assert_eq!(
            err,
            "spec.infrastructure.parametersRef names a ConfigMap of group core; only portcullis.dev/GatewayParameters is supported"
        );
        if let Some(r) = class.spec.parameters_ref.as_mut() {
            r.namespace = None;
        }
        let err = class_parameters(&s, &class).expect_err("no namespace");
        assert!(err.contains("set parametersRef.namespace"), "{err}");
    }

    #[test]
    fn no_reference_means_defaults() {
        let s = snapshot();
        let (mut gateway, mut class) = parts(&s);
        gateway.spec.infrastructure = None;
        class.spec.parameters_ref = None;
        assert_eq!(class_parameters(&s, &class), Ok(None));
        assert_eq!(
            gateway_parameters(&s, &gateway, Some(&class)),
            Ok(GatewayParametersSpec::default())
        );
    }
}

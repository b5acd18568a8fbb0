//! `GatewayParameters` (group `portcullis.dev`, `v1alpha1`): how the
//! controller provisions the data plane of a Gateway. Referenced from a
//! GatewayClass `spec.parametersRef` (defaults for every Gateway of the
//! class) or a Gateway `spec.infrastructure.parametersRef` (that Gateway
//! only; its fields win over the class's).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Portcullis' own resources.
pub const GROUP: &str = "portcullis.dev";

/// Data-plane settings for the Gateways that reference them. Every field
/// is optional: unset fields fall back to the GatewayClass's parameters,
/// then to the controller's defaults.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "GatewayParameters",
    plural = "gatewayparameters",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    shortname = "gwparams",
    category = "portcullis",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Service Type",
        type_ = "string",
        json_path = ".spec.serviceType"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParametersSpec {
    /// Proxy replicas (Deployment `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Proxy container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Proxy container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Service type: `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^(LoadBalancer|NodePort|ClusterIP)$"))]
    pub service_type: Option<String>,
    /// Extra annotations on the provisioned Service (e.g. cloud load
    /// balancer settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<BTreeMap<String, String>>,
    /// Extra annotations on the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

impl GatewayParametersSpec {
    /// `self` with unset fields taken from `fallback` (Gateway over class).
    pub fn or(&self, fallback: &GatewayParametersSpec) -> GatewayParametersSpec {
        GatewayParametersSpec {
            replicas: self.replicas.or(fallback.replicas),
            image: self.image.clone().or_else(|| fallback.image.clone()),
            resources: self
                .resources
                .clone()
                .or_else(|| fallback.resources.clone()),
            service_type: self
                .service_type
                .clone()
                .or_else(|| fallback.service_type.clone()),
            service_annotations: self
                .service_annotations
                .clone()
                .or_else(|| fallback.service_annotations.clone()),
            pod_annotations: self
                .pod_annotations
                .clone()
                .or_else(|| fallback.pod_annotations.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn crd_names_and_scope() {
        let crd = GatewayParameters::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.kind, "GatewayParameters");
        assert_eq!(crd.spec.names.plural, "gatewayparameters");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(
            GatewayParameters::api_version(&()),
            "portcullis.dev/v1alpha1"
        );
    }

    #[test]
    fn gateway_fields_win_over_class_fields() {
        let class = GatewayParametersSpec {
            replicas: Some(2),
            image: Some("class-image".into()),
            service_type: Some("ClusterIP".into()),
            ..Default::default()
        };
        let gateway = GatewayParametersSpec {
            replicas: Some(5),
            ..Default::default()
        };
        let merged = gateway.or(&class);
        assert_eq!(merged.replicas, Some(5));
        assert_eq!(merged.image.as_deref(), Some("class-image"));
        assert_eq!(merged.service_type.as_deref(), Some("ClusterIP"));
    }

    #[test]
    fn camel_case_fields() {
        let spec: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "serviceType": "NodePort", "serviceAnnotations": {"a": "b"}
        }))
        .expect("valid spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_type.as_deref(), Some("NodePort"));
    }
}

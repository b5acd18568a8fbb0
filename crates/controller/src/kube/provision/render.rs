//! The objects provisioned for one Gateway, rendered purely: a
//! ServiceAccount, a ClusterRoleBinding giving it the proxy's read-only
//! ClusterRole, a Deployment running `portcullis proxy --gateway ns/name`
//! and a Service exposing the listener ports.
//!
//! - Names: `<gateway>-portcullis` (cut to 63 characters), in the
//!   Gateway's namespace; the ClusterRoleBinding, cluster-scoped, is
//!   `portcullis-proxy-<namespace>-<gateway>` (cut to 253).
//! - Labels: `spec.infrastructure.labels` propagate to every object and to
//!   the pods, then ours (`gateway.networking.k8s.io/gateway-name`, the
//!   selector, and `app.kubernetes.io/managed-by`) win over them.
//! - Annotations: `spec.infrastructure.annotations` everywhere; the
//!   parameters' service / pod annotations on the Service / pods.
//! - Owner references to the Gateway (controller, blockOwnerDeletion) so
//!   the namespaced objects go when the Gateway goes. A cluster-scoped
//!   object cannot be owned by a namespaced one: the ClusterRoleBinding is
//!   labelled with the Gateway's namespace and name and the provisioner
//!   deletes it itself.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_api::GatewayParametersSpec;
use serde_json::{json, Value};

/// Selector label of the proxy pods (the Gateway API's recommended label).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// On the ClusterRoleBinding: the namespace of its Gateway.
pub const GATEWAY_NAMESPACE_LABEL: &str = "portcullis.dev/gateway-namespace";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "portcullis";
/// Admin port of the proxy (readiness, liveness).
pub const ADMIN_PORT: i32 = 9901;

/// Controller-wide provisioning settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionSettings {
    /// Proxy image unless the parameters name one.
    pub default_image: String,
    /// The ClusterRole proxies are bound to (deploy/rbac/proxy.yaml).
    pub proxy_cluster_role: String,
}

impl Default for ProvisionSettings {
    fn default() -> Self {
        ProvisionSettings {
            default_image: "portcullis:latest".to_string(),
            proxy_cluster_role: "portcullis-proxy".to_string(),
        }
    }
}

/// Everything provisioned for one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub cluster_role_binding: ClusterRoleBinding,
    pub deployment: Deployment,
    pub service: Service,
}

/// Name of the namespaced objects of a Gateway.
pub fn resource_name(gateway_name: &str) -> String {
    cut(&format!("{gateway_name}-portcullis"), 63)
}

/// Name of the ClusterRoleBinding of a Gateway.
pub fn binding_name(namespace: &str, gateway_name: &str) -> String {
    cut(&format!("portcullis-proxy-{namespace}-{gateway_name}"), 253)
}

/// Cuts to `max` bytes at a char boundary, without a trailing `-` or `.`.
fn cut(name: &str, max: usize) -> String {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.']).to_string()
}

fn owner(gateway: &Gateway) -> OwnerReference {
    OwnerReference {
        api_version: format!("{}/v1", portcullis_api::GATEWAY_GROUP),
        kind: "Gateway".to_string(),
        name: gateway.metadata.name.clone().unwrap_or_default(),
        uid: gateway.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Infrastructure labels, then ours on top.
fn labels(gateway: &Gateway) -> BTreeMap<String, String> {
    let mut labels = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.labels.clone())
        .unwrap_or_default();
    labels.insert(
        GATEWAY_NAME_LABEL.to_string(),
        gateway.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

fn selector(gateway: &Gateway) -> BTreeMap<String, String> {
    BTreeMap::from([(
        GATEWAY_NAME_LABEL.to_string(),
        gateway.metadata.name.clone().unwrap_or_default(),
    )])
}

fn annotations(
    gateway: &Gateway,
    extra: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let mut out = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.annotations.clone())
        .unwrap_or_default();
    if let Some(extra) = extra {
        out.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    (!out.is_empty()).then_some(out)
}

/// Distinct listener ports, ascending.
pub fn listener_ports(gateway: &Gateway) -> Vec<i32> {
    let ports: BTreeSet<i32> = gateway.spec.listeners.iter().map(|l| l.port).collect();
    ports.into_iter().collect()
}

/// Renders everything for one Gateway.
pub fn render(
    gateway: &Gateway,
    params: &GatewayParametersSpec,
    settings: &ProvisionSettings,
) -> Rendered {
    let gateway_name = gateway.metadata.name.clone().unwrap_or_default();
    let namespace = gateway
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = resource_name(&gateway_name);
    let meta = |extra_annotations: Option<&BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(labels(gateway)),
        annotations: annotations(gateway, extra_annotations),
        owner_references: Some(vec![owner(gateway)]),
        ..ObjectMeta::default()
    };
    let ports = listener_ports(gateway);

    let service_account = ServiceAccount {
        metadata: meta(None),
        ..ServiceAccount::default()
    };

    let mut binding_labels = labels(gateway);
    binding_labels.insert(GATEWAY_NAMESPACE_LABEL.to_string(), namespace.clone());
    let cluster_role_binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name(&namespace, &gateway_name)),
            labels: Some(binding_labels),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "ClusterRole".to_string(),
            name: settings.proxy_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: name.clone(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };

    let field_env = |env: &str, path: &str| EnvVar {
        name: env.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let mut container_ports: Vec<ContainerPort> = ports
        .iter()
        .map(|p| ContainerPort {
            container_port: *p,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("admin".to_string()),
        container_port: ADMIN_PORT,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    });
    let container = Container {
        name: "proxy".to_string(),
        image: Some(
            params
                .image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        args: Some(
            [
                "proxy".to_string(),
                "--gateway".to_string(),
                format!("{namespace}/{gateway_name}"),
                "--admin".to_string(),
                format!("0.0.0.0:{ADMIN_PORT}"),
            ]
            .into_iter()
            // A change of limits or observability rolls the proxies
            // (process settings).
            .chain(params.limits.iter().flat_map(|l| l.to_args()))
            .chain(params.observability.iter().flat_map(|o| o.to_args()))
            .collect(),
        ),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(container_ports),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe("/healthz")
        }),
        resources: params.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            // Listener ports below 1024 without running as root.
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta(None),
        spec: Some(DeploymentSpec {
            replicas: Some(params.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector(gateway)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(gateway)),
                    annotations: annotations(gateway, params.pod_annotations.as_ref()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    containers: vec![container],
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };

    let service = Service {
        metadata: meta(params.service_annotations.as_ref()),
        spec: Some(ServiceSpec {
            type_: Some(
                params
                    .service_type
                    .clone()
                    .unwrap_or_else(|| "LoadBalancer".to_string()),
            ),
            selector: Some(selector(gateway)),
            ports: Some(
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(format!("port-{p}")),
                        port: *p,
                        target_port: Some(IntOrString::Int(*p)),
                        protocol: Some("TCP".to_string()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    Rendered {
        service_account,
        cluster_role_binding,
        deployment,
        service,
    }
}

/// `Gateway.status.addresses` from the provisioned Service: its load
/// balancer ingress addresses, else its cluster IPs; empty while none is
/// assigned.
pub fn gateway_addresses(service: &Service) -> Vec<Value> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut out: Vec<Value> = ingress
        .into_iter()
        .flatten()
        .filter_map(|i| match (&i.ip, &i.hostname) {
            (Some(ip), _) if !ip.is_empty() => Some(json!({"type": "IPAddress", "value": ip})),
            (_, Some(host)) if !host.is_empty() => Some(json!({"type": "Hostname", "value": host})),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        let spec = service.spec.as_ref();
        let ips = spec
            .and_then(|s| s.cluster_ips.clone())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default();
        out = ips
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .map(|ip| json!({"type": "IPAddress", "value": ip}))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ResourceRequirements, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn gateway() -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "infra", "uid": "u-1"},
            "spec": {
                "gatewayClassName": "portcullis",
                "listeners": [
                    {"name": "https", "port": 443, "protocol": "HTTPS"},
                    {"name": "http", "port": 80, "protocol": "HTTP"},
                    {"name": "http-2", "port": 80, "protocol": "HTTP", "hostname": "b.example"}
                ],
                "infrastructure": {
                    "labels": {"team": "edge", "gateway.networking.k8s.io/gateway-name": "spoofed"},
                    "annotations": {"cost-center": "42"}
                }
            }
        }))
        .expect("valid gateway")
    }

    fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
        meta.labels.clone().unwrap_or_default()
    }

    #[test]
    fn names_owner_labels_and_annotations() {
        let r = render(
            &gateway(),
            &GatewayParametersSpec::default(),
            &ProvisionSettings::default(),
        );
        for meta in [
            &r.deployment.metadata,
            &r.service.metadata,
            &r.service_account.metadata,
        ] {
            assert_eq!(meta.name.as_deref(), Some("edge-portcullis"));
            assert_eq!(meta.namespace.as_deref(), Some("infra"));
            let labels = labels_of(meta);
            assert_eq!(labels["team"], "edge");
            // Ours win over infrastructure labels.
            assert_eq!(labels[GATEWAY_NAME_LABEL], "edge");
            assert_eq!(labels[MANAGED_BY_LABEL], "portcullis");
            assert_eq!(
                meta.annotations.clone().unwrap_or_default()["cost-center"],
                "42"
            );
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].api_version, "gateway.networking.k8s.io/v1");
            assert_eq!(owners[0].kind, "Gateway");
            assert_eq!(owners[0].name, "edge");
            assert_eq!(owners[0].uid, "u-1");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(owners[0].block_owner_deletion, Some(true));
        }
    }

    #[test]
    fn deployment_runs_the_proxy_for_this_gateway() {
        let r = render(
            &gateway(),
            &GatewayParametersSpec::default(),
            &ProvisionSettings::default(),
        );
        let spec = r.deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([(
                GATEWAY_NAME_LABEL.to_string(),
                "edge".to_string()
            )]))
        );
        let template_meta = spec.template.metadata.expect("template metadata");
        assert_eq!(labels_of(&template_meta)[GATEWAY_NAME_LABEL], "edge");
        assert_eq!(labels_of(&template_meta)["team"], "edge");
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("edge-portcullis"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("portcullis:latest"));
        assert_eq!(
            c.args.clone().unwrap_or_default(),
            [
                "proxy",
                "--gateway",
                "infra/edge",
                "--admin",
                "0.0.0.0:9901"
            ]
        );
        let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, [80, 443, ADMIN_PORT]);
        let readiness = c
            .readiness_probe
            .clone()
            .and_then(|p| p.http_get)
            .expect("readiness");
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        assert_eq!(readiness.port, IntOrString::Int(ADMIN_PORT));
        let liveness = c
            .liveness_probe
            .clone()
            .and_then(|p| p.http_get)
            .expect("liveness");
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        let env: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
        let caps = c
            .security_context
            .clone()
            .and_then(|s| s.capabilities)
            .expect("capabilities");
        assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
        assert_eq!(c.resources, None);
    }

    #[test]
    fn service_exposes_each_listener_port_once_as_a_load_balancer() {
        let r = render(
            &gateway(),
            &GatewayParametersSpec::default(),
            &ProvisionSettings::default(),
        );
        let spec = r.service.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([(
                GATEWAY_NAME_LABEL.to_string(),
                "edge".to_string()
            )]))
        );
        let ports: Vec<(Option<String>, i32, Option<IntOrString>)> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.port, p.target_port))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("port-80".into()), 80, Some(IntOrString::Int(80))),
                (Some("port-443".into()), 443, Some(IntOrString::Int(443))),
            ]
        );
    }

    #[test]
    fn parameters_set_replicas_image_resources_service_type_and_annotations() {
        let params = GatewayParametersSpec {
            replicas: Some(3),
            image: Some("registry.local/portcullis:1.2".into()),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("cpu".to_string(), Quantity("2".into()))])),
                ..ResourceRequirements::default()
            }),
            service_type: Some("ClusterIP".into()),
            service_annotations: Some(BTreeMap::from([("lb".to_string(), "internal".to_string())])),
            pod_annotations: Some(BTreeMap::from([("scrape".to_string(), "true".to_string())])),
            limits: Some(portcullis_api::parameters::ProxyLimits {
                max_uri_bytes: Some(2048),
                idle_timeout_seconds: Some(20),
                ..Default::default()
            }),
            observability: Some(portcullis_api::parameters::ProxyObservability {
                access_log: Some("off".into()),
                otlp_endpoint: Some("http://collector:4318".into()),
                ..Default::default()
            }),
        };
        let r = render(&gateway(), &params, &ProvisionSettings::default());
        let spec = r.deployment.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let pod_annotations = spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(pod_annotations["scrape"], "true");
        assert_eq!(pod_annotations["cost-center"], "42");
        let c = &spec.template.spec.expect("pod").containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/portcullis:1.2"));
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(
            args[args.len() - 4..],
            [
                "--max-uri-bytes=2048",
                "--idle-timeout=20s",
                "--access-log=off",
                "--otlp-endpoint=http://collector:4318"
            ],
            "limits and observability become proxy flags"
        );
        assert_eq!(c.resources, params.resources);
        assert_eq!(
            r.service.spec.and_then(|s| s.type_).as_deref(),
            Some("ClusterIP")
        );
        let service_annotations = r.service.metadata.annotations.unwrap_or_default();
        assert_eq!(service_annotations["lb"], "internal");
        assert_eq!(service_annotations["cost-center"], "42");
        // Service annotations stay on the Service.
        assert!(!r
            .deployment
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("lb"));
    }

    #[test]
    fn cluster_role_binding_binds_the_proxy_role_to_the_service_account() {
        let r = render(
            &gateway(),
            &GatewayParametersSpec::default(),
            &ProvisionSettings::default(),
        );
        let b = r.cluster_role_binding;
        assert_eq!(
            b.metadata.name.as_deref(),
            Some("portcullis-proxy-infra-edge")
        );
        assert_eq!(b.metadata.namespace, None);
        assert_eq!(b.metadata.owner_references, None);
        assert_eq!(labels_of(&b.metadata)[GATEWAY_NAMESPACE_LABEL], "infra");
        assert_eq!(labels_of(&b.metadata)[GATEWAY_NAME_LABEL], "edge");
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert_eq!(b.role_ref.name, "portcullis-proxy");
        let subjects = b.subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "edge-portcullis");
        assert_eq!(subjects[0].namespace.as_deref(), Some("infra"));
    }

    #[test]
    fn long_names_are_cut_to_valid_lengths() {
        let long = "g".repeat(70);
        assert_eq!(resource_name(&long).len(), 63);
        assert!(resource_name(&format!("{}-x", "g".repeat(61))).len() <= 63);
        assert!(!resource_name(&format!("{}-x", "g".repeat(61))).ends_with('-'));
    }

    #[test]
    fn addresses_prefer_load_balancer_ingress_then_cluster_ip() {
        let mut service = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.0.0.7".into()),
                cluster_ips: Some(vec!["10.0.0.7".into()]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        assert_eq!(
            gateway_addresses(&service),
            vec![json!({"type": "IPAddress", "value": "10.0.0.7"})]
        );
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("203.0.113.9".into()),
                        ..LoadBalancerIngress::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..LoadBalancerIngress::default()
                    },
                ]),
            }),
            ..ServiceStatus::default()
        });
        assert_eq!(
            gateway_addresses(&service),
            vec![
                json!({"type": "IPAddress", "value": "203.0.113.9"}),
                json!({"type": "Hostname", "value": "lb.example"}),
            ]
        );
        assert_eq!(gateway_addresses(&Service::default()), Vec::<Value>::new());
    }
}

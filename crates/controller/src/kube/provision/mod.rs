//! Provisioning (leader only): for each Gateway of our GatewayClasses, a
//! proxy Deployment, its Service, ServiceAccount and ClusterRoleBinding
//! ([`render`]), applied with server-side apply; `Gateway.status.addresses`
//! from the Service.
//!
//! Objects are applied when their rendering changed since the last apply
//! (and all of them again every [`RESYNC`], which also repairs manual
//! edits); the Deployment, Service and ServiceAccount are owned by the
//! Gateway and garbage-collected with it, the ClusterRoleBinding is deleted
//! here once its Gateway is gone.

pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use portcullis_api::GatewayParametersSpec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::compile::parameters::gateway_parameters;
use crate::snapshot::{ObjectKey, Snapshot};
use render::{
    binding_name, gateway_addresses, render, resource_name, ProvisionSettings,
    GATEWAY_NAMESPACE_LABEL, GATEWAY_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL,
};

/// Every object is re-applied this often, whether or not its rendering
/// changed.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What the provisioner reads from the watch stores.
#[derive(Debug, Clone, Default)]
pub struct ProvisionInputs {
    /// Gateways of our GatewayClasses.
    pub gateways: Vec<Gateway>,
    /// Our GatewayClasses, by name.
    pub classes: BTreeMap<String, GatewayClass>,
    /// Services we provisioned (managed-by label), by namespace/name.
    pub services: BTreeMap<ObjectKey, Service>,
    /// The effective parameters of each Gateway, or why its parametersRef
    /// (or its class's) is invalid: then the Gateway is not accepted and
    /// its proxy is left as it is.
    pub parameters: BTreeMap<ObjectKey, Result<GatewayParametersSpec, String>>,
}

/// Picks our Gateways, classes and provisioned Services from a snapshot.
pub fn provision_inputs(snapshot: &Snapshot, controller_name: &str) -> ProvisionInputs {
    let classes: BTreeMap<String, GatewayClass> = snapshot
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.spec.controller_name == controller_name)
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    let gateways: Vec<Gateway> = snapshot
        .gateways
        .values()
        .filter(|g| classes.contains_key(&g.spec.gateway_class_name))
        .cloned()
        .collect();
    let parameters = gateways
        .iter()
        .map(|g| {
            let class = classes.get(&g.spec.gateway_class_name);
            (
                ObjectKey::of(&g.metadata),
                gateway_parameters(snapshot, g, class),
            )
        })
        .collect();
    let services = snapshot
        .services
        .iter()
        .filter(|(_, s)| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == MANAGED_BY)
        })
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    ProvisionInputs {
        gateways,
        classes,
        services,
        parameters,
    }
}

/// The merge patch setting `status.addresses`, if it differs from what
/// the Gateway shows (nothing is written while the Service has no address).
pub fn addresses_patch(gateway: &Gateway, service: &Service) -> Option<Value> {
    let wanted = gateway_addresses(service);
    if wanted.is_empty() {
        return None;
    }
    let current = gateway
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or(Value::Null);
    (current != Value::Array(wanted.clone())).then(|| json!({"status": {"addresses": wanted}}))
}

const FIELD_MANAGER: &str = "portcullis-controller";

/// Runs the provisioner while `leading`, until `shutdown`.
pub async fn run(
    client: Client,
    settings: ProvisionSettings,
    mut inputs: watch::Receiver<Arc<ProvisionInputs>>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied: HashMap<String, Value> = HashMap::new();
    let mut addresses_written: HashMap<ObjectKey, Value> = HashMap::new();
    let mut last_gateways: Option<BTreeSet<ObjectKey>> = None;
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !*leading.borrow_and_update() {
            applied.clear();
            addresses_written.clear();
            last_gateways = None;
            tokio::select! {
                r = leading.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let current = inputs.borrow_and_update().clone();
        let mut keys = BTreeSet::new();
        for gateway in &current.gateways {
            let key = ObjectKey::of(&gateway.metadata);
            keys.insert(key.clone());
            let params = match current.parameters.get(&key) {
                Some(Ok(params)) => params,
                Some(Err(problem)) => {
                    // Reported as InvalidParameters in the Gateway's status.
                    tracing::warn!(gateway = %key, "{problem}; its proxy is left as it is until the reference is fixed");
                    continue;
                }
                None => &GatewayParametersSpec::default(),
            };
            let rendered = render(gateway, params, &settings);
            let ns = key.namespace.as_str();
            apply(
                &mut applied,
                Api::<ServiceAccount>::namespaced(client.clone(), ns),
                &rendered.service_account,
            )
            .await;
            apply(
                &mut applied,
                Api::<ClusterRoleBinding>::all(client.clone()),
                &rendered.cluster_role_binding,
            )
            .await;
            apply(
                &mut applied,
                Api::<Deployment>::namespaced(client.clone(), ns),
                &rendered.deployment,
            )
            .await;
            apply(
                &mut applied,
                Api::<Service>::namespaced(client.clone(), ns),
                &rendered.service,
            )
            .await;
            let service_key = ObjectKey::new(key.namespace.clone(), resource_name(&key.name));
            if let Some(patch) = current
                .services
                .get(&service_key)
                .and_then(|s| addresses_patch(gateway, s))
            {
                if addresses_written.get(&key) != Some(&patch) {
                    let api = Api::<Gateway>::namespaced(client.clone(), ns);
                    let params = PatchParams {
                        field_manager: Some(FIELD_MANAGER.to_string()),
                        ..PatchParams::default()
                    };
                    match api
                        .patch_status(&key.name, &params, &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(gateway = %key, addresses = %patch["status"]["addresses"], "gateway addresses");
                            addresses_written.insert(key.clone(), patch);
                        }
                        Err(e) => {
                            tracing::warn!(gateway = %key, error = %e, "cannot write gateway addresses")
                        }
                    }
                }
            }
        }
        if last_gateways.as_ref() != Some(&keys) {
            delete_orphan_bindings(&client, &keys).await;
            last_gateways = Some(keys);
        }
        tokio::select! {
            r = inputs.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = resync.tick() => applied.clear(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Server-side applies `object` unless the same rendering was applied
/// last time.
async fn apply<K>(applied: &mut HashMap<String, Value>, api: Api<K>, object: &K)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let key = format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or(""),
        name
    );
    let Ok(body) = serde_json::to_value(object) else {
        return;
    };
    if applied.get(&key) == Some(&body) {
        return;
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(&body)).await {
        Ok(_) => {
            tracing::info!(object = %key, "applied");
            applied.insert(key, body);
        }
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "cannot apply a provisioned object; retrying with the next change or resync");
            applied.remove(&key);
        }
    }
}

/// Deletes our ClusterRoleBindings whose Gateway is gone.
async fn delete_orphan_bindings(client: &Client, gateways: &BTreeSet<ObjectKey>) {
    let api = Api::<ClusterRoleBinding>::all(client.clone());
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{GATEWAY_NAMESPACE_LABEL}");
    let list = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list provisioned ClusterRoleBindings");
            return;
        }
    };
    for binding in list.items {
        let labels = binding.metadata.labels.clone().unwrap_or_default();
        let (Some(ns), Some(gw)) = (
            labels.get(GATEWAY_NAMESPACE_LABEL),
            labels.get(GATEWAY_NAME_LABEL),
        ) else {
            continue;
        };
        let name = binding.metadata.name.clone().unwrap_or_default();
        if gateways.contains(&ObjectKey::new(ns.clone(), gw.clone()))
            || name != binding_name(ns, gw)
        {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(binding = %name, "deleted the ClusterRoleBinding of a removed Gateway")
            }
            Err(e) => {
                tracing::warn!(binding = %name, error = %e, "cannot delete ClusterRoleBinding")
            }
        }
    }
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
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
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
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: b, namespace: infra}
spec:
  gatewayClassName: theirs
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: a-portcullis, namespace: infra, labels: {app.kubernetes.io/managed-by: portcullis}}
spec: {ports: [{port: 80}], clusterIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: infra}
spec: {ports: [{port: 80}]}
"#;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for o in parse_documents(OBJECTS).expect("fixture parses") {
            s.insert(o);
        }
        s
    }

    #[test]
    fn inputs_are_our_classes_their_gateways_and_our_services() {
        let inputs = provision_inputs(&snapshot(), portcullis_api::CONTROLLER_NAME);
        assert_eq!(inputs.classes.keys().collect::<Vec<_>>(), ["ours"]);
        let gateways: Vec<_> = inputs
            .gateways
            .iter()
            .filter_map(|g| g.metadata.name.as_deref())
            .collect();
        assert_eq!(gateways, ["a"]);
        assert_eq!(
            inputs.services.keys().cloned().collect::<Vec<_>>(),
            [ObjectKey::new("infra", "a-portcullis")]
        );
    }

    #[test]
    fn parameters_are_resolved_per_gateway_and_invalid_ones_reported() {
        let mut s = snapshot();
        let inputs = provision_inputs(&s, portcullis_api::CONTROLLER_NAME);
        let err = inputs.parameters[&ObjectKey::new("infra", "a")]
            .clone()
            .expect_err("class parameters missing");
        assert!(
            err.contains("portcullis-system/class-defaults not found"),
            "{err}"
        );
        for doc in parse_documents(
            r#"
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: class-defaults, namespace: portcullis-system}
spec: {replicas: 2, image: class-image}
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: big, namespace: infra}
spec: {replicas: 6}
"#,
        )
        .expect("parameters parse")
        {
            s.insert(doc);
        }
        let inputs = provision_inputs(&s, portcullis_api::CONTROLLER_NAME);
        let params = inputs.parameters[&ObjectKey::new("infra", "a")]
            .clone()
            .expect("valid now");
        assert_eq!(params.replicas, Some(6));
        assert_eq!(params.image.as_deref(), Some("class-image"));
    }

    #[test]
    fn addresses_are_patched_only_when_they_differ() {
        let s = snapshot();
        let inputs = provision_inputs(&s, portcullis_api::CONTROLLER_NAME);
        let mut gateway = inputs.gateways[0].clone();
        let service = &inputs.services[&ObjectKey::new("infra", "a-portcullis")];
        let patch = addresses_patch(&gateway, service).expect("a patch");
        assert_eq!(
            patch,
            json!({"status": {"addresses": [{"type": "IPAddress", "value": "10.0.0.5"}]}})
        );
        gateway.status = serde_json::from_value(
            json!({"addresses": [{"type": "IPAddress", "value": "10.0.0.5"}]}),
        )
        .ok();
        assert_eq!(addresses_patch(&gateway, service), None);
        assert_eq!(addresses_patch(&gateway, &Service::default()), None);
    }
}

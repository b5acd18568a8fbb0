//! The status writer (leader only): sends the compiled statuses to the
//! API server as merge patches of the `status` subresource, only for the
//! objects whose status actually changed (see [`super::status_patch`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::tlsroutes::TlsRoute;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use super::status_patch::{format_time, plan, Observed, StatusPatch, StatusTarget, Written};
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{StatusKind, StatusUpdate};

/// What the writer works from: the compiled statuses and, for each, the
/// status the API server has (from the watch stores).
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    pub statuses: Arc<Vec<StatusUpdate>>,
    pub observed: BTreeMap<StatusTarget, Observed>,
}

/// How many status patches are in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// The field manager our writes are recorded under.
pub const FIELD_MANAGER: &str = "portcullis-controller";

fn target(status: &StatusUpdate) -> StatusTarget {
    StatusTarget {
        kind: status.kind,
        namespace: status.namespace.clone(),
        name: status.name.clone(),
    }
}

/// The observed status of every object a compiled status is about; an
/// object missing from the stores is left out (nothing to write to).
pub fn observe(snapshot: &Snapshot, statuses: &[StatusUpdate]) -> BTreeMap<StatusTarget, Observed> {
    fn of<T: serde::Serialize>(rv: &Option<String>, status: &Option<T>) -> Observed {
        Observed {
            resource_version: rv.clone(),
            status: status
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null),
        }
    }
    let mut out = BTreeMap::new();
    for status in statuses {
        let key = || {
            ObjectKey::new(
                status.namespace.clone().unwrap_or_default(),
                status.name.clone(),
            )
        };
        let observed = match status.kind {
            StatusKind::GatewayClass => snapshot
                .gateway_classes
                .get(&status.name)
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::Gateway => snapshot
                .gateways
                .get(&key())
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::HttpRoute => snapshot
                .http_routes
                .get(&key())
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::GrpcRoute => snapshot
                .grpc_routes
                .get(&key())
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::BackendTlsPolicy => snapshot
                .backend_tls_policies
                .get(&key())
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::TlsRoute => snapshot
                .tls_routes
                .get(&key())
                .map(|o| of(&o.metadata.resource_version, &o.status)),
            StatusKind::Policy(kind) => snapshot
                .policies
                .get(&kind)
                .and_then(|m| m.get(&key()))
                .map(|o| Observed {
                    resource_version: o.metadata.resource_version.clone(),
                    status: o.status.clone(),
                }),
            StatusKind::ConfigFile => None,
        };
        if let Some(observed) = observed {
            out.insert(target(status), observed);
        }
    }
    out
}

/// The writes needed now, in status order.
pub fn plan_all(
    inputs: &StatusInputs,
    written: &HashMap<StatusTarget, Written>,
    controller_name: &str,
    now: &str,
) -> Vec<(StatusTarget, StatusPatch)> {
    inputs
        .statuses
        .iter()
        .filter_map(|status| {
            let target = target(status);
            let observed = inputs.observed.get(&target)?;
            let patch = plan(
                status.kind,
                observed,
                &status.status,
                written.get(&target),
                controller_name,
                now,
            )?;
            Some((target, patch))
        })
        .collect()
}

/// Counters of the writer, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub writes: u64,
    pub conflicts: u64,
    pub errors: u64,
}

/// Writes statuses while `leading` is true, until `shutdown`. Publishes
/// its counters on `stats`.
pub async fn run(
    client: Client,
    controller_name: String,
    mut inputs: watch::Receiver<Arc<StatusInputs>>,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    stats: watch::Sender<WriterStats>,
) {
    let mut written: HashMap<StatusTarget, Written> = HashMap::new();
    let mut retry_delay = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !*leading.borrow_and_update() {
            // What another leader wrote meanwhile is in the stores, not
            // here: start afresh when leading again.
            written.clear();
            tokio::select! {
                r = leading.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let current = inputs.borrow_and_update().clone();
        written.retain(|t, _| current.observed.contains_key(t));
        let now = format_time(SystemTime::now());
        let patches = plan_all(&current, &written, &controller_name, &now);
        let mut failed = false;
        // One log line per round, not per object: a missing RBAC rule
        // fails every write the same way.
        let mut failures: Vec<(StatusTarget, kube::Error)> = Vec::new();
        if !patches.is_empty() {
            let results: Vec<_> = futures_util::stream::iter(patches)
                .map(|(target, patch)| {
                    let client = client.clone();
                    async move {
                        let result = send(client, &target, &patch).await;
                        (target, patch, result)
                    }
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
            let mut counts = *stats.borrow();
            for (target, patch, result) in results {
                match result {
                    Ok(new_version) => {
                        counts.writes += 1;
                        tracing::debug!(object = %target, "status written");
                        written.insert(
                            target,
                            Written {
                                based_on: patch.resource_version,
                                result: new_version,
                                status: patch.status,
                            },
                        );
                    }
                    // Changed since we read it: the watch brings the new
                    // version and a new plan.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        counts.conflicts += 1;
                        written.remove(&target);
                    }
                    // Deleted meanwhile: nothing to write.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        written.remove(&target);
                    }
                    Err(e) => {
                        counts.errors += 1;
                        failed = true;
                        failures.push((target, e));
                    }
                }
            }
            if let Some((target, error)) = failures.first() {
                tracing::warn!(
                    object = %target,
                    %error,
                    failed = failures.len(),
                    retry_in_ms = retry_delay.as_millis() as u64,
                    "cannot write status (first failure shown); retrying"
                );
            }
            let _ = stats.send(counts);
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(retry_delay) => {}
                _ = shutdown.changed() => return,
            }
            retry_delay = (retry_delay * 2).min(Duration::from_secs(30));
            continue;
        }
        retry_delay = Duration::from_millis(500);
        tokio::select! {
            r = inputs.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends one patch; returns the object's new resourceVersion.
async fn send(
    client: Client,
    target: &StatusTarget,
    patch: &StatusPatch,
) -> Result<Option<String>, kube::Error> {
    let namespace = target.namespace.as_deref().unwrap_or("default");
    match target.kind {
        StatusKind::GatewayClass => {
            patch_status(Api::<GatewayClass>::all(client), &target.name, patch).await
        }
        StatusKind::Gateway => {
            patch_status(
                Api::<Gateway>::namespaced(client, namespace),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::HttpRoute => {
            patch_status(
                Api::<HttpRoute>::namespaced(client, namespace),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::GrpcRoute => {
            patch_status(
                Api::<GrpcRoute>::namespaced(client, namespace),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::BackendTlsPolicy => {
            patch_status(
                Api::<BackendTlsPolicy>::namespaced(client, namespace),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::TlsRoute => {
            patch_status(
                Api::<TlsRoute>::namespaced(client, namespace),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::Policy(kind) => {
            let resource = super::policy_resource(kind);
            patch_status(
                Api::<DynamicObject>::namespaced_with(client, namespace, &resource),
                &target.name,
                patch,
            )
            .await
        }
        StatusKind::ConfigFile => Ok(None),
    }
}

async fn patch_status<K>(
    api: Api<K>,
    name: &str,
    patch: &StatusPatch,
) -> Result<Option<String>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let object = api
        .patch_status(name, &params, &Patch::Merge(patch.body()))
        .await?;
    Ok(object.meta().resource_version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::parse_documents;
    use crate::{compile, CompileOptions};

    const FIXTURE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis, resourceVersion: "1", generation: 1}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default, resourceVersion: "2", generation: 1}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default, resourceVersion: "3", generation: 1}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
"#;

    fn snapshot() -> Snapshot {
        let mut snapshot = Snapshot::default();
        for object in parse_documents(FIXTURE).expect("fixture parses") {
            snapshot.insert(object);
        }
        snapshot
    }

    #[test]
    fn observe_finds_every_object_with_a_status_and_its_version() {
        let snapshot = snapshot();
        let compiled = compile(&snapshot, &CompileOptions::default());
        let observed = observe(&snapshot, &compiled.statuses);
        assert_eq!(observed.len(), 3);
        let route = StatusTarget {
            kind: StatusKind::HttpRoute,
            namespace: Some("default".into()),
            name: "r".into(),
        };
        assert_eq!(observed[&route].resource_version.as_deref(), Some("3"));
        assert_eq!(observed[&route].status, Value::Null);
    }

    #[test]
    fn first_round_writes_everything_and_the_echo_of_our_writes_writes_nothing() {
        let mut snapshot = snapshot();
        let options = CompileOptions::default();
        let compiled = compile(&snapshot, &options);
        let inputs = StatusInputs {
            observed: observe(&snapshot, &compiled.statuses),
            statuses: Arc::new(compiled.statuses.clone()),
        };
        let now = "2026-01-01T00:00:00Z";
        let mut written = HashMap::new();
        let patches = plan_all(&inputs, &written, portcullis_api::CONTROLLER_NAME, now);
        assert_eq!(patches.len(), 3);
        // Write them into the objects, as the API server would, and record
        // them as written.
        for (target, patch) in &patches {
            let version = Some("100".to_string());
            written.insert(
                target.clone(),
                Written {
                    based_on: patch.resource_version.clone(),
                    result: version.clone(),
                    status: patch.status.clone(),
                },
            );
            let key = ObjectKey::new(
                target.namespace.clone().unwrap_or_default(),
                target.name.clone(),
            );
            match target.kind {
                StatusKind::GatewayClass => {
                    if let Some(o) = snapshot.gateway_classes.get_mut(&target.name) {
                        o.status = serde_json::from_value(patch.status.clone()).ok();
                        o.metadata.resource_version = version;
                    }
                }
                StatusKind::Gateway => {
                    if let Some(o) = snapshot.gateways.get_mut(&key) {
                        o.status = serde_json::from_value(patch.status.clone()).ok();
                        o.metadata.resource_version = version;
                    }
                }
                StatusKind::HttpRoute => {
                    if let Some(o) = snapshot.http_routes.get_mut(&key) {
                        o.status = serde_json::from_value(patch.status.clone()).ok();
                        o.metadata.resource_version = version;
                    }
                }
                _ => {}
            }
        }
        // The watch echoes the writes; a minute later nothing is to write,
        // neither from the echoed statuses nor against our own record.
        let compiled = compile(&snapshot, &options);
        let inputs = StatusInputs {
            observed: observe(&snapshot, &compiled.statuses),
            statuses: Arc::new(compiled.statuses),
        };
        let later = "2026-01-01T00:01:00Z";
        assert_eq!(
            plan_all(&inputs, &written, portcullis_api::CONTROLLER_NAME, later),
            vec![]
        );
        assert_eq!(
            plan_all(
                &inputs,
                &HashMap::new(),
                portcullis_api::CONTROLLER_NAME,
                later
            ),
            vec![]
        );
    }
}

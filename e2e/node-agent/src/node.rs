//! The Node object (Ready, with the kubelet endpoint), its heartbeat, and
//! the scheduler stand-in: every pending pod is bound to this node.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

use crate::config::Config;

fn node_status(cfg: &Config) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        serde_json::json!({"type": t, "status": s, "reason": reason, "message": msg,
            "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "conditions": [
            cond("Ready", "True", "KubeletReady", "e2e node agent is posting ready status"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": cfg.gateway.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "capacity": {"cpu": "2", "memory": "24Gi", "pods": "500", "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "500", "ephemeral-storage": "100Gi"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": "e2e", "systemUUID": "e2e", "bootID": "e2e",
            "kernelVersion": uname.trim(), "osImage": "portcullis e2e node agent",
            "containerRuntimeVersion": "local://processes", "kubeletVersion": "v1.35.4",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
        }
    })
}

pub async fn register(client: &Client, cfg: &Config) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(&cfg.node_name).await?.is_none() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": cfg.node_name, "labels": {
                "kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "e2e-local"}},
            "spec": {"podCIDR": format!("{}/{}", cfg.pod_cidr.base, cfg.pod_cidr.len)},
        }))?;
        api.create(&PostParams::default(), &node)
            .await
            .context("creating the Node")?;
    }
    api.patch_status(
        &cfg.node_name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": node_status(cfg)})),
    )
    .await
    .context("setting the Node Ready")?;
    info!(node = %cfg.node_name, "node registered and Ready");
    Ok(())
}

/// Node status and node Lease, every 10 s.
pub async fn heartbeat(client: Client, cfg: Arc<Config>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = nodes
            .patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": node_status(&cfg)})),
            )
            .await
        {
            warn!("node heartbeat failed: {e}");
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.node_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.node_name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..Default::default()
            }),
        };
        let pp = PatchParams::apply("e2e-node-agent").force();
        if let Err(e) = leases
            .patch(&cfg.node_name, &pp, &Patch::Apply(&lease))
            .await
        {
            warn!("node lease renewal failed: {e}");
        }
    }
}

/// Binds every pod without a node to this one (there is one node).
pub async fn binder(client: Client, cfg: Arc<Config>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields("spec.nodeName=");
    let s = watcher(pods, wc).default_backoff().applied_objects();
    futures_util::pin_mut!(s);
    while let Some(ev) = s.next().await {
        let pod = match ev {
            Ok(p) => p,
            Err(e) => {
                warn!("pending-pod watch: {e}");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_some()
            || pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(cfg.node_name.clone()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let node = cfg.node_name.clone();
        // Bind in the background, retrying transient errors a bounded number of times.
        tokio::spawn(async move {
            for attempt in 1..=20 {
                match api
                    .create_subresource::<Binding, serde_json::Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                {
                    Ok(_) => {
                        info!(pod = %format!("{ns}/{name}"), "bound to {node}");
                        return;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return,
                    Err(e) => {
                        warn!(pod = %format!("{ns}/{name}"), attempt, "binding failed: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
}

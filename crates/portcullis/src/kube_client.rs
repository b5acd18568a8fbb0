//! The Kubernetes client of `controller` and `proxy`: an explicit
//! kubeconfig, else what `kube::Config::infer` finds (`KUBECONFIG`,
//! `~/.kube/config`, then the in-cluster service account).

use std::path::Path;

use anyhow::Context;

pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account",
        )?,
    };
    tracing::info!(api_server = %config.cluster_url, "connecting to the Kubernetes API server");
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// A name unique to this process, for the leader Lease: the pod name
/// (`POD_NAME` from the downward API, else the host name) plus the process
/// id and start time, so a restarted container never mistakes its
/// predecessor's Lease for its own.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "portcullis".to_string());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{host}_{}_{started}", std::process::id())
}

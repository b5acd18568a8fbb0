//! `portcullis proxy --gateway ns/name`: the data plane of one Gateway.
//! Watches the cluster, compiles only that Gateway, serves it. Never writes
//! to the API server (the controller reports status).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use portcullis_controller::kube::{KubeProvider, KubeProviderConfig, KubeProviderHandle};
use portcullis_controller::{CompileOptions, ObjectKey};
use portcullis_dataplane::{DataPlane, DataPlaneConfig};
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::kube_client;
use crate::lifecycle::{self, Shutdown};
use portcullis_dataplane::access_log::AccessLog;
use portcullis_dataplane::otlp::SpanExporter;
use portcullis_dataplane::server::Drained;

pub struct ProxyArgs {
    pub kubeconfig: Option<PathBuf>,
    pub gateway: ObjectKey,
    pub controller_name: String,
    pub bind: IpAddr,
    pub admin: SocketAddr,
    pub access_log: Option<AccessLog>,
    pub spans: Option<SpanExporter>,
    pub limits: portcullis_dataplane::Limits,
}

/// Parses `namespace/name`.
pub fn parse_gateway(text: &str) -> Result<ObjectKey, String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
    }
}

pub struct Proxy {
    pub provider: KubeProviderHandle,
    pub dataplane: DataPlane,
    pub admin_addr: SocketAddr,
    /// What /readyz reports.
    pub ready: watch::Sender<bool>,
}

impl Proxy {
    /// Graceful shutdown (see [`lifecycle::shut_down`]).
    pub async fn shutdown(self, how: Shutdown) -> Drained {
        lifecycle::shut_down(&self.ready, self.dataplane, how).await
    }
}

/// Starts watching; resolves once the first complete table is served (the
/// admin listener, with /readyz true, comes up then).
pub async fn start(args: ProxyArgs) -> anyhow::Result<Proxy> {
    let client = kube_client::client(args.kubeconfig.as_deref()).await?;
    let options = CompileOptions {
        controller_name: args.controller_name,
        gateway: Some(args.gateway.clone()),
        ..CompileOptions::default()
    };
    let mut provider = KubeProvider::spawn(client, KubeProviderConfig::new(options));
    tracing::info!(gateway = %args.gateway, "waiting for the first complete configuration");
    provider.wait_synced().await;
    crate::memory::trim_after_changes(provider.tables.clone());
    let mut dataplane = DataPlane::spawn(
        provider.tables.clone(),
        DataPlaneConfig {
            bind_ip: args.bind,
            access_log: args.access_log,
            spans: args.spans,
            limits: args.limits,
            ..DataPlaneConfig::default()
        },
    );
    dataplane.ready().await;
    let admin_listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("cannot bind admin listener {}", args.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let (ready_tx, ready) = watch::channel(true);
    let state = AdminState {
        shared: dataplane.shared.clone(),
        statuses: provider.statuses.clone(),
        ready,
    };
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_listener, state).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    for status in provider.statuses.borrow().iter() {
        for problem in &status.problems {
            tracing::warn!(object = %status.display_name(), "{problem}");
        }
    }
    tracing::info!(gateway = %args.gateway, admin = %admin_addr, "portcullis proxy serving");
    Ok(Proxy {
        provider,
        dataplane,
        admin_addr,
        ready: ready_tx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_argument_is_namespace_slash_name() {
        assert_eq!(
            parse_gateway("infra/edge"),
            Ok(ObjectKey::new("infra", "edge"))
        );
        for bad in ["edge", "/edge", "infra/", "a/b/c", ""] {
            assert!(parse_gateway(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

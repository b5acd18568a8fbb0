//! `portcullis controller`: watches the cluster, compiles, and (as leader)
//! writes status. Every replica watches and compiles, so a new leader
//! writes from its first moment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_controller::kube::leader::{self, LeaderConfig};
use portcullis_controller::kube::provision::{self, render::ProvisionSettings};
use portcullis_controller::kube::writer::{self, WriterStats};
use portcullis_controller::kube::{KubeProvider, KubeProviderConfig};
use portcullis_controller::CompileOptions;
use portcullis_dataplane::state::Shared;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::kube_client;

pub struct ControllerArgs {
    pub kubeconfig: Option<PathBuf>,
    pub controller_name: String,
    /// `None`: no election, this replica always writes (a single replica).
    pub leader_election: Option<(String, String)>,
    pub admin: SocketAddr,
    /// `None`: do not provision proxies (Gateways are served by proxies
    /// deployed some other way).
    pub provision: Option<ProvisionSettings>,
    /// `None`: the core features.
    pub supported_features: Option<Vec<String>>,
}

pub async fn run(
    args: ControllerArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = kube_client::client(args.kubeconfig.as_deref()).await?;
    let options = CompileOptions {
        controller_name: args.controller_name.clone(),
        ..CompileOptions::default()
    };
    let mut config = KubeProviderConfig::new(options);
    config.observe_status = true;
    if let Some(features) = args.supported_features {
        config.supported_features = features.into_iter().filter(|f| !f.is_empty()).collect();
    }
    let provider = KubeProvider::spawn(client.clone(), config);

    // The admin listener's /config_dump shows the table this controller
    // computed (no data plane runs here).
    let shared = Arc::new(Shared::new(provider.tables.borrow().clone()));
    let mirror = shared.clone();
    let mut tables = provider.tables.clone();
    tokio::spawn(async move {
        while tables.changed().await.is_ok() {
            let table = tables.borrow_and_update().clone();
            mirror.swap(table);
        }
    });
    let admin_listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("cannot bind admin listener {}", args.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let state = AdminState {
        shared,
        statuses: provider.statuses.clone(),
        ready: provider.synced.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_listener, state).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (leading_tx, leading_rx) = watch::channel(false);
    let election = match args.leader_election {
        Some((namespace, lease_name)) => {
            let config = LeaderConfig::new(namespace, lease_name, kube_client::identity());
            tracing::info!(identity = %config.identity, namespace = %config.namespace, lease = %config.lease_name, "leader election");
            Some(tokio::spawn(leader::run(
                client.clone(),
                config,
                leading_tx,
                shutdown_rx.clone(),
            )))
        }
        None => {
            tracing::info!("leader election disabled: this replica writes status");
            let _ = leading_tx.send(true);
            // Keep the sender alive for the writer's lifetime.
            tokio::spawn(async move {
                let _keep = leading_tx;
                std::future::pending::<()>().await;
            });
            None
        }
    };
    let mut leading = leading_rx.clone();
    tokio::spawn(async move {
        loop {
            portcullis_controller::metrics::global().set_leader(*leading.borrow_and_update());
            if leading.changed().await.is_err() {
                return;
            }
        }
    });
    let (stats_tx, mut stats_rx) = watch::channel(WriterStats::default());
    let provisioner = args.provision.map(|settings| {
        tokio::spawn(provision::run(
            client.clone(),
            settings,
            provider.provision_inputs.clone(),
            leading_rx.clone(),
            shutdown_rx.clone(),
        ))
    });
    let writer = tokio::spawn(writer::run(
        client,
        args.controller_name,
        provider.status_inputs.clone(),
        leading_rx,
        shutdown_rx,
        stats_tx,
    ));
    tokio::spawn(async move {
        // Log status writing progress at most every 10 s; count it in the
        // metrics (the stats are running totals).
        let mut counted = WriterStats::default();
        while stats_rx.changed().await.is_ok() {
            let stats = *stats_rx.borrow_and_update();
            let m = portcullis_controller::metrics::global();
            m.record_status_writes("written", stats.writes.saturating_sub(counted.writes));
            m.record_status_writes(
                "conflict",
                stats.conflicts.saturating_sub(counted.conflicts),
            );
            m.record_status_writes("error", stats.errors.saturating_sub(counted.errors));
            counted = stats;
            tracing::info!(
                writes = stats.writes,
                conflicts = stats.conflicts,
                errors = stats.errors,
                "status writes"
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    tracing::info!(admin = %admin_addr, "portcullis controller running");

    shutdown.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if let Some(election) = election {
        // Releasing the Lease lets the next leader start at once.
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if let Some(provisioner) = provisioner {
        let _ = tokio::time::timeout(Duration::from_secs(2), provisioner).await;
    }
    drop(provider);
    Ok(())
}

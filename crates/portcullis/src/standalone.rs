//! `portcullis run --config-dir DIR`: the file provider feeding the data
//! plane, with the admin listener beside it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use portcullis_controller::file::{FileProvider, FileProviderHandle};
use portcullis_controller::CompileOptions;
use portcullis_dataplane::{DataPlane, DataPlaneConfig};
use tokio::sync::watch;

use crate::admin::{self, AdminState};

pub struct Standalone {
    pub provider: FileProviderHandle,
    pub dataplane: DataPlane,
    pub admin_addr: SocketAddr,
}

/// Starts everything and returns once the first table is served.
pub async fn start(
    config_dir: PathBuf,
    bind_ip: IpAddr,
    admin_addr: SocketAddr,
    dataplane_config: Option<DataPlaneConfig>,
) -> anyhow::Result<Standalone> {
    let provider = FileProvider::spawn(config_dir.clone(), CompileOptions::default())
        .with_context(|| {
            format!(
                "cannot watch configuration directory {}",
                config_dir.display()
            )
        })?;
    for status in provider.statuses.borrow().iter() {
        for problem in &status.problems {
            tracing::warn!(object = %status.display_name(), "{problem}");
        }
    }
    let config = dataplane_config.unwrap_or(DataPlaneConfig {
        bind_ip,
        ..DataPlaneConfig::default()
    });
    let mut dataplane = DataPlane::spawn(provider.tables.clone(), config);
    crate::memory::trim_after_changes(provider.tables.clone());
    dataplane.ready().await;
    let admin_listener = admin::bind(admin_addr)
        .await
        .with_context(|| format!("cannot bind admin listener {admin_addr}"))?;
    let admin_addr = admin_listener.local_addr()?;
    let (_ready_tx, ready) = watch::channel(true);
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
    tracing::info!(admin = %admin_addr, config_dir = %config_dir.display(), "portcullis running");
    Ok(Standalone {
        provider,
        dataplane,
        admin_addr,
    })
}

//! The Kubernetes side of the controller.
//!
//! ```text
//! watcher per kind ─(Change)─> Stores (= Snapshot) ─(debounced)─> compile() ─┬─> Arc<RouteTable>        (tables)
//!                                                                             ├─> Vec<StatusUpdate>      (statuses)
//!                                                                             └─> StatusInputs ─> writer (leader only)
//! Lease ─> leader::Elector ─> leading: watch<bool> ───────────────────────────────────────────────────┘
//! ```
//!
//! - [`store`]: watcher events applied to the Snapshot; relists swap a kind
//!   atomically; "every kind listed" gate (pure, unit-tested).
//! - [`provider`]: the watchers and the compile loop; [`KubeProviderHandle`]
//!   has the shape of [`crate::file::FileProviderHandle`].
//! - [`status_patch`]: merge of compiled statuses into observed ones,
//!   transition times, "did anything change" (pure, unit-tested).
//! - [`writer`]: the status writer loop (leader only).
//! - [`leader`]: Lease-based leader election, its rules as a pure state
//!   machine.
//! - [`provision`]: a proxy Deployment + Service (+ ServiceAccount,
//!   ClusterRoleBinding) per Gateway of our classes, rendered purely;
//!   `Gateway.status.addresses` from the Service (leader only).

pub mod leader;
pub mod provider;
pub mod provision;
pub mod scope;
pub mod status_patch;
pub mod store;
pub mod writer;

pub use provider::{KubeProvider, KubeProviderConfig, KubeProviderHandle};
pub use writer::StatusInputs;

/// The API resource of one of our policy kinds, for dynamic watches and
/// status patches (the controller reads policies as JSON; see
/// [`crate::snapshot::PolicyObject`]).
pub fn policy_resource(kind: portcullis_api::PolicyKind) -> kube::api::ApiResource {
    let gvk = kube::api::GroupVersionKind::gvk(
        portcullis_api::parameters::GROUP,
        portcullis_api::PolicyKind::VERSION,
        kind.as_str(),
    );
    kube::api::ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

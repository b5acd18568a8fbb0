//! The controller: providers fill a [`Snapshot`] with the Kubernetes objects
//! Portcullis reads; the pure [`compile`] turns it into the
//! [`portcullis_model::RouteTable`] the data plane serves and one
//! [`StatusUpdate`] per object.
//!
//! ```text
//! YAML directory (file::FileProvider)    ─┐
//! Kubernetes watch (kube::KubeProvider)  ─┴─> Snapshot ─> compile() ─┬─> RouteTable ─> data plane
//!                                                                    └─> StatusUpdates ─> status writer / `validate`
//! ```
//!
//! Contract of the statuses:
//! - `status` is the object's whole `status` field in Gateway API shape.
//!   Conditions carry `observedGeneration` but no `lastTransitionTime`
//!   (compile is pure): the writer stamps it, keeping the previous time for
//!   a condition whose status did not change.
//! - Route `status.parents` holds only the entries of our controller (one per
//!   parentRef to one of our Gateways, echoing the parentRef as written);
//!   a writer merges them with other controllers' entries.
//! - `problems` lists actionable messages (empty when healthy), including
//!   ones that have no condition, such as a parentRef to a Gateway that does
//!   not exist.
//!
//! Module map: [`snapshot`] (objects by kind, YAML decoding), [`compile`]
//! (gateways and listeners, route attachment, matches, filters, backends,
//! precedence, table layout), [`status`] (status types and reasons),
//! [`file`] (directory provider and `load_dir`), [`kube`] (watches, status
//! writer, leader election).

pub mod compile;
pub mod file;
pub mod kube;
pub mod metrics;
pub mod snapshot;
pub mod status;

pub use compile::{compile, CompileOptions, Compiled};
pub use snapshot::{KubeObject, ObjectKey, Snapshot};
pub use status::{StatusKind, StatusUpdate};

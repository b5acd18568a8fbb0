//! The controller: providers (a directory of YAML files; the Kubernetes
//! watch later) fill a [`Snapshot`]; the pure [`compile`] turns it into a
//! [`portcullis_model::RouteTable`] for the data plane and a
//! [`StatusUpdate`] per object for the status writer and `portcullis
//! validate`.

pub mod compile;
pub mod file;
pub mod snapshot;
pub mod status;

pub use compile::{compile, CompileOptions, Compiled};
pub use snapshot::{KubeObject, ObjectKey, Snapshot};
pub use status::{StatusKind, StatusUpdate};

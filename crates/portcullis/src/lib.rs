//! The `portcullis` binary's commands, as a library so that integration tests
//! can start the same servers in-process.

pub mod admin;
pub mod controller_cmd;
pub mod crds;
pub mod echo;
pub mod kube_client;
pub mod memory;
pub mod proxy_cmd;
pub mod standalone;
pub mod validate;
pub mod websocket;

//! The Portcullis data plane: serves a [`portcullis_model::RouteTable`].
//!
//! Tables arrive over a `tokio::sync::watch` channel and are swapped
//! atomically ([`state::Shared`]); listeners follow the table's ports
//! ([`server`]); each request goes through [`proxy::handle`]. This crate
//! never depends on kube.

pub mod access_log;
pub mod auth;
pub mod backend_tls;
pub mod body;
pub mod client_cert;
pub mod filters;
pub mod grpc_answer;
pub mod identity;
pub mod lb;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod normalize;
pub mod observe;
pub mod otlp;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod route_filter;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod tls_route;
pub mod upstream;

pub use limits::Limits;
pub use server::{DataPlane, DataPlaneConfig};

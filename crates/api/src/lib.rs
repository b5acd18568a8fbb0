//! Kubernetes API types Portcullis reads.
//!
//! Gateway API types come from the `gateway-api` crate (Gateway API v1.5.1,
//! standard channel); Kubernetes core types from `k8s-openapi`. Our own policy
//! CRDs (group `portcullis.dev`) are added here as they land.

pub mod auth;
pub mod backend_policy;
pub mod parameters;
pub mod policy;
pub mod ratelimit;
pub mod route_filter;

pub use gateway_api;
pub use k8s_openapi;

/// The `spec.controllerName` of GatewayClasses that Portcullis implements.
pub const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";

/// Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

pub use auth::{AuthPolicy, AuthPolicySpec, AuthRules};
pub use backend_policy::{BackendPolicy, BackendPolicySpec};
pub use parameters::{GatewayParameters, GatewayParametersSpec};
pub use policy::PolicyKind;
pub use ratelimit::{RateLimitPolicy, RateLimitPolicySpec};
pub use route_filter::{RouteFilter, RouteFilterSpec};

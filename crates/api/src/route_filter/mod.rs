//! `RouteFilter` (group `portcullis.dev`, `v1alpha1`): what the gateway does
//! to the traffic of one route rule beyond routing — caching,
//! transformation, threat protection, data masking, versioning.
//!
//! Referenced from an HTTPRoute rule (or one of its backendRefs) with the
//! standard filter `{type: ExtensionRef, extensionRef: {group:
//! portcullis.dev, kind: RouteFilter, name: NAME}}`; the RouteFilter lives
//! in the route's namespace. Each section is independent and optional; a
//! rule may reference several RouteFilters, applied in the order listed.
//!
//! A RouteFilter that is missing or invalid makes the rule answer 500 (the
//! Gateway API's rule for an ExtensionRef that cannot be honoured) and is
//! reported in the route's `ResolvedRefs` condition.

pub mod cache;
pub mod masking;
pub mod threat;
pub mod transform;
pub mod versioning;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Route-local traffic processing, referenced from HTTPRoute rules.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RouteFilter",
    plural = "routefilters",
    shortname = "rf",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    category = "portcullis"
)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilterSpec {
    /// Response caching for GET and HEAD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<cache::CacheSpec>,
    /// Request and response rewriting: headers, JSON bodies, XML <-> JSON,
    /// gRPC-Web -> gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<transform::TransformSpec>,
    /// Payload limits, content types, OpenAPI validation, injection
    /// detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat_protection: Option<threat::ThreatProtectionSpec>,
    /// Redaction of response fields before they leave the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<masking::MaskingSpec>,
    /// Deprecation, sunset and retirement (410 Gone) of an API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versioning: Option<versioning::VersioningSpec>,
}

/// Group/kind an ExtensionRef must name to reach a RouteFilter.
pub const KIND: &str = "RouteFilter";

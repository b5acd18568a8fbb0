//! A compiled `RouteFilter` (portcullis.dev/v1alpha1): the sections a rule's
//! ExtensionRef filter turns on, each precomputed by the controller so that
//! the data plane only reads. See `crates/dataplane/src/route_filter` for
//! the order in which the sections run.

pub mod cache;
pub mod masking;
pub mod threat;
pub mod transform;
pub mod versioning;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteFilterConfig {
    /// `namespace/name` of the RouteFilter: logs, metrics, cache partitions.
    pub name: String,
    pub cache: Option<cache::CacheConfig>,
    pub transform: Option<transform::TransformConfig>,
    pub threat_protection: Option<threat::ThreatProtectionConfig>,
    pub masking: Option<masking::MaskingConfig>,
    pub versioning: Option<versioning::VersioningConfig>,
}

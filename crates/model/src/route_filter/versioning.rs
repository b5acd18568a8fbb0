//! Compiled `RouteFilter` versioning section. (Fields land with the feature.)

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct VersioningConfig {}

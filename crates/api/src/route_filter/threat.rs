//! `RouteFilter.spec.threatProtection`: Threat protection. (Fields land with the feature.)

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreatProtectionSpec {}

//! Stand-in for the shared GEP-713 attachment types (owned by the lead's
//! `policy` module on main); replaced by main's version at merge time.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a policy attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Fill every part `self` leaves unset from a lower-priority policy.
pub trait Merge {
    fn fill_from(&mut self, lower: &Self);
}

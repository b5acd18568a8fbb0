//! What our policy CRDs share (GEP-713 "direct" policy attachment).
//!
//! Every policy kind of ours has the same envelope:
//!
//! ```yaml
//! spec:
//!   targetRefs: [{group, kind, name, sectionName?}]   # same namespace
//!   defaults:  {...}   # the kind's rules; more specific policies win
//!   overrides: {...}   # the kind's rules; less specific policies win
//!   ...                # rules at the top level are shorthand for defaults
//! ```
//!
//! and reports `status.ancestors[]` (one entry per target, keyed by
//! ancestorRef + controllerName) with an `Accepted` condition. A kind's
//! rules struct implements [`Merge`] so that the controller can combine the
//! policies attached at the Gateway, listener, route and rule levels into
//! the one effective set a route rule is served with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A policy's target: an object in the policy's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// `gateway.networking.k8s.io` for Gateways and routes, `""` (core)
    /// for Services.
    #[serde(default)]
    pub group: String,
    /// `Gateway`, `HTTPRoute`, `GRPCRoute` or `Service` (which kinds a
    /// policy accepts depends on the policy).
    pub kind: String,
    pub name: String,
    /// A listener name (Gateway), a rule name (`spec.rules[].name` of a
    /// route) or a port name (Service). Absent: the whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// The envelope every policy spec has (see the module documentation).
/// `R` is the kind's rules struct; a policy CRD flattens this into its
/// spec so that `targetRefs`, `defaults` and `overrides` sit beside the
/// top-level rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEnvelope<R> {
    /// The objects this policy applies to.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules that more specific policies (listener, route, rule) may
    /// replace, part by part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<R>,
    /// Rules that more specific policies cannot replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<R>,
}

/// Combines policies of one kind attached at different levels.
pub trait Merge {
    /// Fills every part that `self` leaves unset from `lower`, a policy of
    /// lower priority. Parts are whatever the kind documents as the unit of
    /// merging: optional sections, or entries of a map keyed by name.
    fn fill_from(&mut self, lower: &Self);
}

/// `status` of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// One entry per target this controller considered.
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The target the entry is about.
    pub ancestor_ref: PolicyAncestorRef,
    pub controller_name: String,
    /// `Accepted` (reasons `Accepted`, `TargetNotFound`, `Invalid`).
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Our policy kinds. One list, so that the file provider, the watches, the
/// status writer and the CRD generator all agree on which exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyKind {
    AuthPolicy,
    RateLimitPolicy,
    BackendPolicy,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::AuthPolicy,
        PolicyKind::RateLimitPolicy,
        PolicyKind::BackendPolicy,
    ];

    /// Version of every policy kind.
    pub const VERSION: &'static str = "v1alpha1";

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthPolicy => "AuthPolicy",
            PolicyKind::RateLimitPolicy => "RateLimitPolicy",
            PolicyKind::BackendPolicy => "BackendPolicy",
        }
    }

    /// The resource name in URLs (`kubectl get ratelimitpolicies`).
    pub fn plural(self) -> &'static str {
        match self {
            PolicyKind::AuthPolicy => "authpolicies",
            PolicyKind::RateLimitPolicy => "ratelimitpolicies",
            PolicyKind::BackendPolicy => "backendpolicies",
        }
    }

    pub fn from_kind(kind: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_reads_target_refs_defaults_and_overrides() {
        let spec: PolicyEnvelope<serde_json::Value> = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r", "sectionName": "rule-1"}],
            "overrides": {"a": 1},
        }))
        .expect("valid envelope");
        assert_eq!(spec.target_refs[0].section_name.as_deref(), Some("rule-1"));
        assert_eq!(spec.overrides, Some(serde_json::json!({"a": 1})));
        assert_eq!(spec.defaults, None);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in PolicyKind::ALL {
            assert_eq!(PolicyKind::from_kind(k.as_str()), Some(k));
        }
        assert_eq!(PolicyKind::from_kind("Gateway"), None);
    }
}

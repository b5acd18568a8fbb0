//! `RateLimitPolicy` (group `portcullis.dev`, `v1alpha1`): request rate
//! limits attached (GEP-713) to a Gateway, a listener, an HTTPRoute /
//! GRPCRoute or one named route rule.
//!
//! A policy carries `defaults` and/or `overrides`, each a [`RateLimitRules`].
//! The effective rules of a route rule are merged from every policy that
//! reaches it: named limits are merged by name, every other field is taken
//! from the highest-priority policy that sets it.
//!
//! ```yaml
//! apiVersion: portcullis.dev/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: api-limits, namespace: default}
//! spec:
//!   targetRefs:
//!   - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
//!   defaults:
//!     limits:
//!       per-client:
//!         rates: [{limit: 10, window: 1s}, {limit: 1000, window: 1h}]
//!         key: [{type: ClientIP}]
//!     responseHeaders: Draft
//! ```

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Merge, PolicyEnvelope, PolicyStatus};

/// Rate limits for the routes the policy targets. `targetRefs`,
/// `defaults` and `overrides` are the shared policy envelope; rules given at
/// the top level of `spec` are shorthand for `defaults`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    status = "PolicyStatus",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    #[serde(flatten)]
    pub envelope: PolicyEnvelope<RateLimitRules>,
    /// Shorthand for `defaults`.
    #[serde(flatten)]
    pub rules: RateLimitRules,
}

/// The rate-limit settings of one route rule. Every part is optional so
/// that policies at several levels can be merged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRules {
    /// Named limits. A request must be admitted by every limit that
    /// applies to it. Limits with the same name in policies at different
    /// levels replace each other (the higher-priority one wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Limit>>,
    /// Where `mode: Global` limits keep their counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalBackend>,
    /// Which rate-limit headers responses carry. Default `Draft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<ResponseHeaders>,
    /// Report-only: requests over a limit are counted and logged but never
    /// rejected or delayed, and no rate-limit headers are added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    /// Delay requests over a limit (up to a deadline) instead of rejecting
    /// them at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Most counter keys a local limit keeps per gateway replica (memory
    /// bound); idle keys are evicted first. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tracked_keys: Option<u32>,
}

/// One named limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// One or more rates, all enforced (e.g. 10 per second and 1000 per
    /// hour).
    pub rates: Vec<Rate>,
    /// What a counter is keyed by; every combination of values gets its own
    /// counter. Empty: one counter for all requests. A request that lacks
    /// a part (no such header, anonymous caller) is not counted by this
    /// limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<KeyPart>,
    /// The limit counts a request that matches any of these conditions (all
    /// parts of one condition must match). Empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<RequestCondition>,
    /// For a limit attached to a Gateway or listener: one counter shared by
    /// all routes instead of one per route. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// `Local` (each gateway replica counts on its own) or `Global` (all
    /// replicas share counters in Redis, see `global`). Default `Local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LimitMode>,
}

/// `limit` requests per `window`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    /// Requests admitted per window (at least 1).
    pub limit: u64,
    /// Gateway API duration: `1s`, `1m`, `1h`, `500ms`, `1h30m`.
    pub window: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LimitMode {
    Local,
    Global,
}

/// One part of a counter key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPart {
    #[serde(rename = "type")]
    pub kind: KeyPartKind,
    /// Header name (`Header`) or claim name (`Claim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyPartKind {
    /// The client's IP address (of the TCP connection).
    #[serde(rename = "ClientIP")]
    ClientIp,
    /// The value of a request header (`name`).
    Header,
    /// A claim of the verified JWT (`name`), from the AuthPolicy.
    Claim,
    /// The API-key consumer established by the AuthPolicy.
    Consumer,
    /// The normalized request path.
    Path,
    /// The request method.
    Method,
}

/// All given parts must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestCondition {
    /// Request method (`GET`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathCondition {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCondition {
    pub name: String,
    /// `Exact` (default), `RegularExpression` or `Present` (any value).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The Redis server that holds the counters of `Global` limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalBackend {
    /// `redis://host:port[/db]`, or `rediss://...` for TLS.
    pub url: String,
    /// Secret (in the policy's namespace) with a `password` key and an
    /// optional `username` key (Redis ACL user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<LocalSecretReference>,
    /// TLS to Redis (also implied by a `rediss://` URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    /// Longest wait for Redis before `failureMode` decides. Default `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// When Redis does not answer in time: `Open` admits the request
    /// (default), `Closed` rejects it with 503 and `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    /// Secret (in the policy's namespace) whose `ca.crt` holds the CA
    /// certificates Redis' certificate must chain to. A `tls.crt` +
    /// `tls.key` pair in the same Secret is presented as client
    /// certificate (mutual TLS).
    pub ca_secret_ref: LocalSecretReference,
    /// Name to verify the server certificate against; default the URL's
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretReference {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    Open,
    Closed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ResponseHeaders {
    /// `RateLimit` and `RateLimit-Policy` (IETF httpapi draft).
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// No rate-limit headers (429 answers still carry `Retry-After`).
    None,
}

/// A short queue for requests over a limit: they wait (at most `maxWait`)
/// until the limit admits them instead of being rejected at once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Most requests waiting per limit and gateway replica; more are
    /// rejected at once.
    pub max_queued: u32,
    /// Longest a request waits (Gateway API duration). A request that
    /// would have to wait longer is rejected at once.
    pub max_wait: String,
}

impl Merge for RateLimitRules {
    fn fill_from(&mut self, lower: &Self) {
        if let Some(lower_limits) = &lower.limits {
            let limits = self.limits.get_or_insert_with(BTreeMap::new);
            for (name, limit) in lower_limits {
                limits.entry(name.clone()).or_insert_with(|| limit.clone());
            }
        }
        fn fill<T: Clone>(mine: &mut Option<T>, lower: &Option<T>) {
            if mine.is_none() {
                mine.clone_from(lower);
            }
        }
        fill(&mut self.global, &lower.global);
        fill(&mut self.response_headers, &lower.response_headers);
        fill(&mut self.shadow, &lower.shadow);
        fill(&mut self.throttle, &lower.throttle);
        fill(&mut self.max_tracked_keys, &lower.max_tracked_keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn crd_names_and_scope() {
        let crd = RateLimitPolicy::crd();
        assert_eq!(crd.spec.group, "portcullis.dev");
        assert_eq!(crd.spec.names.kind, "RateLimitPolicy");
        assert_eq!(crd.spec.names.plural, "ratelimitpolicies");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(RateLimitPolicy::api_version(&()), "portcullis.dev/v1alpha1");
    }

    #[test]
    fn parses_the_documented_example() {
        let spec: RateLimitPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api"}],
            "defaults": {
                "limits": {"per-client": {
                    "rates": [{"limit": 10, "window": "1s"}, {"limit": 1000, "window": "1h"}],
                    "key": [{"type": "ClientIP"}, {"type": "Header", "name": "x-tenant"}],
                    "when": [{"method": "POST", "path": {"value": "/api"}}],
                    "mode": "Global"
                }},
                "global": {"url": "redis://redis:6379", "failureMode": "Closed", "timeout": "50ms"},
                "responseHeaders": "XRateLimit",
                "throttle": {"maxQueued": 10, "maxWait": "500ms"}
            }
        }))
        .expect("valid spec");
        let rules = spec.envelope.defaults.expect("defaults");
        let limit = &rules.limits.as_ref().expect("limits")["per-client"];
        assert_eq!(limit.rates.len(), 2);
        assert_eq!(limit.key[0].kind, KeyPartKind::ClientIp);
        assert_eq!(limit.key[1].name.as_deref(), Some("x-tenant"));
        assert_eq!(limit.mode, Some(LimitMode::Global));
        assert_eq!(
            rules.global.expect("global").failure_mode,
            Some(FailureMode::Closed)
        );
        assert_eq!(rules.response_headers, Some(ResponseHeaders::XRateLimit));
    }

    #[test]
    fn merge_unions_limits_by_name_and_keeps_set_fields() {
        let limit = |n: u64| Limit {
            rates: vec![Rate {
                limit: n,
                window: "1s".into(),
            }],
            ..Limit::default()
        };
        let mut route = RateLimitRules {
            limits: Some(BTreeMap::from([("a".to_string(), limit(1))])),
            shadow: Some(true),
            ..RateLimitRules::default()
        };
        let gateway = RateLimitRules {
            limits: Some(BTreeMap::from([
                ("a".to_string(), limit(100)),
                ("b".to_string(), limit(200)),
            ])),
            shadow: Some(false),
            response_headers: Some(ResponseHeaders::None),
            ..RateLimitRules::default()
        };
        route.fill_from(&gateway);
        let limits = route.limits.expect("limits");
        assert_eq!(limits["a"].rates[0].limit, 1, "the route's own limit wins");
        assert_eq!(limits["b"].rates[0].limit, 200, "the gateway's is added");
        assert_eq!(route.shadow, Some(true));
        assert_eq!(route.response_headers, Some(ResponseHeaders::None));
    }
}

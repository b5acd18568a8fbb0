//! RateLimitPolicy compilation: merging across levels, the compiled model
//! and the statuses of bad policies.

mod common;

use std::time::Duration;

use common::*;
use portcullis_api::PolicyKind;
use portcullis_controller::StatusKind;
use portcullis_model::ratelimit::{HeaderStyle, KeyPart, RateLimitConfig};
use portcullis_model::PathMatch;

fn limits_of<'a>(c: &'a portcullis_controller::Compiled, path: &str) -> &'a RateLimitConfig {
    route_for(c, 80, &get("example.com", path))
        .expect("a route answers")
        .rule
        .policies
        .rate_limit
        .as_deref()
        .expect("rate limits apply")
}

fn accepted(c: &portcullis_controller::Compiled, name: &str) -> (String, String, String) {
    let s = status(
        c,
        StatusKind::Policy(PolicyKind::RateLimitPolicy),
        Some("default"),
        name,
    );
    let cond = &s.status["ancestors"][0]["conditions"][0];
    (
        cond["status"].as_str().unwrap_or("").to_string(),
        cond["reason"].as_str().unwrap_or("").to_string(),
        cond["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn ratelimit_defaults_merge_by_name_and_gateway_overrides_win() {
    let c = fixture("ratelimit_merge");
    let config = limits_of(&c, "/api");
    let names: Vec<&str> = config.limits.iter().map(|l| l.name.as_str()).collect();
    // `k` is in a policy that is invalid: left out.
    assert_eq!(names, vec!["a", "b", "c"]);
    let a = &config.limits[0];
    // The route's `a` replaced the Gateway's default `a`.
    assert_eq!(a.rates.len(), 2);
    assert_eq!(a.rates[0].limit, 1);
    assert_eq!(a.rates[0].window, Duration::from_secs(60));
    assert_eq!(a.key.len(), 2);
    assert!(matches!(&a.key[1], KeyPart::Header(h) if h.0.as_str() == "x-tenant"));
    assert_eq!(a.when[0].method.as_deref(), Some("POST"));
    assert!(matches!(&a.when[0].path, Some(PathMatch::Exact(p)) if p == "/api/x"));
    // `b` comes from the Gateway and is shared.
    assert!(config.limits[1].shared);
    // The Gateway's override `c` (5/s) beats the route's `c` (3/s).
    assert_eq!(config.limits[2].rates[0].limit, 5);
    // The route's default header style beats the Gateway's default.
    assert_eq!(config.headers, HeaderStyle::None);
    assert!(config.policy_header.is_none());
    assert_eq!(accepted(&c, "gateway-wide").0, "True");
    assert_eq!(accepted(&c, "route").0, "True");
}

#[test]
fn ratelimit_bad_policies_are_reported_and_left_out() {
    let c = fixture("ratelimit_merge");
    let (status, reason, message) = accepted(&c, "missing-secret");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.contains("Secret default/nope not found"),
        "{message}"
    );
    let (status, _, message) = accepted(&c, "bad-key");
    assert_eq!(status, "False");
    assert!(
        message.contains("limits.k: key[0]: Claim needs a name"),
        "{message}"
    );
}

#[test]
fn ratelimit_global_limit_without_redis_fails_closed() {
    // A Global limit with no Redis anywhere: the rule fails closed (500)
    // and the policy says why.
    let c = fixture("ratelimit_global_without_redis");
    let rule = &route_for(&c, 80, &get("example.com", "/global"))
        .expect("a route answers")
        .rule;
    let invalid = rule.policies.invalid.as_deref().expect("rule fails closed");
    assert!(
        invalid.contains("no policy of this rule sets `global`"),
        "{invalid}"
    );
    let (status, _, message) = accepted(&c, "global-without-redis");
    assert_eq!(status, "False");
    assert!(message.contains("`mode: Global`"), "{message}");
}

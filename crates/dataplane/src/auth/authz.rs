//! Authorization: the first rule whose every condition holds decides,
//! else the default action.

use std::net::IpAddr;

use portcullis_model::auth::{
    Authorization, AuthzRule, ClaimCondition, ClientCertificateCondition,
};
use serde_json::Value;

use crate::identity::Identity;

/// The client certificate a listener verified (frontend mTLS). The TLS
/// stage puts it into the request's extensions; it is never built from
/// anything the client sends in headers. Authorization rules with a
/// `clientCertificate` condition match against it; without it they do not
/// match.
#[derive(Debug, Clone, Default)]
pub struct VerifiedClientCertificate {
    /// RFC 4514 subject.
    pub subject: String,
    /// DNS and URI subject alternative names.
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
    /// The identity as sent to backends when a listener names a header
    /// (`Hash=...;Subject="...";URI=...;DNS=...`), rendered once per
    /// connection.
    pub header_value: String,
}

pub(super) struct Context<'a> {
    pub identity: Option<&'a Identity>,
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub client_certificate: Option<&'a VerifiedClientCertificate>,
}

/// (allowed, which rule decided) — the name is for logs.
pub(super) fn decide<'a>(authz: &'a Authorization, ctx: &Context<'_>) -> (bool, &'a str) {
    for rule in &authz.rules {
        if matches(rule, ctx) {
            return (rule.allow, &rule.name);
        }
    }
    (authz.default_allow, "defaultAction")
}

fn matches(rule: &AuthzRule, ctx: &Context<'_>) -> bool {
    if let Some(required) = rule.authenticated {
        if ctx.identity.is_some() != required {
            return false;
        }
    }
    if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == ctx.method) {
        return false;
    }
    if !rule.paths.is_empty() && !rule.paths.iter().any(|p| p.matches(ctx.path)) {
        return false;
    }
    if let Some(cidrs) = &rule.client_cidrs {
        if !cidrs.contains(ctx.client) {
            return false;
        }
    }
    if !rule.subjects.is_empty() {
        let subject = ctx.identity.and_then(|i| i.subject.as_deref());
        if !subject.is_some_and(|s| rule.subjects.iter().any(|x| x == s)) {
            return false;
        }
    }
    if !rule.claims.iter().all(|c| claim_holds(c, ctx.identity)) {
        return false;
    }
    if !rule.scopes.is_empty() && !has_scopes(&rule.scopes, ctx.identity) {
        return false;
    }
    if let Some(cert) = &rule.client_certificate {
        if !certificate_matches(cert, ctx.client_certificate) {
            return false;
        }
    }
    true
}

/// Follows a dotted claim path through nested objects.
fn claim<'a>(identity: Option<&'a Identity>, path: &[String]) -> Option<&'a Value> {
    let claims = identity?.claims.as_ref()?;
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for segment in rest {
        value = value.get(segment)?;
    }
    Some(value)
}

fn scalar_equals(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Number(n) => n.to_string() == expected,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == expected,
        _ => false,
    }
}

fn claim_holds(condition: &ClaimCondition, identity: Option<&Identity>) -> bool {
    let Some(value) = claim(identity, &condition.claim) else {
        return false;
    };
    let equals_any = |v: &Value| condition.values.iter().any(|e| scalar_equals(v, e));
    match value {
        Value::Array(items) => items.iter().any(equals_any),
        v => equals_any(v),
    }
}

/// Granted scopes: `scope` (space-separated string, RFC 8693) or `scp`
/// (array or string).
fn has_scopes(required: &[String], identity: Option<&Identity>) -> bool {
    let Some(claims) = identity.and_then(|i| i.claims.as_ref()) else {
        return false;
    };
    let mut granted: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => granted.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    required.iter().all(|r| granted.contains(&r.as_str()))
}

fn certificate_matches(
    condition: &ClientCertificateCondition,
    cert: Option<&VerifiedClientCertificate>,
) -> bool {
    let Some(cert) = cert else {
        return false;
    };
    let no_condition = condition.subjects.is_empty()
        && condition.sans.is_empty()
        && condition.fingerprints.is_empty();
    no_condition
        || condition.subjects.contains(&cert.subject)
        || condition.sans.iter().any(|s| cert.sans.contains(s))
        || condition
            .fingerprints
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&cert.fingerprint_sha256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::auth::{AuthzPath, CidrSet};
    use std::sync::Arc;

    fn rule(allow: bool) -> AuthzRule {
        AuthzRule {
            name: "r".into(),
            allow,
            authenticated: None,
            claims: vec![],
            scopes: vec![],
            subjects: vec![],
            client_cidrs: None,
            methods: vec![],
            paths: vec![],
            client_certificate: None,
        }
    }

    fn identity(claims: serde_json::Value) -> Identity {
        Identity {
            mechanism: Some("jwt"),
            subject: claims["sub"].as_str().map(str::to_string),
            consumer: None,
            claims: Some(Arc::new(claims.as_object().unwrap().clone())),
        }
    }

    fn ctx<'a>(identity: Option<&'a Identity>, method: &'a str, path: &'a str) -> Context<'a> {
        Context {
            identity,
            client: "192.0.2.1".parse().unwrap(),
            method,
            path,
            client_certificate: None,
        }
    }

    #[test]
    fn first_matching_rule_decides_else_default() {
        let mut deny_admin = rule(false);
        deny_admin.paths = vec![AuthzPath {
            exact: false,
            value: "/admin".into(),
            case_sensitive: false,
        }];
        let mut allow_get = rule(true);
        allow_get.methods = vec!["GET".into()];
        let authz = Authorization {
            rules: vec![deny_admin, allow_get],
            default_allow: false,
        };
        assert!(!decide(&authz, &ctx(None, "GET", "/admin/x")).0);
        assert!(!decide(&authz, &ctx(None, "GET", "/ADMIN")).0);
        assert!(decide(&authz, &ctx(None, "GET", "/public")).0);
        assert!(!decide(&authz, &ctx(None, "POST", "/public")).0);
    }

    #[test]
    fn claims_scopes_and_subjects() {
        let alice = identity(serde_json::json!({
            "sub": "alice", "scope": "read write", "roles": ["dev", "ops"],
            "org": {"tier": "gold"}, "level": 3
        }));
        let mut r = rule(true);
        r.claims = vec![
            ClaimCondition {
                claim: vec!["roles".into()],
                values: vec!["ops".into()],
            },
            ClaimCondition {
                claim: vec!["org".into(), "tier".into()],
                values: vec!["gold".into(), "silver".into()],
            },
            ClaimCondition {
                claim: vec!["level".into()],
                values: vec!["3".into()],
            },
        ];
        r.scopes = vec!["read".into(), "write".into()];
        r.subjects = vec!["alice".into()];
        let authz = Authorization {
            rules: vec![r.clone()],
            default_allow: false,
        };
        assert!(decide(&authz, &ctx(Some(&alice), "GET", "/")).0);
        assert!(!decide(&authz, &ctx(None, "GET", "/")).0);
        let mut needs_admin = r;
        needs_admin.scopes.push("admin".into());
        let authz = Authorization {
            rules: vec![needs_admin],
            default_allow: false,
        };
        assert!(!decide(&authz, &ctx(Some(&alice), "GET", "/")).0);
        let scp = identity(serde_json::json!({"sub": "b", "scp": ["read"]}));
        assert!(has_scopes(&["read".into()], Some(&scp)));
    }

    #[test]
    fn cidrs_authentication_and_certificates() {
        let mut r = rule(true);
        r.client_cidrs = Some(CidrSet::parse(&["192.0.2.0/24"]).unwrap());
        r.authenticated = Some(true);
        let authz = Authorization {
            rules: vec![r],
            default_allow: false,
        };
        let someone = identity(serde_json::json!({"sub": "x"}));
        assert!(decide(&authz, &ctx(Some(&someone), "GET", "/")).0);
        assert!(!decide(&authz, &ctx(None, "GET", "/")).0);
        let mut outside = ctx(Some(&someone), "GET", "/");
        outside.client = "198.51.100.1".parse().unwrap();
        assert!(!decide(&authz, &outside).0);

        let mut c = rule(true);
        c.client_certificate = Some(ClientCertificateCondition {
            subjects: vec![],
            sans: vec!["spiffe://ns/sa/billing".into()],
            fingerprints: vec![],
        });
        let authz = Authorization {
            rules: vec![c],
            default_allow: false,
        };
        assert!(!decide(&authz, &ctx(None, "GET", "/")).0, "no certificate");
        let cert = VerifiedClientCertificate {
            subject: "CN=billing".into(),
            sans: vec!["spiffe://ns/sa/billing".into()],
            fingerprint_sha256: "ab".into(),
            ..Default::default()
        };
        let mut with_cert = ctx(None, "GET", "/");
        with_cert.client_certificate = Some(&cert);
        assert!(decide(&authz, &with_cert).0);
    }
}

//! `AuthPolicy` (group `portcullis.dev`, `v1alpha1`): who may call a route.
//!
//! Attached (GEP-713 `targetRefs`) to a Gateway, a listener, a route or a
//! route rule. More specific policies replace `defaults`; `overrides` win
//! over more specific policies. Rules combine section by section (see the
//! `Merge` impl of [`AuthRules`]): a section a policy leaves unset comes
//! from the next policy down.
//!
//! Per request the gateway runs, in order: IP rules (`ipRules`), then
//! authentication (`jwt`, `apiKeys`, `basic`: the first mechanism whose
//! credential the request carries decides), then `authorization`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Merge, PolicyEnvelope, PolicyStatus};

/// Authentication and authorization for the routes it targets.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    plural = "authpolicies",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
pub struct AuthPolicySpec {
    /// `targetRefs`, `defaults`, `overrides` (GEP-713).
    #[serde(flatten)]
    pub envelope: PolicyEnvelope<AuthRules>,
    /// Rules at the top level of `spec`: shorthand for `defaults`.
    #[serde(flatten)]
    pub rules: AuthRules,
}

/// The rule set of an AuthPolicy. Every section is optional; an unset
/// section is taken from a lower-priority policy (see `fill_from`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthRules {
    /// Bearer tokens (JWT) checked against one or more issuers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// API keys kept in labelled Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyAuth>,
    /// HTTP basic authentication against an htpasswd Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// Allow/deny rules evaluated after authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Client address allow/deny lists, checked before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<IpRules>,
    /// Custom 401 / 403 answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<DenyResponses>,
    /// CORS for every route the policy reaches, with the fields of the
    /// Gateway API CORS filter. A route rule's own CORS filter wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

/// Sections are taken whole: a JWT section is never half from one policy
/// and half from another, so what a policy says about a mechanism is always
/// what is enforced.
impl Merge for AuthRules {
    fn fill_from(&mut self, lower: &AuthRules) {
        fn fill<T: Clone>(mine: &mut Option<T>, lower: &Option<T>) {
            if mine.is_none() {
                mine.clone_from(lower);
            }
        }
        fill(&mut self.jwt, &lower.jwt);
        fill(&mut self.api_keys, &lower.api_keys);
        fill(&mut self.basic, &lower.basic);
        fill(&mut self.authorization, &lower.authorization);
        fill(&mut self.ip_rules, &lower.ip_rules);
        fill(&mut self.responses, &lower.responses);
        fill(&mut self.cors, &lower.cors);
    }
}

/// A key of a Secret (or ConfigMap) in the policy's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKeyRef {
    pub name: String,
    /// The data key; each use documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

// ---------------------------------------------------------------- JWT

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// Tried in order; a token is checked by the provider whose `issuer`
    /// equals its `iss` claim.
    pub providers: Vec<JwtProvider>,
    /// When true, a request without any token passes as anonymous (a token
    /// that is present must still be valid). Authorization rules can still
    /// require authentication per path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// Tokens longer than this are refused with 401 before any parsing.
    /// Default 8192 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_bytes: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// A name for logs and status messages.
    pub name: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// The `aud` claim must contain one of these; empty accepts any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Where the token is read from, first match wins. Default:
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TokenSource>,
    /// Verified claims copied into request headers for the backend. The
    /// headers are always removed from the client's request first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
    /// Tolerance for `exp` / `nbf`, in seconds. Default 30, at most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<u32>,
    /// Keep the token in the request sent to the backend (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_token: Option<bool>,
}

/// Exactly one of `inline`, `secretRef` or `remote`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksSource {
    /// A JWKS document (`{"keys": [...]}`) written into the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A Secret holding a JWKS document (key default `jwks.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<ObjectKeyRef>,
    /// A JWKS URL fetched and cached by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteJwks>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// `https://...` (or `http://` for an in-cluster issuer).
    pub url: String,
    /// How long fetched keys are used before they are fetched again, in
    /// seconds. Default 300. Keys stay in use while a refresh fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_duration_seconds: Option<u32>,
    /// Minimum time between two fetches triggered by tokens with an unknown
    /// `kid`, in seconds. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_refresh_interval_seconds: Option<u32>,
    /// Timeout of one fetch, in seconds. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// CA bundle (PEM) that signs the JWKS server's certificate, from a
    /// ConfigMap (key default `ca.crt`). Without it, the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ObjectKeyRef>,
}

/// Exactly one of `header`, `cookie` or `query`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTokenSource>,
    /// Cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Query parameter name. The parameter is removed before proxying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTokenSource {
    pub name: String,
    /// Scheme prefix before the token, e.g. `Bearer ` (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Claim name; a dotted path reads nested objects (`realm.tier`).
    pub claim: String,
    pub header: String,
}

// ------------------------------------------------------------ API keys

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Secrets (in the policy's namespace) holding one key each (at least
    /// 16 bytes). Must not be empty.
    pub selector: LabelSelector,
    /// Request header carrying the key. Default `x-api-key` unless `query`
    /// is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Query parameter carrying the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Secret data key of the API key. Default `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Where the consumer name comes from: this annotation of the Secret,
    /// else the Secret data key `consumer`, else the Secret's name.
    /// Default annotation `portcullis.dev/consumer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_annotation: Option<String>,
    /// Let requests without a key through as anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

// --------------------------------------------------------------- basic

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// Secret with an htpasswd file (key default `auth`); bcrypt (`$2y$`,
    /// `$2b$`, `$2a$`) and `{SHA}` entries.
    pub secret_ref: ObjectKeyRef,
    /// Realm in the `WWW-Authenticate` challenge. Default `portcullis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

// ------------------------------------------------------- authorization

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthzAction {
    Allow,
    #[default]
    Deny,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Evaluated in order; the first rule whose every condition holds
    /// decides.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
    /// When no rule matches. Default `Deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<AuthzAction>,
}

/// All set conditions must hold (AND); a list condition holds when any of
/// its entries matches (OR), except `scopes` (all required).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: AuthzAction,
    /// `true`: the caller must be authenticated; `false`: must not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimCondition>,
    /// Every scope must be granted (`scope` claim, space-separated, or
    /// `scp` array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// API-key consumers or basic-auth users (the identity's subject).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Client address in one of these CIDRs (see `ipRules` for where the
    /// address comes from).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Normalized request path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<AuthzPath>,
    /// Verified client certificate (frontend mTLS) identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// Claim name; a dotted path reads nested objects.
    pub claim: String,
    /// The claim (or, for an array claim, one of its elements) equals one
    /// of these.
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthzPathType {
    Exact,
    #[default]
    PathPrefix,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthzPath {
    #[serde(default, rename = "type")]
    pub kind: AuthzPathType,
    pub value: String,
    /// Default false: `/Admin` matches a rule for `/admin`, since backends
    /// disagree on whether paths are case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
}

/// Conditions on the client certificate verified by the listener (frontend
/// mTLS). Any listed value matching is enough.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateCondition {
    /// Subject distinguished names, as RFC 4514 strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// DNS / URI subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    /// SHA-256 fingerprints, hex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprints: Vec<String>,
}

// ------------------------------------------------------------ IP rules

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpRules {
    /// When non-empty, only these CIDRs may connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These CIDRs are refused (deny wins over allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Where the client address comes from. Default: the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<ClientAddress>,
}

/// `X-Forwarded-For` is believed only from trusted proxies: starting at the
/// connection's peer, each address that is a trusted proxy hands over to
/// the entry it appended (right to left), for at most `trustedHops` steps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAddress {
    /// CIDRs of the proxies in front of the gateway.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Number of X-Forwarded-For entries to walk back. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_hops: Option<u32>,
}

// ------------------------------------------------------ deny responses

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DenyResponses {
    /// Answer to requests without valid credentials (default 401).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<DenyResponse>,
    /// Answer to requests refused by authorization or IP rules (default
    /// 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthorized: Option<DenyResponse>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DenyResponse {
    /// A 4xx status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

// ---------------------------------------------------------------- CORS

/// Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
/// are answered at the gateway before authentication (they carry no
/// credentials); other responses to an allowed origin, the policy's own
/// 401 and 403 included, carry the CORS headers, so that a browser
/// application can read why it was refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// `scheme://host[:port]` origins; `*` in the host matches any run of
    /// characters (`https://*.example.com`); `*` alone allows any origin.
    /// The allowed origin is always echoed, never `*`.
    #[schemars(length(min = 1))]
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows (`*`: the one asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (`*`: the ones asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (cookies, Authorization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight answer (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_age_seconds: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn crd_names_and_scope() {
        let crd = AuthPolicy::crd();
        assert_eq!(crd.spec.group, "portcullis.dev");
        assert_eq!(crd.spec.names.kind, "AuthPolicy");
        assert_eq!(crd.spec.names.plural, "authpolicies");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(AuthPolicy::api_version(&()), "portcullis.dev/v1alpha1");
    }

    #[test]
    fn a_full_policy_parses_from_yaml_field_names() {
        let spec: AuthPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api", "sectionName": "admin"}],
            "defaults": {
                "jwt": {"providers": [{
                    "name": "idp", "issuer": "https://idp", "audiences": ["api"],
                    "jwks": {"remote": {"url": "https://idp/jwks", "cacheDurationSeconds": 60}},
                    "from": [{"header": {"name": "authorization", "prefix": "Bearer "}}, {"cookie": "session"}],
                    "claimsToHeaders": [{"claim": "sub", "header": "x-user"}]
                }], "optional": true},
                "apiKeys": {"selector": {"matchLabels": {"portcullis.dev/api-key": "true"}}, "header": "x-api-key"},
                "basic": {"secretRef": {"name": "users"}},
                "authorization": {"defaultAction": "Deny", "rules": [
                    {"action": "Allow", "scopes": ["read"], "paths": [{"type": "PathPrefix", "value": "/api"}], "methods": ["GET"]}
                ]},
                "ipRules": {"deny": ["10.0.0.0/8"], "clientAddress": {"trustedProxies": ["192.168.0.0/16"], "trustedHops": 2}},
                "responses": {"unauthenticated": {"status": 401, "headers": {"x-why": "login"}, "body": "{}"}}
            }
        }))
        .expect("valid spec");
        let rules = spec.envelope.defaults.expect("defaults");
        assert_eq!(rules.jwt.as_ref().unwrap().providers[0].audiences, ["api"]);
        assert_eq!(
            rules.authorization.unwrap().rules[0].paths[0].kind,
            AuthzPathType::PathPrefix
        );
        assert_eq!(
            rules.ip_rules.unwrap().client_address.unwrap().trusted_hops,
            Some(2)
        );
        assert_eq!(
            spec.envelope.target_refs[0].section_name.as_deref(),
            Some("admin")
        );
    }

    #[test]
    fn fill_from_takes_whole_sections_only_where_unset() {
        let mut route = AuthRules {
            basic: Some(BasicAuth {
                secret_ref: ObjectKeyRef {
                    name: "route-users".into(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let gateway = AuthRules {
            basic: Some(BasicAuth {
                secret_ref: ObjectKeyRef {
                    name: "gateway-users".into(),
                    ..Default::default()
                },
                realm: Some("gw".into()),
                optional: None,
            }),
            ip_rules: Some(IpRules {
                deny: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        route.fill_from(&gateway);
        let basic = route.basic.unwrap();
        assert_eq!(basic.secret_ref.name, "route-users");
        // Not mixed in from the gateway's section.
        assert_eq!(basic.realm, None);
        assert_eq!(route.ip_rules.unwrap().deny, ["10.0.0.0/8"]);
    }
}

//! `AuthPolicy` -> [`AuthConfig`]: the compile hook of the policy
//! attachment mechanism (see `policy.rs`).
//!
//! `resolve` checks one policy and reads what it references in its own
//! namespace (JWKS and htpasswd Secrets, API-key Secrets by label, CA
//! ConfigMaps): every key is decoded, every API key hashed, every CIDR
//! parsed here, so the data plane only looks things up. A reference that
//! cannot be resolved makes the policy `Accepted=False` with a message
//! naming the object and what is wrong with it; since an AuthPolicy is what
//! protects its routes, those routes then answer 500 instead of being
//! served without it (`FAIL_CLOSED`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use portcullis_api::auth as api;
use portcullis_api::policy::Merge;
use portcullis_api::PolicyKind;
use portcullis_model::auth::{
    parse_htpasswd, ApiKeyConfig, ApiKeyDigest, AuthConfig, Authorization, AuthzPath, AuthzRule,
    BasicConfig, CidrSet, ClaimCondition, ClaimToHeader, ClientAddress, ClientCertificateCondition,
    DenyResponse, IpRules, Jwks, JwksSource, JwtConfig, JwtProvider, RemoteJwks, TokenSource,
};
use portcullis_model::{Cors, HeaderNameSer, HeaderValueSer, RulePolicies};
use ring::digest;

use super::policy::{PolicyCompiler, PolicyContext, TargetKind};
use crate::snapshot::ObjectKey;

/// Defaults documented on the CRD fields.
const DEFAULT_MAX_TOKEN_BYTES: u32 = 8192;
const DEFAULT_CLOCK_SKEW: u32 = 30;
const MAX_CLOCK_SKEW: u32 = 300;
const DEFAULT_CACHE_SECONDS: u32 = 300;
const DEFAULT_MIN_REFRESH_SECONDS: u32 = 10;
const DEFAULT_FETCH_TIMEOUT_SECONDS: u32 = 5;
const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
const DEFAULT_API_KEY_FIELD: &str = "api_key";
const DEFAULT_CONSUMER_ANNOTATION: &str = "portcullis.dev/consumer";
const DEFAULT_REALM: &str = "portcullis";

pub(crate) struct AuthPolicyCompiler;

/// One policy's rules, resolved; sections merge whole, like
/// [`api::AuthRules`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedAuth {
    sources: Vec<String>,
    ip: Option<(IpRules, ClientAddress)>,
    jwt: Option<JwtConfig>,
    api_keys: Option<ApiKeyConfig>,
    basic: Option<BasicConfig>,
    authorization: Option<Authorization>,
    responses: Option<(Option<DenyResponse>, Option<DenyResponse>)>,
    cors: Option<Arc<Cors>>,
}

impl Merge for ResolvedAuth {
    fn fill_from(&mut self, lower: &Self) {
        fn fill<T: Clone>(mine: &mut Option<T>, lower: &Option<T>) -> bool {
            let take = mine.is_none() && lower.is_some();
            if take {
                mine.clone_from(lower);
            }
            take
        }
        let mut used = false;
        used |= fill(&mut self.ip, &lower.ip);
        used |= fill(&mut self.jwt, &lower.jwt);
        used |= fill(&mut self.api_keys, &lower.api_keys);
        used |= fill(&mut self.basic, &lower.basic);
        used |= fill(&mut self.authorization, &lower.authorization);
        used |= fill(&mut self.responses, &lower.responses);
        used |= fill(&mut self.cors, &lower.cors);
        if used {
            for s in &lower.sources {
                if !self.sources.contains(s) {
                    self.sources.push(s.clone());
                }
            }
        }
    }
}

impl PolicyCompiler for AuthPolicyCompiler {
    const KIND: PolicyKind = PolicyKind::AuthPolicy;
    const TARGETS: &'static [TargetKind] = &[
        TargetKind::Gateway,
        TargetKind::HttpRoute,
        TargetKind::GrpcRoute,
    ];
    const FAIL_CLOSED: bool = true;
    type Rules = api::AuthRules;
    type Resolved = ResolvedAuth;
    type Output = AuthConfig;

    fn resolve(rules: &api::AuthRules, ctx: &PolicyContext<'_>) -> Result<ResolvedAuth, String> {
        let refs = Refs { ctx };
        Ok(ResolvedAuth {
            sources: vec![ctx.policy.clone()],
            ip: rules.ip_rules.as_ref().map(ip_rules).transpose()?,
            jwt: rules.jwt.as_ref().map(|j| jwt(j, &refs)).transpose()?,
            api_keys: rules
                .api_keys
                .as_ref()
                .map(|a| api_keys(a, &refs))
                .transpose()?,
            basic: rules.basic.as_ref().map(|b| basic(b, &refs)).transpose()?,
            authorization: rules
                .authorization
                .as_ref()
                .map(authorization)
                .transpose()?,
            responses: rules.responses.as_ref().map(responses).transpose()?,
            cors: rules.cors.as_ref().map(cors).transpose()?,
        })
    }

    fn build(effective: &ResolvedAuth) -> Result<AuthConfig, String> {
        let (ip_rules, client_address) = match &effective.ip {
            Some((rules, address)) => (
                (!rules.allow.is_empty() || !rules.deny.is_empty()).then(|| rules.clone()),
                address.clone(),
            ),
            None => (None, ClientAddress::default()),
        };
        let (unauthenticated, unauthorized) = effective.responses.clone().unwrap_or_default();
        Ok(AuthConfig {
            sources: effective.sources.clone(),
            metric_label: Arc::from(effective.sources.join(",")),
            ip_rules,
            client_address,
            jwt: effective.jwt.clone(),
            api_keys: effective.api_keys.clone(),
            basic: effective.basic.clone(),
            authorization: effective.authorization.clone(),
            unauthenticated: unauthenticated.unwrap_or_else(DenyResponse::default_unauthenticated),
            unauthorized: unauthorized.unwrap_or_else(DenyResponse::default_unauthorized),
            cors: effective.cors.clone(),
        })
    }

    fn install(output: &Arc<AuthConfig>, policies: &mut RulePolicies) {
        policies.auth = Some(output.clone());
    }
}

/// Checked here so that the data plane only compares origins and joins
/// values that are already valid header tokens.
fn cors(c: &api::CorsPolicy) -> Result<Arc<Cors>, String> {
    if c.allow_origins.is_empty() {
        return Err("cors.allowOrigins must name at least one origin (or `*`)".into());
    }
    if let Some(bad) = c.allow_origins.iter().find(|o| !origin_pattern(o)) {
        return Err(format!(
            "cors.allowOrigins: {bad:?} is not `*` or scheme://host[:port] (with at most one `*` in the host)"
        ));
    }
    if let Some(bad) = c
        .allow_methods
        .iter()
        .find(|m| *m != "*" && http::Method::from_bytes(m.as_bytes()).is_err())
    {
        return Err(format!("cors.allowMethods: {bad:?} is not an HTTP method"));
    }
    for (field, names) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        if let Some(bad) = names
            .iter()
            .find(|h| *h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(format!("cors.{field}: {bad:?} is not a header name"));
        }
    }
    Ok(Arc::new(Cors {
        allow_origins: c.allow_origins.clone(),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        // The Gateway API CORS filter's default.
        max_age_seconds: Some(c.max_age_seconds.unwrap_or(5)),
    }))
}

/// `*`, or `scheme://host[:port]` with at most one `*` in it.
fn origin_pattern(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_graphic() && c != '/')
        && origin.matches('*').count() <= 1
}

/// Reads referenced objects in the policy's namespace.
struct Refs<'c, 'a> {
    ctx: &'c PolicyContext<'a>,
}

impl Refs<'_, '_> {
    fn key(&self, name: &str) -> ObjectKey {
        ObjectKey::new(self.ctx.namespace, name.to_string())
    }

    fn secret(&self, name: &str) -> Result<&Secret, String> {
        let key = self.key(name);
        self.ctx
            .index
            .snapshot
            .secrets
            .get(&key)
            .ok_or_else(|| format!("Secret {key} not found"))
    }

    fn secret_field(&self, r: &api::ObjectKeyRef, default_key: &str) -> Result<Vec<u8>, String> {
        let field = r.key.as_deref().unwrap_or(default_key);
        let secret = self.secret(&r.name)?;
        secret_data(secret, field)
            .ok_or_else(|| format!("Secret {} has no key {field:?}", self.key(&r.name)))
    }

    fn config_map_field(&self, r: &api::ObjectKeyRef, default_key: &str) -> Result<String, String> {
        let key = self.key(&r.name);
        let field = r.key.as_deref().unwrap_or(default_key);
        let cm = self
            .ctx
            .index
            .snapshot
            .config_maps
            .get(&key)
            .ok_or_else(|| format!("ConfigMap {key} not found"))?;
        cm.data
            .as_ref()
            .and_then(|d| d.get(field))
            .cloned()
            .ok_or_else(|| format!("ConfigMap {key} has no key {field:?}"))
    }

    /// Secrets of the policy's namespace matching `selector`, in name
    /// order.
    fn secrets_matching(&self, selector: &LabelSelector) -> Result<Vec<&Secret>, String> {
        let mut out = Vec::new();
        for (key, secret) in &self.ctx.index.snapshot.secrets {
            if key.namespace == self.ctx.namespace
                && selector_matches(selector, secret.metadata.labels.as_ref())?
            {
                out.push(secret);
            }
        }
        Ok(out)
    }
}

fn secret_data(secret: &Secret, field: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(field))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(field))
                .map(|s| s.clone().into_bytes())
        })
}

/// Kubernetes label selector semantics (`matchLabels` AND
/// `matchExpressions`). An empty selector would select every Secret of the
/// namespace and is refused.
fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<bool, String> {
    let empty = std::collections::BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector.match_labels.as_ref();
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_empty() {
        return Err("apiKeys.selector is empty (it would select every Secret)".into());
    }
    if let Some(m) = match_labels {
        if !m.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Ok(false);
        }
    }
    for e in expressions {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        let holds = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => return Err(format!("apiKeys.selector: unknown operator {other:?}")),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

fn header_name(value: &str, what: &str) -> Result<HeaderNameSer, String> {
    HeaderName::from_bytes(value.to_ascii_lowercase().as_bytes())
        .map(HeaderNameSer)
        .map_err(|_| format!("{what}: {value:?} is not a valid header name"))
}

fn cidrs(list: &[String], what: &str) -> Result<CidrSet, String> {
    CidrSet::parse(list).map_err(|e| format!("{what}: {e}"))
}

// ----------------------------------------------------------------- ipRules

fn ip_rules(r: &api::IpRules) -> Result<(IpRules, ClientAddress), String> {
    let rules = IpRules {
        allow: cidrs(&r.allow, "ipRules.allow")?,
        deny: cidrs(&r.deny, "ipRules.deny")?,
    };
    let address = match &r.client_address {
        None => ClientAddress::default(),
        Some(a) => {
            if a.trusted_proxies.is_empty() {
                return Err("ipRules.clientAddress.trustedProxies must list the proxies in front of the gateway (X-Forwarded-For is believed only from them)".into());
            }
            ClientAddress {
                trusted_proxies: cidrs(&a.trusted_proxies, "ipRules.clientAddress.trustedProxies")?,
                trusted_hops: a.trusted_hops.unwrap_or(1),
            }
        }
    };
    Ok((rules, address))
}

// --------------------------------------------------------------------- JWT

fn jwt(j: &api::JwtAuth, refs: &Refs<'_, '_>) -> Result<JwtConfig, String> {
    if j.providers.is_empty() {
        return Err("jwt.providers is empty".into());
    }
    let mut providers = Vec::new();
    for (i, p) in j.providers.iter().enumerate() {
        let name = if p.name.is_empty() {
            format!("providers[{i}]")
        } else {
            p.name.clone()
        };
        providers.push(jwt_provider(p, refs).map_err(|e| format!("jwt provider {name}: {e}"))?);
    }
    let mut issuers: Vec<&str> = providers.iter().map(|p| p.issuer.as_str()).collect();
    issuers.sort_unstable();
    if issuers.windows(2).any(|w| w[0] == w[1]) {
        return Err("jwt: two providers have the same issuer".into());
    }
    let max = j.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(256..=65536).contains(&max) {
        return Err("jwt.maxTokenBytes must be between 256 and 65536".into());
    }
    Ok(JwtConfig {
        providers,
        optional: j.optional.unwrap_or(false),
        max_token_bytes: max as usize,
    })
}

fn jwt_provider(p: &api::JwtProvider, refs: &Refs<'_, '_>) -> Result<JwtProvider, String> {
    if p.issuer.is_empty() {
        return Err("issuer is empty".into());
    }
    let keys = match (&p.jwks.inline, &p.jwks.secret_ref, &p.jwks.remote) {
        (Some(inline), None, None) => JwksSource::Static(Arc::new(
            Jwks::parse(inline.as_bytes(), false, true)
                .map_err(|e| format!("jwks.inline: {e}"))?
                .0,
        )),
        (None, Some(r), None) => {
            let doc = refs.secret_field(r, "jwks.json")?;
            JwksSource::Static(Arc::new(
                Jwks::parse(&doc, true, true)
                    .map_err(|e| format!("jwks.secretRef {}: {e}", r.name))?
                    .0,
            ))
        }
        (None, None, Some(remote)) => JwksSource::Remote(remote_jwks(remote, refs)?),
        _ => return Err("jwks needs exactly one of inline, secretRef, remote".into()),
    };
    let sources = if p.from.is_empty() {
        vec![TokenSource::Header {
            name: HeaderNameSer(http::header::AUTHORIZATION),
            prefix: Some("bearer ".into()),
        }]
    } else {
        p.from
            .iter()
            .map(token_source)
            .collect::<Result<Vec<_>, _>>()?
    };
    let claims_to_headers = p
        .claims_to_headers
        .iter()
        .map(|c| {
            if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
                return Err(format!("claimsToHeaders: invalid claim {:?}", c.claim));
            }
            Ok(ClaimToHeader {
                claim: c.claim.split('.').map(str::to_string).collect(),
                header: header_name(&c.header, "claimsToHeaders")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let skew = p.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW);
    if skew > MAX_CLOCK_SKEW {
        return Err(format!("clockSkewSeconds must be at most {MAX_CLOCK_SKEW}"));
    }
    Ok(JwtProvider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        keys,
        sources,
        claims_to_headers,
        clock_skew: Duration::from_secs(skew.into()),
        forward_token: p.forward_token.unwrap_or(true),
    })
}

fn token_source(s: &api::TokenSource) -> Result<TokenSource, String> {
    match (&s.header, &s.cookie, &s.query) {
        (Some(h), None, None) => Ok(TokenSource::Header {
            name: header_name(&h.name, "from.header")?,
            prefix: h.prefix.clone().filter(|p| !p.is_empty()),
        }),
        (None, Some(c), None) if !c.is_empty() => Ok(TokenSource::Cookie(c.clone())),
        (None, None, Some(q)) if !q.is_empty() => Ok(TokenSource::Query(q.clone())),
        _ => Err("each `from` entry needs exactly one of header, cookie, query".into()),
    }
}

fn remote_jwks(r: &api::RemoteJwks, refs: &Refs<'_, '_>) -> Result<RemoteJwks, String> {
    let uri: http::Uri = r
        .url
        .parse()
        .map_err(|e| format!("jwks.remote.url {:?}: {e}", r.url))?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
        return Err(format!(
            "jwks.remote.url {:?} must be an absolute http(s) URL",
            r.url
        ));
    }
    let seconds = |v: Option<u32>, default: u32, what: &str| -> Result<Duration, String> {
        match v.unwrap_or(default) {
            0 => Err(format!("jwks.remote.{what} must be positive")),
            s => Ok(Duration::from_secs(s.into())),
        }
    };
    let ca_pem = match &r.ca_config_map_ref {
        Some(c) => {
            let pem = refs.config_map_field(c, "ca.crt")?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("ConfigMap {}: no PEM certificate", c.name));
            }
            Some(Arc::from(pem))
        }
        None => None,
    };
    Ok(RemoteJwks {
        url: r.url.clone(),
        cache_duration: seconds(
            r.cache_duration_seconds,
            DEFAULT_CACHE_SECONDS,
            "cacheDurationSeconds",
        )?,
        min_refresh_interval: seconds(
            r.min_refresh_interval_seconds,
            DEFAULT_MIN_REFRESH_SECONDS,
            "minRefreshIntervalSeconds",
        )?,
        timeout: seconds(
            r.timeout_seconds,
            DEFAULT_FETCH_TIMEOUT_SECONDS,
            "timeoutSeconds",
        )?,
        ca_pem,
    })
}

// ---------------------------------------------------------------- API keys

fn api_keys(a: &api::ApiKeyAuth, refs: &Refs<'_, '_>) -> Result<ApiKeyConfig, String> {
    let header = match (&a.header, &a.query) {
        (Some(h), _) => Some(header_name(h, "apiKeys.header")?),
        (None, Some(_)) => None,
        (None, None) => Some(header_name(DEFAULT_API_KEY_HEADER, "apiKeys.header")?),
    };
    let field = a.key_field.as_deref().unwrap_or(DEFAULT_API_KEY_FIELD);
    let annotation = a
        .consumer_annotation
        .as_deref()
        .unwrap_or(DEFAULT_CONSUMER_ANNOTATION);
    let secrets = refs.secrets_matching(&a.selector)?;
    if secrets.is_empty() {
        return Err(format!(
            "apiKeys.selector matches no Secret in namespace {}",
            refs.ctx.namespace
        ));
    }
    let mut keys: HashMap<ApiKeyDigest, Arc<str>> = HashMap::new();
    for secret in secrets {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let key = secret_data(secret, field)
            .ok_or_else(|| format!("Secret {} has no key {field:?}", refs.key(&name)))?;
        let key = trim_ascii(&key);
        if key.len() < 16 {
            return Err(format!(
                "Secret {}: API key shorter than 16 bytes",
                refs.key(&name)
            ));
        }
        let consumer = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation))
            .cloned()
            .or_else(|| secret_data(secret, "consumer").and_then(|c| String::from_utf8(c).ok()))
            .unwrap_or(name.clone());
        let d = digest::digest(&digest::SHA256, key);
        let d: ApiKeyDigest = d
            .as_ref()
            .try_into()
            .map_err(|_| "SHA-256 digest is not 32 bytes".to_string())?;
        if keys.insert(d, Arc::from(consumer.trim())).is_some() {
            return Err(format!(
                "Secret {}: the same API key is in two Secrets",
                refs.key(&name)
            ));
        }
    }
    Ok(ApiKeyConfig {
        header,
        query: a.query.clone(),
        keys,
        optional: a.optional.unwrap_or(false),
    })
}

/// Secrets written with `echo` often end in a newline that is not part of
/// the key.
fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

// ------------------------------------------------------------------- basic

fn basic(b: &api::BasicAuth, refs: &Refs<'_, '_>) -> Result<BasicConfig, String> {
    let text = refs.secret_field(&b.secret_ref, "auth")?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("Secret {}: htpasswd is not UTF-8", b.secret_ref.name))?;
    let users = parse_htpasswd(&text).map_err(|e| format!("Secret {}: {e}", b.secret_ref.name))?;
    let realm = b.realm.clone().unwrap_or_else(|| DEFAULT_REALM.into());
    if realm.contains(['"', '\\']) {
        return Err("basic.realm must not contain quotes or backslashes".into());
    }
    let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
        .map_err(|_| "basic.realm is not a valid header value".to_string())?;
    Ok(BasicConfig {
        realm,
        challenge: HeaderValueSer(challenge),
        users,
        optional: b.optional.unwrap_or(false),
    })
}

// ----------------------------------------------------------- authorization

fn authorization(a: &api::Authorization) -> Result<Authorization, String> {
    let rules = a
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            authz_rule(r, name.clone()).map_err(|e| format!("authorization {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Authorization {
        rules,
        default_allow: a.default_action.unwrap_or_default() == api::AuthzAction::Allow,
    })
}

fn authz_rule(r: &api::AuthzRule, name: String) -> Result<AuthzRule, String> {
    let claims = r
        .claims
        .iter()
        .map(|c| {
            if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
                return Err(format!("invalid claim {:?}", c.claim));
            }
            if c.values.is_empty() {
                return Err(format!("claim {:?} lists no values", c.claim));
            }
            Ok(ClaimCondition {
                claim: c.claim.split('.').map(str::to_string).collect(),
                values: c.values.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let paths = r
        .paths
        .iter()
        .map(|p| {
            if !p.value.starts_with('/') {
                return Err(format!("path {:?} must start with '/'", p.value));
            }
            let case_sensitive = p.case_sensitive.unwrap_or(false);
            let mut value = p.value.clone();
            if value.len() > 1 && value.ends_with('/') {
                value.pop();
            }
            if !case_sensitive {
                value = value.to_ascii_lowercase();
            }
            Ok(AuthzPath {
                exact: p.kind == api::AuthzPathType::Exact,
                value,
                case_sensitive,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client_cidrs = if r.client_cidrs.is_empty() {
        None
    } else {
        Some(cidrs(&r.client_cidrs, "clientCidrs")?)
    };
    let client_certificate = r
        .client_certificate
        .as_ref()
        .map(|c| ClientCertificateCondition {
            subjects: c.subjects.clone(),
            sans: c.sans.clone(),
            fingerprints: c
                .fingerprints
                .iter()
                .map(|f| f.replace(':', "").to_ascii_lowercase())
                .collect(),
        });
    Ok(AuthzRule {
        name,
        allow: r.action == api::AuthzAction::Allow,
        authenticated: r.authenticated,
        claims,
        scopes: r.scopes.clone(),
        subjects: r.subjects.clone(),
        client_cidrs,
        methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        paths,
        client_certificate,
    })
}

// --------------------------------------------------------------- responses

type Responses = (Option<DenyResponse>, Option<DenyResponse>);

fn responses(r: &api::DenyResponses) -> Result<Responses, String> {
    let one = |d: &Option<api::DenyResponse>, default: DenyResponse, what: &str| {
        let Some(d) = d else {
            return Ok(None);
        };
        let status = d.status.unwrap_or(default.status);
        if !(300..=599).contains(&status) {
            return Err(format!("responses.{what}.status {status} is not 3xx-5xx"));
        }
        let headers = d
            .headers
            .iter()
            .map(|(k, v)| {
                let name = header_name(k, &format!("responses.{what}.headers"))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("responses.{what}.headers.{k}: invalid value"))?;
                Ok((name, HeaderValueSer(value)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(DenyResponse {
            status,
            headers,
            custom: d.body.is_some(),
            body: d.body.as_deref().map(Arc::from),
        }))
    };
    Ok((
        one(
            &r.unauthenticated,
            DenyResponse::default_unauthenticated(),
            "unauthenticated",
        )?,
        one(
            &r.unauthorized,
            DenyResponse::default_unauthorized(),
            "unauthorized",
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use portcullis_model::auth::JwtAlgorithm;
    use serde_json::Value;

    use crate::file::parse_documents;
    use crate::snapshot::Snapshot;
    use crate::{compile, CompileOptions, Compiled, StatusKind};

    const BASE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: app}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {ports: [{port: 80}]}
";

    fn compiled(extra: &str) -> Compiled {
        let mut snapshot = Snapshot::default();
        for o in parse_documents(&format!("{BASE}{extra}")).expect("valid test YAML") {
            snapshot.insert(o);
        }
        compile(&snapshot, &CompileOptions::default())
    }

    fn rule_policies(c: &Compiled) -> &portcullis_model::RulePolicies {
        &c.table.ports[0].virtual_hosts[0].routes[0].rule.policies
    }

    fn accepted(c: &Compiled, name: &str) -> (String, String, String) {
        let s = c
            .status(
                StatusKind::Policy(portcullis_api::PolicyKind::AuthPolicy),
                Some("app"),
                name,
            )
            .expect("policy status");
        let cond = &s.status["ancestors"][0]["conditions"][0];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        (
            text(&cond["status"]),
            text(&cond["reason"]),
            text(&cond["message"]),
        )
    }

    const RSA_JWK: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}]}"#;

    #[test]
    fn jwt_api_keys_and_rules_compile_into_the_route() {
        let c = compiled(&format!(
            r#"
---
apiVersion: v1
kind: Secret
metadata: {{name: key-a, namespace: app, labels: {{portcullis.dev/api-key: "true"}}, annotations: {{portcullis.dev/consumer: team-a}}}}
stringData: {{api_key: "0123456789abcdef-a"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: key-b, namespace: app, labels: {{portcullis.dev/api-key: "true"}}}}
stringData: {{api_key: "0123456789abcdef-b"}}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: app}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  jwt:
    providers:
    - name: idp
      issuer: https://idp
      jwks: {{inline: '{RSA_JWK}'}}
  apiKeys:
    selector: {{matchLabels: {{portcullis.dev/api-key: "true"}}}}
  ipRules: {{deny: ["10.0.0.0/8"]}}
"#
        ));
        let (status, reason, message) = accepted(&c, "auth");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "Accepted"),
            "{message}"
        );
        let auth = rule_policies(&c).auth.as_ref().expect("auth attached");
        let jwt = auth.jwt.as_ref().unwrap();
        let portcullis_model::auth::JwksSource::Static(jwks) = &jwt.providers[0].keys else {
            panic!("static keys")
        };
        assert_eq!(jwks.keys[0].alg, JwtAlgorithm::RS256);
        let keys = auth.api_keys.as_ref().unwrap();
        let mut consumers: Vec<&str> = keys.keys.values().map(|c| &**c).collect();
        consumers.sort_unstable();
        assert_eq!(consumers, ["key-b", "team-a"]);
        // The dump shows consumers, never keys.
        let dump = serde_json::to_string(&c.table).unwrap();
        assert!(!dump.contains("0123456789abcdef"), "{dump}");
        assert!(auth
            .ip_rules
            .as_ref()
            .unwrap()
            .deny
            .contains("10.1.1.1".parse().unwrap()));
    }

    #[test]
    fn missing_secret_is_not_accepted_and_fails_closed() {
        let c = compiled(
            "
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: auth, namespace: app}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
  basic: {secretRef: {name: users}}
",
        );
        let (status, reason, message) = accepted(&c, "auth");
        assert_eq!(status, "False");
        assert_eq!(reason, "Invalid");
        assert!(message.contains("Secret app/users not found"), "{message}");
        // The route is not served unprotected.
        let p = rule_policies(&c);
        assert!(p.auth.is_none());
        assert!(
            p.invalid.as_deref().unwrap_or("").contains("users"),
            "{:?}",
            p.invalid
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        for (spec, expected) in [
            ("ipRules: {allow: [\"10.0.0.0/40\"]}", "ipRules.allow"),
            (
                "jwt: {providers: [{name: a, issuer: x, jwks: {remote: {url: 'ftp://x'}}}]}",
                "must be an absolute http(s) URL",
            ),
            (
                "jwt: {providers: [{name: a, issuer: x, jwks: {}}]}",
                "exactly one of inline, secretRef, remote",
            ),
            (
                "apiKeys: {selector: {matchLabels: {nothing: here}}}",
                "matches no Secret",
            ),
            (
                "authorization: {rules: [{action: Allow, paths: [{value: admin}]}]}",
                "must start with '/'",
            ),
            ("responses: {unauthorized: {status: 200}}", "not 3xx-5xx"),
            (
                "ipRules: {clientAddress: {trustedHops: 2}}",
                "trustedProxies",
            ),
        ] {
            let c = compiled(&format!(
                "
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: app}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  {spec}
"
            ));
            let (status, _, message) = accepted(&c, "auth");
            assert_eq!(status, "False", "{spec}");
            assert!(message.contains(expected), "{spec}: {message}");
        }
    }

    #[test]
    fn route_policy_sections_win_over_gateway_defaults_and_fill_the_rest() {
        let c = compiled(
            "
---
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: app}
stringData: {auth: 'bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g='}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: gateway-wide, namespace: app, creationTimestamp: '2024-01-01T00:00:00Z'}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  defaults:
    ipRules: {deny: ['192.0.2.0/24']}
    basic: {secretRef: {name: users}, realm: gateway}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: route, namespace: app, creationTimestamp: '2024-01-02T00:00:00Z'}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
  basic: {secretRef: {name: users}, realm: route}
",
        );
        let auth = rule_policies(&c).auth.as_ref().expect("auth attached");
        assert_eq!(auth.basic.as_ref().unwrap().realm, "route");
        assert!(auth.ip_rules.is_some(), "gateway section filled in");
        assert_eq!(auth.sources.len(), 2, "{:?}", auth.sources);
    }
}

//! `RateLimitPolicy` -> `model::ratelimit::RateLimitConfig`.
//!
//! `resolve` checks one policy and compiles each of its limits (durations,
//! matchers, header names, key parts) and reads its Redis Secrets in the
//! policy's namespace, so that every mistake is reported on the policy that
//! made it. `build` then assembles the effective limits of a rule and
//! renders what the data path would otherwise compute per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use portcullis_api::policy::Merge;
use portcullis_api::ratelimit::{
    FailureMode as ApiFailureMode, GlobalBackend, KeyPartKind, Limit as ApiLimit, LimitMode,
    RateLimitRules, RequestCondition, ResponseHeaders,
};
use portcullis_api::PolicyKind;
use portcullis_model::ratelimit::{
    rate_item_name, window_seconds, Condition, FailureMode, GlobalStore, HeaderCondition,
    HeaderStyle, KeyPart, Limit, Rate, RateLimitConfig, RedisTls, Throttle,
};
use portcullis_model::{
    HeaderNameSer, HeaderValueSer, PathMatch, Pattern, RulePolicies, StringMatch,
};

use super::matches::normalize_prefix;
use super::policy::{PolicyCompiler, PolicyContext, TargetKind};
use crate::snapshot::ObjectKey;

/// Default most counter keys per local limit and replica.
const DEFAULT_MAX_TRACKED_KEYS: u32 = 100_000;
/// Default wait for Redis.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest window accepted (counters of longer windows would outlive any
/// sensible reload and Redis expiry).
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) struct RateLimits;

/// One policy's rules, checked and compiled in its namespace.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// Compiled limits without their Redis store (which may come from
    /// another policy's `global`).
    limits: BTreeMap<String, (Limit, bool)>,
    /// `Some` when this policy sets `global`.
    store: Option<Arc<GlobalStore>>,
    /// The other fields, merged as the API type says.
    rules: RateLimitRules,
}

impl Merge for Resolved {
    fn fill_from(&mut self, lower: &Self) {
        for (name, limit) in &lower.limits {
            self.limits
                .entry(name.clone())
                .or_insert_with(|| limit.clone());
        }
        if self.store.is_none() {
            self.store.clone_from(&lower.store);
        }
        // Limits were merged above with their compiled form.
        let mut lower_rules = lower.rules.clone();
        lower_rules.limits = None;
        self.rules.fill_from(&lower_rules);
    }
}

impl PolicyCompiler for RateLimits {
    const KIND: PolicyKind = PolicyKind::RateLimitPolicy;
    const TARGETS: &'static [TargetKind] = &[
        TargetKind::Gateway,
        TargetKind::HttpRoute,
        TargetKind::GrpcRoute,
    ];
    type Rules = RateLimitRules;
    type Resolved = Resolved;
    type Output = RateLimitConfig;

    fn resolve(rules: &RateLimitRules, ctx: &PolicyContext<'_>) -> Result<Resolved, String> {
        let policy_key = format!("{}/{}", ctx.namespace, policy_name(&ctx.policy));
        let mut limits = BTreeMap::new();
        for (name, limit) in rules.limits.iter().flatten() {
            let compiled = compile_limit(name, limit, &policy_key)
                .map_err(|e| format!("limits.{name}: {e}"))?;
            let global = limit.mode == Some(LimitMode::Global);
            limits.insert(name.clone(), (compiled, global));
        }
        let store = match &rules.global {
            None => None,
            Some(g) => Some(Arc::new(
                resolve_store(g, ctx).map_err(|e| format!("global: {e}"))?,
            )),
        };
        if let Some(t) = &rules.throttle {
            throttle(t)?;
        }
        if rules.max_tracked_keys == Some(0) {
            return Err("maxTrackedKeys must be at least 1".into());
        }
        Ok(Resolved {
            limits,
            store,
            rules: RateLimitRules {
                limits: None,
                ..rules.clone()
            },
        })
    }

    fn build(effective: &Resolved) -> Result<RateLimitConfig, String> {
        let headers = match effective.rules.response_headers {
            None | Some(ResponseHeaders::Draft) => HeaderStyle::Draft,
            Some(ResponseHeaders::XRateLimit) => HeaderStyle::XRateLimit,
            Some(ResponseHeaders::None) => HeaderStyle::None,
        };
        let mut limits = Vec::new();
        for (name, (limit, global)) in &effective.limits {
            let mut limit = limit.clone();
            if *global {
                let store = effective.store.clone().ok_or_else(|| {
                    format!("limit {name:?} is `mode: Global` but no policy of this rule sets `global` (the Redis server)")
                })?;
                // Counters in another Redis are other counters.
                limit.counter_id = format!("{}@{}", limit.counter_id, store.display_address());
                limit.global = Some(store);
            }
            limits.push(Arc::new(limit));
        }
        let policy_header = (headers == HeaderStyle::Draft && !limits.is_empty())
            .then(|| policy_header(&limits))
            .transpose()?;
        Ok(RateLimitConfig {
            limits,
            headers,
            shadow: effective.rules.shadow.unwrap_or(false),
            throttle: effective
                .rules
                .throttle
                .as_ref()
                .map(throttle)
                .transpose()?,
            max_tracked_keys: effective
                .rules
                .max_tracked_keys
                .unwrap_or(DEFAULT_MAX_TRACKED_KEYS) as usize,
            policy_header,
        })
    }

    fn install(output: &Arc<RateLimitConfig>, policies: &mut RulePolicies) {
        policies.rate_limit = Some(output.clone());
    }
}

/// `RateLimitPolicy ns/name` -> `name`.
fn policy_name(display: &str) -> &str {
    display.rsplit_once('/').map(|(_, n)| n).unwrap_or(display)
}

fn duration(what: &str, value: &str) -> Result<Duration, String> {
    let d: gateway_api::Duration = value.parse().map_err(|e| {
        format!("{what} {value:?} is not a valid duration (like 1s, 1m, 500ms): {e}")
    })?;
    Ok(Duration::new(d.as_secs(), d.subsec_nanos()))
}

fn throttle(t: &portcullis_api::ratelimit::Throttle) -> Result<Throttle, String> {
    let max_wait = duration("throttle.maxWait", &t.max_wait)?;
    if max_wait.is_zero() || max_wait > Duration::from_secs(60) {
        return Err("throttle.maxWait must be between 1ms and 60s".into());
    }
    Ok(Throttle {
        max_queued: t.max_queued,
        max_wait,
    })
}

/// Names appear in `RateLimit` headers as structured-field strings and in
/// Redis keys: keep them to token characters.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("a limit name must be 1-63 letters, digits, '-', '_' or '.'".into())
    }
}

fn compile_limit(name: &str, limit: &ApiLimit, policy_key: &str) -> Result<Limit, String> {
    check_name(name)?;
    if limit.rates.is_empty() {
        return Err("at least one rate is required".into());
    }
    let mut rates = Vec::new();
    for (i, r) in limit.rates.iter().enumerate() {
        let window = duration(&format!("rates[{i}].window"), &r.window)?;
        if window < Duration::from_millis(1) || window > MAX_WINDOW {
            return Err(format!("rates[{i}].window must be between 1ms and 7 days"));
        }
        if r.limit == 0 {
            return Err(format!(
                "rates[{i}].limit must be at least 1 (to block everything, use an AuthPolicy)"
            ));
        }
        if r.limit > 1_000_000_000 {
            return Err(format!("rates[{i}].limit must be at most 1000000000"));
        }
        rates.push(Rate {
            limit: r.limit,
            window,
        });
    }
    let mut key = Vec::new();
    for (i, part) in limit.key.iter().enumerate() {
        let name = || {
            part.name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("key[{i}]: {:?} needs a name", part.kind))
        };
        key.push(match part.kind {
            KeyPartKind::ClientIp => KeyPart::ClientIp,
            KeyPartKind::Path => KeyPart::Path,
            KeyPartKind::Method => KeyPart::Method,
            KeyPartKind::Consumer => KeyPart::Consumer,
            KeyPartKind::Claim => KeyPart::Claim(name()?),
            KeyPartKind::Header => KeyPart::Header(header_name(&format!("key[{i}]"), &name()?)?),
        });
    }
    let when = limit
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| condition(c).map_err(|e| format!("when[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let shared = limit.shared.unwrap_or(false);
    // Stable across replicas and reloads; changes whenever what is counted
    // changes, so stale counts never apply to a different limit.
    let fingerprint = fnv1a(&format!(
        "{:?}|{:?}|{:?}|{:?}|{shared}",
        rates, limit.key, limit.when, limit.mode
    ));
    Ok(Limit {
        name: name.to_string(),
        counter_id: format!("{policy_key}/{name}/{fingerprint:016x}"),
        rates,
        key,
        when,
        shared,
        global: None,
    })
}

fn header_name(what: &str, name: &str) -> Result<HeaderNameSer, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map(HeaderNameSer)
        .map_err(|_| format!("{what}: {name:?} is not a valid header name"))
}

fn condition(c: &RequestCondition) -> Result<Condition, String> {
    let method = c.method.as_ref().map(|m| m.to_ascii_uppercase());
    let path = match &c.path {
        None => None,
        Some(p) => Some(match p.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" | "PathPrefix" if !p.value.starts_with('/') => {
                return Err(format!("path {:?} must start with '/'", p.value))
            }
            "Exact" => PathMatch::Exact(p.value.clone()),
            "PathPrefix" => PathMatch::Prefix(normalize_prefix(&p.value)),
            "RegularExpression" => PathMatch::Regex(
                Pattern::new(&p.value)
                    .map_err(|e| format!("path regular expression {:?}: {e}", p.value))?,
            ),
            other => {
                return Err(format!(
                    "path type {other:?} is not one of Exact, PathPrefix, RegularExpression"
                ))
            }
        }),
    };
    let mut headers = Vec::new();
    for h in &c.headers {
        let name = header_name("headers", &h.name)?;
        let value = match (h.kind.as_deref().unwrap_or("Exact"), &h.value) {
            ("Present", _) => None,
            ("Exact", Some(v)) => Some(StringMatch::Exact(v.clone())),
            ("RegularExpression", Some(v)) => {
                Some(StringMatch::Regex(Pattern::new(v).map_err(|e| {
                    format!("header {:?} regular expression: {e}", h.name)
                })?))
            }
            ("Exact" | "RegularExpression", None) => {
                return Err(format!("header {:?} needs a value", h.name))
            }
            (other, _) => {
                return Err(format!(
                    "header type {other:?} is not one of Exact, RegularExpression, Present"
                ))
            }
        };
        headers.push(HeaderCondition { name, value });
    }
    Ok(Condition {
        method,
        path,
        headers,
    })
}

fn resolve_store(g: &GlobalBackend, ctx: &PolicyContext<'_>) -> Result<GlobalStore, String> {
    let url = parse_url(&g.url)?;
    let secret_data = |name: &str| -> Result<BTreeMap<String, Vec<u8>>, String> {
        let key = ObjectKey::new(ctx.namespace, name);
        let secret = ctx
            .index
            .snapshot
            .secrets
            .get(&key)
            .ok_or_else(|| format!("Secret {key} not found"))?;
        Ok(secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect())
    };
    let text = |data: &BTreeMap<String, Vec<u8>>, secret: &str, key: &str| {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.clone())
                    .map_err(|_| format!("Secret {secret} key {key:?} is not UTF-8"))
            })
            .transpose()
    };
    let (username, password) = match &g.credentials_ref {
        None => (None, None),
        Some(r) => {
            let data = secret_data(&r.name)?;
            let password = text(&data, &r.name, "password")?
                .ok_or_else(|| format!("Secret {} has no `password` key", r.name))?;
            (text(&data, &r.name, "username")?, Some(password))
        }
    };
    let tls =
        match (&g.tls, url.tls) {
            (None, false) => None,
            (None, true) => return Err(
                "a rediss:// URL needs `tls.caSecretRef` (the CA that signed Redis' certificate)"
                    .into(),
            ),
            (Some(t), _) => {
                let data = secret_data(&t.ca_secret_ref.name)?;
                let name = &t.ca_secret_ref.name;
                let ca_pem = text(&data, name, "ca.crt")?
                    .ok_or_else(|| format!("Secret {name} has no `ca.crt` key"))?;
                if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("Secret {name} `ca.crt` holds no PEM certificate"));
                }
                let client_cert = text(&data, name, "tls.crt")?;
                let client_key = text(&data, name, "tls.key")?;
                if let (Some(c), Some(k)) = (&client_cert, &client_key) {
                    super::validate_pem(c, k)
                        .map_err(|e| format!("Secret {name} client certificate: {e}"))?;
                }
                let both = client_cert.is_some() && client_key.is_some();
                Some(RedisTls {
                    ca_pem: ca_pem.into(),
                    server_name: t.server_name.clone().unwrap_or_else(|| url.host.clone()),
                    client_cert_pem: client_cert.filter(|_| both).map(Into::into),
                    client_key_pem: client_key.filter(|_| both).map(Into::into),
                })
            }
        };
    let timeout = match &g.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => duration("timeout", t)?,
    };
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err("timeout must be between 1ms and 10s".into());
    }
    Ok(GlobalStore {
        host: url.host,
        port: url.port,
        db: url.db,
        username,
        password,
        tls,
        timeout,
        failure_mode: match g.failure_mode {
            None | Some(ApiFailureMode::Open) => FailureMode::Open,
            Some(ApiFailureMode::Closed) => FailureMode::Closed,
        },
    })
}

#[derive(Debug, PartialEq)]
struct RedisUrl {
    host: String,
    port: u16,
    db: u32,
    tls: bool,
}

/// `redis://host[:port][/db]` or `rediss://...` (TLS). Credentials belong
/// in `credentialsRef`, never in the URL (policies are readable by many).
fn parse_url(url: &str) -> Result<RedisUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else {
        return Err(format!("url {url:?} must start with redis:// or rediss://"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(
            "url must not contain credentials: put them in a Secret named by credentialsRef".into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("url {url:?}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("url {url:?} has no host"));
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse()
            .map_err(|_| format!("url {url:?}: port {p:?} is not a number"))?,
    };
    let db = match path.trim_end_matches('/') {
        "" => 0,
        d => d
            .parse()
            .map_err(|_| format!("url {url:?}: database {d:?} is not a number"))?,
    };
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        db,
        tls,
    })
}

/// `RateLimit-Policy: "name";q=10;w=1, ...` for every rate of every limit.
fn policy_header(limits: &[Arc<Limit>]) -> Result<HeaderValueSer, String> {
    let items: Vec<String> = limits
        .iter()
        .flat_map(|l| {
            l.rates.iter().enumerate().map(|(i, r)| {
                format!(
                    "\"{}\";q={};w={}",
                    rate_item_name(&l.name, i, l.rates.len()),
                    r.limit,
                    window_seconds(r.window)
                )
            })
        })
        .collect();
    HeaderValue::from_str(&items.join(", "))
        .map(HeaderValueSer)
        .map_err(|e| format!("RateLimit-Policy header: {e}"))
}

/// 64-bit FNV-1a: a fingerprint that is the same in every process (std's
/// hashers are randomly seeded).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        let u = parse_url("redis://redis.infra:6380/2").expect("valid");
        assert_eq!(
            u,
            RedisUrl {
                host: "redis.infra".into(),
                port: 6380,
                db: 2,
                tls: false
            }
        );
        let u = parse_url("rediss://[::1]").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.db, u.tls),
            ("::1", 6379, 0, true)
        );
        assert!(parse_url("redis://user:pw@host")
            .unwrap_err()
            .contains("credentialsRef"));
        assert!(parse_url("http://host").is_err());
        assert!(parse_url("redis://host:port").is_err());
    }

    #[test]
    fn limit_names_are_tokens() {
        assert!(check_name("per-client_1.x").is_ok());
        assert!(check_name("a\"b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn fingerprints_are_stable_and_change_with_the_limit() {
        let limit = |n: u64| ApiLimit {
            rates: vec![portcullis_api::ratelimit::Rate {
                limit: n,
                window: "1s".into(),
            }],
            ..ApiLimit::default()
        };
        let a = compile_limit("l", &limit(5), "ns/p").expect("valid");
        let b = compile_limit("l", &limit(5), "ns/p").expect("valid");
        let c = compile_limit("l", &limit(6), "ns/p").expect("valid");
        assert_eq!(a.counter_id, b.counter_id);
        assert_ne!(a.counter_id, c.counter_id);
        assert!(a.counter_id.starts_with("ns/p/l/"));
    }
}

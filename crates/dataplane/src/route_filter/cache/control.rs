//! HTTP caching rules (RFC 9111) as pure functions: `Cache-Control`
//! parsing, whether a response may be stored by a shared cache, its
//! freshness lifetime and its age. No I/O and no clock reads here: the
//! caller passes the times, so that the arithmetic is unit-tested.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};
use portcullis_model::route_filter::cache::CacheConfig;

/// The directives of a response's `Cache-Control` that a shared cache
/// acts on. Unknown directives are ignored (RFC 9111 §5.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// Also set by the qualified form `no-cache="field"`: revalidating
    /// every time is the conservative reading.
    pub no_cache: bool,
    /// Also set by `private="field"`: the whole response is then kept per
    /// identity rather than trusting that only some fields are personal.
    pub private: bool,
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    pub stale_if_error: Option<u64>,
}

/// A delta-seconds value; anything unparsable counts as 0 (stale), as
/// RFC 9111 §1.2.2 asks; huge values saturate.
fn delta_seconds(v: &str) -> u64 {
    let v = v.trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    v.parse().unwrap_or(u64::from(u32::MAX))
}

/// Parses every `Cache-Control` field line of `headers`.
pub(crate) fn parse(headers: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::default();
    for line in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(line) = line.to_str() else { continue };
        for directive in line.split(',') {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (directive.trim(), None),
            };
            let is = |d: &str| name.eq_ignore_ascii_case(d);
            if is("max-age") {
                cc.max_age = Some(value.map_or(0, delta_seconds));
            } else if is("s-maxage") {
                cc.s_maxage = Some(value.map_or(0, delta_seconds));
            } else if is("no-store") {
                cc.no_store = true;
            } else if is("no-cache") {
                cc.no_cache = true;
            } else if is("private") {
                cc.private = true;
            } else if is("public") {
                cc.public = true;
            } else if is("must-revalidate") || is("proxy-revalidate") {
                cc.must_revalidate = true;
            } else if is("stale-if-error") {
                cc.stale_if_error = value.map(delta_seconds);
            }
        }
    }
    cc
}

/// Status codes a shared cache stores (those "heuristically cacheable" in
/// RFC 9110 §15.1; 206 is left out: no range assembly here).
pub(crate) fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why a response is not stored (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    NoStore,
    VaryStar,
    SetCookie,
    /// `private`, or the filter keys by identity, but nobody is
    /// authenticated: there is no one to keep it for.
    PrivateAnonymous,
    /// The request carried `Authorization` that the gateway did not
    /// verify (no identity to keep the response for) and the response
    /// does not say `public`, `s-maxage` or `must-revalidate` (RFC 9111
    /// §3.5).
    Authorization,
    /// No freshness and no validator: it could never be reused.
    NotReusable,
}

/// How a storable response is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Storage {
    /// Freshness lifetime (zero: revalidate on every use).
    pub lifetime: Duration,
    /// Kept per identity: `private`, keyed by identity, or a response to
    /// a request with credentials that does not say it may be shared.
    pub private: bool,
    pub must_revalidate: bool,
    /// May answer later requests carrying `Authorization`.
    pub shared_with_authorization: bool,
    pub stale_if_error: Option<Duration>,
}

/// What the request contributes to the storage decision.
pub(crate) struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    pub authenticated: bool,
}

/// Decides whether a response to a GET may be stored and for how long.
pub(crate) fn storage(
    config: &CacheConfig,
    req: RequestFacts<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Result<Storage, NotStored> {
    let cc = parse(headers);
    if !cacheable_status(status) {
        return Err(NotStored::Status);
    }
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if headers.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStored::VaryStar);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    // RFC 9111 §3.5: a response to a request with credentials is shared
    // only if it says so. The gateway's own authentication (API keys in a
    // custom header, a stripped bearer token) counts as credentials too;
    // such responses are kept per identity instead of being refused.
    let shareable = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
    let has_authorization = req.headers.contains_key(AUTHORIZATION);
    let credentials = req.authenticated || has_authorization;
    let private = cc.private || config.key.identity || (credentials && !shareable);
    if private && !req.authenticated {
        return Err(if cc.private || config.key.identity {
            NotStored::PrivateAnonymous
        } else {
            NotStored::Authorization
        });
    }
    let lifetime = if config.override_backend {
        config.ttl.unwrap_or_default()
    } else if cc.no_cache {
        Duration::ZERO
    } else {
        explicit_lifetime(&cc, headers, response_time)
            .or(config.ttl)
            .or_else(|| heuristic_lifetime(headers, response_time))
            .unwrap_or_default()
    };
    let has_validator =
        headers.contains_key(http::header::ETAG) || headers.contains_key(LAST_MODIFIED);
    if lifetime.is_zero() && !has_validator {
        return Err(NotStored::NotReusable);
    }
    Ok(Storage {
        lifetime,
        private,
        must_revalidate: cc.must_revalidate && !config.override_backend,
        shared_with_authorization: shareable,
        stale_if_error: cc
            .stale_if_error
            .map(Duration::from_secs)
            .or(config.stale_if_error),
    })
}

/// `s-maxage`, then `max-age`, then `Expires - Date` (RFC 9111 §4.2.1).
pub(crate) fn explicit_lifetime(
    cc: &CacheControl,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(EXPIRES)?;
    // An invalid Expires (often "0" or "-1") means already expired.
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or_default())
}

/// 10% of the time since `Last-Modified`, at most a day (RFC 9111
/// §4.2.2).
fn heuristic_lifetime(headers: &HeaderMap, response_time: SystemTime) -> Option<Duration> {
    let modified = headers.get(LAST_MODIFIED).and_then(http_date)?;
    let date = headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or(response_time);
    let since = date.duration_since(modified).ok()?;
    Some((since / 10).min(Duration::from_secs(86_400)))
}

/// The age of a response when it arrived (RFC 9111 §4.2.3): the larger of
/// what its `Date` says and its `Age` plus the time the request took.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = headers
        .get(DATE)
        .and_then(http_date)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or_default();
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .map(delta_seconds)
        .unwrap_or(0);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent.max(Duration::from_secs(age_value) + delay)
}

pub(crate) fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// Weak comparison of an `If-None-Match` list with a stored `ETag`
/// (RFC 9110 §13.1.2).
pub(crate) fn none_match(if_none_match: &HeaderMap, etag: &[u8]) -> bool {
    let weak = |t: &[u8]| t.strip_prefix(b"W/").unwrap_or(t).to_vec();
    let stored = weak(etag);
    if_none_match
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .any(|t| t == b"*" || weak(t) == stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn parses_directives_case_insensitively_across_lines() {
        let cc = parse(&headers(&[
            ("cache-control", "Public, MAX-AGE=60, s-maxage=\"120\""),
            (
                "cache-control",
                "must-revalidate, stale-if-error=30, x-unknown=1",
            ),
        ]));
        assert_eq!(
            cc,
            CacheControl {
                max_age: Some(60),
                s_maxage: Some(120),
                public: true,
                must_revalidate: true,
                stale_if_error: Some(30),
                ..CacheControl::default()
            }
        );
        let cc = parse(&headers(&[(
            "cache-control",
            "private=\"set-cookie\", no-cache=\"x\", no-store, max-age=abc",
        )]));
        assert!(cc.private && cc.no_cache && cc.no_store);
        assert_eq!(cc.max_age, Some(0), "an invalid max-age is stale");
        assert_eq!(
            parse(&headers(&[(
                "cache-control",
                "max-age=99999999999999999999"
            )]))
            .max_age,
            Some(u64::from(u32::MAX))
        );
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let now = at(1_000_000);
        let lifetime = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            explicit_lifetime(&parse(&h), &h, now)
        };
        assert_eq!(
            lifetime(&[("cache-control", "max-age=10, s-maxage=20")]),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            lifetime(&[
                ("cache-control", "max-age=10"),
                ("expires", &date(1_000_500))
            ]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            lifetime(&[("date", &date(999_000)), ("expires", &date(999_300))]),
            Some(Duration::from_secs(300)),
            "Expires counts from Date, not from now"
        );
        assert_eq!(lifetime(&[("expires", "0")]), Some(Duration::ZERO));
        assert_eq!(lifetime(&[]), None);
    }

    #[test]
    fn age_is_the_larger_of_date_and_age_plus_delay() {
        let h = headers(&[("date", &date(1000)), ("age", "5")]);
        assert_eq!(initial_age(&h, at(1009), at(1010)), Duration::from_secs(10));
        let h = headers(&[("date", &date(1010)), ("age", "30")]);
        assert_eq!(initial_age(&h, at(1008), at(1010)), Duration::from_secs(32));
        // A Date in the future (clock skew) is not a negative age.
        let h = headers(&[("date", &date(2000))]);
        assert_eq!(initial_age(&h, at(1010), at(1010)), Duration::ZERO);
    }

    fn decide(
        config: &CacheConfig,
        request: &[(&str, &str)],
        authenticated: bool,
        status: u16,
        response: &[(&str, &str)],
    ) -> Result<Storage, NotStored> {
        let req = headers(request);
        storage(
            config,
            RequestFacts {
                headers: &req,
                authenticated,
            },
            StatusCode::from_u16(status).expect("status"),
            &headers(response),
            at(1_000_000),
        )
    }

    #[test]
    fn storage_follows_the_shared_cache_rules() {
        let c = CacheConfig::default();
        let max_age = [("cache-control", "max-age=60")];
        assert_eq!(
            decide(&c, &[], false, 200, &max_age).map(|s| s.lifetime),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            decide(&c, &[], false, 500, &max_age),
            Err(NotStored::Status)
        );
        assert_eq!(
            decide(
                &c,
                &[],
                false,
                200,
                &[("cache-control", "no-store, max-age=60")]
            ),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            decide(
                &c,
                &[],
                false,
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            decide(
                &c,
                &[],
                false,
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        let private = [("cache-control", "private, max-age=60")];
        assert_eq!(
            decide(&c, &[], false, 200, &private),
            Err(NotStored::PrivateAnonymous)
        );
        assert!(decide(&c, &[], true, 200, &private).is_ok_and(|s| s.private));
        // Credentials: shared only with public / s-maxage /
        // must-revalidate; otherwise kept per identity, or not at all
        // when the gateway did not authenticate anyone.
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            decide(&c, &auth, false, 200, &max_age),
            Err(NotStored::Authorization)
        );
        assert!(decide(&c, &auth, true, 200, &max_age).is_ok_and(|s| s.private));
        assert!(decide(&c, &[], true, 200, &max_age).is_ok_and(|s| s.private));
        assert!(
            decide(&c, &[], true, 200, &[("cache-control", "s-maxage=60")])
                .is_ok_and(|s| !s.private)
        );
        assert!(decide(
            &c,
            &auth,
            true,
            200,
            &[("cache-control", "public, max-age=60")]
        )
        .is_ok_and(|s| s.shared_with_authorization));
        // No freshness: only worth keeping with a validator.
        assert_eq!(
            decide(&c, &[], false, 200, &[]),
            Err(NotStored::NotReusable)
        );
        assert_eq!(
            decide(
                &c,
                &[],
                false,
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")]
            )
            .map(|s| s.lifetime),
            Ok(Duration::ZERO)
        );
        // Heuristic: 10% of the time since Last-Modified.
        assert_eq!(
            decide(
                &c,
                &[],
                false,
                200,
                &[("last-modified", &date(1_000_000 - 3600))]
            )
            .map(|s| s.lifetime),
            Ok(Duration::from_secs(360))
        );
    }

    #[test]
    fn the_filter_ttl_fills_in_or_overrides() {
        let ttl = CacheConfig {
            ttl: Some(Duration::from_secs(30)),
            ..CacheConfig::default()
        };
        assert_eq!(
            decide(&ttl, &[], false, 200, &[]).map(|s| s.lifetime),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            decide(&ttl, &[], false, 200, &[("cache-control", "max-age=5")]).map(|s| s.lifetime),
            Ok(Duration::from_secs(5))
        );
        let force = CacheConfig {
            override_backend: true,
            ..ttl
        };
        assert_eq!(
            decide(
                &force,
                &[],
                false,
                200,
                &[("cache-control", "no-cache, max-age=5")]
            )
            .map(|s| s.lifetime),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            decide(&force, &[], false, 200, &[("cache-control", "no-store")]),
            Err(NotStored::NoStore),
            "override never stores what the backend forbids storing"
        );
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let h = headers(&[("if-none-match", "\"a\", W/\"b\"")]);
        assert!(none_match(&h, b"\"a\""));
        assert!(none_match(&h, b"W/\"a\""));
        assert!(none_match(&h, b"\"b\""));
        assert!(!none_match(&h, b"\"c\""));
        assert!(none_match(&headers(&[("if-none-match", "*")]), b"\"c\""));
        assert!(!none_match(&headers(&[]), b"\"c\""));
    }
}

//! Gateway API filters applied to requests and responses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_model::{Cors, HeaderModifier, PathMatch, PathModifier, Redirect};

/// Set, then add, then remove, as the Gateway API specifies.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        headers.insert(name.0.clone(), value.0.clone());
    }
    for (name, value) in &m.add {
        // "Add" appends to an existing value list (comma-joined on the wire
        // for most headers): keep one field line so backends that read only
        // the first value still see both.
        match headers.get(&name.0) {
            Some(existing) => {
                let mut joined = existing.as_bytes().to_vec();
                joined.extend_from_slice(b",");
                joined.extend_from_slice(value.0.as_bytes());
                match HeaderValue::from_bytes(&joined) {
                    Ok(v) => {
                        headers.insert(name.0.clone(), v);
                    }
                    Err(_) => {
                        headers.append(name.0.clone(), value.0.clone());
                    }
                }
            }
            None => {
                headers.insert(name.0.clone(), value.0.clone());
            }
        }
    }
    for name in &m.remove {
        headers.remove(&name.0);
    }
}

/// Applies a path modifier to `path` given the route's path match.
pub fn rewrite_path(path: &str, modifier: &PathModifier, matched: &PathMatch) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let prefix = match matched {
                PathMatch::Prefix(p) => p.as_str(),
                // The controller refuses ReplacePrefixMatch without a prefix
                // match; treat the whole path as matched otherwise.
                PathMatch::Exact(p) => p.as_str(),
                PathMatch::Regex(_) => return replacement.clone(),
            };
            let rest = if prefix == "/" {
                path
            } else {
                path.get(prefix.len()..).unwrap_or("")
            };
            join_prefix(replacement, rest)
        }
    }
}

/// Joins a replacement prefix with the rest of the path so that exactly one
/// slash separates them: `/bar` + `/baz` = `/bar/baz`, `/` + `/baz` = `/baz`,
/// `/bar/` + `` = `/bar/`, `` + `` = `/`.
fn join_prefix(replacement: &str, rest: &str) -> String {
    let base = replacement.trim_end_matches('/');
    if rest.is_empty() || rest == "/" {
        if base.is_empty() {
            return "/".to_string();
        }
        // Keep the trailing slash the request or the replacement had.
        return if rest == "/" || replacement.ends_with('/') && replacement.len() > 1 {
            format!("{base}/")
        } else {
            base.to_string()
        };
    }
    let rest = rest.trim_start_matches('/');
    format!("{base}/{rest}")
}

/// The pieces of the request a redirect is computed from.
pub struct RedirectInput<'a> {
    pub scheme: &'a str,
    /// Without port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub listener_port: u16,
    pub matched: &'a PathMatch,
}

/// Computes the `Location` of a RequestRedirect, following the spec's port
/// rules: an explicit port wins; otherwise a changed scheme implies its
/// well-known port, an unchanged one keeps the listener port; well-known
/// ports are left out of the URL.
pub fn redirect_location(r: &Redirect, input: &RedirectInput<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(input.scheme);
    let host = r.hostname.as_deref().unwrap_or(input.host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => well_known_port(s),
        (None, None) => input.listener_port,
    };
    let path = match &r.path {
        Some(m) => rewrite_path(input.path, m, input.matched),
        None => input.path.to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if port != well_known_port(scheme) {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&path);
    if let Some(q) = input.query {
        location.push('?');
        location.push_str(q);
    }
    location
}

fn well_known_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

/// CORS decision for a request carrying `Origin`.
pub fn cors_origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins
        .iter()
        .any(|allowed| origin_matches(allowed, origin))
}

/// `*` alone matches any origin; otherwise `*` matches any run of characters
/// within the host part (e.g. `https://*.example.com`).
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(origin),
        Some((head, tail)) => {
            origin.len() >= head.len() + tail.len()
                && origin[..head.len()].eq_ignore_ascii_case(head)
                && origin[origin.len() - tail.len()..].eq_ignore_ascii_case(tail)
        }
    }
}

/// Headers for a preflight answer (the request is `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`). The allowed origin is always echoed,
/// never `*`, even when every origin is allowed: browsers refuse `*` on a
/// request with credentials (cookies, Authorization) whether or not the
/// route allows credentials, and `Vary: Origin` keeps caches per origin.
pub fn cors_preflight_headers(
    cors: &Cors,
    origin: &HeaderValue,
    request_headers: &HeaderMap,
) -> HeaderMap {
    let mut out = HeaderMap::new();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    let methods = if cors.allow_methods.iter().any(|m| m == "*") {
        request_headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("*"))
    } else {
        join_header(&cors.allow_methods)
    };
    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    let allow_headers = if cors.allow_headers.iter().any(|h| h == "*") {
        request_headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
    } else if cors.allow_headers.is_empty() {
        None
    } else {
        Some(join_header(&cors.allow_headers))
    };
    if let Some(h) = allow_headers {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
    }
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(age) = cors.max_age_seconds {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    // What the actual response will expose, announced with the preflight
    // as the Gateway API conformance suite expects.
    if !cors.expose_headers.is_empty() {
        out.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            join_header(&cors.expose_headers),
        );
    }
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    out
}

/// Headers added to an actual (non-preflight) cross-origin response.
pub fn cors_response_headers(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty() {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            join_header(&cors.expose_headers),
        );
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn join_header(values: &[String]) -> HeaderValue {
    // Values were validated as header tokens by the controller.
    HeaderValue::from_str(&values.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Hop-by-hop headers (RFC 9110, section 7.6.1) are never forwarded, nor are
/// the headers the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::{HeaderNameSer, HeaderValueSer};

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_string())
    }

    #[test]
    fn replace_prefix_match_keeps_one_slash() {
        let m = |r: &str| PathModifier::ReplacePrefixMatch(r.to_string());
        assert_eq!(
            rewrite_path("/foo/bar", &m("/xyz"), &prefix("/foo")),
            "/xyz/bar"
        );
        assert_eq!(rewrite_path("/foo", &m("/xyz"), &prefix("/foo")), "/xyz");
        assert_eq!(rewrite_path("/foo/", &m("/xyz"), &prefix("/foo")), "/xyz/");
        assert_eq!(rewrite_path("/foo/bar", &m("/"), &prefix("/foo")), "/bar");
        assert_eq!(rewrite_path("/foo", &m("/"), &prefix("/foo")), "/");
        assert_eq!(
            rewrite_path("/foo/bar", &m("/xyz/"), &prefix("/foo")),
            "/xyz/bar"
        );
        assert_eq!(rewrite_path("/bar", &m("/xyz"), &prefix("/")), "/xyz/bar");
    }

    #[test]
    fn redirect_port_rules() {
        let base = RedirectInput {
            scheme: "http",
            host: "example.com",
            path: "/a",
            query: Some("x=1"),
            listener_port: 8080,
            matched: &prefix("/"),
        };
        let r = |scheme: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            path: None,
            port,
            status_code: 302,
        };
        assert_eq!(
            redirect_location(&r(None, None), &base),
            "http://example.com:8080/a?x=1"
        );
        assert_eq!(
            redirect_location(&r(Some("https"), None), &base),
            "https://example.com/a?x=1"
        );
        assert_eq!(
            redirect_location(&r(Some("https"), Some(8443)), &base),
            "https://example.com:8443/a?x=1"
        );
        assert_eq!(
            redirect_location(&r(None, Some(80)), &base),
            "http://example.com/a?x=1"
        );
    }

    #[test]
    fn header_modifier_sets_adds_removes() {
        let n = |s: &str| HeaderNameSer(HeaderName::from_bytes(s.as_bytes()).unwrap());
        let v = |s: &str| HeaderValueSer(HeaderValue::from_str(s).unwrap());
        let m = HeaderModifier {
            set: vec![(n("x-set"), v("new"))],
            add: vec![(n("x-add"), v("two"))],
            remove: vec![n("x-remove")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        h.insert("x-remove", HeaderValue::from_static("gone"));
        modify_headers(&mut h, &m);
        assert_eq!(h["x-set"], "new");
        assert_eq!(h["x-add"], "one,two");
        assert!(!h.contains_key("x-remove"));
    }

    #[test]
    fn origin_wildcards() {
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
        assert!(origin_matches("*", "null"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}

//! Route lookup: port -> virtual host -> first matching route.
//!
//! The controller already sorted everything by Gateway API precedence; this
//! module indexes hostnames once per table (an exact-host hash map, wildcard
//! suffixes longest first) so that lookup cost does not grow with the number
//! of hosts, and then scans one host's presorted routes.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use portcullis_model::{HostMatch, PortConfig, RequestMatch, Route, RouteTable, VirtualHost};

/// Index over one port's virtual hosts.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, usize>,
    /// (suffix including the leading dot, vhost index), longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

impl HostIndex {
    pub fn new(vhosts: &[VirtualHost]) -> HostIndex {
        let mut index = HostIndex::default();
        for (i, vhost) in vhosts.iter().enumerate() {
            match &vhost.hostname {
                HostMatch::Exact(h) => {
                    index.exact.entry(h.clone()).or_insert(i);
                }
                HostMatch::Wildcard(suffix) => index.wildcards.push((suffix.clone(), i)),
                HostMatch::Any => {
                    index.any.get_or_insert(i);
                }
            }
        }
        // Stable sort keeps the controller's order among equal lengths.
        index.wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        index
    }

    /// `host` must be lowercase and without port.
    pub fn find(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        for (suffix, i) in &self.wildcards {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        self.any
    }
}

/// The parts of a request that route matching looks at.
pub struct RequestParts<'a> {
    /// Lowercase, without port.
    pub host: &'a str,
    /// Normalized.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: &'a HeaderMap,
}

pub fn matches(m: &RequestMatch, req: &RequestParts<'_>) -> bool {
    if !m.path.matches(req.path) {
        return false;
    }
    if let Some(method) = &m.method {
        if method != req.method.as_str() {
            return false;
        }
    }
    for h in &m.headers {
        // Several values of one header are matched as one comma-joined value
        // would be; in practice routes match single-valued headers, so the
        // first value that matches is enough.
        let mut values = req.headers.get_all(&h.name.0).iter();
        if !values.any(|v| v.to_str().map(|v| h.value.matches(v)).unwrap_or(false)) {
            return false;
        }
    }
    for q in &m.query_params {
        // The spec says: with a repeated parameter, the first value counts.
        match first_query_value(req.query, &q.name) {
            Some(value) if q.value.matches(&value) => {}
            _ => return false,
        }
    }
    true
}

fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return Some(percent_decode(v));
        }
    }
    None
}

/// Lossy decoding of `application/x-www-form-urlencoded` style values.
fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One port's table, indexed.
pub struct PortRoutes {
    pub table: Arc<RouteTable>,
    pub port_index: usize,
    pub hosts: HostIndex,
}

impl PortRoutes {
    pub fn new(table: Arc<RouteTable>, port_index: usize) -> PortRoutes {
        let hosts = HostIndex::new(&table.ports[port_index].virtual_hosts);
        PortRoutes { table, port_index, hosts }
    }

    pub fn config(&self) -> &PortConfig {
        &self.table.ports[self.port_index]
    }

    pub fn lookup(&self, req: &RequestParts<'_>) -> Option<&Route> {
        let vhost = &self.config().virtual_hosts[self.hosts.find(req.host)?];
        vhost.routes.iter().find(|r| matches(&r.matcher, req))
    }
}

/// Lowercases and strips the port and a trailing dot from a Host header or
/// URI authority. Returns `None` for an empty host.
pub fn canonical_host(raw: &str) -> Option<String> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw)
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_index_prefers_exact_then_longest_wildcard() {
        let vh = |h: &str| VirtualHost { hostname: HostMatch::parse(Some(h)), routes: vec![] };
        let vhosts = vec![
            VirtualHost { hostname: HostMatch::Any, routes: vec![] },
            vh("*.example.com"),
            vh("*.foo.example.com"),
            vh("a.foo.example.com"),
        ];
        let index = HostIndex::new(&vhosts);
        assert_eq!(index.find("a.foo.example.com"), Some(3));
        assert_eq!(index.find("b.foo.example.com"), Some(2));
        assert_eq!(index.find("b.example.com"), Some(1));
        assert_eq!(index.find("example.com"), Some(0));
        assert_eq!(index.find("other.org"), Some(0));
    }

    #[test]
    fn canonical_host_strips_port_case_and_dot() {
        assert_eq!(canonical_host("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(canonical_host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(canonical_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(canonical_host(":80"), None);
    }

    #[test]
    fn query_values_are_decoded_and_first_wins() {
        assert_eq!(first_query_value(Some("a=1&b=x%20y&a=2"), "a").as_deref(), Some("1"));
        assert_eq!(first_query_value(Some("a=1&b=x%20y"), "b").as_deref(), Some("x y"));
        assert_eq!(first_query_value(Some("flag"), "flag").as_deref(), Some(""));
        assert_eq!(first_query_value(None, "a"), None);
    }
}

//! Route lookup: port -> virtual host -> first matching route.
//!
//! The controller already sorted everything by Gateway API precedence; this
//! module indexes hostnames once per table (an exact-host hash map, wildcard
//! suffixes longest first) so that lookup cost does not grow with the number
//! of hosts, and then scans one host's presorted routes.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use portcullis_model::{
    HostMatch, PathMatch, PortConfig, RequestMatch, Route, RouteTable, VirtualHost,
};

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
        index
            .wildcards
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
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
    /// One per virtual host, same order.
    paths: Vec<PathIndex>,
}

impl PortRoutes {
    pub fn new(table: Arc<RouteTable>, port_index: usize) -> PortRoutes {
        let vhosts = &table.ports[port_index].virtual_hosts;
        let hosts = HostIndex::new(vhosts);
        let paths = vhosts.iter().map(|v| PathIndex::new(&v.routes)).collect();
        PortRoutes {
            table,
            port_index,
            hosts,
            paths,
        }
    }

    pub fn config(&self) -> &PortConfig {
        &self.table.ports[self.port_index]
    }

    pub fn lookup(&self, req: &RequestParts<'_>) -> Option<&Route> {
        let vhost_index = self.hosts.find(req.host)?;
        let routes = &self.config().virtual_hosts[vhost_index].routes;
        self.paths[vhost_index].lookup(routes, req)
    }
}

/// Below this many routes a host's list is simply scanned.
const LINEAR_SCAN_MAX: usize = 16;

/// Candidate routes of one virtual host by path, so that a lookup only
/// evaluates the routes whose path can match instead of all of them.
///
/// The routes are presorted by precedence, so the answer is the matching
/// candidate with the lowest index; candidate lists are ascending, which
/// lets each list stop at the first index above the best match so far.
#[derive(Debug, Default)]
struct PathIndex {
    /// Empty when the host is small enough to scan.
    exact: HashMap<String, Vec<u32>>,
    /// Keyed by the prefix as stored (no trailing slash, except `/`).
    prefix: HashMap<String, Vec<u32>>,
    /// Regex paths (and anything unusual): always evaluated.
    always: Vec<u32>,
    indexed: bool,
}

impl PathIndex {
    fn new(routes: &[Route]) -> PathIndex {
        let mut index = PathIndex::default();
        if routes.len() <= LINEAR_SCAN_MAX || routes.len() > u32::MAX as usize {
            return index;
        }
        index.indexed = true;
        for (i, route) in routes.iter().enumerate() {
            // Bounded by the check above.
            let i = i as u32;
            match &route.matcher.path {
                PathMatch::Exact(p) => index.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(p) if p == "/" || !p.ends_with('/') => {
                    index.prefix.entry(p.clone()).or_default().push(i)
                }
                _ => index.always.push(i),
            }
        }
        index
    }

    fn lookup<'r>(&self, routes: &'r [Route], req: &RequestParts<'_>) -> Option<&'r Route> {
        if !self.indexed {
            return routes.iter().find(|r| matches(&r.matcher, req));
        }
        let mut best = u32::MAX;
        let mut consider = |candidates: &[u32]| {
            for &i in candidates {
                if i >= best {
                    break;
                }
                if matches(&routes[i as usize].matcher, req) {
                    best = i;
                    break;
                }
            }
        };
        if let Some(c) = self.exact.get(req.path) {
            consider(c);
        }
        // Every segment-boundary prefix of the path: "/", "/a", "/a/b", ...
        if let Some(c) = self.prefix.get("/") {
            consider(c);
        }
        for (end, _) in req.path.match_indices('/').skip(1) {
            if let Some(c) = self.prefix.get(&req.path[..end]) {
                consider(c);
            }
        }
        if req.path.len() > 1 && !req.path.ends_with('/') {
            if let Some(c) = self.prefix.get(req.path) {
                consider(c);
            }
        }
        consider(&self.always);
        routes.get(best as usize)
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
        let vh = |h: &str| VirtualHost {
            hostname: HostMatch::parse(Some(h)),
            routes: vec![],
        };
        let vhosts = vec![
            VirtualHost {
                hostname: HostMatch::Any,
                routes: vec![],
            },
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
        assert_eq!(
            canonical_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            canonical_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(canonical_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(canonical_host(":80"), None);
    }

    #[test]
    fn query_values_are_decoded_and_first_wins() {
        assert_eq!(
            first_query_value(Some("a=1&b=x%20y&a=2"), "a").as_deref(),
            Some("1")
        );
        assert_eq!(
            first_query_value(Some("a=1&b=x%20y"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(first_query_value(Some("flag"), "flag").as_deref(), Some(""));
        assert_eq!(first_query_value(None, "a"), None);
    }
    fn route(path: PathMatch, header: Option<&str>) -> Route {
        use portcullis_model::*;
        let headers = header
            .map(|v| {
                vec![HeaderMatch {
                    name: HeaderNameSer(http::HeaderName::from_static("x-v")),
                    value: StringMatch::Exact(v.to_string()),
                }]
            })
            .unwrap_or_default();
        Route {
            matcher: RequestMatch {
                path,
                method: None,
                headers,
                query_params: vec![],
            },
            rule: Arc::new(Rule {
                id: RuleId {
                    kind: RouteKind::Http,
                    namespace: "ns".into(),
                    name: "r".into(),
                    rule_index: 0,
                    rule_name: None,
                },
                filters: vec![],
                backends: vec![],
                timeouts: Timeouts::default(),
                retry: None,
                policies: Default::default(),
            }),
        }
    }

    /// The index must give exactly the answer of a linear scan (the first
    /// matching route), whatever the order and mix of routes.
    #[test]
    fn path_index_agrees_with_linear_scan() {
        let mut routes = Vec::new();
        let segments = ["a", "b", "ab", "c"];
        for (n, s1) in segments.iter().enumerate() {
            routes.push(route(PathMatch::Prefix(format!("/{s1}")), None));
            routes.push(route(PathMatch::Exact(format!("/{s1}/x")), None));
            routes.push(route(PathMatch::Prefix(format!("/{s1}/b")), Some("1")));
            routes.push(route(
                PathMatch::Regex(portcullis_model::Pattern::new(&format!("/{s1}/[0-9]+")).unwrap()),
                None,
            ));
            if n % 2 == 0 {
                routes.push(route(PathMatch::Prefix("/".into()), Some("2")));
            }
            for s2 in segments {
                routes.push(route(PathMatch::Prefix(format!("/{s1}/{s2}")), None));
                routes.push(route(PathMatch::Exact(format!("/{s1}/{s2}/")), None));
            }
        }
        routes.push(route(PathMatch::Prefix("/".into()), None));
        assert!(routes.len() > LINEAR_SCAN_MAX);
        let index = PathIndex::new(&routes);
        assert!(index.indexed);
        let method = http::Method::GET;
        let mut paths = vec!["/".to_string(), "/zz".to_string()];
        for s1 in segments {
            for s2 in segments.iter().chain(&["x", "12", "bb"]) {
                paths.push(format!("/{s1}/{s2}"));
                paths.push(format!("/{s1}/{s2}/"));
                paths.push(format!("/{s1}/{s2}/deeper"));
            }
            paths.push(format!("/{s1}"));
            paths.push(format!("/{s1}x"));
        }
        for header in [None, Some("1"), Some("2")] {
            let mut headers = HeaderMap::new();
            if let Some(v) = header {
                headers.insert("x-v", http::HeaderValue::from_static(v));
            }
            for path in &paths {
                let req = RequestParts {
                    host: "h",
                    path,
                    query: None,
                    method: &method,
                    headers: &headers,
                };
                let linear = routes.iter().position(|r| matches(&r.matcher, &req));
                let indexed = index
                    .lookup(&routes, &req)
                    .map(|r| routes.iter().position(|x| std::ptr::eq(x, r)).unwrap());
                assert_eq!(indexed, linear, "path {path} header {header:?}");
            }
        }
    }
}

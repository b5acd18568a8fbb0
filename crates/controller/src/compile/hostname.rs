//! Hostname rules of the Gateway API: listener/route intersection,
//! specificity, and the order of virtual hosts.

use std::cmp::Ordering;

use portcullis_model::HostMatch;

/// The hostnames a route is served under on a listener: the intersection of
/// the route's `hostnames` with the listener's `hostname`, each with the
/// route hostname it came from (`Any` when the route names none). Empty
/// means the route does not attach to this listener
/// (`NoMatchingListenerHostname`).
pub(crate) fn effective_hostnames(
    listener: &HostMatch,
    route_hostnames: &[HostMatch],
) -> Vec<Effective> {
    if route_hostnames.is_empty() {
        return vec![Effective {
            host: listener.clone(),
            original: HostMatch::Any,
        }];
    }
    let mut out: Vec<Effective> = Vec::new();
    for route in route_hostnames {
        let Some(host) = intersect(listener, route) else {
            continue;
        };
        match out.iter_mut().find(|e| e.host == host) {
            // Two route hostnames narrowing to the same one: the more
            // specific original counts for precedence.
            Some(e) => {
                if specificity_order(route, &e.original).is_lt() {
                    e.original = route.clone();
                }
            }
            None => out.push(Effective {
                host,
                original: route.clone(),
            }),
        }
    }
    out
}

/// One hostname a route is served under on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    /// The intersection with the listener hostname.
    pub host: HostMatch,
    /// The route hostname it came from: among routes with the same
    /// effective hostname, the more specific original wins.
    pub original: HostMatch,
}

/// The more specific of two hostname patterns when one contains the other.
pub(crate) fn intersect(listener: &HostMatch, route: &HostMatch) -> Option<HostMatch> {
    match (listener, route) {
        (HostMatch::Any, r) => Some(r.clone()),
        (l, HostMatch::Any) => Some(l.clone()),
        (HostMatch::Exact(l), HostMatch::Exact(r)) => (l == r).then(|| listener.clone()),
        (HostMatch::Exact(l), HostMatch::Wildcard(_)) => route.matches(l).then(|| listener.clone()),
        (HostMatch::Wildcard(_), HostMatch::Exact(r)) => listener.matches(r).then(|| route.clone()),
        (HostMatch::Wildcard(l), HostMatch::Wildcard(r)) => {
            if r.ends_with(l.as_str()) {
                Some(route.clone())
            } else if l.ends_with(r.as_str()) {
                Some(listener.clone())
            } else {
                None
            }
        }
    }
}

/// Does every host matched by `inner` also match `outer`?
pub(crate) fn covers(outer: &HostMatch, inner: &HostMatch) -> bool {
    match (outer, inner) {
        (HostMatch::Any, _) => true,
        (_, HostMatch::Any) => false,
        (HostMatch::Exact(o), HostMatch::Exact(i)) => o == i,
        (HostMatch::Exact(_), HostMatch::Wildcard(_)) => false,
        (HostMatch::Wildcard(_), HostMatch::Exact(i)) => outer.matches(i),
        (HostMatch::Wildcard(o), HostMatch::Wildcard(i)) => i.ends_with(o.as_str()),
    }
}

/// Virtual host order: exact hostnames first (alphabetical, for
/// determinism), then wildcards by descending suffix length, then the
/// catch-all. `Less` means "more specific".
pub(crate) fn specificity_order(a: &HostMatch, b: &HostMatch) -> Ordering {
    fn rank(h: &HostMatch) -> u8 {
        match h {
            HostMatch::Exact(_) => 0,
            HostMatch::Wildcard(_) => 1,
            HostMatch::Any => 2,
        }
    }
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (HostMatch::Exact(x), HostMatch::Exact(y)) => x.cmp(y),
        (HostMatch::Wildcard(x), HostMatch::Wildcard(y)) => {
            y.len().cmp(&x.len()).then_with(|| x.cmp(y))
        }
        _ => Ordering::Equal,
    })
}

/// The byte offsets where the suffixes of `name` start, longest suffix
/// first: every char boundary, then the end (the empty suffix). Whenever a
/// string ends with another, the other starts at one of these.
pub(crate) fn suffix_starts(name: &str) -> impl Iterator<Item = usize> + '_ {
    name.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(name.len()))
}

/// Parses a hostname from a Gateway API object: lowercase, `*.` wildcard.
pub(crate) fn parse(hostname: Option<&str>) -> HostMatch {
    HostMatch::parse(hostname.map(str::trim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostMatch {
        HostMatch::parse(Some(s))
    }

    fn hosts(listener: &str, route: &[&str]) -> Vec<(String, String)> {
        let route: Vec<HostMatch> = route.iter().map(|r| h(r)).collect();
        effective_hostnames(&h(listener), &route)
            .into_iter()
            .map(|e| (e.host.to_string(), e.original.to_string()))
            .collect()
    }

    fn pair(host: &str, original: &str) -> (String, String) {
        (host.to_string(), original.to_string())
    }

    #[test]
    fn wildcard_listener_narrows_to_route_hostname() {
        assert_eq!(
            hosts("*.example.com", &["foo.example.com"]),
            vec![pair("foo.example.com", "foo.example.com")]
        );
        assert_eq!(
            hosts("*.example.com", &["*.foo.example.com"]),
            vec![pair("*.foo.example.com", "*.foo.example.com")]
        );
        assert_eq!(
            hosts("foo.example.com", &["*.example.com"]),
            vec![pair("foo.example.com", "*.example.com")]
        );
        assert_eq!(
            hosts("foo.example.com", &["*.example.com", "foo.example.com"]),
            vec![pair("foo.example.com", "foo.example.com")],
            "the most specific original is kept"
        );
        assert_eq!(
            hosts("*.example.com", &[]),
            vec![pair("*.example.com", "*")]
        );
        assert!(hosts("foo.example.com", &["bar.example.com"]).is_empty());
        assert!(hosts("*.example.com", &["example.com"]).is_empty());
    }

    #[test]
    fn order_is_exact_then_longer_wildcards_then_any() {
        let mut v = vec![HostMatch::Any, h("*.com"), h("a.com"), h("*.a.com")];
        v.sort_by(specificity_order);
        assert_eq!(
            v,
            vec![h("a.com"), h("*.a.com"), h("*.com"), HostMatch::Any]
        );
    }
}

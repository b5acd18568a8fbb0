//! Gateway API route precedence, as one sort key.
//!
//! Within a virtual host, routes are sorted so that the first match wins:
//!
//! 1. path kind: `Exact`, then `RegularExpression`, then `PathPrefix`
//!    (the spec leaves regex precedence to implementations; Portcullis puts
//!    a regex, which is usually written to be specific, between exact and
//!    prefix matches);
//! 2. longer prefixes first;
//! 3. a method match before none;
//! 4. more header matches first;
//! 5. more query parameter matches first;
//! 6. the oldest route (creationTimestamp; routes without one, as in a YAML
//!    directory, count as newest);
//! 7. namespace/name alphabetically (then HTTPRoute before GRPCRoute, to be
//!    total);
//! 8. rule order, then match order within the rule.

use std::cmp::Reverse;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_model::{PathMatch, RequestMatch, RouteKind};

use super::route::RouteSource;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OrderKey<'a> {
    path_kind: u8,
    prefix_len: Reverse<usize>,
    has_method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    no_timestamp: bool,
    created: Option<&'a Time>,
    namespace: &'a str,
    name: &'a str,
    kind: u8,
    rule_index: usize,
    match_index: usize,
}

pub(crate) fn order_key<'a>(
    route: &RouteSource<'a>,
    rule_index: usize,
    match_index: usize,
    m: &RequestMatch,
) -> OrderKey<'a> {
    let (path_kind, prefix_len) = match &m.path {
        PathMatch::Exact(_) => (0, 0),
        PathMatch::Regex(_) => (1, 0),
        PathMatch::Prefix(p) => (2, p.len()),
    };
    OrderKey {
        path_kind,
        prefix_len: Reverse(prefix_len),
        has_method: Reverse(m.method.is_some()),
        headers: Reverse(m.headers.len()),
        query_params: Reverse(m.query_params.len()),
        no_timestamp: route.created.is_none(),
        created: route.created,
        namespace: &route.key.namespace,
        name: &route.key.name,
        kind: match route.kind {
            RouteKind::Http => 0,
            RouteKind::Grpc => 1,
            RouteKind::Tls => 2,
        },
        rule_index,
        match_index,
    }
}

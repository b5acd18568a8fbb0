//! HTTPRoute / GRPCRoute cross-serving: on one listener, an HTTPRoute and a
//! GRPCRoute whose hostnames intersect cannot both be accepted. The older
//! route (creationTimestamp, then namespace/name) keeps the listener; the
//! other is refused there with `Accepted=False` (reason `HostnameConflict`,
//! implementation-specific: the spec names none).

use std::collections::HashMap;

use portcullis_model::{HostMatch, RouteKind};

use super::hostname;
use super::route::{kind_name, Attachment, CompiledRules, RouteSource};
use crate::status::reasons;

/// (gateway index, listener index).
type ListenerIndex = (usize, usize);

/// A route kept on a listener: (position in the oldest-first order, route
/// index). The smallest is the route kept first.
type Kept = (usize, usize);

pub(crate) fn resolve_cross_kind(
    sources: &[RouteSource<'_>],
    compiled: &[CompiledRules],
    attachments: &mut [Vec<Attachment>],
) {
    // Only routes that will be served take part; oldest first.
    // TLSRoutes never share a listener with the other two kinds.
    let mut order: Vec<usize> = (0..sources.len())
        .filter(|&i| sources.get(i).is_some_and(|s| s.kind != RouteKind::Tls))
        .filter(|&i| compiled.get(i).is_some_and(|c| c.invalid.is_empty()))
        .collect();
    order.sort_by(|&a, &b| age(&sources[a]).cmp(&age(&sources[b])));

    // Per listener and route kind: the routes kept so far, by hostname.
    let mut kept: HashMap<ListenerIndex, [KindIndex; 2]> = HashMap::new();
    for (position, i) in order.into_iter().enumerate() {
        let Some(source) = sources.get(i) else {
            continue;
        };
        let Some(route_attachments) = attachments.get_mut(i) else {
            continue;
        };
        for attachment in route_attachments.iter_mut() {
            let Attachment::Attached(listeners) = attachment else {
                continue;
            };
            let mut winners = Vec::new();
            listeners.retain(|(gi, li, effective)| {
                let [http, grpc] = kept.entry((*gi, *li)).or_default();
                let (mine, theirs) = match source.kind {
                    RouteKind::Http => (http, grpc),
                    RouteKind::Grpc | RouteKind::Tls => (grpc, http),
                };
                // The rival kept first: the one a scan of the kept routes
                // in order would find.
                let rival = effective.iter().filter_map(|e| theirs.rival(&e.host)).min();
                match rival {
                    Some((_, winner)) => {
                        winners.push(winner);
                        false
                    }
                    None => {
                        for e in effective {
                            mine.insert(&e.host, (position, i));
                        }
                        true
                    }
                }
            });
            if listeners.is_empty() {
                if let Some(winner) = winners.first().and_then(|w| sources.get(*w)) {
                    *attachment = Attachment::Refused(
                        reasons::HOSTNAME_CONFLICT,
                        format!(
                            "{} {} already serves these hostnames on this listener; an HTTPRoute and a GRPCRoute cannot share a hostname (the older route wins)",
                            kind_name(winner.kind),
                            winner.key
                        ),
                    );
                }
            }
        }
    }
}

fn age<'a>(route: &RouteSource<'a>) -> impl Ord + 'a {
    (
        route.created.is_none(),
        route.created,
        route.key,
        kind_name(route.kind),
    )
}

/// The routes of one kind kept on one listener, by effective hostname, so
/// that finding a rival whose hostnames intersect a new route's (see
/// [`hostname::intersect`]) is a few lookups, not a scan of every route
/// kept so far. Each map holds the first route kept under a key.
#[derive(Default)]
struct KindIndex {
    /// The first route kept with any hostname.
    first: Option<Kept>,
    /// The first route kept with hostname `*`.
    any: Option<Kept>,
    exact: HashMap<String, Kept>,
    /// By wildcard suffix (`.example.com` for `*.example.com`).
    wildcard: HashMap<String, Kept>,
    /// Every proper suffix of the exact hostnames: a wildcard intersects
    /// an exact hostname when its suffix is one. Built when first needed
    /// (a wildcard route of the other kind), then kept up to date.
    exact_suffixes: Option<HashMap<String, Kept>>,
    /// Every suffix of the wildcard suffixes, themselves included: a
    /// wildcard intersects a longer one that ends with it.
    wildcard_suffixes: Option<HashMap<String, Kept>>,
}

impl KindIndex {
    fn insert(&mut self, host: &HostMatch, kept: Kept) {
        self.first.get_or_insert(kept);
        match host {
            HostMatch::Any => {
                self.any.get_or_insert(kept);
            }
            HostMatch::Exact(name) => {
                if !self.exact.contains_key(name) {
                    self.exact.insert(name.clone(), kept);
                    if let Some(suffixes) = &mut self.exact_suffixes {
                        add_suffixes(suffixes, name, true, kept);
                    }
                }
            }
            HostMatch::Wildcard(suffix) => {
                if !self.wildcard.contains_key(suffix) {
                    self.wildcard.insert(suffix.clone(), kept);
                    if let Some(suffixes) = &mut self.wildcard_suffixes {
                        add_suffixes(suffixes, suffix, false, kept);
                    }
                }
            }
        }
    }

    /// The first kept route with a hostname intersecting `host`.
    fn rival(&mut self, host: &HostMatch) -> Option<Kept> {
        // Nothing kept: the common case of a listener with one route kind.
        let first = self.first?;
        let mut best = self.any;
        let mut consider = |k: Option<&Kept>| {
            if let Some(&k) = k {
                best = Some(best.map_or(k, |b| b.min(k)));
            }
        };
        match host {
            HostMatch::Any => return Some(first),
            HostMatch::Exact(name) => {
                consider(self.exact.get(name));
                // Wildcards whose suffix is a proper suffix of the name.
                for start in hostname::suffix_starts(name).filter(|&k| k > 0) {
                    consider(name.get(start..).and_then(|s| self.wildcard.get(s)));
                }
            }
            HostMatch::Wildcard(suffix) => {
                // Wildcards that are suffixes of this one (or equal).
                for start in hostname::suffix_starts(suffix) {
                    consider(suffix.get(start..).and_then(|s| self.wildcard.get(s)));
                }
                // Wildcards ending with this one.
                let wildcard = &self.wildcard;
                let longer = self
                    .wildcard_suffixes
                    .get_or_insert_with(|| suffix_map(wildcard, false));
                consider(longer.get(suffix));
                // Exact hostnames ending with this suffix (and longer).
                let exact = &self.exact;
                let names = self
                    .exact_suffixes
                    .get_or_insert_with(|| suffix_map(exact, true));
                consider(names.get(suffix));
            }
        }
        best
    }
}

/// Every suffix of every key (`proper`: not the key itself), mapped to the
/// first route kept under a key ending with it.
fn suffix_map(keys: &HashMap<String, Kept>, proper: bool) -> HashMap<String, Kept> {
    let mut out = HashMap::new();
    for (name, &kept) in keys {
        add_suffixes(&mut out, name, proper, kept);
    }
    out
}

fn add_suffixes(map: &mut HashMap<String, Kept>, name: &str, proper: bool, kept: Kept) {
    for start in hostname::suffix_starts(name).filter(|&k| k > 0 || !proper) {
        if let Some(suffix) = name.get(start..) {
            map.entry(suffix.to_string())
                .and_modify(|k| *k = (*k).min(kept))
                .or_insert(kept);
        }
    }
}

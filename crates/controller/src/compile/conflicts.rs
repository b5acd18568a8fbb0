//! HTTPRoute / GRPCRoute cross-serving: on one listener, an HTTPRoute and a
//! GRPCRoute whose hostnames intersect cannot both be accepted. The older
//! route (creationTimestamp, then namespace/name) keeps the listener; the
//! other is refused there with `Accepted=False` (reason `HostnameConflict`,
//! implementation-specific: the spec names none).

use std::collections::BTreeMap;

use portcullis_model::{HostMatch, RouteKind};

use super::hostname;
use super::route::{kind_name, Attachment, CompiledRules, RouteSource};
use crate::status::reasons;

/// (gateway index, listener index).
type ListenerIndex = (usize, usize);

/// A route kept on a listener: its kind, effective hostnames and index.
type Kept = (RouteKind, Vec<HostMatch>, usize);

pub(crate) fn resolve_cross_kind(
    sources: &[RouteSource],
    compiled: &[CompiledRules],
    attachments: &mut [Vec<Attachment>],
) {
    // Only routes that will be served take part; oldest first.
    let mut order: Vec<usize> = (0..sources.len())
        .filter(|&i| compiled.get(i).is_some_and(|c| c.invalid.is_empty()))
        .collect();
    order.sort_by(|&a, &b| age(&sources[a]).cmp(&age(&sources[b])));

    // Per listener: the routes kept so far, with their effective hostnames.
    let mut kept: BTreeMap<ListenerIndex, Vec<Kept>> = BTreeMap::new();
    for i in order {
        let source = &sources[i];
        let Some(route_attachments) = attachments.get_mut(i) else {
            continue;
        };
        for attachment in route_attachments.iter_mut() {
            let Attachment::Attached(listeners) = attachment else {
                continue;
            };
            let mut winners = Vec::new();
            listeners.retain(|(gi, li, effective)| {
                let hosts: Vec<HostMatch> = effective.iter().map(|e| e.host.clone()).collect();
                let on_listener = kept.entry((*gi, *li)).or_default();
                let rival = on_listener.iter().find(|(kind, other_hosts, _)| {
                    *kind != source.kind && overlap(other_hosts, &hosts)
                });
                match rival {
                    Some((_, _, winner)) => {
                        winners.push(*winner);
                        false
                    }
                    None => {
                        on_listener.push((source.kind, hosts, i));
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

fn age(route: &RouteSource) -> impl Ord + '_ {
    (
        route.created.is_none(),
        route.created.clone(),
        &route.key,
        kind_name(route.kind),
    )
}

fn overlap(a: &[HostMatch], b: &[HostMatch]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| hostname::intersect(x, y).is_some()))
}

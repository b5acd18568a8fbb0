//! `compile()`: Snapshot -> routing table + statuses.
//!
//! Pure, total and deterministic: the same snapshot always gives the same
//! table and statuses; an invalid object is reported in its status and left
//! out, everything valid is still served.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_model::{
    HostMatch, PortConfig, Protocol, Route, RouteTable, ServerCertificate, TlsConfig, VirtualHost,
};
use serde_json::{json, Value};

use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{conditions_json, reasons, Condition, StatusKind, StatusUpdate};

mod backends;
mod conflicts;
mod filters;
mod gateway;
mod hostname;
mod matches;
mod precedence;
mod refs;
mod route;
mod tls;

pub use tls::validate_pem;

use gateway::GatewayState;
use route::{Attachment, CompiledRules, RouteSource};

/// What to compile and how.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// Proxy mode: compile only this Gateway.
    pub gateway: Option<ObjectKey>,
    /// Put in `RouteTable::generation`.
    pub generation: u64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller_name: portcullis_api::CONTROLLER_NAME.to_string(),
            gateway: None,
            generation: 0,
        }
    }
}

/// The output of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub table: RouteTable,
    /// GatewayClasses, Gateways, then routes, each in namespace/name order.
    pub statuses: Vec<StatusUpdate>,
}

impl Compiled {
    /// The status of one object, if compile produced one.
    pub fn status(
        &self,
        kind: StatusKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&StatusUpdate> {
        self.statuses
            .iter()
            .find(|s| s.kind == kind && s.namespace.as_deref() == namespace && s.name == name)
    }
}

/// A route placed on a listener with its effective hostnames.
struct Placement {
    gateway: usize,
    listener: usize,
    route: usize,
    hostnames: Vec<hostname::Effective>,
}

/// Compiles a snapshot. Never panics, never fails as a whole.
pub fn compile(snapshot: &Snapshot, options: &CompileOptions) -> Compiled {
    let (our_classes, mut statuses) = gateway::gateway_classes(snapshot, options);
    let mut gateways = gateway::gateways(snapshot, options, &our_classes);

    let sources: Vec<RouteSource> = snapshot
        .http_routes
        .iter()
        .map(|(key, r)| route::from_http(key, r))
        .chain(
            snapshot
                .grpc_routes
                .iter()
                .map(|(key, r)| route::from_grpc(key, r)),
        )
        .collect();
    let compiled: Vec<CompiledRules> = sources
        .iter()
        .map(|s| route::compile_rules(snapshot, s))
        .collect();

    let mut attachments: Vec<Vec<Attachment>> = sources
        .iter()
        .map(|s| {
            s.parent_refs
                .iter()
                .map(|p| route::attach(snapshot, &gateways, s, p))
                .collect()
        })
        .collect();
    conflicts::resolve_cross_kind(&sources, &compiled, &mut attachments);

    let mut placements = Vec::new();
    let mut route_statuses = Vec::new();
    for (index, ((source, rules), attachments)) in
        sources.iter().zip(&compiled).zip(attachments).enumerate()
    {
        let route = RouteOutcome {
            index,
            source,
            rules,
            attachments,
        };
        let status = route_status(
            &options.controller_name,
            &mut gateways,
            route,
            &mut placements,
        );
        if let Some(status) = status {
            route_statuses.push(status);
        }
    }

    let table = build_table(
        &gateways,
        &sources,
        &compiled,
        &placements,
        options.generation,
    );
    statuses.extend(gateways.iter().map(gateway::gateway_status));
    statuses.extend(route_statuses);
    Compiled { table, statuses }
}

/// Attaches one route to its parents (recording placements and attached
/// route counts) and renders its status.
/// One route with what compile decided about it.
struct RouteOutcome<'a> {
    index: usize,
    source: &'a RouteSource,
    rules: &'a CompiledRules,
    /// One per parentRef.
    attachments: Vec<Attachment>,
}

fn route_status(
    controller_name: &str,
    gateways: &mut [GatewayState<'_>],
    route: RouteOutcome<'_>,
    placements: &mut Vec<Placement>,
) -> Option<StatusUpdate> {
    let RouteOutcome {
        index,
        source,
        rules,
        attachments,
    } = route;
    let mut problems = Vec::new();
    let mut parents = Vec::new();
    let resolved = match rules.ref_problems.first() {
        None => Condition::new(
            reasons::RESOLVED_REFS,
            true,
            reasons::RESOLVED_REFS,
            "All references resolved",
        ),
        Some(first) => {
            let messages: Vec<_> = rules
                .ref_problems
                .iter()
                .map(|p| p.message.as_str())
                .collect();
            Condition::new(
                reasons::RESOLVED_REFS,
                false,
                first.reason,
                messages.join("; "),
            )
        }
    };
    for (pi, (parent, attachment)) in source.parent_refs.iter().zip(attachments).enumerate() {
        let accepted = match attachment {
            Attachment::NotOurs(message) => {
                problems.push(format!("parentRefs[{pi}]: {message}"));
                continue;
            }
            Attachment::Refused(reason, message) => {
                problems.push(format!("parentRefs[{pi}]: {reason}: {message}"));
                Condition::new(reasons::ACCEPTED, false, reason, message)
            }
            Attachment::Attached(_) if !rules.invalid.is_empty() => Condition::new(
                reasons::ACCEPTED,
                false,
                reasons::UNSUPPORTED_VALUE,
                rules.invalid.join("; "),
            ),
            Attachment::Attached(listeners) => {
                for (gi, li, hostnames) in listeners {
                    if let Some(l) = gateways.get_mut(gi).and_then(|g| g.listeners.get_mut(li)) {
                        l.attached_routes
                            .insert((route::kind_name(source.kind), source.key.clone()));
                    }
                    placements.push(Placement {
                        gateway: gi,
                        listener: li,
                        route: index,
                        hostnames,
                    });
                }
                Condition::new(
                    reasons::ACCEPTED,
                    true,
                    reasons::ACCEPTED,
                    "Route is attached",
                )
            }
        };
        let generation = source.generation;
        parents.push(json!({
            "parentRef": parent.raw,
            "controllerName": controller_name,
            "conditions": conditions_json(&[accepted, resolved.clone()], generation),
        }));
    }
    if source.parent_refs.is_empty() {
        problems
            .push("no parentRefs: the route attaches to no Gateway and serves nothing".to_string());
    }
    if !rules.invalid.is_empty() {
        problems.extend(
            rules
                .invalid
                .iter()
                .map(|m| format!("{}: {m}", reasons::UNSUPPORTED_VALUE)),
        );
    }
    problems.extend(
        rules
            .ref_problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message)),
    );
    if parents.is_empty() && problems.is_empty() {
        return None;
    }
    let kind = match source.kind {
        portcullis_model::RouteKind::Http => StatusKind::HttpRoute,
        portcullis_model::RouteKind::Grpc => StatusKind::GrpcRoute,
    };
    Some(StatusUpdate {
        kind,
        namespace: Some(source.key.namespace.clone()),
        name: source.key.name.clone(),
        status: json!({ "parents": Value::Array(parents) }),
        problems,
    })
}

/// Routes and certificates of one port while it is being built.
struct PortBuild {
    protocol: Protocol,
    certificates: Vec<ServerCertificate>,
    /// Hostnames of the listeners served on this port.
    listener_hosts: Vec<HostMatch>,
    /// Routes placed on this port: each under the hostname of the listener
    /// it attached through and its effective hostname there.
    entries: Vec<Entry>,
    placed: BTreeSet<(usize, String, String)>,
}

struct Entry {
    listener_host: HostMatch,
    host: HostMatch,
    /// The route hostname `host` came from.
    original: HostMatch,
    key: precedence::OrderKey,
    route: Route,
}

fn host_key(h: &HostMatch) -> String {
    h.to_string()
}

/// Lays the routes out as the data plane reads them: per port, virtual
/// hosts from most to least specific, the first match wins, no fallback.
///
/// A request belongs to the most specific listener whose hostname matches
/// it (listener isolation). Within that listener every route whose
/// effective hostname matches the request is a candidate, the most specific
/// hostname first, then the route precedence. So the virtual host for a
/// hostname V holds, from the listener owning V, the routes whose hostname
/// covers V: its own, then those of less specific hostnames.
fn build_table(
    gateways: &[GatewayState<'_>],
    sources: &[RouteSource],
    compiled: &[CompiledRules],
    placements: &[Placement],
    generation: u64,
) -> RouteTable {
    let mut ports: BTreeMap<u16, PortBuild> = BTreeMap::new();
    let served = |g: &GatewayState<'_>, li: usize| {
        g.rejected.is_none()
            && g.listeners
                .get(li)
                .is_some_and(|l| l.is_programmed() && !l.shadowed)
    };
    for g in gateways {
        for (li, l) in g.listeners.iter().enumerate() {
            let (true, Some(protocol)) = (served(g, li), l.protocol) else {
                continue;
            };
            let port = ports.entry(l.port).or_insert_with(|| PortBuild {
                protocol,
                certificates: Vec::new(),
                listener_hosts: Vec::new(),
                entries: Vec::new(),
                placed: BTreeSet::new(),
            });
            port.certificates.extend(l.certificates.iter().cloned());
            if !port.listener_hosts.contains(&l.hostname) {
                port.listener_hosts.push(l.hostname.clone());
            }
        }
    }
    for p in placements {
        let Some(g) = gateways.get(p.gateway) else {
            continue;
        };
        if !served(g, p.listener) {
            continue;
        }
        let Some(listener) = g.listeners.get(p.listener) else {
            continue;
        };
        let Some(port) = ports.get_mut(&listener.port) else {
            continue;
        };
        let (Some(source), Some(rules)) = (sources.get(p.route), compiled.get(p.route)) else {
            continue;
        };
        if !rules.invalid.is_empty() {
            continue;
        }
        for effective in &p.hostnames {
            let host = &effective.host;
            // Listener isolation: a more specific listener that covers this
            // hostname owns all its requests.
            let isolated = port.listener_hosts.iter().any(|other| {
                *other != listener.hostname
                    && hostname::specificity_order(other, &listener.hostname).is_lt()
                    && hostname::covers(other, host)
            });
            let placement = (p.route, host_key(&listener.hostname), host_key(host));
            if isolated || !port.placed.insert(placement) {
                continue;
            }
            for (ri, rule) in rules.rules.iter().enumerate() {
                for (mi, m) in rule.matches.iter().enumerate() {
                    port.entries.push(Entry {
                        listener_host: listener.hostname.clone(),
                        host: host.clone(),
                        original: effective.original.clone(),
                        key: precedence::order_key(source, ri, mi, m),
                        route: Route {
                            matcher: m.clone(),
                            rule: rule.rule.clone(),
                        },
                    });
                }
            }
        }
    }
    let ports = ports
        .into_iter()
        .map(|(number, build)| build_port(number, build))
        .collect();
    RouteTable { generation, ports }
}

fn build_port(number: u16, build: PortBuild) -> PortConfig {
    // Every listener gets a virtual host even without routes, so requests
    // for its hostname never reach a less specific listener's routes.
    let mut hosts: Vec<HostMatch> = build.listener_hosts.clone();
    for e in &build.entries {
        if !hosts.contains(&e.host) {
            hosts.push(e.host.clone());
        }
    }
    hosts.sort_by(hostname::specificity_order);
    let virtual_hosts = hosts
        .into_iter()
        .map(|vhost| {
            // The listener owning this hostname: the most specific covering it.
            let owner = build
                .listener_hosts
                .iter()
                .filter(|l| hostname::covers(l, &vhost))
                .min_by(|a, b| hostname::specificity_order(a, b));
            let mut routes: Vec<&Entry> = build
                .entries
                .iter()
                .filter(|e| Some(&e.listener_host) == owner && hostname::covers(&e.host, &vhost))
                .collect();
            // Hostname precedence first (effective, then the route's own
            // hostname it came from), then route precedence.
            routes.sort_by(|a, b| {
                hostname::specificity_order(&a.host, &b.host)
                    .then_with(|| hostname::specificity_order(&a.original, &b.original))
                    .then_with(|| a.key.cmp(&b.key))
            });
            VirtualHost {
                hostname: vhost,
                routes: routes.into_iter().map(|e| e.route.clone()).collect(),
            }
        })
        .collect();
    let mut certificates = build.certificates;
    certificates.sort_by(|a, b| hostname::specificity_order(&a.hostname, &b.hostname));
    let tls = (build.protocol == Protocol::Https).then_some(TlsConfig { certificates });
    PortConfig {
        port: number,
        protocol: build.protocol,
        tls,
        virtual_hosts,
    }
}

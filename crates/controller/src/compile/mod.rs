//! `compile()`: Snapshot -> routing table + statuses.
//!
//! Pure, total and deterministic: the same snapshot always gives the same
//! table and statuses; an invalid object is reported in its status and left
//! out, everything valid is still served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use portcullis_model::{
    HostMatch, PortConfig, Protocol, RequestMatch, Route, RouteTable, Rule, ServerCertificate,
    TlsConfig, VirtualHost,
};
use serde_json::{Map, Value};

use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{conditions_json, reasons, Condition, StatusKind, StatusUpdate};

mod auth;
mod backend_policy;
mod backend_tls;
mod backends;
mod ca_bundle;
mod ca_bundle_frontend;
mod conflicts;
mod filters;
mod gateway;
mod hostname;
mod index;
mod matches;
pub mod parameters;
mod policy;
mod precedence;
mod ratelimit;
mod refs;
mod route;
mod route_filter;
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
    let client_certificate = backend_tls::gateway_client_certificate(snapshot, &mut gateways);
    let mut backend_tls = backend_tls::compile_policies(snapshot, client_certificate.as_ref());

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
    let mut index = index::Index::new(snapshot);
    index.backend_settings = backend_policy::service_settings(&index);
    index.backend_tls = std::mem::take(&mut backend_tls.by_port);
    let compiled: Vec<CompiledRules> = sources
        .iter()
        .map(|s| route::compile_rules(&index, s))
        .collect();

    let mut attachments: Vec<Vec<Attachment>> = {
        let lookup = route::Gateways::new(&gateways);
        sources
            .iter()
            .map(|s| {
                s.parent_refs
                    .iter()
                    .map(|p| route::attach(snapshot, &lookup, s, p))
                    .collect()
            })
            .collect()
    };
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

    let policies = attach_policies(
        &index,
        &gateways,
        &sources,
        &compiled,
        &placements,
        &options.controller_name,
    );
    let table = build_table(
        &gateways,
        &sources,
        &compiled,
        &placements,
        &policies.rules,
        options.generation,
    );
    statuses.extend(gateways.iter().map(gateway::gateway_status));
    statuses.extend(route_statuses);
    statuses.extend(policies.statuses);
    if !snapshot.backend_tls_policies.is_empty() {
        let services = services_of_gateways(&gateways, &compiled, &placements);
        statuses.extend(backend_tls::statuses(
            &backend_tls,
            &services,
            &options.controller_name,
        ));
    }
    Compiled { table, statuses }
}

/// The Services each Gateway's placed routes send traffic to (backends and
/// mirrors): the ancestors of a BackendTLSPolicy.
fn services_of_gateways(
    gateways: &[GatewayState<'_>],
    compiled: &[CompiledRules],
    placements: &[Placement],
) -> BTreeMap<ObjectKey, std::collections::BTreeSet<ObjectKey>> {
    let mut out: BTreeMap<ObjectKey, std::collections::BTreeSet<ObjectKey>> = BTreeMap::new();
    for p in placements {
        let (Some(g), Some(rules)) = (gateways.get(p.gateway), compiled.get(p.route)) else {
            continue;
        };
        let services = out.entry(g.key.clone()).or_default();
        for rule in &rules.rules {
            let rule = &rule.rule;
            let filters = rule
                .filters
                .iter()
                .chain(rule.backends.iter().flat_map(|b| b.filters.iter()));
            let mirrors = filters.filter_map(|f| match f {
                portcullis_model::Filter::RequestMirror(m) => Some(&m.backend),
                _ => None,
            });
            let backends = rule.backends.iter().filter_map(|b| match &b.target {
                portcullis_model::BackendTarget::Service(b) => Some(b),
                portcullis_model::BackendTarget::Invalid { .. } => None,
            });
            for b in backends.chain(mirrors) {
                if let Some(service) = backend_tls::service_of(&b.name) {
                    services.insert(service);
                }
            }
        }
    }
    out
}

/// Our policies (GEP-713) applied to every placed route rule.
fn attach_policies(
    index: &index::Index<'_>,
    gateways: &[GatewayState<'_>],
    sources: &[RouteSource<'_>],
    compiled: &[CompiledRules],
    placements: &[Placement],
    controller_name: &str,
) -> policy::PolicyOutcome {
    if index.snapshot.policies.values().all(BTreeMap::is_empty) {
        return policy::PolicyOutcome::default();
    }
    let targets = policy::Targets {
        gateways: gateways
            .iter()
            .map(|g| {
                (
                    &g.key,
                    g.listeners.iter().map(|l| l.name.as_str()).collect(),
                )
            })
            .collect(),
        routes: sources
            .iter()
            .map(|s| {
                let rules = s.rules.iter().map(|r| r.name).collect();
                ((s.kind, s.key), rules)
            })
            .collect(),
        snapshot: index.snapshot,
    };
    let mut served = Vec::new();
    for (pi, p) in placements.iter().enumerate() {
        let (Some(g), Some(source), Some(rules)) = (
            gateways.get(p.gateway),
            sources.get(p.route),
            compiled.get(p.route),
        ) else {
            continue;
        };
        let Some(listener) = g.listeners.get(p.listener) else {
            continue;
        };
        for (ri, rule) in rules.rules.iter().enumerate() {
            served.push(policy::ServedRule {
                placement: pi,
                rule_index: ri,
                route_index: p.route,
                at: policy::RuleAt {
                    gateway: &g.key,
                    listener: &listener.name,
                    route_kind: source.kind,
                    route: source.key,
                    rule_name: rule.rule.id.rule_name.as_deref(),
                },
                rule: &rule.rule,
            });
        }
    }
    policy::apply(index, &served, &targets, controller_name)
}

/// Attaches one route to its parents (recording placements and attached
/// route counts) and renders its status.
/// One route with what compile decided about it.
struct RouteOutcome<'a> {
    index: usize,
    source: &'a RouteSource<'a>,
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
                        l.attached_routes.insert(index);
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
        // Built by hand rather than with `json!`, which would copy the
        // parentRef once more through the serializer.
        let mut entry = Map::new();
        entry.insert("parentRef".into(), parent.raw.to_json());
        entry.insert("controllerName".into(), controller_name.into());
        entry.insert(
            "conditions".into(),
            conditions_json(&[accepted, resolved.clone()], source.generation),
        );
        parents.push(Value::Object(entry));
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
        status: Value::Object(Map::from_iter([(
            "parents".to_string(),
            Value::Array(parents),
        )])),
        problems,
    })
}

/// Routes and certificates of one port while it is being built.
struct PortBuild<'a> {
    protocol: Protocol,
    certificates: Vec<ServerCertificate>,
    /// Of the first listener on the port that has one (listeners of one
    /// Gateway on one port share it; see `ca_bundle_frontend`).
    client_validation: Option<portcullis_model::ClientValidation>,
    /// Hostnames of the listeners served on this port.
    listener_hosts: Vec<HostMatch>,
    /// Routes placed on this port: each under the hostname of the listener
    /// it attached through and its effective hostname there.
    entries: Vec<Entry<'a>>,
    /// (route, listener hostname, effective hostname) already placed; keyed
    /// by the hostnames' text.
    placed: HashSet<(usize, HostKey<'a>, HostKey<'a>)>,
}

/// One match of one rule placed on a port. Borrowed from what compile
/// built: the route is cloned only into the virtual hosts it lands in.
struct Entry<'a> {
    listener_host: &'a HostMatch,
    host: &'a HostMatch,
    /// The route hostname `host` came from.
    original: &'a HostMatch,
    key: precedence::OrderKey<'a>,
    matcher: &'a RequestMatch,
    rule: &'a Arc<Rule>,
}

/// Indices of a listener's entries by effective hostname.
#[derive(Default)]
struct HostBuckets<'e> {
    exact: HashMap<&'e str, Vec<usize>>,
    /// By wildcard suffix (`.example.com` for `*.example.com`).
    wildcard: HashMap<&'e str, Vec<usize>>,
    any: Vec<usize>,
}

impl<'e> HostBuckets<'e> {
    fn bucket_mut(&mut self, host: &'e HostMatch) -> &mut Vec<usize> {
        match host {
            HostMatch::Exact(h) => self.exact.entry(h.as_str()).or_default(),
            HostMatch::Wildcard(s) => self.wildcard.entry(s.as_str()).or_default(),
            HostMatch::Any => &mut self.any,
        }
    }

    fn sort(&mut self, order: impl Fn(usize, usize) -> std::cmp::Ordering) {
        let buckets = self.exact.values_mut().chain(self.wildcard.values_mut());
        for bucket in buckets.chain(std::iter::once(&mut self.any)) {
            // Stable, like the sort of all entries it replaces.
            bucket.sort_by(|&a, &b| order(a, b));
        }
    }

    /// The buckets of the hostnames that cover `vhost` (see
    /// [`hostname::covers`]), most specific first: the exact hostname,
    /// then wildcards from the longest suffix, then `*`.
    fn covering(&self, vhost: &HostMatch) -> Vec<&[usize]> {
        let mut out: Vec<&[usize]> = Vec::new();
        match vhost {
            HostMatch::Exact(name) => {
                if let Some(b) = self.exact.get(name.as_str()) {
                    out.push(b);
                }
                self.wildcards_covering(name, true, &mut out);
            }
            HostMatch::Wildcard(suffix) => self.wildcards_covering(suffix, false, &mut out),
            HostMatch::Any => {}
        }
        out.push(&self.any);
        out
    }

    /// A wildcard covers a name when its suffix is a suffix of the name:
    /// of an exact name a `proper` one (`*.a.com` does not match `.a.com`),
    /// of a wildcard any, itself included. Longest suffix first.
    fn wildcards_covering<'s>(&'s self, name: &str, proper: bool, out: &mut Vec<&'s [usize]>) {
        if self.wildcard.is_empty() {
            return;
        }
        for start in hostname::suffix_starts(name).filter(|&k| k > 0 || !proper) {
            if let Some(b) = name.get(start..).and_then(|s| self.wildcard.get(s)) {
                out.push(b);
            }
        }
    }
}

type HostKey<'a> = (bool, &'a str);

/// A hostname compared as its text (`*` for both `Any` and the wildcard
/// with an empty suffix, which are the same pattern), without rendering it:
/// (is a wildcard, exact name or suffix). An exact hostname never starts
/// with `*` (it would have parsed as a wildcard), so two keys are equal
/// exactly when the texts are.
fn host_key(h: &HostMatch) -> HostKey<'_> {
    match h {
        HostMatch::Exact(name) => (false, name),
        HostMatch::Wildcard(suffix) => (true, suffix),
        HostMatch::Any => (true, ""),
    }
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
fn build_table<'a>(
    gateways: &'a [GatewayState<'_>],
    sources: &'a [RouteSource<'a>],
    compiled: &'a [CompiledRules],
    placements: &'a [Placement],
    policy_rules: &'a HashMap<(usize, usize), Arc<Rule>>,
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
                client_validation: None,
                listener_hosts: Vec::new(),
                entries: Vec::new(),
                placed: HashSet::new(),
            });
            port.certificates.extend(l.certificates.iter().cloned());
            if port.client_validation.is_none() {
                port.client_validation.clone_from(&l.client_validation);
            }
            if !port.listener_hosts.contains(&l.hostname) {
                port.listener_hosts.push(l.hostname.clone());
            }
        }
    }
    for (pi, p) in placements.iter().enumerate() {
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
                        listener_host: &listener.hostname,
                        host,
                        original: &effective.original,
                        key: precedence::order_key(source, ri, mi, m),
                        matcher: m,
                        rule: policy_rules.get(&(pi, ri)).unwrap_or(&rule.rule),
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

fn build_port(number: u16, build: PortBuild<'_>) -> PortConfig {
    // Every listener gets a virtual host even without routes, so requests
    // for its hostname never reach a less specific listener's routes.
    // Distinct hostnames never compare equal, so the order is total.
    let mut seen: HashSet<&HostMatch> = HashSet::new();
    let mut hosts: Vec<&HostMatch> = Vec::new();
    for h in build
        .listener_hosts
        .iter()
        .chain(build.entries.iter().map(|e| e.host))
    {
        if seen.insert(h) {
            hosts.push(h);
        }
    }
    hosts.sort_by(|a, b| hostname::specificity_order(a, b));

    // The entries of each listener, bucketed by hostname, each bucket in
    // precedence order: a virtual host then reads only the buckets of the
    // hostnames that cover it instead of scanning every entry of the port.
    let mut by_listener: HashMap<&HostMatch, HostBuckets<'_>> = HashMap::new();
    for (i, e) in build.entries.iter().enumerate() {
        by_listener
            .entry(e.listener_host)
            .or_default()
            .bucket_mut(e.host)
            .push(i);
    }
    let entries = &build.entries;
    for buckets in by_listener.values_mut() {
        buckets.sort(|a, b| {
            match (entries.get(a), entries.get(b)) {
                // Within a bucket the effective hostname is the same:
                // the route's own hostname, then route precedence.
                (Some(a), Some(b)) => hostname::specificity_order(a.original, b.original)
                    .then_with(|| a.key.cmp(&b.key)),
                // Bucket members are indices of `entries`.
                _ => std::cmp::Ordering::Equal,
            }
        });
    }

    let virtual_hosts = hosts
        .into_iter()
        .map(|vhost| {
            // The listener owning this hostname: the most specific covering it.
            let owner = build
                .listener_hosts
                .iter()
                .filter(|l| hostname::covers(l, vhost))
                .min_by(|a, b| hostname::specificity_order(a, b));
            // Hostname precedence first (the buckets come most specific
            // first), then within a bucket as sorted above.
            let routes = owner
                .and_then(|owner| by_listener.get(owner))
                .map(|buckets| {
                    buckets
                        .covering(vhost)
                        .into_iter()
                        .flatten()
                        .filter_map(|&i| entries.get(i))
                        .map(|e| Route {
                            matcher: e.matcher.clone(),
                            rule: e.rule.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            VirtualHost {
                hostname: vhost.clone(),
                routes,
            }
        })
        .collect();
    let mut certificates = build.certificates;
    certificates.sort_by(|a, b| hostname::specificity_order(&a.hostname, &b.hostname));
    let tls = (build.protocol == Protocol::Https).then_some(TlsConfig {
        certificates,
        client_validation: build.client_validation,
    });
    PortConfig {
        port: number,
        protocol: build.protocol,
        tls,
        virtual_hosts,
    }
}

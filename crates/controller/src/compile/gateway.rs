//! GatewayClasses, Gateways and their listeners: which listeners are
//! accepted, which conflict, which routes they allow, their certificates.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From,
    GatewayListenersAllowedRoutesNamespacesSelector as Selector,
};
use portcullis_model::{ClientValidation, HostMatch, Protocol, RouteKind, ServerCertificate};
use serde_json::{json, Value};

use super::{ca_bundle_frontend, hostname, parameters, tls, CompileOptions};
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{conditions_json, reasons, Condition, StatusKind, StatusUpdate};

/// Which namespaces may attach routes to a listener.
#[derive(Debug, Clone)]
pub(crate) enum AllowedNamespaces {
    Same,
    All,
    Selector(Selector),
}

/// A listener after validation.
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<Protocol>,
    pub hostname: HostMatch,
    /// `Err((reason, message))` when not accepted.
    pub accepted: Result<(), (&'static str, String)>,
    pub conflict: Option<(&'static str, String)>,
    /// First reason wins; all messages are reported.
    pub ref_problems: Vec<(&'static str, String)>,
    pub supported_kinds: Vec<RouteKind>,
    pub allowed_namespaces: AllowedNamespaces,
    pub certificates: Vec<ServerCertificate>,
    /// Client certificate validation (Gateway `spec.tls.frontend`).
    pub client_validation: Option<ClientValidation>,
    /// Left out of the table because another Gateway of this process owns
    /// the port with another protocol.
    pub shadowed: bool,
    /// Distinct routes attached, by index in compile's list of routes
    /// (filled in by route attachment).
    pub attached_routes: BTreeSet<usize>,
}

impl ListenerState {
    /// Routes may attach to it and it is served.
    pub fn is_usable(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none()
    }

    /// Served by the data plane: usable and, for HTTPS, with a certificate.
    pub fn is_programmed(&self) -> bool {
        self.is_usable()
            && (self.protocol != Some(Protocol::Https) || !self.certificates.is_empty())
    }
}

/// A Gateway of one of our GatewayClasses, after validation.
#[derive(Debug)]
pub(crate) struct GatewayState<'a> {
    pub key: ObjectKey,
    pub gateway: &'a Gateway,
    /// Set when the Gateway as a whole is not accepted.
    pub rejected: Option<(&'static str, String)>,
    pub listeners: Vec<ListenerState>,
    /// Problems that are not listener conditions (e.g. a port clash with
    /// another Gateway served by the same process).
    pub extra_problems: Vec<String>,
    /// Gateway-level `ResolvedRefs` problems (the backend client
    /// certificate).
    pub ref_problems: Vec<(&'static str, String)>,
}

/// Names of the GatewayClasses we own, plus their statuses.
pub(crate) fn gateway_classes(
    snapshot: &Snapshot,
    options: &CompileOptions,
) -> (BTreeSet<String>, Vec<StatusUpdate>) {
    let mut ours = BTreeSet::new();
    let mut statuses = Vec::new();
    for (name, class) in &snapshot.gateway_classes {
        if class.spec.controller_name != options.controller_name {
            continue;
        }
        ours.insert(name.clone());
        statuses.push(class_status(snapshot, name, class));
    }
    (ours, statuses)
}

fn class_status(snapshot: &Snapshot, name: &str, class: &GatewayClass) -> StatusUpdate {
    let generation = class.metadata.generation.unwrap_or(0);
    let mut problems = Vec::new();
    let accepted = match parameters::class_parameters(snapshot, class) {
        Ok(_) => Condition::new(
            reasons::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "Handled by Portcullis",
        ),
        Err(message) => {
            problems.push(format!("{}: {message}", reasons::INVALID_PARAMETERS));
            Condition::new(
                reasons::ACCEPTED,
                false,
                reasons::INVALID_PARAMETERS,
                message,
            )
        }
    };
    StatusUpdate {
        kind: StatusKind::GatewayClass,
        namespace: None,
        name: name.to_string(),
        status: json!({ "conditions": conditions_json(&[accepted], generation) }),
        problems,
    }
}

/// Validates the Gateways of our classes (restricted to one Gateway in
/// proxy mode) and their listeners.
pub(crate) fn gateways<'a>(
    snapshot: &'a Snapshot,
    options: &CompileOptions,
    our_classes: &BTreeSet<String>,
) -> Vec<GatewayState<'a>> {
    let mut out = Vec::new();
    for (key, gateway) in &snapshot.gateways {
        if !our_classes.contains(&gateway.spec.gateway_class_name) {
            continue;
        }
        if options.gateway.as_ref().is_some_and(|only| only != key) {
            continue;
        }
        out.push(gateway_state(snapshot, key, gateway));
    }
    mark_cross_gateway_port_clashes(&mut out);
    out
}

fn gateway_state<'a>(
    snapshot: &'a Snapshot,
    key: &ObjectKey,
    gateway: &'a Gateway,
) -> GatewayState<'a> {
    let mut listeners: Vec<ListenerState> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| listener_state(snapshot, key, l))
        .collect();
    ca_bundle_frontend::apply(snapshot, key, gateway, &mut listeners);
    mark_conflicts(&mut listeners);
    let class = snapshot
        .gateway_classes
        .get(&gateway.spec.gateway_class_name);
    let rejected = if let Err(message) = parameters::gateway_parameters(snapshot, gateway, class) {
        // Provisioned with parameters other than the ones asked for, the
        // Gateway would not be what its owner declared: refuse it (the
        // provisioner leaves its existing proxy alone meanwhile).
        Some((reasons::INVALID_PARAMETERS, message))
    } else if gateway
        .spec
        .addresses
        .as_ref()
        .is_some_and(|a| !a.is_empty())
    {
        Some((
            reasons::UNSUPPORTED_ADDRESS,
            "spec.addresses is not supported: Portcullis assigns addresses itself; remove spec.addresses".to_string(),
        ))
    } else {
        None
    };
    GatewayState {
        key: key.clone(),
        gateway,
        rejected,
        listeners,
        extra_problems: Vec::new(),
        ref_problems: Vec::new(),
    }
}

fn listener_state(snapshot: &Snapshot, gateway: &ObjectKey, l: &GatewayListeners) -> ListenerState {
    let hostname = hostname::parse(l.hostname.as_deref());
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let port = u16::try_from(l.port).ok().filter(|p| *p != 0);
    let accepted = match (protocol, port) {
        (None, _) => Err((
            reasons::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol {:?} is not supported; use HTTP or HTTPS",
                l.protocol
            ),
        )),
        (_, None) => Err((
            reasons::PORT_UNAVAILABLE,
            format!("port {} is not a valid TCP port", l.port),
        )),
        _ => Ok(()),
    };
    let mut ref_problems = Vec::new();
    let supported_kinds = if protocol.is_some() {
        route_kinds(l, &mut ref_problems)
    } else {
        Vec::new()
    };
    let allowed_namespaces = match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        None => AllowedNamespaces::Same,
        Some(ns) => match ns.from {
            None | Some(From::Same) => AllowedNamespaces::Same,
            Some(From::All) => AllowedNamespaces::All,
            Some(From::Selector) => {
                AllowedNamespaces::Selector(ns.selector.clone().unwrap_or_default())
            }
        },
    };
    let mut certificates = Vec::new();
    if protocol == Some(Protocol::Https) && accepted.is_ok() {
        let (certs, problems) =
            tls::resolve_certificates(snapshot, gateway, &hostname, l.tls.as_ref());
        certificates = certs;
        ref_problems.extend(problems.into_iter().map(|p| (p.reason, p.message)));
    }
    ListenerState {
        name: l.name.clone(),
        port: port.unwrap_or(0),
        protocol,
        hostname,
        accepted,
        conflict: None,
        ref_problems,
        supported_kinds,
        allowed_namespaces,
        certificates,
        client_validation: None,
        shadowed: false,
        attached_routes: BTreeSet::new(),
    }
}

/// The route kinds a listener accepts: HTTPRoute and GRPCRoute by default,
/// or the supported subset of `allowedRoutes.kinds`.
fn route_kinds(l: &GatewayListeners, problems: &mut Vec<(&'static str, String)>) -> Vec<RouteKind> {
    // Unset or empty: the kinds the protocol supports.
    let kinds = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_ref())
        .filter(|k| !k.is_empty());
    let Some(kinds) = kinds else {
        return vec![RouteKind::Http, RouteKind::Grpc];
    };
    let mut out = Vec::new();
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(portcullis_api::GATEWAY_GROUP);
        let kind = match (group, k.kind.as_str()) {
            (g, "HTTPRoute") if g == portcullis_api::GATEWAY_GROUP => Some(RouteKind::Http),
            (g, "GRPCRoute") if g == portcullis_api::GATEWAY_GROUP => Some(RouteKind::Grpc),
            _ => None,
        };
        match kind {
            Some(kind) if !out.contains(&kind) => out.push(kind),
            Some(_) => {}
            None => problems.push((
                reasons::INVALID_ROUTE_KINDS,
                format!("allowedRoutes.kinds: {group}/{} is not supported on {} listeners; use HTTPRoute or GRPCRoute", k.kind, l.protocol),
            )),
        }
    }
    out
}

/// Listeners of one Gateway sharing a port must share a protocol, and
/// within a protocol differ by hostname. All indistinct listeners are
/// conflicted; none of them wins.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.accepted.is_ok() {
            by_port.entry(l.port).or_default().push(i);
        }
    }
    for (port, indices) in by_port {
        let protocols: BTreeSet<_> = indices
            .iter()
            .map(|&i| format!("{:?}", listeners[i].protocol))
            .collect();
        if protocols.len() > 1 {
            let names: Vec<_> = indices.iter().map(|&i| listeners[i].name.clone()).collect();
            for &i in &indices {
                listeners[i].conflict = Some((
                    reasons::PROTOCOL_CONFLICT,
                    format!("listeners {} share port {port} with different protocols; give each protocol its own port", names.join(", ")),
                ));
            }
            continue;
        }
        for &i in &indices {
            let same: Vec<_> = indices
                .iter()
                .filter(|&&j| listeners[j].hostname == listeners[i].hostname)
                .map(|&j| listeners[j].name.clone())
                .collect();
            if same.len() > 1 {
                listeners[i].conflict = Some((
                    reasons::HOSTNAME_CONFLICT,
                    format!(
                        "listeners {} share port {port} and hostname {}; give each a distinct hostname",
                        same.join(", "),
                        listeners[i].hostname
                    ),
                ));
            }
        }
    }
}

/// When several Gateways are served by one process (standalone mode), a
/// port can only speak one protocol: listeners of later Gateways (in
/// namespace/name order) that disagree are left out of the table. This is
/// not a Gateway API condition (each Gateway would get its own address in a
/// cluster), so it is reported as a problem only.
fn mark_cross_gateway_port_clashes(gateways: &mut [GatewayState<'_>]) {
    let mut owner: BTreeMap<u16, (Protocol, ObjectKey)> = BTreeMap::new();
    for g in gateways.iter_mut() {
        if g.rejected.is_some() {
            continue;
        }
        let key = g.key.clone();
        for l in g.listeners.iter_mut().filter(|l| l.is_usable()) {
            let Some(protocol) = l.protocol else { continue };
            match owner.get(&l.port) {
                None => {
                    owner.insert(l.port, (protocol, key.clone()));
                }
                Some((p, other)) if *p != protocol && *other != key => {
                    g.extra_problems.push(format!(
                        "listener {}: port {} is already served as {:?} for Gateway {other} in this process; this listener is not served",
                        l.name, l.port, p
                    ));
                    l.shadowed = true;
                }
                Some(_) => {}
            }
        }
    }
}

/// Do a listener's `allowedRoutes.namespaces` admit routes from
/// `route_namespace`?
pub(crate) fn namespace_allowed(
    snapshot: &Snapshot,
    allowed: &AllowedNamespaces,
    gateway_namespace: &str,
    route_namespace: &str,
) -> bool {
    match allowed {
        AllowedNamespaces::Same => gateway_namespace == route_namespace,
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(selector) => {
            let mut labels: BTreeMap<String, String> = snapshot
                .namespaces
                .get(route_namespace)
                .and_then(|ns| ns.metadata.labels.clone())
                .unwrap_or_default();
            // The API server labels every namespace with its own name.
            labels.insert("kubernetes.io/metadata.name".into(), route_namespace.into());
            selector_matches(selector, &labels)
        }
    }
}

fn selector_matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // An operator we do not know selects nothing (fail closed).
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The Gateway's status, with listener statuses and attached route counts.
pub(crate) fn gateway_status(g: &GatewayState<'_>) -> StatusUpdate {
    let generation = g.gateway.metadata.generation.unwrap_or(0);
    let mut problems = Vec::new();
    let mut listener_statuses = Vec::new();
    for l in &g.listeners {
        let conditions = listener_conditions(l);
        for c in conditions.iter().filter(|c| is_bad(c)) {
            problems.push(format!("listener {}: {}: {}", l.name, c.reason, c.message));
        }
        let kinds: Vec<Value> = l
            .supported_kinds
            .iter()
            .map(|k| {
                let kind = match k {
                    RouteKind::Http => "HTTPRoute",
                    RouteKind::Grpc => "GRPCRoute",
                };
                json!({ "group": portcullis_api::GATEWAY_GROUP, "kind": kind })
            })
            .collect();
        listener_statuses.push(json!({
            "name": l.name,
            "supportedKinds": kinds,
            "attachedRoutes": l.attached_routes.len(),
            "conditions": conditions_json(&conditions, generation),
        }));
    }
    problems.extend(g.extra_problems.iter().cloned());

    let usable = g.listeners.iter().filter(|l| l.is_usable()).count();
    let programmed = g.listeners.iter().filter(|l| l.is_programmed()).count();
    let all_valid = g
        .listeners
        .iter()
        .all(|l| l.is_usable() && l.ref_problems.is_empty());
    let accepted = if let Some((reason, message)) = &g.rejected {
        problems.push(format!("{reason}: {message}"));
        Condition::new(reasons::ACCEPTED, false, reason, message.clone())
    } else if all_valid {
        Condition::new(
            reasons::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "All listeners are valid",
        )
    } else {
        let invalid: Vec<_> = g
            .listeners
            .iter()
            .filter(|l| !(l.is_usable() && l.ref_problems.is_empty()))
            .map(|l| l.name.as_str())
            .collect();
        let message = format!("invalid listeners: {}", invalid.join(", "));
        Condition::new(
            reasons::ACCEPTED,
            usable > 0,
            reasons::LISTENERS_NOT_VALID,
            message,
        )
    };
    let programmed = if g.rejected.is_none() && programmed > 0 {
        Condition::new(
            reasons::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            format!("{programmed} listener(s) served"),
        )
    } else {
        Condition::new(
            reasons::PROGRAMMED,
            false,
            reasons::INVALID,
            "No listener can be served",
        )
    };
    let mut conditions = vec![accepted, programmed];
    // Gateway-level references (spec.tls): reported when there are any.
    if g.gateway.spec.tls.is_some() || !g.ref_problems.is_empty() {
        conditions.push(match g.ref_problems.first() {
            Some((reason, _)) => {
                let messages: Vec<_> = g.ref_problems.iter().map(|(_, m)| m.as_str()).collect();
                problems.extend(g.ref_problems.iter().map(|(r, m)| format!("{r}: {m}")));
                Condition::new(reasons::RESOLVED_REFS, false, reason, messages.join("; "))
            }
            None => Condition::new(
                reasons::RESOLVED_REFS,
                true,
                reasons::RESOLVED_REFS,
                "All references resolved",
            ),
        });
    }
    // Gateway API asks for this warning whenever a port accepts clients
    // whose certificates do not verify.
    let insecure: Vec<_> = g
        .listeners
        .iter()
        .filter(|l| l.client_validation.as_ref().is_some_and(|v| !v.required))
        .map(|l| l.name.as_str())
        .collect();
    if !insecure.is_empty() {
        conditions.push(Condition::new(
            reasons::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            reasons::CONFIGURATION_CHANGED,
            format!(
                "listeners {} accept clients without a valid certificate (AllowInsecureFallback)",
                insecure.join(", ")
            ),
        ));
    }
    StatusUpdate {
        kind: StatusKind::Gateway,
        namespace: Some(g.key.namespace.clone()),
        name: g.key.name.clone(),
        status: json!({
            "conditions": conditions_json(&conditions, generation),
            "listeners": listener_statuses,
        }),
        problems,
    }
}

fn is_bad(c: &Condition) -> bool {
    if c.type_ == reasons::CONFLICTED {
        c.status
    } else {
        !c.status
    }
}

fn listener_conditions(l: &ListenerState) -> Vec<Condition> {
    let accepted = match (&l.accepted, &l.conflict) {
        (Err((reason, message)), _) => {
            Condition::new(reasons::ACCEPTED, false, reason, message.clone())
        }
        (Ok(()), Some((_, message))) => {
            Condition::new(reasons::ACCEPTED, false, reasons::INVALID, message.clone())
        }
        (Ok(()), None) => Condition::new(
            reasons::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "Listener is valid",
        ),
    };
    let conflicted = match &l.conflict {
        Some((reason, message)) => {
            Condition::new(reasons::CONFLICTED, true, reason, message.clone())
        }
        None => Condition::new(
            reasons::CONFLICTED,
            false,
            reasons::NO_CONFLICTS,
            "No conflicts",
        ),
    };
    let resolved = match l.ref_problems.first() {
        Some((reason, _)) => {
            let messages: Vec<_> = l.ref_problems.iter().map(|(_, m)| m.as_str()).collect();
            Condition::new(reasons::RESOLVED_REFS, false, reason, messages.join("; "))
        }
        None => Condition::new(
            reasons::RESOLVED_REFS,
            true,
            reasons::RESOLVED_REFS,
            "All references resolved",
        ),
    };
    let programmed = if l.is_programmed() {
        Condition::new(
            reasons::PROGRAMMED,
            true,
            reasons::PROGRAMMED,
            "Listener is served",
        )
    } else {
        let why = if l.is_usable() {
            "no usable certificate"
        } else {
            "listener is not accepted"
        };
        Condition::new(
            reasons::PROGRAMMED,
            false,
            reasons::INVALID,
            format!("Listener is not served: {why}"),
        )
    };
    vec![accepted, programmed, resolved, conflicted]
}

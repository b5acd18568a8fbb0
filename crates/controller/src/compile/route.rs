//! HTTPRoute and GRPCRoute: one normalized shape, rule compilation, and
//! attachment to listeners through parentRefs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesMatches, HttpRouteRulesRetry, HttpRouteRulesTimeouts,
};
use gateway_api::grpcroutes::GrpcRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_model::{
    Backend, BackendTarget, HostMatch, PathMatch, RequestMatch, RouteKind, Rule, RuleId, Timeouts,
    WeightedBackend,
};
use serde_json::Value;

use super::backends::{self, BackendRefSpec, RefProblem, Referrer};
use super::filters::{self, reshape, FilterContext};
use super::gateway::{namespace_allowed, GatewayState};
use super::hostname;
use super::index::Index;
use super::matches::{compile_match, MatchSource};
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::reasons;

/// A route of either kind, in one shape. Borrowed from the snapshot where
/// the shapes agree (all of an HTTPRoute), so that normalizing thousands
/// of routes does not copy them.
#[derive(Debug)]
pub(crate) struct RouteSource<'a> {
    pub kind: RouteKind,
    pub key: &'a ObjectKey,
    pub generation: i64,
    pub created: Option<&'a Time>,
    pub hostnames: Vec<HostMatch>,
    pub parent_refs: Vec<ParentRef<'a>>,
    pub rules: Vec<RuleSource<'a>>,
    /// Problems found while normalizing (UnsupportedValue).
    pub invalid: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct ParentRef<'a> {
    pub group: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub section_name: Option<Cow<'a, str>>,
    pub port: Option<i32>,
    /// As the user wrote it, echoed in `status.parents[].parentRef`.
    pub raw: RawParentRef<'a>,
}

/// A parentRef as the user wrote it, rendered to JSON only for the status
/// (rendering it once there instead of copying a rendered one).
#[derive(Debug)]
pub(crate) enum RawParentRef<'a> {
    Spec(&'a HttpRouteParentRefs),
    Json(Value),
}

impl RawParentRef<'_> {
    pub fn to_json(&self) -> Value {
        match self {
            RawParentRef::Spec(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            RawParentRef::Json(v) => v.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct RuleSource<'a> {
    pub name: Option<&'a str>,
    pub matches: Vec<MatchSource<'a>>,
    pub filters: Cow<'a, [HttpRouteRulesFilters]>,
    pub backend_refs: Cow<'a, [HttpRouteRulesBackendRefs]>,
    pub timeouts: Option<&'a HttpRouteRulesTimeouts>,
    pub retry: Option<&'a HttpRouteRulesRetry>,
}

pub(crate) fn from_http<'a>(key: &'a ObjectKey, route: &'a HttpRoute) -> RouteSource<'a> {
    let parent_refs = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .map(|p| parent_ref(key, Cow::Borrowed(p)))
        .collect();
    let rules = route
        .spec
        .rules
        .iter()
        .flatten()
        .map(|r| RuleSource {
            name: r.name.as_deref(),
            matches: match &r.matches {
                // No matches means one match of everything.
                None => vec![MatchSource::Http(Cow::Owned(
                    HttpRouteRulesMatches::default(),
                ))],
                Some(m) if m.is_empty() => {
                    vec![MatchSource::Http(Cow::Owned(
                        HttpRouteRulesMatches::default(),
                    ))]
                }
                Some(m) => m
                    .iter()
                    .map(|m| MatchSource::Http(Cow::Borrowed(m)))
                    .collect(),
            },
            filters: Cow::Borrowed(r.filters.as_deref().unwrap_or_default()),
            backend_refs: Cow::Borrowed(r.backend_refs.as_deref().unwrap_or_default()),
            timeouts: r.timeouts.as_ref(),
            retry: r.retry.as_ref(),
        })
        .collect();
    build(
        RouteKind::Http,
        key,
        &route.metadata,
        route.spec.hostnames.as_deref(),
        parent_refs,
        rules,
        Vec::new(),
    )
}

/// GRPCRoute filters and backendRefs have the JSON shape of (a subset of)
/// HTTPRoute's, so they are read through it.
pub(crate) fn from_grpc<'a>(key: &'a ObjectKey, route: &'a GrpcRoute) -> RouteSource<'a> {
    let mut invalid = Vec::new();
    let parent_refs = match route
        .spec
        .parent_refs
        .as_ref()
        .map(reshape::<_, Vec<HttpRouteParentRefs>>)
        .transpose()
    {
        Ok(refs) => refs
            .into_iter()
            .flatten()
            .map(|p| parent_ref(key, Cow::Owned(p)))
            .collect(),
        Err(e) => {
            invalid.push(e);
            Vec::new()
        }
    };
    let mut rules = Vec::new();
    for r in route.spec.rules.iter().flatten() {
        let filters = r
            .filters
            .as_ref()
            .map(reshape::<_, Vec<HttpRouteRulesFilters>>)
            .transpose();
        let backend_refs = r
            .backend_refs
            .as_ref()
            .map(reshape::<_, Vec<HttpRouteRulesBackendRefs>>)
            .transpose();
        let (filters, backend_refs) = match (filters, backend_refs) {
            (Ok(f), Ok(b)) => (f.unwrap_or_default(), b.unwrap_or_default()),
            (Err(e), _) | (_, Err(e)) => {
                invalid.push(e);
                (Vec::new(), Vec::new())
            }
        };
        let matches = match &r.matches {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|m| MatchSource::Grpc(Cow::Borrowed(m)))
                .collect(),
            _ => vec![MatchSource::Grpc(Cow::Owned(Default::default()))],
        };
        rules.push(RuleSource {
            name: r.name.as_deref(),
            matches,
            filters: Cow::Owned(filters),
            backend_refs: Cow::Owned(backend_refs),
            timeouts: None,
            retry: None,
        });
    }
    build(
        RouteKind::Grpc,
        key,
        &route.metadata,
        route.spec.hostnames.as_deref(),
        parent_refs,
        rules,
        invalid,
    )
}

/// A parentRef with its defaults applied; borrowed from an HTTPRoute,
/// owned when read from a GRPCRoute through the HTTPRoute shape.
pub(crate) fn parent_ref<'a>(
    route: &'a ObjectKey,
    p: Cow<'a, HttpRouteParentRefs>,
) -> ParentRef<'a> {
    // Each field either borrowed from `p` or moved out of it.
    let (group, kind, namespace, name, section_name, port, raw) = match p {
        Cow::Borrowed(p) => (
            p.group.as_deref().map(Cow::Borrowed),
            p.kind.as_deref().map(Cow::Borrowed),
            p.namespace.as_deref().map(Cow::Borrowed),
            Cow::Borrowed(p.name.as_str()),
            p.section_name.as_deref().map(Cow::Borrowed),
            p.port,
            RawParentRef::Spec(p),
        ),
        Cow::Owned(p) => {
            let raw = RawParentRef::Json(serde_json::to_value(&p).unwrap_or(Value::Null));
            (
                p.group.map(Cow::Owned),
                p.kind.map(Cow::Owned),
                p.namespace.map(Cow::Owned),
                Cow::Owned(p.name),
                p.section_name.map(Cow::Owned),
                p.port,
                raw,
            )
        }
    };
    ParentRef {
        group: group.unwrap_or(Cow::Borrowed(portcullis_api::GATEWAY_GROUP)),
        kind: kind.unwrap_or(Cow::Borrowed("Gateway")),
        namespace: namespace
            .filter(|n| !n.is_empty())
            .unwrap_or(Cow::Borrowed(route.namespace.as_str())),
        name,
        section_name: section_name.filter(|s| !s.is_empty()),
        port,
        raw,
    }
}

pub(crate) fn build<'a>(
    kind: RouteKind,
    key: &'a ObjectKey,
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    hostnames: Option<&[String]>,
    parent_refs: Vec<ParentRef<'a>>,
    rules: Vec<RuleSource<'a>>,
    invalid: Vec<String>,
) -> RouteSource<'a> {
    RouteSource {
        kind,
        key,
        generation: meta.generation.unwrap_or(0),
        created: meta.creation_timestamp.as_ref(),
        hostnames: hostnames
            .unwrap_or_default()
            .iter()
            .map(|h| hostname::parse(Some(h)))
            .collect(),
        parent_refs,
        rules,
        invalid,
    }
}

/// How many distinct backend references of one route are remembered (the
/// lookup among them is a scan).
const RESOLVED_PER_ROUTE: usize = 16;

/// A rule compiled once per route and shared by every virtual host it is
/// served under.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub rule: Arc<Rule>,
    pub matches: Vec<RequestMatch>,
}

/// The result of compiling a route's rules, independent of its parents.
#[derive(Debug, Default)]
pub(crate) struct CompiledRules {
    pub rules: Vec<CompiledRule>,
    /// UnsupportedValue messages: the route is not accepted.
    pub invalid: Vec<String>,
    /// ResolvedRefs problems: the route is served, those backends get 500.
    pub ref_problems: Vec<RefProblem>,
}

pub(crate) fn compile_rules(lookup: &Index<'_>, route: &RouteSource<'_>) -> CompiledRules {
    let mut out = CompiledRules {
        invalid: route.invalid.clone(),
        ..Default::default()
    };
    // Rules of a route mostly share their backends: each distinct
    // reference is resolved once per route and the `Backend` shared.
    let mut resolved: Vec<(BackendRefSpec<'_>, Result<Arc<Backend>, RefProblem>)> = Vec::new();
    for (index, source) in route.rules.iter().enumerate() {
        let at = |msg: String| format!("rules[{index}]: {msg}");
        // Sized exactly: the table keeps these for every route (a pushed
        // Vec would reserve room for four).
        let mut matches = Vec::with_capacity(source.matches.len());
        for (mi, m) in source.matches.iter().enumerate() {
            match compile_match(m) {
                Ok(m) => matches.push(m),
                Err(e) => out.invalid.push(at(format!("matches[{mi}]: {e}"))),
            }
        }
        let ctx = FilterContext {
            index: lookup,
            referrer: Referrer {
                kind: route.kind,
                namespace: &route.key.namespace,
            },
            all_matches_are_prefix: matches
                .iter()
                .all(|m| matches!(m.path, PathMatch::Prefix(_))),
        };
        let rule_filters = match filters::compile_filters(&ctx, &source.filters) {
            Ok(f) => f,
            Err(e) => {
                out.invalid.push(at(e));
                continue;
            }
        };
        out.ref_problems.extend(
            rule_filters
                .ref_problems
                .iter()
                .map(|p| with_prefix(&at, p)),
        );
        let mut backends = Vec::with_capacity(source.backend_refs.len());
        let force_500 = rule_filters.unresolved_extension;
        for (bi, b) in source.backend_refs.iter().enumerate() {
            let bf = b
                .filters
                .as_ref()
                .map(reshape::<_, Vec<HttpRouteRulesFilters>>)
                .transpose();
            let bf = match bf
                .and_then(|f| filters::compile_filters(&ctx, f.as_deref().unwrap_or_default()))
            {
                Ok(f) => f,
                Err(e) => {
                    out.invalid.push(at(format!("backendRefs[{bi}]: {e}")));
                    continue;
                }
            };
            out.ref_problems
                .extend(bf.ref_problems.iter().map(|p| with_prefix(&at, p)));
            let spec = BackendRefSpec {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                namespace: b.namespace.as_deref(),
                name: &b.name,
                port: b.port,
            };
            let found = resolved
                .iter()
                .find(|(s, _)| *s == spec)
                .map(|(_, r)| r.clone());
            let result = found.unwrap_or_else(|| {
                let result = backends::resolve(lookup, &ctx.referrer, &spec);
                if resolved.len() < RESOLVED_PER_ROUTE {
                    resolved.push((spec, result.clone()));
                }
                result
            });
            let target = match result {
                Ok(backend) => BackendTarget::Service(backend),
                Err(p) => {
                    let target = BackendTarget::Invalid {
                        reason: p.reason.to_string(),
                    };
                    out.ref_problems.push(with_prefix(&at, &p));
                    target
                }
            };
            let target = if bf.unresolved_extension {
                BackendTarget::Invalid {
                    reason: reasons::INVALID_KIND.to_string(),
                }
            } else {
                target
            };
            backends.push(WeightedBackend {
                weight: b.weight.unwrap_or(1).max(0) as u32,
                target,
                filters: bf.filters,
            });
        }
        let timeouts = match timeouts(source.timeouts) {
            Ok(t) => t,
            Err(e) => {
                out.invalid.push(at(e));
                continue;
            }
        };
        let retry = match source.retry.map(super::backend_policy::http_route_retry) {
            None => None,
            Some(Ok(r)) => Some(Box::new(r)),
            Some(Err(e)) => {
                out.invalid.push(at(e));
                continue;
            }
        };
        let mut filters = rule_filters.filters;
        if force_500 {
            // An unimplemented extension filter must not be skipped: no
            // filters and no backends makes the data plane answer 500.
            filters.clear();
            backends.clear();
        }
        let rule = Rule {
            id: RuleId {
                kind: route.kind,
                namespace: route.key.namespace.clone(),
                name: route.key.name.clone(),
                rule_index: index,
                rule_name: source.name.map(str::to_string),
            },
            filters,
            backends,
            timeouts,
            retry,
            policies: Default::default(),
        };
        out.rules.push(CompiledRule {
            rule: Arc::new(rule),
            matches,
        });
    }
    out
}

fn with_prefix(at: &dyn Fn(String) -> String, p: &RefProblem) -> RefProblem {
    RefProblem {
        reason: p.reason,
        message: at(p.message.clone()),
    }
}

/// Gateway API durations (`10s`, `1m30s`, `500ms`); `0s` disables a
/// timeout; backendRequest may not exceed request.
fn timeouts(t: Option<&HttpRouteRulesTimeouts>) -> Result<Timeouts, String> {
    let Some(t) = t else {
        return Ok(Timeouts::default());
    };
    let parse = |what: &str, v: Option<&str>| -> Result<Option<std::time::Duration>, String> {
        let Some(v) = v else { return Ok(None) };
        let d: gateway_api::Duration = v
            .parse()
            .map_err(|e| format!("timeouts.{what} {v:?} is not a valid duration: {e}"))?;
        let d = std::time::Duration::new(d.as_secs(), d.subsec_nanos());
        Ok((!d.is_zero()).then_some(d))
    };
    let request = parse("request", t.request.as_deref())?;
    let backend_request = parse("backendRequest", t.backend_request.as_deref())?;
    if let (Some(r), Some(b)) = (request, backend_request) {
        if b > r {
            return Err("timeouts.backendRequest must not be longer than timeouts.request".into());
        }
    }
    Ok(Timeouts {
        request,
        backend_request,
    })
}

/// The outcome of one parentRef.
#[derive(Debug)]
pub(crate) enum Attachment {
    /// Not one of our Gateways: no status entry is written for it.
    NotOurs(String),
    /// Attached to these listeners (gateway index, listener index), each
    /// with its effective hostnames.
    Attached(Vec<(usize, usize, Vec<hostname::Effective>)>),
    /// One of ours, but refused: Accepted=False with this reason.
    Refused(&'static str, String),
}

/// The Gateways being compiled, and where each is in that list by
/// namespace/name (so that attaching a route is not a scan of them all).
pub(crate) struct Gateways<'g, 'a> {
    pub list: &'g [GatewayState<'a>],
    by_key: HashMap<(&'g str, &'g str), usize>,
}

impl<'g, 'a> Gateways<'g, 'a> {
    pub fn new(list: &'g [GatewayState<'a>]) -> Gateways<'g, 'a> {
        let mut by_key = HashMap::new();
        for (i, g) in list.iter().enumerate() {
            // Keys are unique (they come from a map); the first would win.
            by_key
                .entry((g.key.namespace.as_str(), g.key.name.as_str()))
                .or_insert(i);
        }
        Gateways { list, by_key }
    }
}

/// Resolves one parentRef against the Gateways being compiled.
pub(crate) fn attach(
    snapshot: &Snapshot,
    gateways: &Gateways<'_, '_>,
    route: &RouteSource<'_>,
    parent: &ParentRef<'_>,
) -> Attachment {
    if parent.group != portcullis_api::GATEWAY_GROUP || parent.kind != "Gateway" {
        return Attachment::NotOurs(format!(
            "parentRef {}/{} {} is not a Gateway",
            parent.group, parent.kind, parent.name
        ));
    }
    let found = gateways
        .by_key
        .get(&(&*parent.namespace, &*parent.name))
        .and_then(|&gi| Some((gi, gateways.list.get(gi)?)));
    let Some((gi, gateway)) = found else {
        return Attachment::NotOurs(format!(
            "parentRef Gateway {}/{} does not exist or is not of a GatewayClass handled by Portcullis",
            parent.namespace, parent.name
        ));
    };
    if let Some((_, message)) = &gateway.rejected {
        return Attachment::Refused(
            reasons::NO_MATCHING_PARENT,
            format!("Gateway {} is not accepted: {message}", gateway.key),
        );
    }
    let candidates: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| **s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let what = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("a listener named {s:?} on port {p}"),
            (Some(s), None) => format!("a listener named {s:?}"),
            (None, Some(p)) => format!("a listener on port {p}"),
            (None, None) => "any listener".to_string(),
        };
        return Attachment::Refused(
            reasons::NO_MATCHING_PARENT,
            format!("Gateway {} has no {what}", gateway.key),
        );
    }
    let usable: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| gateway.listeners[i].is_usable())
        .collect();
    if usable.is_empty() {
        return Attachment::Refused(
            reasons::NO_MATCHING_PARENT,
            format!(
                "the matching listeners of Gateway {} are not accepted (see the Gateway's status)",
                gateway.key
            ),
        );
    }
    let allowed: Vec<usize> = usable
        .into_iter()
        .filter(|&i| {
            let l = &gateway.listeners[i];
            l.supported_kinds.contains(&route.kind)
                && namespace_allowed(
                    snapshot,
                    &l.allowed_namespaces,
                    &gateway.key.namespace,
                    &route.key.namespace,
                )
        })
        .collect();
    if allowed.is_empty() {
        return Attachment::Refused(
            reasons::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "no listener of Gateway {} allows {} from namespace {} (see allowedRoutes)",
                gateway.key,
                kind_name(route.kind),
                route.key.namespace
            ),
        );
    }
    let attached: Vec<(usize, usize, Vec<hostname::Effective>)> = allowed
        .into_iter()
        .filter_map(|i| {
            let hosts =
                hostname::effective_hostnames(&gateway.listeners[i].hostname, &route.hostnames);
            (!hosts.is_empty()).then_some((gi, i, hosts))
        })
        .collect();
    if attached.is_empty() {
        let hosts: Vec<String> = route.hostnames.iter().map(|h| h.to_string()).collect();
        return Attachment::Refused(
            reasons::NO_MATCHING_LISTENER_HOSTNAME,
            format!(
                "hostnames {} match no listener hostname of Gateway {}",
                hosts.join(", "),
                gateway.key
            ),
        );
    }
    Attachment::Attached(attached)
}

pub(crate) fn kind_name(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "HTTPRoute",
        RouteKind::Grpc => "GRPCRoute",
        RouteKind::Tls => "TLSRoute",
    }
}

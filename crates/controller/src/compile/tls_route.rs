//! TLSRoute: read into the common route shape (attachment, hostname
//! intersection, backend resolution and status are the ones of the other
//! route kinds), then laid out per TLS port as an SNI table.

use std::borrow::Cow;
use std::sync::Arc;

use gateway_api::experimental::httproutes::{HttpRouteParentRefs, HttpRouteRulesBackendRefs};
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_model::{HostMatch, RouteKind, Rule, TlsMode};

use super::filters::reshape;
use super::hostname;
use super::route::{self, RouteSource, RuleSource};
use crate::snapshot::ObjectKey;

/// A TLSRoute in the common shape. Its parentRefs and backendRefs have the
/// JSON shape of (a subset of) HTTPRoute's and are read through it; its
/// rules have no matches and no filters.
pub(crate) fn from_tls<'a>(key: &'a ObjectKey, r: &'a TlsRoute) -> RouteSource<'a> {
    let mut invalid = Vec::new();
    let parent_refs = match r
        .spec
        .parent_refs
        .as_ref()
        .map(reshape::<_, Vec<HttpRouteParentRefs>>)
        .transpose()
    {
        Ok(refs) => refs
            .into_iter()
            .flatten()
            .map(|p| route::parent_ref(key, Cow::Owned(p)))
            .collect(),
        Err(e) => {
            invalid.push(e);
            Vec::new()
        }
    };
    let mut rules = Vec::new();
    for rule in &r.spec.rules {
        let backend_refs = match reshape::<_, Vec<HttpRouteRulesBackendRefs>>(&rule.backend_refs) {
            Ok(b) => b,
            Err(e) => {
                invalid.push(e);
                Vec::new()
            }
        };
        rules.push(RuleSource {
            name: rule.name.as_deref(),
            matches: Vec::new(),
            filters: Cow::Owned(Vec::new()),
            backend_refs: Cow::Owned(backend_refs),
            timeouts: None,
            retry: None,
        });
    }
    if rules.len() > 1 {
        // The CRD allows one rule; a second could never be chosen (a
        // TLSRoute rule has no matches).
        invalid.push("a TLSRoute takes one rule; merge the backendRefs into rules[0]".to_string());
    }
    route::build(
        RouteKind::Tls,
        key,
        &r.metadata,
        Some(&r.spec.hostnames),
        parent_refs,
        rules,
        invalid,
    )
}

/// A TLSRoute placed on a TLS port under one SNI hostname.
pub(crate) struct TlsEntry<'a> {
    pub host: &'a HostMatch,
    pub mode: TlsMode,
    /// Oldest route first on equal hostnames: (no timestamp, created,
    /// namespace, name).
    pub age: (bool, Option<&'a Time>, &'a str, &'a str),
    pub rule: &'a Arc<Rule>,
}

impl<'a> TlsEntry<'a> {
    pub fn new(
        source: &'a RouteSource<'a>,
        host: &'a HostMatch,
        mode: TlsMode,
        rule: &'a Arc<Rule>,
    ) -> TlsEntry<'a> {
        TlsEntry {
            host,
            mode,
            age: (
                source.created.is_none(),
                source.created,
                &source.key.namespace,
                &source.key.name,
            ),
            rule,
        }
    }
}

/// The SNI table of one TLS port: one entry per hostname, most specific
/// first. Where routes share a hostname the oldest wins (the others stay
/// Accepted, as with conflicting HTTPRoute matches). Every listener
/// hostname gets an entry, without a rule when no route serves it, so its
/// connections are never taken by a less specific listener's route.
pub(crate) fn sni_table(
    mut entries: Vec<TlsEntry<'_>>,
    listeners: &[(HostMatch, TlsMode)],
) -> Vec<portcullis_model::TlsRoute> {
    entries.sort_by(|a, b| {
        hostname::specificity_order(a.host, b.host).then_with(|| a.age.cmp(&b.age))
    });
    let mut out: Vec<portcullis_model::TlsRoute> = Vec::new();
    for e in entries {
        if out.last().is_some_and(|last| last.hostname == *e.host) {
            continue;
        }
        out.push(portcullis_model::TlsRoute {
            hostname: e.host.clone(),
            mode: e.mode,
            rule: Some(e.rule.clone()),
        });
    }
    for (host, mode) in listeners {
        if !out.iter().any(|r| r.hostname == *host) {
            out.push(portcullis_model::TlsRoute {
                hostname: host.clone(),
                mode: *mode,
                rule: None,
            });
        }
    }
    // Stable: equal hostnames cannot remain.
    out.sort_by(|a, b| hostname::specificity_order(&a.hostname, &b.hostname));
    out
}

//! Policy attachment (GEP-713) for our policy kinds, one mechanism for all.
//!
//! A kind plugs in with a [`PolicyCompiler`]: how to decode its rules, how
//! to resolve one policy's rules in its own namespace (Secrets, ...), how to
//! build the model from the effective rules, and where the model goes in
//! [`RulePolicies`]. This module does the rest:
//!
//! - resolves `targetRefs` (same namespace as the policy): a Gateway, one
//!   of its listeners (`sectionName`), an HTTPRoute/GRPCRoute, one of its
//!   named rules (`sectionName`), or a Service / one of its ports;
//! - computes, for every place a route rule is served (Gateway, listener,
//!   route, rule), the effective rules: **overrides** first, the least
//!   specific level winning; then **defaults**, the most specific level
//!   winning; within a level the oldest policy, then namespace/name. Each
//!   policy fills only what the higher-priority ones left unset
//!   ([`Merge::fill_from`]);
//! - writes each policy's `status.ancestors`: one entry per target, keyed by
//!   the target itself, with `Accepted` (`Accepted`, `TargetNotFound`,
//!   `Invalid`).
//!
//! A policy whose rules do not decode or resolve is `Invalid` and left out;
//! everything else is still applied. When the policies of one rule resolve
//! alone but cannot be built together, the rule is answered with 500
//! ([`RulePolicies::invalid`]): serving it without them could expose what
//! they protect.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portcullis_api::policy::{Merge, PolicyEnvelope, PolicyTargetReference};
use portcullis_api::{PolicyKind, GATEWAY_GROUP};
use portcullis_model::{RouteKind, Rule, RulePolicies};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::index::Index;
use crate::snapshot::{ObjectKey, PolicyObject, Snapshot};
use crate::status::{conditions_json, reasons, Condition, StatusKind, StatusUpdate};

/// What one policy kind supplies to the attachment mechanism.
pub(crate) trait PolicyCompiler {
    const KIND: PolicyKind;
    /// Which kinds of object the policy may target.
    const TARGETS: &'static [TargetKind];
    /// The kind's rules as users write them (`defaults`, `overrides`, or
    /// the top level of `spec`).
    type Rules: DeserializeOwned;
    /// One policy's rules with its references resolved in its namespace:
    /// the unit that is merged across levels.
    type Resolved: Merge + Clone;
    /// What the data plane reads.
    type Output: Send + Sync + 'static;
    /// An invalid policy of a fail-closed kind still attaches to its
    /// targets and makes their rules answer 500 ([`RulePolicies::invalid`])
    /// instead of being served as if it did not exist: for a policy that
    /// protects a backend (auth), being left out would open it.
    const FAIL_CLOSED: bool = false;

    /// Checks one policy's rules and resolves what they reference. `Err`
    /// makes the policy `Invalid` with that message.
    fn resolve(rules: &Self::Rules, ctx: &PolicyContext<'_>) -> Result<Self::Resolved, String>;

    /// Builds the model from the effective (merged) rules of one place.
    fn build(effective: &Self::Resolved) -> Result<Self::Output, String>;

    /// Puts the built model where the data plane looks for it.
    fn install(output: &Arc<Self::Output>, policies: &mut RulePolicies);
}

/// What a policy's rules are resolved against.
#[cfg_attr(not(test), allow(dead_code))] // until the first kind reads it
pub(crate) struct PolicyContext<'a> {
    pub index: &'a Index<'a>,
    /// The policy's namespace: where its references point.
    pub namespace: &'a str,
    /// `Kind namespace/name` of the policy, for messages.
    pub policy: String,
}

/// Kinds of object a policy can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Gateway,
    HttpRoute,
    GrpcRoute,
    Service,
}

impl TargetKind {
    fn of(target: &PolicyTargetReference) -> Option<TargetKind> {
        let core = matches!(target.group.as_str(), "" | "core");
        match (target.group.as_str(), target.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => Some(TargetKind::Gateway),
            (GATEWAY_GROUP, "HTTPRoute") => Some(TargetKind::HttpRoute),
            (GATEWAY_GROUP, "GRPCRoute") => Some(TargetKind::GrpcRoute),
            (_, "Service") if core => Some(TargetKind::Service),
            _ => None,
        }
    }
}

/// Attachment levels, least specific first. Service-attached policies use
/// the first two (the Service, one of its ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Level {
    Gateway,
    Listener,
    Route,
    Rule,
}

/// A target as looked up: kind, object and section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TargetKey {
    Gateway(ObjectKey, Option<String>),
    Route(RouteKind, ObjectKey, Option<String>),
    Service(ObjectKey, Option<String>),
}

/// Where a route rule is served: what its policies can be attached to.
pub(crate) struct RuleAt<'a> {
    pub gateway: &'a ObjectKey,
    pub listener: &'a str,
    pub route_kind: RouteKind,
    pub route: &'a ObjectKey,
    pub rule_name: Option<&'a str>,
}

/// Which objects exist, for target checks.
pub(crate) struct Targets<'a> {
    /// Our Gateways and their listener names.
    pub gateways: HashMap<&'a ObjectKey, Vec<&'a str>>,
    /// Routes and their rule names.
    pub routes: HashMap<(RouteKind, &'a ObjectKey), Vec<Option<&'a str>>>,
    pub snapshot: &'a Snapshot,
}

/// One policy of a kind, decoded and resolved.
struct Parsed<'a, R> {
    key: &'a ObjectKey,
    object: &'a PolicyObject,
    created: Option<&'a Time>,
    targets: Vec<PolicyTargetReference>,
    defaults: Option<R>,
    overrides: Option<R>,
    /// Why the policy is left out, if it is.
    invalid: Option<String>,
}

/// The effective rules of one place: which policies contributed, in
/// priority order (`true` for their overrides), and the model built.
pub(crate) struct Effective<O> {
    pub contributors: Vec<(usize, bool)>,
    pub output: Result<Arc<O>, String>,
}

/// A model built from effective rules, or why it could not be.
type Built<O> = Result<Arc<O>, String>;
/// Built models by contributor list (policy index, is an override).
type BuiltCache<O> = HashMap<Vec<(usize, bool)>, Built<O>>;

/// The policies of one kind, indexed by target.
pub(crate) struct Attachments<'a, K: PolicyCompiler> {
    policies: Vec<Parsed<'a, K::Resolved>>,
    by_target: HashMap<TargetKey, Vec<usize>>,
    /// Built models by contributor list: policies on a Gateway are built
    /// once, not once per rule.
    built: RefCell<BuiltCache<K::Output>>,
    /// Messages for policies whose combination with others failed.
    combined_problems: RefCell<BTreeMap<usize, String>>,
}

impl<'a, K: PolicyCompiler> Attachments<'a, K> {
    pub fn new(index: &'a Index<'a>) -> Attachments<'a, K> {
        let mut policies = Vec::new();
        let mut by_target: HashMap<TargetKey, Vec<usize>> = HashMap::new();
        let objects = index.snapshot.policies.get(&K::KIND);
        for (key, object) in objects.into_iter().flatten() {
            let parsed = parse::<K>(index, key, object);
            let i = policies.len();
            if parsed.invalid.is_none() || K::FAIL_CLOSED {
                for t in &parsed.targets {
                    if let Some(target) = target_key(&key.namespace, t) {
                        let list = by_target.entry(target).or_default();
                        if !list.contains(&i) {
                            list.push(i);
                        }
                    }
                }
            }
            policies.push(parsed);
        }
        Attachments {
            policies,
            by_target,
            built: Default::default(),
            combined_problems: Default::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The effective policy of a route rule where it is served, if any
    /// policy applies.
    pub fn for_rule(&self, at: &RuleAt<'_>) -> Option<Effective<K::Output>> {
        let route = |section: Option<&str>| {
            TargetKey::Route(at.route_kind, at.route.clone(), section.map(str::to_string))
        };
        let mut levels = vec![
            (Level::Gateway, TargetKey::Gateway(at.gateway.clone(), None)),
            (
                Level::Listener,
                TargetKey::Gateway(at.gateway.clone(), Some(at.listener.to_string())),
            ),
            (Level::Route, route(None)),
        ];
        if let Some(name) = at.rule_name {
            levels.push((Level::Rule, route(Some(name))));
        }
        self.effective(&levels)
    }

    /// The effective policy of a Service port (`port_name` when the port
    /// has one), if any policy applies.
    #[cfg_attr(not(test), allow(dead_code))] // until a Service-attached kind
    pub fn for_service(
        &self,
        service: &ObjectKey,
        port_name: Option<&str>,
    ) -> Option<Effective<K::Output>> {
        let mut levels = vec![(Level::Gateway, TargetKey::Service(service.clone(), None))];
        if let Some(port) = port_name {
            levels.push((
                Level::Listener,
                TargetKey::Service(service.clone(), Some(port.to_string())),
            ));
        }
        self.effective(&levels)
    }

    /// The merged rules of a Service port (`port_name` when the port has
    /// one), for kinds whose Service-attached policies shape the backend
    /// itself rather than a rule.
    pub fn merged_for_service(
        &self,
        service: &ObjectKey,
        port_name: Option<&str>,
    ) -> Option<K::Resolved> {
        let mut levels = vec![(Level::Gateway, TargetKey::Service(service.clone(), None))];
        if let Some(port) = port_name {
            levels.push((
                Level::Listener,
                TargetKey::Service(service.clone(), Some(port.to_string())),
            ));
        }
        let contributors = self.contributors(&levels)?;
        self.merge(&contributors)
    }

    fn effective(&self, levels: &[(Level, TargetKey)]) -> Option<Effective<K::Output>> {
        let contributors = self.contributors(levels)?;
        let invalid = contributors.iter().find_map(|&(i, _)| {
            let p = self.policies.get(i)?;
            Some(format!(
                "{} {} is invalid: {}",
                K::KIND,
                p.key,
                p.invalid.as_ref()?
            ))
        });
        if let Some(message) = invalid {
            return Some(Effective {
                contributors,
                output: Err(message),
            });
        }
        if let Some(built) = self.built.borrow().get(&contributors) {
            return Some(Effective {
                contributors,
                output: built.clone(),
            });
        }
        let output = match self.merge(&contributors) {
            Some(m) => K::build(&m).map(Arc::new),
            None => Err("no rules".to_string()),
        };
        if let Err(e) = &output {
            let mut problems = self.combined_problems.borrow_mut();
            for &(i, _) in &contributors {
                problems.entry(i).or_insert_with(|| {
                    format!("cannot be combined with the other policies of a rule: {e}")
                });
            }
        }
        self.built
            .borrow_mut()
            .insert(contributors.clone(), output.clone());
        Some(Effective {
            contributors,
            output,
        })
    }

    /// The policies attached at `levels`, in priority order (`true` for
    /// their overrides); `None` when there are none.
    fn contributors(&self, levels: &[(Level, TargetKey)]) -> Option<Vec<(usize, bool)>> {
        if self.by_target.is_empty() {
            return None;
        }
        let mut attached: Vec<(Level, usize)> = Vec::new();
        for (level, key) in levels {
            for &i in self.by_target.get(key).into_iter().flatten() {
                attached.push((*level, i));
            }
        }
        if attached.is_empty() {
            return None;
        }
        // Only fail-closed kinds index invalid policies (see FAIL_CLOSED):
        // such a policy alone decides, and `effective` turns it into an error.
        if let Some(&(_, i)) = attached
            .iter()
            .find(|&&(_, i)| self.policies.get(i).is_some_and(|p| p.invalid.is_some()))
        {
            return Some(vec![(i, false)]);
        }
        let age = |i: usize| {
            self.policies
                .get(i)
                .map(|p| (p.created.map(|t| t.0), p.key))
        };
        // Overrides: least specific level first; defaults: most specific
        // first; within a level the oldest, then namespace/name.
        let mut overrides: Vec<(Level, usize)> = attached
            .iter()
            .copied()
            .filter(|&(_, i)| self.policies.get(i).is_some_and(|p| p.overrides.is_some()))
            .collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| age(a.1).cmp(&age(b.1))));
        let mut defaults: Vec<(Level, usize)> = attached
            .iter()
            .copied()
            .filter(|&(_, i)| self.policies.get(i).is_some_and(|p| p.defaults.is_some()))
            .collect();
        defaults.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| age(a.1).cmp(&age(b.1))));

        let contributors: Vec<(usize, bool)> = overrides
            .iter()
            .map(|&(_, i)| (i, true))
            .chain(defaults.iter().map(|&(_, i)| (i, false)))
            .collect();
        (!contributors.is_empty()).then_some(contributors)
    }

    /// Each contributor fills what the ones before it left unset.
    fn merge(&self, contributors: &[(usize, bool)]) -> Option<K::Resolved> {
        let mut merged: Option<K::Resolved> = None;
        for &(i, is_override) in contributors {
            let Some(p) = self.policies.get(i) else {
                continue;
            };
            let rules = if is_override {
                &p.overrides
            } else {
                &p.defaults
            };
            let Some(rules) = rules else { continue };
            match merged.as_mut() {
                None => merged = Some(rules.clone()),
                Some(m) => m.fill_from(rules),
            }
        }
        merged
    }

    /// The `status` of every policy of this kind.
    pub fn statuses(&self, targets: &Targets<'_>, controller_name: &str) -> Vec<StatusUpdate> {
        let combined = self.combined_problems.borrow();
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let generation = p.object.metadata.generation.unwrap_or(0);
                let mut problems = Vec::new();
                let ancestors: Vec<Value> = p
                    .targets
                    .iter()
                    .map(|t| {
                        let found = check_target::<K>(&p.key.namespace, t, targets);
                        let accepted = match (&p.invalid, found, combined.get(&i)) {
                            (Some(message), _, _) => {
                                Condition::new(reasons::ACCEPTED, false, reasons::INVALID, message)
                            }
                            (None, Err((reason, message)), _) => {
                                Condition::new(reasons::ACCEPTED, false, reason, message)
                            }
                            (None, Ok(()), Some(message)) => {
                                Condition::new(reasons::ACCEPTED, false, reasons::INVALID, message)
                            }
                            (None, Ok(()), None) => Condition::new(
                                reasons::ACCEPTED,
                                true,
                                reasons::ACCEPTED,
                                "Policy is attached",
                            ),
                        };
                        if !accepted.status {
                            problems.push(format!(
                                "{} {}: {}: {}",
                                t.kind, t.name, accepted.reason, accepted.message
                            ));
                        }
                        ancestor(&p.key.namespace, t, controller_name, &accepted, generation)
                    })
                    .collect();
                if p.targets.is_empty() {
                    if let Some(message) = &p.invalid {
                        problems.push(format!("{}: {message}", reasons::INVALID));
                    }
                }
                StatusUpdate {
                    kind: StatusKind::Policy(K::KIND),
                    namespace: Some(p.key.namespace.clone()),
                    name: p.key.name.clone(),
                    status: Value::Object(Map::from_iter([(
                        "ancestors".to_string(),
                        Value::Array(ancestors),
                    )])),
                    problems,
                }
            })
            .collect()
    }
}

/// Decodes the envelope and resolves the rules of one policy.
fn parse<'a, K: PolicyCompiler>(
    index: &'a Index<'a>,
    key: &'a ObjectKey,
    object: &'a PolicyObject,
) -> Parsed<'a, K::Resolved> {
    let mut parsed = Parsed {
        key,
        object,
        created: object.metadata.creation_timestamp.as_ref(),
        targets: Vec::new(),
        defaults: None,
        overrides: None,
        invalid: None,
    };
    // The envelope's own fields, then the rest of `spec` as the shorthand
    // for `defaults`.
    let mut rest = object.spec.as_object().cloned().unwrap_or_default();
    let envelope_fields = ["targetRefs", "defaults", "overrides"];
    let envelope: Map<String, Value> = envelope_fields
        .iter()
        .filter_map(|f| rest.remove(*f).map(|v| (f.to_string(), v)))
        .collect();
    let envelope: PolicyEnvelope<Value> = match serde_json::from_value(Value::Object(envelope)) {
        Ok(e) => e,
        Err(e) => {
            parsed.invalid = Some(format!("spec: {e}"));
            return parsed;
        }
    };
    parsed.targets = envelope.target_refs;
    let shorthand = (!rest.is_empty()).then_some(Value::Object(rest));
    let defaults = match (envelope.defaults, shorthand) {
        (Some(_), Some(_)) => {
            parsed.invalid = Some(
                "spec: rules are given both at the top level and under `defaults`; use one"
                    .to_string(),
            );
            return parsed;
        }
        (d, s) => d.or(s),
    };
    if defaults.is_none() && envelope.overrides.is_none() {
        parsed.invalid = Some("spec: no rules (neither `defaults` nor `overrides`)".to_string());
        return parsed;
    }
    let ctx = PolicyContext {
        index,
        namespace: &key.namespace,
        policy: format!("{} {key}", K::KIND),
    };
    let resolve = |field: &str, value: Option<Value>| -> Result<Option<K::Resolved>, String> {
        let Some(value) = value else { return Ok(None) };
        let rules: K::Rules =
            serde_json::from_value(value).map_err(|e| format!("spec.{field}: {e}"))?;
        K::resolve(&rules, &ctx)
            .map(Some)
            .map_err(|e| format!("spec.{field}: {e}"))
    };
    match (
        resolve("defaults", defaults),
        resolve("overrides", envelope.overrides),
    ) {
        (Ok(d), Ok(o)) => {
            parsed.defaults = d;
            parsed.overrides = o;
        }
        (Err(e), _) | (_, Err(e)) => parsed.invalid = Some(e),
    }
    parsed
}

fn target_key(namespace: &str, t: &PolicyTargetReference) -> Option<TargetKey> {
    let key = ObjectKey::new(namespace, t.name.clone());
    let section = t.section_name.clone();
    Some(match TargetKind::of(t)? {
        TargetKind::Gateway => TargetKey::Gateway(key, section),
        TargetKind::HttpRoute => TargetKey::Route(RouteKind::Http, key, section),
        TargetKind::GrpcRoute => TargetKey::Route(RouteKind::Grpc, key, section),
        TargetKind::Service => TargetKey::Service(key, section),
    })
}

/// Does the target exist (and may this kind attach to it)?
fn check_target<K: PolicyCompiler>(
    namespace: &str,
    t: &PolicyTargetReference,
    targets: &Targets<'_>,
) -> Result<(), (&'static str, String)> {
    let kind = TargetKind::of(t)
        .filter(|k| K::TARGETS.contains(k))
        .ok_or_else(|| {
            (
                reasons::INVALID,
                format!(
                    "a {} cannot target {} (group {:?})",
                    K::KIND,
                    t.kind,
                    t.group
                ),
            )
        })?;
    let key = ObjectKey::new(namespace, t.name.clone());
    let section = t.section_name.as_deref();
    let not_found = |what: String| Err((reasons::TARGET_NOT_FOUND, what));
    match kind {
        TargetKind::Gateway => match targets.gateways.get(&key) {
            None => not_found(format!(
                "Gateway {key} not found (or not of a GatewayClass of this controller)"
            )),
            Some(listeners) => match section {
                Some(s) if !listeners.contains(&s) => {
                    not_found(format!("Gateway {key} has no listener named {s:?}"))
                }
                _ => Ok(()),
            },
        },
        TargetKind::HttpRoute | TargetKind::GrpcRoute => {
            let route_kind = if kind == TargetKind::HttpRoute {
                RouteKind::Http
            } else {
                RouteKind::Grpc
            };
            match targets.routes.get(&(route_kind, &key)) {
                None => not_found(format!("{} {key} not found", t.kind)),
                Some(rules) => match section {
                    Some(s) if !rules.contains(&Some(s)) => {
                        not_found(format!("{} {key} has no rule named {s:?}", t.kind))
                    }
                    _ => Ok(()),
                },
            }
        }
        TargetKind::Service => match targets.snapshot.services.get(&key) {
            None => not_found(format!("Service {key} not found")),
            Some(service) => {
                let has_port = |name: &str| {
                    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
                    ports
                        .into_iter()
                        .flatten()
                        .any(|p| p.name.as_deref() == Some(name))
                };
                match section {
                    Some(s) if !has_port(s) => {
                        not_found(format!("Service {key} has no port named {s:?}"))
                    }
                    _ => Ok(()),
                }
            }
        },
    }
}

fn ancestor(
    namespace: &str,
    t: &PolicyTargetReference,
    controller_name: &str,
    accepted: &Condition,
    generation: i64,
) -> Value {
    let mut reference = Map::new();
    reference.insert("group".into(), t.group.clone().into());
    reference.insert("kind".into(), t.kind.clone().into());
    reference.insert("namespace".into(), namespace.into());
    reference.insert("name".into(), t.name.clone().into());
    if let Some(s) = &t.section_name {
        reference.insert("sectionName".into(), s.clone().into());
    }
    let mut entry = Map::new();
    entry.insert("ancestorRef".into(), Value::Object(reference));
    entry.insert("controllerName".into(), controller_name.into());
    entry.insert(
        "conditions".into(),
        conditions_json(std::slice::from_ref(accepted), generation),
    );
    Value::Object(entry)
}

/// A route rule where it is served: the placement (route on a listener) and
/// the rule's index in its route.
pub(crate) struct ServedRule<'a> {
    pub placement: usize,
    pub rule_index: usize,
    pub route_index: usize,
    pub at: RuleAt<'a>,
    pub rule: &'a Arc<Rule>,
}

/// What the policies change: the rules that are served with policies, by
/// (placement, rule index), and the policies' statuses.
#[derive(Default)]
pub(crate) struct PolicyOutcome {
    pub rules: HashMap<(usize, usize), Arc<Rule>>,
    pub statuses: Vec<StatusUpdate>,
}

/// Applies every policy kind to the served rules.
pub(crate) fn apply(
    index: &Index<'_>,
    served: &[ServedRule<'_>],
    targets: &Targets<'_>,
    controller_name: &str,
) -> PolicyOutcome {
    // Every policy kind, in the order their stages run on the data path:
    // `kinds.run::<K>()` for each.
    apply_kinds(index, served, targets, controller_name, |kinds| {
        kinds.run::<super::auth::AuthPolicyCompiler>();
        kinds.run::<super::ratelimit::RateLimits>();
        kinds.run::<super::backend_policy::BackendPolicyCompiler>();
    })
}

fn apply_kinds(
    index: &Index<'_>,
    served: &[ServedRule<'_>],
    targets: &Targets<'_>,
    controller_name: &str,
    kinds: impl FnOnce(&mut Runner<'_, '_>),
) -> PolicyOutcome {
    let mut outcome = PolicyOutcome::default();
    if index.snapshot.policies.values().all(BTreeMap::is_empty) {
        return outcome;
    }
    let mut applied: Vec<Applied> = served.iter().map(|_| Applied::default()).collect();
    let mut run = Runner {
        index,
        served,
        targets,
        controller_name,
        applied: &mut applied,
        statuses: &mut outcome.statuses,
    };
    kinds(&mut run);

    // A route rule served under several listeners with the same policies
    // stays one `Rule`.
    let mut shared: HashMap<(usize, usize, Vec<Contributor>), Arc<Rule>> = HashMap::new();
    for (s, a) in served.iter().zip(applied) {
        if a.contributors.is_empty() {
            continue;
        }
        let key = (s.route_index, s.rule_index, a.contributors);
        let rule = shared
            .entry(key)
            .or_insert_with(|| {
                let mut rule = Rule::clone(s.rule);
                rule.policies = a.policies;
                Arc::new(rule)
            })
            .clone();
        outcome.rules.insert((s.placement, s.rule_index), rule);
    }
    outcome
}

/// One policy's part in a rule: kind, index among its kind, override.
type Contributor = (PolicyKind, usize, bool);

/// What the kinds applied to one served rule so far.
#[derive(Default)]
struct Applied {
    contributors: Vec<Contributor>,
    policies: RulePolicies,
}

struct Runner<'r, 'a> {
    index: &'r Index<'a>,
    served: &'r [ServedRule<'r>],
    targets: &'r Targets<'r>,
    controller_name: &'r str,
    applied: &'r mut [Applied],
    statuses: &'r mut Vec<StatusUpdate>,
}

impl Runner<'_, '_> {
    /// Attaches the policies of kind `K` to every served rule.
    #[cfg_attr(not(test), allow(dead_code))] // until the first kind registers
    fn run<K: PolicyCompiler>(&mut self) {
        let attachments = Attachments::<K>::new(self.index);
        if attachments.is_empty() {
            return;
        }
        for (s, applied) in self.served.iter().zip(self.applied.iter_mut()) {
            let Some(effective) = attachments.for_rule(&s.at) else {
                continue;
            };
            applied
                .contributors
                .extend(effective.contributors.iter().map(|&(i, o)| (K::KIND, i, o)));
            match &effective.output {
                Ok(output) => K::install(output, &mut applied.policies),
                Err(e) => applied.policies.invalid = Some(format!("{}: {e}", K::KIND)),
            }
        }
        self.statuses
            .extend(attachments.statuses(self.targets, self.controller_name));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_model::{RuleId, Timeouts};
    use serde::Deserialize;

    use super::*;
    use crate::file::parse_documents;

    /// A policy kind for the tests: named values, merged by name; a value
    /// `broken` fails the build, a `secret` must exist.
    struct Values;

    #[derive(Deserialize)]
    struct ValuesRules {
        values: BTreeMap<String, String>,
        #[serde(default)]
        secret: Option<String>,
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Resolved(BTreeMap<String, String>);

    impl Merge for Resolved {
        fn fill_from(&mut self, lower: &Self) {
            for (k, v) in &lower.0 {
                self.0.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    impl PolicyCompiler for Values {
        const KIND: PolicyKind = PolicyKind::RateLimitPolicy;
        const TARGETS: &'static [TargetKind] = &[
            TargetKind::Gateway,
            TargetKind::HttpRoute,
            TargetKind::Service,
        ];
        type Rules = ValuesRules;
        type Resolved = Resolved;
        type Output = BTreeMap<String, String>;

        fn resolve(rules: &ValuesRules, ctx: &PolicyContext<'_>) -> Result<Resolved, String> {
            if let Some(name) = &rules.secret {
                let key = ObjectKey::new(ctx.namespace, name.clone());
                if !ctx.index.snapshot.secrets.contains_key(&key) {
                    return Err(format!("Secret {key} (of {}) not found", ctx.policy));
                }
            }
            Ok(Resolved(rules.values.clone()))
        }

        fn build(effective: &Resolved) -> Result<Self::Output, String> {
            match effective.0.values().any(|v| v == "broken") {
                true => Err("a value is broken".to_string()),
                false => Ok(effective.0.clone()),
            }
        }

        fn install(_: &Arc<Self::Output>, _: &mut RulePolicies) {}
    }

    fn snapshot(yaml: &str) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for o in parse_documents(yaml).expect("valid test YAML") {
            snapshot.insert(o);
        }
        snapshot
    }

    fn policy(name: &str, created: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: portcullis.dev/v1alpha1\nkind: RateLimitPolicy\n\
             metadata: {{name: {name}, namespace: app, creationTimestamp: \"{created}\", generation: 2}}\n\
             spec: {spec}\n"
        )
    }

    const GW: &str = "{group: gateway.networking.k8s.io, kind: Gateway, name: gw}";
    const LISTENER: &str =
        "{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: http}";
    const ROUTE: &str = "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}";
    const RULE: &str =
        "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: first}";

    fn keys() -> (ObjectKey, ObjectKey) {
        (ObjectKey::new("app", "gw"), ObjectKey::new("app", "r"))
    }

    fn at<'a>(gw: &'a ObjectKey, route: &'a ObjectKey, rule: Option<&'a str>) -> RuleAt<'a> {
        RuleAt {
            gateway: gw,
            listener: "http",
            route_kind: RouteKind::Http,
            route,
            rule_name: rule,
        }
    }

    fn effective(yaml: &str, rule: Option<&str>) -> Option<BTreeMap<String, String>> {
        let snapshot = snapshot(yaml);
        let index = Index::new(&snapshot);
        let attachments = Attachments::<Values>::new(&index);
        let (gw, route) = keys();
        let e = attachments.for_rule(&at(&gw, &route, rule))?;
        Some(e.output.expect("builds").as_ref().clone())
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_more_specific_wins_and_less_specific_fills_the_rest() {
        let yaml = [
            policy(
                "on-gw",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{GW}], defaults: {{values: {{a: gw, b: gw}}}}}}"),
            ),
            policy(
                "on-route",
                "2026-01-02T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: route}}}}"),
            ),
        ]
        .concat();
        assert_eq!(
            effective(&yaml, None),
            Some(map(&[("a", "route"), ("b", "gw")]))
        );
    }

    #[test]
    fn overrides_less_specific_wins_over_everything() {
        let yaml = [
            policy(
                "on-gw",
                "2026-01-03T00:00:00Z",
                &format!("{{targetRefs: [{GW}], overrides: {{values: {{a: gw-override}}}}}}"),
            ),
            policy(
                "on-listener",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{LISTENER}], overrides: {{values: {{a: listener, c: listener}}}}}}"),
            ),
            policy(
                "on-rule",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{RULE}], defaults: {{values: {{a: rule, b: rule, c: rule}}}}}}"),
            ),
        ]
        .concat();
        assert_eq!(
            effective(&yaml, Some("first")),
            Some(map(&[
                ("a", "gw-override"),
                ("b", "rule"),
                ("c", "listener")
            ]))
        );
        // Another rule of the route does not get the rule-level policy.
        assert_eq!(
            effective(&yaml, Some("second")),
            Some(map(&[("a", "gw-override"), ("c", "listener")]))
        );
    }

    #[test]
    fn same_level_ties_go_to_the_oldest_then_the_name() {
        let yaml = [
            policy(
                "b-newer",
                "2026-02-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: newer}}}}"),
            ),
            policy(
                "c-older",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: older}}}}"),
            ),
            policy(
                "a-older-too",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: older-by-name, z: z}}}}"),
            ),
        ]
        .concat();
        assert_eq!(
            effective(&yaml, None),
            Some(map(&[("a", "older-by-name"), ("z", "z")]))
        );
    }

    #[test]
    fn nothing_attached_is_none() {
        let yaml = policy(
            "elsewhere",
            "2026-01-01T00:00:00Z",
            "{targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: other}], values: {a: x}}",
        );
        assert_eq!(effective(&yaml, None), None);
    }

    fn statuses(yaml: &str) -> Vec<StatusUpdate> {
        let snapshot = snapshot(yaml);
        let index = Index::new(&snapshot);
        let attachments = Attachments::<Values>::new(&index);
        let (gw, route) = keys();
        // Builds what is attached, as compile would, so that combination
        // problems are known.
        let _ = attachments.for_rule(&at(&gw, &route, Some("first")));
        let targets = Targets {
            gateways: HashMap::from([(&gw, vec!["http"])]),
            routes: HashMap::from([((RouteKind::Http, &route), vec![Some("first"), None])]),
            snapshot: &snapshot,
        };
        attachments.statuses(&targets, "portcullis.dev/gateway-controller")
    }

    fn accepted(status: &StatusUpdate, target: usize) -> (String, String, String) {
        let c = &status.status["ancestors"][target]["conditions"][0];
        assert_eq!(c["type"], "Accepted");
        assert_eq!(c["observedGeneration"], 2);
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    #[test]
    fn status_has_one_ancestor_per_target_with_its_own_verdict() {
        let yaml = policy(
            "p",
            "2026-01-01T00:00:00Z",
            &format!(
                "{{targetRefs: [{GW}, {RULE}, \
                 {{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: nope}}, \
                 {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}}, \
                 {{group: '', kind: Service, name: svc}}, \
                 {{group: gateway.networking.k8s.io, kind: GRPCRoute, name: r}}], values: {{a: b}}}}"
            ),
        );
        let all = statuses(&yaml);
        let s = &all[0];
        assert_eq!(s.kind, StatusKind::Policy(PolicyKind::RateLimitPolicy));
        let ancestors = s.status["ancestors"].as_array().expect("ancestors");
        assert_eq!(ancestors.len(), 6);
        assert_eq!(
            ancestors[1]["ancestorRef"],
            serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                "namespace": "app", "name": "r", "sectionName": "first"})
        );
        assert_eq!(
            ancestors[0]["controllerName"],
            "portcullis.dev/gateway-controller"
        );
        assert_eq!(accepted(s, 0).0, "True");
        assert_eq!(accepted(s, 1).0, "True");
        let (status, reason, message) = accepted(s, 2);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "TargetNotFound")
        );
        assert!(message.contains("no listener named \"nope\""), "{message}");
        assert_eq!(accepted(s, 3).1, "TargetNotFound");
        let (_, reason, message) = accepted(s, 4);
        assert_eq!(reason, "TargetNotFound");
        assert!(message.contains("Service app/svc not found"), "{message}");
        let (_, reason, message) = accepted(s, 5);
        assert_eq!(reason, "Invalid", "a kind that cannot target GRPCRoutes");
        assert!(message.contains("cannot target GRPCRoute"), "{message}");
        assert_eq!(s.problems.len(), 4, "{:?}", s.problems);
    }

    #[test]
    fn an_invalid_policy_is_reported_and_left_out() {
        let yaml = [
            policy(
                "bad-secret",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: bad}}, secret: nope}}"),
            ),
            policy(
                "both",
                "2026-01-01T00:00:00Z",
                &format!(
                    "{{targetRefs: [{ROUTE}], values: {{a: x}}, defaults: {{values: {{a: y}}}}}}"
                ),
            ),
            policy(
                "wrong-shape",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: [1, 2]}}"),
            ),
            policy(
                "good",
                "2026-03-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{a: good}}}}"),
            ),
        ]
        .concat();
        assert_eq!(effective(&yaml, None), Some(map(&[("a", "good")])));
        let all = statuses(&yaml);
        let by_name = |n: &str| all.iter().find(|s| s.name == n).expect("a status");
        let (status, reason, message) = accepted(by_name("bad-secret"), 0);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
        assert!(
            message.contains("Secret app/nope (of RateLimitPolicy app/bad-secret) not found"),
            "{message}"
        );
        assert!(accepted(by_name("both"), 0)
            .2
            .contains("both at the top level"));
        assert!(accepted(by_name("wrong-shape"), 0)
            .2
            .starts_with("spec.defaults"));
        assert_eq!(accepted(by_name("good"), 0).0, "True");
    }

    #[test]
    fn service_policies_apply_to_the_service_and_its_named_ports() {
        let svc = "{group: '', kind: Service, name: svc}";
        let port = "{group: '', kind: Service, name: svc, sectionName: grpc}";
        let yaml = [
            policy(
                "whole",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{svc}], values: {{a: svc, b: svc}}}}"),
            ),
            policy(
                "port",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{port}], values: {{a: port}}}}"),
            ),
        ]
        .concat();
        let snapshot = snapshot(&yaml);
        let index = Index::new(&snapshot);
        let attachments = Attachments::<Values>::new(&index);
        let key = ObjectKey::new("app", "svc");
        let get = |port: Option<&str>| {
            attachments
                .for_service(&key, port)
                .map(|e| e.output.expect("builds").as_ref().clone())
        };
        assert_eq!(get(Some("grpc")), Some(map(&[("a", "port"), ("b", "svc")])));
        assert_eq!(get(Some("http")), Some(map(&[("a", "svc"), ("b", "svc")])));
        assert_eq!(get(None), Some(map(&[("a", "svc"), ("b", "svc")])));
        assert!(attachments
            .for_service(&ObjectKey::new("app", "other"), None)
            .is_none());
    }

    fn rule() -> Arc<Rule> {
        Arc::new(Rule {
            id: RuleId {
                kind: RouteKind::Http,
                namespace: "app".into(),
                name: "r".into(),
                rule_index: 0,
                rule_name: Some("first".into()),
            },
            filters: vec![],
            backends: vec![],
            timeouts: Timeouts::default(),
            retry: None,
            policies: RulePolicies::default(),
        })
    }

    #[test]
    fn rules_whose_policies_cannot_be_combined_fail_closed() {
        let yaml = [
            policy(
                "gw",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{GW}], values: {{a: broken}}}}"),
            ),
            policy(
                "route",
                "2026-01-01T00:00:00Z",
                &format!("{{targetRefs: [{ROUTE}], values: {{b: fine}}}}"),
            ),
        ]
        .concat();
        let snapshot = snapshot(&yaml);
        let index = Index::new(&snapshot);
        let (gw, route) = keys();
        let original = rule();
        let served: Vec<ServedRule> = (0..3)
            .map(|placement| ServedRule {
                placement,
                rule_index: 0,
                route_index: 0,
                at: at(&gw, &route, Some("first")),
                rule: &original,
            })
            .collect();
        let targets = Targets {
            gateways: HashMap::from([(&gw, vec!["http"])]),
            routes: HashMap::from([((RouteKind::Http, &route), vec![Some("first")])]),
            snapshot: &snapshot,
        };
        let outcome = apply_kinds(&index, &served, &targets, "c", |k| k.run::<Values>());
        let served_rule = outcome.rules.get(&(0, 0)).expect("the rule has policies");
        let invalid = served_rule.policies.invalid.as_deref().unwrap_or_default();
        assert!(invalid.contains("a value is broken"), "{invalid}");
        assert!(
            original.policies.invalid.is_none(),
            "the shared rule is untouched"
        );
        // Same rule, same policies, three placements: one Rule.
        let other = outcome.rules.get(&(2, 0)).expect("placement 2");
        assert!(Arc::ptr_eq(served_rule, other));
        let status = outcome
            .statuses
            .iter()
            .find(|s| s.name == "route")
            .expect("status");
        let c = &status.status["ancestors"][0]["conditions"][0];
        assert_eq!(c["status"], "False");
        assert!(c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be combined"));
    }
}

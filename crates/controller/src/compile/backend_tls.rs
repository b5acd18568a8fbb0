//! `BackendTLSPolicy` (Gateway API v1): TLS from the gateway to the Service
//! ports it targets, and the Gateway's backend client certificate
//! (`spec.tls.backend.clientCertificateRef`) presented for mTLS.
//!
//! - A policy targets core Services, optionally one port by `sectionName`
//!   (the port's name). A policy for a port wins over one for the whole
//!   Service; two for the same Service and section conflict: the oldest
//!   (creation time, then namespace/name) wins, the others are `Accepted:
//!   False/Conflicted`.
//! - `validation.caCertificateRefs` (ConfigMap or Secret `ca.crt`, via
//!   [`super::ca_bundle`]) or `wellKnownCACertificates: System`;
//!   `hostname` is the SNI and, without `subjectAltNames`, the name the
//!   certificate must carry.
//! - A policy that cannot be honoured (no valid CA, bad hostname) still
//!   claims its ports: their traffic fails (502) rather than going out in
//!   plain text or unverified.
//! - Status: one `status.ancestors` entry per Gateway of ours that has a
//!   route to a targeted Service, with `Accepted` and `ResolvedRefs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType as SanType,
};
use portcullis_model::{BackendTls, ClientCertificate, SubjectAltName, TrustRoots};
use serde_json::{json, Map, Value};

use super::ca_bundle::{self, CaProblemKind, CaRef};
use super::gateway::GatewayState;
use super::refs;
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{conditions_json, reasons, Condition, StatusKind, StatusUpdate};

/// What a policy resolved to, before it is placed on ports.
struct Resolved<'a> {
    key: &'a ObjectKey,
    policy: &'a BackendTlsPolicy,
    /// `Accepted`: `Err((reason, message))` when not.
    accepted: Result<(), (&'static str, String)>,
    /// `ResolvedRefs`.
    resolved: Result<(), (&'static str, String)>,
    tls: Arc<BackendTls>,
}

/// The compiled policies: the TLS of each targeted Service port, and the
/// per-policy state the statuses are rendered from.
#[derive(Default)]
pub(crate) struct BackendTlsPolicies<'a> {
    /// By Service and port number.
    pub by_port: HashMap<(ObjectKey, i32), Arc<BackendTls>>,
    policies: Vec<Resolved<'a>>,
}

/// The backend client certificate of the Gateways served by this process.
/// Backends are shared by every Gateway of a process (in a cluster a proxy
/// serves one Gateway), so the first Gateway (namespace/name order) with a
/// usable certificate sets it; a Gateway asking for another one is told.
pub(crate) fn gateway_client_certificate(
    snapshot: &Snapshot,
    gateways: &mut [GatewayState<'_>],
) -> Option<ClientCertificate> {
    let mut chosen: Option<(ObjectKey, ClientCertificate)> = None;
    for g in gateways.iter_mut() {
        let r = g
            .gateway
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.backend.as_ref())
            .and_then(|b| b.client_certificate_ref.as_ref());
        let Some(r) = r else { continue };
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&g.key.namespace);
        let secret = ObjectKey::new(namespace, r.name.clone());
        let result = if !group.is_empty() || kind != "Secret" {
            Err((
                reasons::INVALID_CLIENT_CERTIFICATE_REF,
                format!("spec.tls.backend.clientCertificateRef {secret} has group {group:?} kind {kind:?}: only core Secrets are supported"),
            ))
        } else if !refs::permitted(
            snapshot,
            &refs::From {
                group: portcullis_api::GATEWAY_GROUP,
                kind: "Gateway",
                namespace: &g.key.namespace,
            },
            &refs::To {
                group: "",
                kind: "Secret",
                namespace,
                name: &r.name,
            },
        ) {
            Err((
                reasons::REF_NOT_PERMITTED,
                format!("spec.tls.backend.clientCertificateRef to Secret {secret} crosses namespaces: add a ReferenceGrant in namespace {namespace} from Gateways in {}", g.key.namespace),
            ))
        } else {
            super::tls::load_secret(snapshot, &secret)
                .map(|(cert_chain_pem, private_key_pem)| ClientCertificate {
                    source: secret.to_string(),
                    cert_chain_pem,
                    private_key_pem,
                })
                .map_err(|m| (reasons::INVALID_CLIENT_CERTIFICATE_REF, m))
        };
        match result {
            Err(problem) => g.ref_problems.push(problem),
            Ok(cert) => match &chosen {
                None => chosen = Some((g.key.clone(), cert)),
                Some((_, c)) if *c == cert => {}
                Some((owner, c)) => g.extra_problems.push(format!(
                    "spec.tls.backend.clientCertificateRef: this process also serves Gateway {owner}, whose client certificate {} is presented to backends instead of {}",
                    c.source, cert.source
                )),
            },
        }
    }
    chosen.map(|(_, c)| c)
}

/// Resolves every BackendTLSPolicy and places the winners on Service ports.
pub(crate) fn compile_policies<'a>(
    snapshot: &'a Snapshot,
    client_certificate: Option<&ClientCertificate>,
) -> BackendTlsPolicies<'a> {
    let mut ordered: Vec<(&ObjectKey, &BackendTlsPolicy)> =
        snapshot.backend_tls_policies.iter().collect();
    // Oldest first: it wins conflicts. BTreeMap order breaks ties.
    ordered.sort_by_key(|(_, p)| p.metadata.creation_timestamp.as_ref().map(|t| t.0));

    let mut out = BackendTlsPolicies::default();
    // (Service, sectionName) -> index of the policy that owns it.
    let mut claimed: BTreeMap<(ObjectKey, Option<&str>), usize> = BTreeMap::new();
    for (key, policy) in ordered {
        let mut resolved = resolve(snapshot, key, policy, client_certificate);
        let index = out.policies.len();
        let mut conflicts = Vec::new();
        let mut claims = 0;
        for t in &policy.spec.target_refs {
            if !t.group.is_empty() || t.kind != "Service" {
                continue;
            }
            let slot = (
                ObjectKey::new(key.namespace.clone(), t.name.clone()),
                t.section_name.as_deref().filter(|s| !s.is_empty()),
            );
            match claimed.get(&slot) {
                Some(&owner) => conflicts.push(out.policies[owner].key.to_string()),
                None => {
                    claimed.insert(slot, index);
                    claims += 1;
                }
            }
        }
        if claims == 0 && !conflicts.is_empty() {
            resolved.accepted = Err((
                reasons::CONFLICTED,
                format!(
                    "BackendTLSPolicy {} targets the same Service port and was created earlier",
                    conflicts.join(", ")
                ),
            ));
        } else if claims == 0 && resolved.accepted.is_ok() {
            resolved.accepted = Err((
                reasons::INVALID,
                "no targetRef names a core Service (group \"\", kind Service)".to_string(),
            ));
        }
        out.policies.push(resolved);
    }

    // Section claims first: a port's own policy wins over the Service's.
    let mut by_port = HashMap::new();
    for section_first in [true, false] {
        for ((service, section), &owner) in &claimed {
            if section.is_some() != section_first {
                continue;
            }
            let Some(svc) = snapshot.services.get(service) else {
                continue;
            };
            let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
            for port in ports {
                if section.is_some_and(|s| port.name.as_deref() != Some(s)) {
                    continue;
                }
                by_port
                    .entry((service.clone(), port.port))
                    .or_insert_with(|| out.policies[owner].tls.clone());
            }
        }
    }
    out.by_port = by_port;
    out
}

fn resolve<'a>(
    snapshot: &Snapshot,
    key: &'a ObjectKey,
    policy: &'a BackendTlsPolicy,
    client_certificate: Option<&ClientCertificate>,
) -> Resolved<'a> {
    let v = &policy.spec.validation;
    let mut accepted = Ok(());
    let mut resolved = Ok(());
    let refs_ = v.ca_certificate_refs.as_deref().unwrap_or_default();
    let well_known = v.well_known_ca_certificates.as_deref();
    let roots = match (refs_.is_empty(), well_known) {
        (true, Some("System")) => TrustRoots::System,
        (true, Some(other)) => {
            let m = format!("wellKnownCACertificates {other:?} is not supported; use System");
            accepted = Err((reasons::INVALID, m.clone()));
            TrustRoots::Unusable(m)
        }
        (false, Some(_)) => {
            let m = "set either caCertificateRefs or wellKnownCACertificates, not both".to_string();
            accepted = Err((reasons::INVALID, m.clone()));
            TrustRoots::Unusable(m)
        }
        (true, None) => {
            let m = "validation needs caCertificateRefs or wellKnownCACertificates".to_string();
            accepted = Err((reasons::INVALID, m.clone()));
            TrustRoots::Unusable(m)
        }
        (false, None) => {
            let list: Vec<CaRef<'_>> = refs_
                .iter()
                .map(|r| CaRef {
                    group: &r.group,
                    kind: &r.kind,
                    name: &r.name,
                    namespace: None,
                })
                .collect();
            let from = refs::From {
                group: portcullis_api::GATEWAY_GROUP,
                kind: "BackendTLSPolicy",
                namespace: &key.namespace,
            };
            let (bundle, problems) = ca_bundle::resolve(snapshot, &from, &list);
            if let Some(first) = problems.first() {
                let reason = match first.kind {
                    CaProblemKind::InvalidKind => reasons::INVALID_KIND,
                    _ => reasons::INVALID_CA_CERTIFICATE_REF,
                };
                let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
                resolved = Err((reason, messages.join("; ")));
            }
            match bundle {
                Some(b) => TrustRoots::Pem(Arc::from(b.pem)),
                None => {
                    let m = resolved
                        .as_ref()
                        .err()
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default();
                    accepted = Err((reasons::NO_VALID_CA_CERTIFICATE, m.clone()));
                    TrustRoots::Unusable(m)
                }
            }
        }
    };
    let hostname = v.hostname.to_ascii_lowercase();
    let roots = if !is_dns_name(&hostname) {
        let m = format!("validation.hostname {:?} is not a DNS name", v.hostname);
        if accepted.is_ok() {
            accepted = Err((reasons::INVALID, m.clone()));
        }
        TrustRoots::Unusable(m)
    } else {
        roots
    };
    let mut subject_alt_names = Vec::new();
    for san in v.subject_alt_names.iter().flatten() {
        let value = match san.r#type {
            SanType::Hostname => san
                .hostname
                .as_deref()
                .map(|h| SubjectAltName::Hostname(h.to_ascii_lowercase())),
            SanType::Uri => san
                .uri
                .as_deref()
                .map(|u| SubjectAltName::Uri(u.to_string())),
        };
        match value {
            Some(v) => subject_alt_names.push(v),
            None if accepted.is_ok() => {
                accepted = Err((
                    reasons::INVALID,
                    format!(
                        "subjectAltNames entry of type {:?} has no value",
                        san.r#type
                    ),
                ))
            }
            None => {}
        }
    }
    Resolved {
        key,
        policy,
        accepted,
        resolved,
        tls: Arc::new(BackendTls {
            policy: key.to_string(),
            roots,
            server_name: hostname,
            subject_alt_names,
            client_certificate: client_certificate.cloned(),
        }),
    }
}

/// A hostname as SNI accepts it: letters, digits, `-` and dots, no IP
/// address, no wildcard.
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.parse::<std::net::IpAddr>().is_err()
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The Service a backend name (`namespace/name:port`, see
/// `backends::resolve`) belongs to. Kubernetes names contain neither `/`
/// nor `:`, so the split is exact.
pub(crate) fn service_of(backend_name: &str) -> Option<ObjectKey> {
    let (service, _port) = backend_name.rsplit_once(':')?;
    let (namespace, name) = service.split_once('/')?;
    Some(ObjectKey::new(namespace, name))
}

/// One status per policy: an ancestor entry for each Gateway whose routes
/// reach a Service the policy targets (`services_of_gateway`).
pub(crate) fn statuses(
    compiled: &BackendTlsPolicies<'_>,
    services_of_gateway: &BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    controller_name: &str,
) -> Vec<StatusUpdate> {
    let mut out = Vec::new();
    let mut policies: Vec<&Resolved<'_>> = compiled.policies.iter().collect();
    policies.sort_by_key(|p| p.key);
    for p in policies {
        let generation = p.policy.metadata.generation.unwrap_or(0);
        let targets: BTreeSet<ObjectKey> = p
            .policy
            .spec
            .target_refs
            .iter()
            .filter(|t| t.group.is_empty() && t.kind == "Service")
            .map(|t| ObjectKey::new(p.key.namespace.clone(), t.name.clone()))
            .collect();
        let accepted = match &p.accepted {
            Ok(()) => Condition::new(
                reasons::ACCEPTED,
                true,
                reasons::ACCEPTED,
                "Policy is accepted",
            ),
            Err((reason, message)) => {
                Condition::new(reasons::ACCEPTED, false, reason, message.clone())
            }
        };
        let resolved = match &p.resolved {
            Ok(()) => Condition::new(
                reasons::RESOLVED_REFS,
                true,
                reasons::RESOLVED_REFS,
                "All references resolved",
            ),
            Err((reason, message)) => {
                Condition::new(reasons::RESOLVED_REFS, false, reason, message.clone())
            }
        };
        let conditions = conditions_json(&[accepted.clone(), resolved.clone()], generation);
        let mut ancestors = Vec::new();
        for (gateway, services) in services_of_gateway {
            if targets.iter().all(|t| !services.contains(t)) {
                continue;
            }
            let mut reference = Map::new();
            reference.insert("group".into(), portcullis_api::GATEWAY_GROUP.into());
            reference.insert("kind".into(), "Gateway".into());
            reference.insert("namespace".into(), gateway.namespace.clone().into());
            reference.insert("name".into(), gateway.name.clone().into());
            ancestors.push(json!({
                "ancestorRef": Value::Object(reference),
                "controllerName": controller_name,
                "conditions": conditions.clone(),
            }));
        }
        let mut problems = Vec::new();
        for c in [&accepted, &resolved] {
            if !c.status {
                problems.push(format!("{}: {}", c.reason, c.message));
            }
        }
        out.push(StatusUpdate {
            kind: StatusKind::BackendTlsPolicy,
            namespace: Some(p.key.namespace.clone()),
            name: p.key.name.clone(),
            status: json!({ "ancestors": ancestors }),
            problems,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_split_into_their_service() {
        assert_eq!(
            service_of("apps/web:443"),
            Some(ObjectKey::new("apps", "web"))
        );
        assert_eq!(service_of("nonsense"), None);
    }

    #[test]
    fn sni_hostnames_are_dns_names() {
        assert!(is_dns_name("abc.example.com"));
        assert!(is_dns_name("localhost"));
        assert!(!is_dns_name("10.0.0.1"));
        assert!(!is_dns_name("*.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
    }
}

//! CA certificate bundles named by `caCertificateRefs`: the one resolver
//! behind the Gateway's client certificate validation
//! (`spec.tls.frontend`) and `BackendTLSPolicy`.
//!
//! A reference names a ConfigMap (core, the spec's Core support) or a
//! Secret (implementation-specific) holding PEM CA certificates under the
//! key `ca.crt`. Cross-namespace references need a ReferenceGrant (only
//! the Gateway's references can cross namespaces; a BackendTLSPolicy's are
//! local by type). Each reference is checked on its own; the usable ones
//! are concatenated into one bundle.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::refs;
use super::tls::is_der_sequence;
use crate::snapshot::{ObjectKey, Snapshot};

/// The key of the CA certificates in a ConfigMap or Secret.
pub(crate) const CA_KEY: &str = "ca.crt";

/// One `caCertificateRefs` entry, whichever API type it came from.
pub(crate) struct CaRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    /// `None`: the referrer's namespace.
    pub namespace: Option<&'a str>,
}

/// Why a reference cannot be used; each maps to the spec reason of the
/// referring API (listener condition or BackendTLSPolicy condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaProblemKind {
    /// Neither a core ConfigMap nor a core Secret.
    InvalidKind,
    /// Missing object, missing `ca.crt`, or no usable certificate in it.
    InvalidRef,
    /// Crosses namespaces without a ReferenceGrant.
    NotPermitted,
}

#[derive(Debug, Clone)]
pub(crate) struct CaProblem {
    pub kind: CaProblemKind,
    pub message: String,
}

/// The usable part of a list of references.
#[derive(Debug, Clone, Default)]
pub(crate) struct CaBundle {
    /// The PEM text of every usable reference, concatenated.
    pub pem: String,
    /// `Kind namespace/name` of each usable reference.
    pub sources: Vec<String>,
}

/// Resolves every reference. `from` is the referring object (its namespace
/// is the default namespace of the references).
pub(crate) fn resolve(
    snapshot: &Snapshot,
    from: &refs::From<'_>,
    refs_: &[CaRef<'_>],
) -> (Option<CaBundle>, Vec<CaProblem>) {
    let mut bundle = CaBundle::default();
    let mut problems = Vec::new();
    for r in refs_ {
        match resolve_one(snapshot, from, r) {
            Ok((source, pem)) => {
                bundle.pem.push_str(pem.trim_end());
                bundle.pem.push('\n');
                bundle.sources.push(source);
            }
            Err(p) => problems.push(p),
        }
    }
    let bundle = (!bundle.sources.is_empty()).then_some(bundle);
    (bundle, problems)
}

fn resolve_one(
    snapshot: &Snapshot,
    from: &refs::From<'_>,
    r: &CaRef<'_>,
) -> Result<(String, String), CaProblem> {
    let namespace = r
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(from.namespace);
    let key = ObjectKey::new(namespace, r.name);
    if !r.group.is_empty() || !matches!(r.kind, "ConfigMap" | "Secret") {
        return Err(CaProblem {
            kind: CaProblemKind::InvalidKind,
            message: format!(
                "caCertificateRef {key} has group {:?} kind {:?}: only core ConfigMaps and Secrets (key {CA_KEY}) are supported",
                r.group, r.kind
            ),
        });
    }
    let to = refs::To {
        group: "",
        kind: r.kind,
        namespace,
        name: r.name,
    };
    if !refs::permitted(snapshot, from, &to) {
        return Err(CaProblem {
            kind: CaProblemKind::NotPermitted,
            message: format!(
                "caCertificateRef to {} {key} crosses namespaces: add a ReferenceGrant in namespace {namespace} from {}s in {}",
                r.kind, from.kind, from.namespace
            ),
        });
    }
    let invalid = |message: String| CaProblem {
        kind: CaProblemKind::InvalidRef,
        message,
    };
    let text = if r.kind == "ConfigMap" {
        let cm = snapshot
            .config_maps
            .get(&key)
            .ok_or_else(|| invalid(format!("ConfigMap {key} does not exist")))?;
        let data = cm.data.as_ref().and_then(|d| d.get(CA_KEY)).cloned();
        let binary = cm
            .binary_data
            .as_ref()
            .and_then(|d| d.get(CA_KEY))
            .and_then(|b| String::from_utf8(b.0.clone()).ok());
        data.or(binary)
            .ok_or_else(|| invalid(format!("ConfigMap {key} has no key {CA_KEY}")))?
    } else {
        let secret = snapshot
            .secrets
            .get(&key)
            .ok_or_else(|| invalid(format!("Secret {key} does not exist")))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(CA_KEY))
            .ok_or_else(|| invalid(format!("Secret {key} has no key {CA_KEY}")))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| invalid(format!("Secret {key}: {CA_KEY} is not PEM text")))?
    };
    validate_ca_pem(&text).map_err(|e| invalid(format!("{} {key}: {e}", r.kind)))?;
    Ok((format!("{} {key}", r.kind), text))
}

/// At least one PEM `CERTIFICATE` block, each a well-formed DER SEQUENCE.
/// Whether they are CA certificates a verifier accepts is checked again by
/// the data plane when it builds its trust store.
pub(crate) fn validate_ca_pem(text: &str) -> Result<(), String> {
    let mut count = 0;
    for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let c = c.map_err(|e| format!("{CA_KEY} is not valid PEM: {e}"))?;
        if !is_der_sequence(c.as_ref()) {
            return Err(format!(
                "{CA_KEY} holds a CERTIFICATE block that is not a DER certificate"
            ));
        }
        count += 1;
    }
    if count == 0 {
        return Err(format!("{CA_KEY} holds no PEM CERTIFICATE block"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::KubeObject;
    use serde_json::json;

    const FROM: refs::From<'static> = refs::From {
        group: portcullis_api::GATEWAY_GROUP,
        kind: "Gateway",
        namespace: "infra",
    };

    fn snapshot(objects: Vec<serde_json::Value>) -> Snapshot {
        let mut s = Snapshot::default();
        for o in objects {
            s.insert(KubeObject::from_value(o).expect("valid object"));
        }
        s
    }

    fn ca_pem() -> String {
        // A syntactically valid certificate: an empty DER SEQUENCE wrapped
        // in PEM is enough for this check.
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".into()
    }

    #[test]
    fn config_maps_and_secrets_resolve_and_others_are_reported() {
        let s = snapshot(vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "infra"},
                   "data": {"ca.crt": ca_pem()}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sca", "namespace": "infra"},
                   "stringData": {"ca.crt": ca_pem()}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "empty", "namespace": "infra"},
                   "data": {"other": "x"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "certs"},
                   "data": {"ca.crt": ca_pem()}}),
        ]);
        let r = |kind: &'static str, name: &'static str, namespace: Option<&'static str>| CaRef {
            group: "",
            kind,
            name,
            namespace,
        };
        let (bundle, problems) = resolve(
            &s,
            &FROM,
            &[
                r("ConfigMap", "ca", None),
                r("Secret", "sca", None),
                r("ConfigMap", "empty", None),
                r("ConfigMap", "missing", None),
                r("Service", "ca", None),
                r("ConfigMap", "ca", Some("certs")),
            ],
        );
        let bundle = bundle.expect("two usable references");
        assert_eq!(bundle.sources, ["ConfigMap infra/ca", "Secret infra/sca"]);
        let kinds: Vec<_> = problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                CaProblemKind::InvalidRef,
                CaProblemKind::InvalidRef,
                CaProblemKind::InvalidKind,
                CaProblemKind::NotPermitted
            ]
        );
        assert!(
            problems[0].message.contains("no key ca.crt"),
            "{problems:?}"
        );
    }

    #[test]
    fn text_without_certificates_is_refused() {
        assert!(validate_ca_pem("").is_err());
        assert!(validate_ca_pem("hello").is_err());
        assert!(validate_ca_pem(&ca_pem()).is_ok());
    }
}

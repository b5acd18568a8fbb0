//! The Gateway's client certificate validation (`spec.tls.frontend`,
//! frontend mTLS) applied to its HTTPS listeners.
//!
//! The configuration of a port is its `perPort` entry, else `default`.
//! Every HTTPS listener on the port gets it; a reference that cannot be
//! used sets the listener's `ResolvedRefs: False` with the spec's reason
//! (`InvalidCACertificateRef`, `InvalidCACertificateKind`,
//! `RefNotPermitted`), and when none is usable the listener is not
//! accepted (`NoValidCACertificate`) and not served: serving it without
//! the validation its owner asked for would let any client in.
//!
//! The implementation-specific listener option
//! `portcullis.dev/client-certificate-header` (in `tls.options`) names the
//! request header that carries the verified identity to the backend.

use gateway_api::gateways::Gateway;
use portcullis_model::{ClientValidation, HeaderNameSer, Protocol};

use super::ca_bundle::{self, CaProblemKind, CaRef};
use super::gateway::ListenerState;
use super::refs;
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::reasons;

/// Listener `tls.options` key naming the identity header.
pub(crate) const HEADER_OPTION: &str = "portcullis.dev/client-certificate-header";

/// The validation settings that apply to one port.
struct PortValidation<'a> {
    refs: Vec<CaRef<'a>>,
    required: bool,
}

fn for_port(gateway: &Gateway, port: u16) -> Option<PortValidation<'_>> {
    let frontend = gateway.spec.tls.as_ref()?.frontend.as_ref()?;
    let per_port = frontend
        .per_port
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(port));
    if let Some(p) = per_port {
        let v = p.tls.validation.as_ref()?;
        return Some(PortValidation {
            refs: v
                .ca_certificate_refs
                .iter()
                .map(|r| CaRef {
                    group: &r.group,
                    kind: &r.kind,
                    name: &r.name,
                    namespace: r.namespace.as_deref(),
                })
                .collect(),
            required: !matches!(
                v.mode,
                Some(gateway_api::gateways::GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
            ),
        });
    }
    let v = frontend.default.validation.as_ref()?;
    Some(PortValidation {
        refs: v
            .ca_certificate_refs
            .iter()
            .map(|r| CaRef {
                group: &r.group,
                kind: &r.kind,
                name: &r.name,
                namespace: r.namespace.as_deref(),
            })
            .collect(),
        required: !matches!(
            v.mode,
            Some(gateway_api::gateways::GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
        ),
    })
}

/// Sets `client_validation` (or the problems) of every HTTPS listener.
pub(crate) fn apply(
    snapshot: &Snapshot,
    key: &ObjectKey,
    gateway: &Gateway,
    listeners: &mut [ListenerState],
) {
    let from = refs::From {
        group: portcullis_api::GATEWAY_GROUP,
        kind: "Gateway",
        namespace: &key.namespace,
    };
    for (l, spec) in listeners.iter_mut().zip(&gateway.spec.listeners) {
        if l.protocol != Some(Protocol::Https) || l.accepted.is_err() {
            continue;
        }
        let Some(validation) = for_port(gateway, l.port) else {
            continue;
        };
        let (bundle, problems) = ca_bundle::resolve(snapshot, &from, &validation.refs);
        for p in &problems {
            let reason = match p.kind {
                CaProblemKind::InvalidKind => reasons::INVALID_CA_CERTIFICATE_KIND,
                CaProblemKind::InvalidRef => reasons::INVALID_CA_CERTIFICATE_REF,
                CaProblemKind::NotPermitted => reasons::REF_NOT_PERMITTED,
            };
            l.ref_problems.push((reason, p.message.clone()));
        }
        let forward_header = spec
            .tls
            .as_ref()
            .and_then(|t| t.options.as_ref())
            .and_then(|o| o.get(HEADER_OPTION));
        let forward_header = match forward_header.map(|h| http::HeaderName::try_from(h.as_str())) {
            None => None,
            Some(Ok(name)) => Some(HeaderNameSer(name)),
            Some(Err(_)) => {
                l.accepted = Err((
                    reasons::UNSUPPORTED_VALUE,
                    format!(
                        "tls.options {HEADER_OPTION}: {:?} is not a valid header name",
                        forward_header
                    ),
                ));
                continue;
            }
        };
        match bundle {
            Some(bundle) => {
                l.client_validation = Some(ClientValidation {
                    ca_pem: bundle.pem.into(),
                    required: validation.required,
                    sources: bundle.sources,
                    forward_header,
                })
            }
            None => {
                let message = if validation.refs.is_empty() {
                    "spec.tls.frontend validation has no caCertificateRefs".to_string()
                } else {
                    "no caCertificateRef of spec.tls.frontend for this port is usable".to_string()
                };
                l.accepted = Err((reasons::NO_VALID_CA_CERTIFICATE, message));
            }
        }
    }
}

//! Listener certificates: resolving `tls.certificateRefs` to Secrets and
//! checking that they hold a usable PEM certificate chain and private key.

use std::sync::Arc;

use gateway_api::gateways::GatewayListenersTls;
use portcullis_model::{HostMatch, ServerCertificate};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::refs;
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::reasons;

/// A certificate reference that cannot be used, with the listener reason.
pub(crate) struct CertProblem {
    pub reason: &'static str,
    pub message: String,
}

/// Resolves every certificateRef of an HTTPS listener. Returns the usable
/// certificates and the problems of the others.
pub(crate) fn resolve_certificates(
    snapshot: &Snapshot,
    gateway: &ObjectKey,
    hostname: &HostMatch,
    tls: Option<&GatewayListenersTls>,
) -> (Vec<ServerCertificate>, Vec<CertProblem>) {
    let refs = tls
        .and_then(|t| t.certificate_refs.as_deref())
        .unwrap_or_default();
    if refs.is_empty() {
        let problem = CertProblem {
            reason: reasons::INVALID_CERTIFICATE_REF,
            message: "HTTPS listener has no tls.certificateRefs: add a reference to a kubernetes.io/tls Secret".into(),
        };
        return (Vec::new(), vec![problem]);
    }
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&gateway.namespace);
        let key = ObjectKey::new(namespace, r.name.clone());
        if !group.is_empty() || kind != "Secret" {
            problems.push(CertProblem {
                reason: reasons::INVALID_CERTIFICATE_REF,
                message: format!(
                    "certificateRef {key} has group {group:?} kind {kind:?}: only core Secrets (group \"\", kind Secret) are supported"
                ),
            });
            continue;
        }
        let from = refs::From {
            group: portcullis_api::GATEWAY_GROUP,
            kind: "Gateway",
            namespace: &gateway.namespace,
        };
        let to = refs::To {
            group: "",
            kind: "Secret",
            namespace,
            name: &r.name,
        };
        if !refs::permitted(snapshot, &from, &to) {
            problems.push(CertProblem {
                reason: reasons::REF_NOT_PERMITTED,
                message: format!(
                    "certificateRef to Secret {key} crosses namespaces: add a ReferenceGrant in namespace {namespace} from Gateways in {}",
                    gateway.namespace
                ),
            });
            continue;
        }
        match load_secret(snapshot, &key) {
            Ok((cert_chain_pem, private_key_pem)) => certs.push(ServerCertificate {
                hostname: hostname.clone(),
                source: key.to_string(),
                cert_chain_pem,
                private_key_pem,
            }),
            Err(message) => problems.push(CertProblem {
                reason: reasons::INVALID_CERTIFICATE_REF,
                message,
            }),
        }
    }
    (certs, problems)
}

pub(crate) fn load_secret(
    snapshot: &Snapshot,
    key: &ObjectKey,
) -> Result<(Arc<str>, Arc<str>), String> {
    let secret = snapshot
        .secrets
        .get(key)
        .ok_or_else(|| format!("Secret {key} does not exist"))?;
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != "kubernetes.io/tls" {
        return Err(format!(
            "Secret {key} has type {type_:?}; listener certificates need type kubernetes.io/tls"
        ));
    }
    let field = |name: &str| -> Result<String, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .ok_or_else(|| format!("Secret {key} has no {name}"))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| format!("Secret {key}: {name} is not PEM text"))
    };
    let cert = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    validate_pem(&cert, &key_pem).map_err(|e| format!("Secret {key}: {e}"))?;
    Ok((Arc::from(cert), Arc::from(key_pem)))
}

/// Checks that `cert` holds at least one PEM certificate whose DER is
/// well-formed at the outer level, and `key` a PKCS#8, PKCS#1 or SEC1
/// private key. Whether the key matches the certificate is checked again
/// by the data plane when it builds its TLS configuration.
pub fn validate_pem(cert: &str, key: &str) -> Result<(), String> {
    let mut count = 0;
    for c in CertificateDer::pem_slice_iter(cert.as_bytes()) {
        let c = c.map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
        if !is_der_sequence(c.as_ref()) {
            return Err("tls.crt holds a CERTIFICATE block that is not a DER certificate".into());
        }
        count += 1;
    }
    if count == 0 {
        return Err("tls.crt holds no PEM CERTIFICATE block".into());
    }
    let k = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("tls.key holds no usable private key: {e}"))?;
    if !is_der_sequence(k.secret_der()) {
        return Err("tls.key holds a key block that is not DER".into());
    }
    Ok(())
}

/// A DER SEQUENCE whose length field matches the data: catches truncated
/// or garbage base64 without a full X.509 parser.
pub(crate) fn is_der_sequence(der: &[u8]) -> bool {
    let (Some(&0x30), Some(&first_len)) = (der.first(), der.get(1)) else {
        return false;
    };
    let (len, header) = if first_len < 0x80 {
        (first_len as usize, 2)
    } else {
        let n = (first_len & 0x7f) as usize;
        if n == 0 || n > 4 || der.len() < 2 + n {
            return false;
        }
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    der.len() == header + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_sequence_length_must_match() {
        assert!(is_der_sequence(&[0x30, 0x02, 0x05, 0x00]));
        assert!(!is_der_sequence(&[0x30, 0x03, 0x05, 0x00]), "truncated");
        assert!(!is_der_sequence(&[0x04, 0x00]), "not a SEQUENCE");
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(std::iter::repeat_n(0u8, 0x80));
        assert!(is_der_sequence(&long));
    }

    #[test]
    fn text_that_is_not_pem_is_refused() {
        assert!(validate_pem("Hello world\n", "Hello world\n").is_err());
        let fake_cert =
            "-----BEGIN CERTIFICATE-----\nSGVsbG8gd29ybGQK\n-----END CERTIFICATE-----\n";
        let err = validate_pem(fake_cert, "").expect_err("not DER");
        assert!(err.contains("not a DER certificate"), "{err}");
    }
}

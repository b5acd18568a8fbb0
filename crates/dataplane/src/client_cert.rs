//! Frontend mTLS: client certificate validation of an HTTPS port (the
//! Gateway's `spec.tls.frontend`) and the verified client identity.
//!
//! - `AllowValidOnly` (`required`): rustls' `WebPkiClientVerifier` against
//!   the port's CA bundle; a handshake without a valid certificate fails.
//! - `AllowInsecureFallback`: the handshake accepts a missing or invalid
//!   certificate; the chain is verified again after the handshake, and only
//!   a certificate that verifies becomes an identity.
//!
//! The identity ([`VerifiedClientCertificate`]: RFC 4514 subject, DNS and
//! URI SANs, SHA-256 fingerprint) is derived once per connection and put
//! into each request's extensions for authorization; it is sent to the
//! backend only in the header the listener names, and a client-sent header
//! of that name is always removed first.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use portcullis_model::{ClientValidation, HeaderNameSer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

pub use crate::auth::VerifiedClientCertificate;
use crate::tls::TlsError;

/// The client certificate settings of one HTTPS port, built once per table.
#[derive(Debug)]
pub struct ClientAuth {
    /// Always strict: decides whether a certificate becomes an identity.
    strict: Arc<dyn ClientCertVerifier>,
    /// What the handshake uses: `strict`, or the fallback wrapper.
    handshake: Arc<dyn ClientCertVerifier>,
    required: bool,
    forward_header: Option<HeaderNameSer>,
}

impl ClientAuth {
    pub fn new(v: &ClientValidation) -> Result<ClientAuth, TlsError> {
        let bad = |message: String| TlsError::BadCertificate {
            source_name: v.sources.join(", "),
            message,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(v.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| bad(format!("invalid CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no CA certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad(format!("client verifier: {e}")))?;
        // `allow_unauthenticated` above only lets the strict verifier be
        // asked after the handshake about an optional certificate; the
        // handshake's own verifier says whether one is mandatory.
        let handshake: Arc<dyn ClientCertVerifier> = if v.required {
            Arc::new(Mandatory(strict.clone()))
        } else {
            Arc::new(Fallback(strict.clone()))
        };
        Ok(ClientAuth {
            strict,
            handshake,
            required: v.required,
            forward_header: v.forward_header.clone(),
        })
    }

    /// The verifier for the port's rustls `ServerConfig`.
    pub fn handshake_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.handshake.clone()
    }

    /// The identity of a connection's peer chain (leaf first), or `None`
    /// without a certificate, or (fallback mode) with one that does not
    /// verify.
    pub fn identity(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Option<Arc<VerifiedClientCertificate>> {
        let (leaf, intermediates) = chain?.split_first()?;
        if !self.required {
            if let Err(e) = self
                .strict
                .verify_client_cert(leaf, intermediates, UnixTime::now())
            {
                tracing::debug!(error = %e, "client certificate does not verify; serving without client identity (AllowInsecureFallback)");
                return None;
            }
        }
        match describe(leaf) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::warn!(error = %e, "verified client certificate cannot be read; serving without client identity");
                None
            }
        }
    }

    /// Removes a client-sent identity header and, with a verified
    /// certificate, sets it.
    pub fn forward(&self, headers: &mut HeaderMap, cert: Option<&VerifiedClientCertificate>) {
        let Some(name) = &self.forward_header else {
            return;
        };
        headers.remove(&name.0);
        if let Some(value) = cert.and_then(|c| HeaderValue::from_str(&c.header_value).ok()) {
            headers.insert(name.0.clone(), value);
        }
    }
}

/// Requires a certificate (AllowValidOnly).
#[derive(Debug)]
struct Mandatory(Arc<dyn ClientCertVerifier>);

/// Accepts anything the client presents, or nothing (AllowInsecureFallback);
/// the identity is decided after the handshake by the strict verifier.
#[derive(Debug)]
struct Fallback(Arc<dyn ClientCertVerifier>);

macro_rules! delegate_signatures {
    () => {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.0.root_hint_subjects()
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    };
}

impl ClientCertVerifier for Mandatory {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    delegate_signatures!();
}

impl ClientCertVerifier for Fallback {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately lenient (the mode's contract); `ClientAuth::identity`
        // verifies again before anything trusts the certificate.
        Ok(ClientCertVerified::assertion())
    }

    delegate_signatures!();
}

/// Subject, SANs and fingerprint of a DER certificate.
pub fn describe(der: &CertificateDer<'_>) -> Result<VerifiedClientCertificate, String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| e.to_string())?;
    let subject = rfc4514(cert.subject()).ok_or("malformed subject")?;
    let dns: Vec<String> = cert.valid_dns_names().map(str::to_string).collect();
    let uris: Vec<String> = cert.valid_uri_names().map(str::to_string).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let fingerprint_sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    // The Envoy `x-forwarded-client-cert` shape, which backends know.
    let mut header_value = format!(
        "Hash={fingerprint_sha256};Subject=\"{}\"",
        subject.replace('"', "\\\"")
    );
    for u in &uris {
        header_value.push_str(";URI=");
        header_value.push_str(u);
    }
    for d in &dns {
        header_value.push_str(";DNS=");
        header_value.push_str(d);
    }
    let mut sans = dns;
    sans.extend(uris);
    Ok(VerifiedClientCertificate {
        subject,
        sans,
        fingerprint_sha256,
        header_value,
    })
}

/// Renders the contents of a DER `Name` (the SEQUENCE of RDNs, without its
/// outer tag) as RFC 4514: most specific RDN first, `CN=a,O=b`. Attribute
/// types without a short name are written as dotted OIDs; values that are
/// not strings as `#hex`.
fn rfc4514(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (tag, set, after) = der_tlv(rest)?;
        rest = after;
        if tag != 0x31 {
            return None;
        }
        let mut attrs = Vec::new();
        let mut set_rest = set;
        while !set_rest.is_empty() {
            let (tag, atv, after) = der_tlv(set_rest)?;
            set_rest = after;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value_rest) = der_tlv(atv)?;
            if oid_tag != 0x06 {
                return None;
            }
            let (value_tag, value, _) = der_tlv(value_rest)?;
            let key = oid_name(oid)
                .map(str::to_string)
                .unwrap_or_else(|| oid_dotted(oid));
            let value = match value_tag {
                // UTF8String, PrintableString, IA5String, TeletexString.
                0x0c | 0x13 | 0x16 | 0x14 => escape(&String::from_utf8_lossy(value)),
                _ => {
                    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                    format!("#{hex}")
                }
            };
            attrs.push(format!("{key}={value}"));
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// One DER tag-length-value: (tag, value, rest). Short and long lengths.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn oid_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

fn oid_dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (value / 40).min(2);
                parts.push(first.to_string());
                parts.push((value - first * 40).to_string());
            } else {
                parts.push(value.to_string());
            }
            value = 0;
        } else if i == oid.len() - 1 {
            break;
        }
    }
    parts.join(".")
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(
        subject: &[(rcgen::DnType, &str)],
        sans: Vec<rcgen::SanType>,
    ) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn subject_sans_and_fingerprint_are_read() {
        let der = cert(
            &[
                (rcgen::DnType::OrganizationName, "Acme, Inc"),
                (rcgen::DnType::CommonName, "client-a"),
            ],
            vec![
                rcgen::SanType::DnsName("a.example.com".try_into().expect("dns")),
                rcgen::SanType::URI("spiffe://acme/client-a".try_into().expect("uri")),
            ],
        );
        let id = describe(&der).expect("readable");
        assert_eq!(id.subject, "CN=client-a,O=Acme\\, Inc");
        assert_eq!(id.sans, ["a.example.com", "spiffe://acme/client-a"]);
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert!(
            id.header_value.contains("URI=spiffe://acme/client-a"),
            "{}",
            id.header_value
        );
    }

    #[test]
    fn unknown_attribute_types_are_dotted_oids() {
        assert_eq!(oid_dotted(&[0x55, 0x04, 0x05]), "2.5.4.5");
        assert_eq!(
            oid_dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]),
            "1.2.840.113549"
        );
    }

    #[test]
    fn truncated_names_are_refused() {
        assert_eq!(rfc4514(&[0x31, 0x05, 0x30]), None);
        assert_eq!(rfc4514(&[]), Some(String::new()));
    }
}

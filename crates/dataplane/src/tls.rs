//! Frontend TLS: rustls server configs built from the table's certificates,
//! with the certificate chosen by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_model::{HostMatch, TlsConfig};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {source_name}: {message}")]
    BadCertificate {
        source_name: String,
        message: String,
    },
    #[error("no usable certificate")]
    NoCertificate,
}

/// Parses a PEM chain and key into a rustls `CertifiedKey`.
pub fn certified_key(
    source_name: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let bad = |message: String| TlsError::BadCertificate {
        source_name: source_name.to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("invalid certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in PEM".to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("invalid private key PEM: {e}")))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| bad(format!("unsupported private key: {e}")))?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Chooses the certificate by SNI: exact name, then the longest matching
/// wildcard, then the default (a certificate of a listener without hostname,
/// or else the first one) for clients without SNI or with an unknown name.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        for (suffix, key) in &self.wildcards {
            if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

/// Frontend mTLS of the port (`crate::client_cert`), or no client
/// authentication. A CA bundle that does not parse fails the port (its
/// connections are refused) rather than serving it unverified.
fn client_verifier(
    tls: &TlsConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    match &tls.client_validation {
        Some(v) => Ok(crate::client_cert::ClientAuth::new(v)?.handshake_verifier()),
        None => Ok(Arc::new(rustls::server::NoClientAuth)),
    }
}

/// Builds the server config of one HTTPS port. A certificate that fails to
/// parse is logged and skipped (the controller reports it in the Gateway
/// status); the port still serves with the others.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcards: Vec::new(),
        default: None,
    };
    let mut first = None;
    for cert in &tls.certificates {
        let key = match certified_key(&cert.source, &cert.cert_chain_pem, &cert.private_key_pem) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::error!(error = %e, "skipping certificate");
                continue;
            }
        };
        first.get_or_insert_with(|| key.clone());
        match &cert.hostname {
            HostMatch::Exact(h) => {
                resolver.exact.entry(h.clone()).or_insert(key);
            }
            HostMatch::Wildcard(s) => resolver.wildcards.push((s.clone(), key)),
            HostMatch::Any => {
                resolver.default.get_or_insert(key);
            }
        }
    }
    let first = first.ok_or(TlsError::NoCertificate)?;
    resolver.default.get_or_insert(first);
    resolver
        .wildcards
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::BadCertificate {
            source_name: "protocol versions".into(),
            message: e.to_string(),
        })?
        .with_client_cert_verifier(client_verifier(tls)?)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

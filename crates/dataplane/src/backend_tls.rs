//! TLS to backends (`BackendTLSPolicy`): the rustls client configuration
//! of a backend, built once per backend and table, and the handshake the
//! upstream connector runs after TCP connect.
//!
//! - Trust: the policy's CA bundle, or the system roots (loaded once per
//!   process).
//! - SNI: `validation.hostname`. The certificate must be valid for that
//!   name, or, when `subjectAltNames` are given, carry one of them (DNS
//!   names with the usual wildcard rules, URIs compared exactly) instead.
//! - ALPN: `http/1.1` for HTTP/1.1 backends, `h2` for HTTP/2 ones.
//! - The Gateway's backend client certificate is presented when the
//!   backend asks for one (mTLS).
//!
//! A handshake failure is a [`BackendTlsError`] in the connector's error
//! chain: the proxy answers 502 and logs the reason.

use std::sync::{Arc, OnceLock};

use portcullis_model::{AppProtocol, BackendTls, SubjectAltName, TrustRoots};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

/// A TLS failure towards a backend, with the policy it came from.
#[derive(Debug)]
pub struct BackendTlsError {
    pub policy: String,
    pub message: String,
}

impl std::fmt::Display for BackendTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend TLS (BackendTLSPolicy {}): {}",
            self.policy, self.message
        )
    }
}

impl std::error::Error for BackendTlsError {}

/// Finds a [`BackendTlsError`] in an error's source chain.
pub fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BackendTlsError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BackendTlsError>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// What the connector needs to run a handshake.
#[derive(Clone)]
pub struct TlsConnect {
    policy: String,
    /// `Err`: the policy cannot be honoured; every connection fails.
    config: Result<Arc<rustls::ClientConfig>, String>,
    server_name: ServerName<'static>,
}

impl TlsConnect {
    pub fn new(tls: &BackendTls, protocol: AppProtocol) -> TlsConnect {
        // The controller only emits valid DNS names; the fallback is a
        // reserved name no certificate can match (the connection fails
        // verification rather than going out unchecked). The literal is a
        // valid DNS name, so that `expect` cannot fail.
        let server_name = ServerName::try_from(tls.server_name.clone()).unwrap_or_else(|_| {
            ServerName::try_from("invalid.invalid").expect("a valid DNS name literal")
        });
        TlsConnect {
            policy: tls.policy.clone(),
            config: client_config(tls, protocol),
            server_name,
        }
    }

    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BackendTlsError> {
        let err = |message: String| BackendTlsError {
            policy: self.policy.clone(),
            message,
        };
        let config = self.config.clone().map_err(err)?;
        tokio_rustls::TlsConnector::from(config)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| err(e.to_string()))
    }
}

fn system_roots() -> &'static Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "reading a system CA certificate failed");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        Arc::new(roots)
    })
}

fn client_config(
    tls: &BackendTls,
    protocol: AppProtocol,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match &tls.roots {
        TrustRoots::System => system_roots().clone(),
        TrustRoots::Unusable(reason) => return Err(reason.clone()),
        TrustRoots::Pem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("invalid CA PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
            Arc::new(roots)
        }
    };
    if roots.is_empty() {
        return Err("no trusted CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("server verifier: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.subject_alt_names.is_empty() {
        webpki
    } else {
        Arc::new(SanVerifier {
            roots,
            provider: provider.clone(),
            sans: tls.subject_alt_names.clone(),
            signatures: webpki,
        })
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let key = crate::tls::certified_key(&c.source, &c.cert_chain_pem, &c.private_key_pem)
                .map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(key.cert.clone(), key_der(&c.private_key_pem)?)
                .map_err(|e| format!("client certificate {}: {e}", c.source))?
        }
    };
    config.alpn_protocols = match protocol {
        AppProtocol::H2c => vec![b"h2".to_vec()],
        AppProtocol::Http1 | AppProtocol::WebSocket => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

fn key_der(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("client certificate key: {e}"))
}

/// Chain validation against the policy's roots, then a match of one of the
/// policy's subjectAltNames instead of the SNI name (the spec's rule when
/// `subjectAltNames` is set).
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    sans: Vec<SubjectAltName>,
    /// Handshake signatures are checked the standard way.
    signatures: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        let matched = self.sans.iter().any(|san| match san {
            SubjectAltName::Hostname(h) => ServerName::try_from(h.as_str())
                .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok()),
            SubjectAltName::Uri(u) => cert.valid_uri_names().any(|c| c == u),
        });
        if matched {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

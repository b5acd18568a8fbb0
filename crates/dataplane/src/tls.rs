//! Frontend TLS: the certificates of a port chosen by SNI, and one rustls
//! server config per distinct listener `tls.options` (minimum version,
//! cipher suites, ALPN). The ClientHello is read first
//! ([`PortTls::accept`]); its SNI picks the certificate entry, and that
//! entry's listener settings pick the config the handshake completes with.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_model::{HostMatch, TlsConfig, TlsOptions, TlsVersion};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {source_name}: {message}")]
    BadCertificate {
        source_name: String,
        message: String,
    },
    #[error("no usable certificate")]
    NoCertificate,
    #[error("TLS settings: {0}")]
    BadOptions(String),
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

/// Which listener a name belongs to: exact hostname, then the longest
/// matching wildcard, then the listener without hostname.
#[derive(Debug, Default)]
struct SniIndex {
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

impl SniIndex {
    /// The listener whose hostname matches `name` (lowercase) best.
    fn matching(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(name) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, i)| *i)
            .or(self.any)
    }
}

/// The certificates of one listener hostname, and its handshake config.
#[derive(Debug)]
struct Listener {
    host: HostMatch,
    /// In the order of `certificateRefs`.
    keys: Vec<Arc<CertifiedKey>>,
    config: usize,
}

/// The listeners of a port, shared with its configs' resolvers.
#[derive(Debug)]
struct Certificates {
    index: SniIndex,
    listeners: Vec<Listener>,
}

impl Certificates {
    /// The listener for a ClientHello's SNI: the best match, else the
    /// default (the hostname-less listener, else the first).
    fn listener(&self, sni: Option<&str>) -> usize {
        sni.and_then(|name| self.index.matching(&name.to_ascii_lowercase()))
            .or(self.index.any)
            .unwrap_or(0)
    }
}

/// The certificates and handshake configs of one port.
#[derive(Debug)]
pub struct PortTls {
    certs: Arc<Certificates>,
    /// One per distinct listener options; never empty.
    configs: Vec<Arc<rustls::ServerConfig>>,
}

/// Presents one of the listener's certificates. The config was chosen for
/// that listener from the same SNI just before. With several
/// certificates (several names, or RSA next to ECDSA), the first that
/// names the SNI and has a key the client can verify wins.
#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let listener = self.0.listeners.get(self.0.listener(hello.server_name()))?;
        if let [only] = listener.keys.as_slice() {
            return Some(only.clone());
        }
        let name = hello
            .server_name()
            .and_then(|n| rustls_pki_types::ServerName::try_from(n).ok());
        let names_it = |key: &CertifiedKey| match &name {
            None => true,
            Some(name) => key
                .end_entity_cert()
                .ok()
                .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                .is_some_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok()),
        };
        let signs = |key: &CertifiedKey| key.key.choose_scheme(hello.signature_schemes()).is_some();
        let keys = &listener.keys;
        keys.iter()
            .find(|k| names_it(k) && signs(k))
            .or_else(|| keys.iter().find(|k| names_it(k)))
            .or_else(|| keys.iter().find(|k| signs(k)))
            .or(keys.first())
            .cloned()
    }
}

impl PortTls {
    /// Builds a port's TLS. A certificate that fails to parse is logged and
    /// skipped (the controller reports it in the Gateway status); the port
    /// still serves with the others. `default_alpn` is offered by listeners
    /// that set no ALPN option.
    pub fn new(tls: &TlsConfig, default_alpn: &[&[u8]]) -> Result<PortTls, TlsError> {
        let mut index = SniIndex::default();
        let mut listeners: Vec<Listener> = Vec::new();
        let mut options: Vec<&Arc<TlsOptions>> = Vec::new();
        for cert in &tls.certificates {
            let key = match certified_key(&cert.source, &cert.cert_chain_pem, &cert.private_key_pem)
            {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    tracing::error!(error = %e, "skipping certificate");
                    continue;
                }
            };
            if let Some(l) = listeners.iter_mut().find(|l| l.host == cert.hostname) {
                l.keys.push(key);
                continue;
            }
            let config = match options.iter().position(|o| ***o == *cert.options) {
                Some(i) => i,
                None => {
                    options.push(&cert.options);
                    options.len() - 1
                }
            };
            let i = listeners.len();
            listeners.push(Listener {
                host: cert.hostname.clone(),
                keys: vec![key],
                config,
            });
            match &cert.hostname {
                HostMatch::Exact(h) => {
                    index.exact.insert(h.clone(), i);
                }
                HostMatch::Wildcard(s) => index.wildcards.push((s.clone(), i)),
                HostMatch::Any => index.any = Some(i),
            }
        }
        if listeners.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        index
            .wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let certs = Arc::new(Certificates { index, listeners });
        let verifier = client_verifier(tls)?;
        let configs = options
            .iter()
            .map(|o| server_config(o, default_alpn, &certs, verifier.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortTls { certs, configs })
    }

    /// The handshake config for a ClientHello with this SNI.
    fn config(&self, sni: Option<&str>) -> Arc<rustls::ServerConfig> {
        let listener = self.certs.listeners.get(self.certs.listener(sni));
        let i = listener.map_or(0, |l| l.config);
        match self.configs.get(i).or(self.configs.first()) {
            Some(c) => c.clone(),
            // `new` refuses a port without certificates, and makes one
            // config per distinct options of its listeners.
            None => unreachable!("a PortTls has at least one config"),
        }
    }

    /// Misdirected request (RFC 9110 15.5.20): the request's host belongs
    /// to another listener of this port than the one whose certificate the
    /// connection's handshake chose (`handshake`: that listener's
    /// hostname), so this connection is not the one the client should use
    /// for it (HTTP/2 connection coalescing across listeners). A host no
    /// listener matches is left to routing. Compared by hostname, so a
    /// table reload between handshake and request does not make requests
    /// misdirected.
    pub fn is_misdirected(&self, handshake: &HostMatch, host: &str) -> bool {
        self.certs
            .index
            .matching(host)
            .and_then(|i| self.certs.listeners.get(i))
            .is_some_and(|l| l.host != *handshake)
    }

    /// Reads the ClientHello, picks the listener (certificate and config)
    /// by its SNI and completes the handshake. Returns that listener's
    /// hostname when the client sent an SNI (only a client that named a
    /// host can be misdirected).
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Option<HostMatch>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let stream = start.into_stream(self.config(sni.as_deref())).await?;
        let host = sni.and_then(|sni| {
            let i = self.certs.listener(Some(&sni));
            self.certs.listeners.get(i).map(|l| l.host.clone())
        });
        Ok((stream, host))
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

/// The rustls config of one listener's options over the port's
/// certificates.
fn server_config(
    options: &TlsOptions,
    default_alpn: &[&[u8]],
    certs: &Arc<Certificates>,
    client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !options.cipher_suites.is_empty() {
        let all = std::mem::take(&mut provider.cipher_suites);
        provider.cipher_suites = options
            .cipher_suites
            .iter()
            .filter_map(|name| {
                all.iter()
                    .find(|s| s.suite().as_str() == Some(name.as_str()))
                    .copied()
            })
            .collect();
        if provider.cipher_suites.is_empty() {
            return Err(TlsError::BadOptions(format!(
                "none of the cipher suites {:?} is available",
                options.cipher_suites
            )));
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match options.min_version {
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        Some(TlsVersion::Tls12) | None => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::BadOptions(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(Resolver(certs.clone())));
    config.alpn_protocols = match &options.alpn {
        Some(protocols) => protocols.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => default_alpn.iter().map(|p| p.to_vec()).collect(),
    };
    Ok(Arc::new(config))
}

/// ALPN offered on HTTPS ports unless a listener says otherwise.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

//! Remote JWKS: fetched over HTTP(S), cached, refreshed when the cache
//! expires or a token names an unknown `kid`, never more often than the
//! configured minimum interval (a flood of tokens with made-up `kid`s costs
//! one fetch per interval, not one per request).
//!
//! Fail closed: with no keys ever fetched, requests needing them are
//! refused (503). Once keys were fetched, they keep being used while the
//! JWKS server is unreachable; only the refresh is retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use portcullis_model::auth::{Jwks, RemoteJwks};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Remote JWKS caches by URL.
#[derive(Default)]
pub struct RemoteCaches {
    remotes: Mutex<HashMap<String, Arc<RemoteKeys>>>,
}

impl RemoteCaches {
    /// The cache for this remote JWKS (created on first use; replaced when
    /// its settings change).
    pub(super) fn remote(&self, config: &RemoteJwks) -> Arc<RemoteKeys> {
        // A poisoned lock only means another request panicked while
        // inserting; the map itself is still consistent.
        let mut remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = remotes.get(&config.url) {
            if existing.config == *config {
                return existing.clone();
            }
        }
        let keys = Arc::new(RemoteKeys::new(config.clone()));
        remotes.insert(config.url.clone(), keys.clone());
        keys
    }

    /// Drops the caches of JWKS URLs no policy of `table` names any more
    /// (called on every table swap, so the map never outgrows the
    /// configuration). Caches still named keep their keys.
    pub fn retain_used(&self, table: &portcullis_model::RouteTable) {
        let mut used = std::collections::HashSet::new();
        for port in &table.ports {
            for route in port.virtual_hosts.iter().flat_map(|v| &v.routes) {
                let Some(auth) = &route.rule.policies.auth else {
                    continue;
                };
                for provider in auth.jwt.iter().flat_map(|j| &j.providers) {
                    if let portcullis_model::auth::JwksSource::Remote(r) = &provider.keys {
                        used.insert(r.url.as_str());
                    }
                }
            }
        }
        let mut remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        remotes.retain(|url, _| used.contains(url.as_str()));
    }

    /// How many remote JWKS caches are kept (for tests).
    pub fn count(&self) -> usize {
        self.remotes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many fetches of `url` were started (for logs and tests).
    pub fn fetches(&self, url: &str) -> u64 {
        let remotes = self.remotes.lock().unwrap_or_else(|e| e.into_inner());
        remotes
            .get(url)
            .map(|r| r.fetches.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

struct Cached {
    jwks: Arc<Jwks>,
    fetched: Instant,
}

/// Distinguishes cache instances (see [`RemoteKeys::keys_id`]).
static INSTANCES: AtomicU64 = AtomicU64::new(1);

pub(super) struct RemoteKeys {
    config: RemoteJwks,
    instance: u64,
    cached: RwLock<Option<Cached>>,
    /// When the last fetch started (success or not).
    last_attempt: Mutex<Option<Instant>>,
    /// Increases after every fetch; lets a waiter see that someone else
    /// already refreshed.
    generation: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    last_error: Mutex<String>,
    fetches: AtomicU64,
}

impl RemoteKeys {
    fn new(config: RemoteJwks) -> RemoteKeys {
        RemoteKeys {
            config,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            cached: RwLock::new(None),
            last_attempt: Mutex::new(None),
            generation: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(String::new()),
            fetches: AtomicU64::new(0),
        }
    }

    /// Identity of the key set currently cached: changes with every fetch
    /// and between cache instances.
    pub(super) fn keys_id(&self) -> u64 {
        (self.instance << 32) ^ self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<(Arc<Jwks>, bool)> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().map(|c| {
            let fresh = c.fetched.elapsed() < self.config.cache_duration;
            (c.jwks.clone(), fresh)
        })
    }

    /// Whether the rate limit allows starting a fetch now.
    fn may_fetch(&self) -> bool {
        let last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= self.config.min_refresh_interval)
    }

    /// Keys to verify a token with `kid`. Refreshes when the cache is stale
    /// or lacks `kid`, within the rate limit. `Err` only when no key was
    /// ever fetched (fail closed).
    pub(super) async fn keys(&self, kid: Option<&str>) -> Result<Arc<Jwks>, String> {
        let generation = self.generation.load(Ordering::Acquire);
        let current = self.current();
        if let Some((jwks, fresh)) = &current {
            // A key without `kid` is a candidate for any token.
            let known = kid.is_none_or(|kid| {
                jwks.keys
                    .iter()
                    .any(|k| k.kid.is_none() || k.kid.as_deref() == Some(kid))
            });
            if *fresh && known {
                return Ok(jwks.clone());
            }
        }
        if self.may_fetch() {
            self.refresh(generation).await;
        }
        match self.current() {
            Some((jwks, _)) => Ok(jwks),
            None => {
                let error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
                Err(format!("JWKS {} unavailable: {}", self.config.url, error))
            }
        }
    }

    /// One fetch at a time; a waiter whose refresh was done by someone
    /// else meanwhile does not fetch again.
    async fn refresh(&self, seen_generation: u64) {
        let _single = self.fetching.lock().await;
        if self.generation.load(Ordering::Acquire) != seen_generation || !self.may_fetch() {
            return;
        }
        *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = fetch_jwks(&self.config).await;
        match result {
            Ok(jwks) => {
                tracing::info!(url = %self.config.url, keys = jwks.keys.len(), "JWKS fetched");
                *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
                    jwks: Arc::new(jwks),
                    fetched: Instant::now(),
                });
            }
            Err(e) => {
                let cached = self.current().is_some();
                tracing::warn!(url = %self.config.url, error = %e, keeping_cached_keys = cached, "JWKS fetch failed");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

async fn fetch_jwks(config: &RemoteJwks) -> Result<Jwks, String> {
    let body = tokio::time::timeout(config.timeout, fetch(config))
        .await
        .map_err(|_| format!("no answer within {:?}", config.timeout))??;
    let (jwks, skipped) = Jwks::parse(&body, false, false)?;
    for s in skipped {
        tracing::debug!(url = %config.url, "JWKS {s}: skipped");
    }
    Ok(jwks)
}

/// GET the URL over a fresh connection (fetches are rare; no pool needed).
async fn fetch(config: &RemoteJwks) -> Result<Bytes, String> {
    let uri: Uri = config
        .url
        .parse()
        .map_err(|e| format!("invalid URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL scheme must be http or https".into()),
    };
    let host = uri.host().ok_or("URL has no host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to the resolver.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let tls = client_config(config.ca_pem.as_deref())?;
        let name = ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("invalid TLS server name {host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
        get(stream, &uri).await
    } else {
        get(tcp, &uri).await
    }
}

async fn get<S>(io: S, uri: &Uri) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "JWKS connection closed with error");
        }
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(header::USER_AGENT, "portcullis")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    Ok(body.to_bytes())
}

/// Trust the configured CA bundle, or the system's roots.
fn client_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("invalid CA PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("invalid CA certificate: {e}"))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

//! TLS ports (Gateway API `TLS` listeners, TLSRoute): the ClientHello is
//! read without answering it, its SNI picks the route, and the connection
//! becomes a TCP stream to a backend endpoint:
//!
//! - Passthrough: the bytes read so far and everything after go to the
//!   backend untouched; the backend completes the handshake with the
//!   client, so the gateway never holds the session keys.
//! - Terminate: the gateway completes the handshake (certificate and
//!   settings by SNI, see [`crate::tls`]) and forwards the plaintext.
//!
//! No SNI, an SNI no route serves, or a route without a usable backend or
//! endpoint: the connection is closed (that is all TLS lets a gateway say
//! before a handshake).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use portcullis_model::{BackendTarget, HostMatch, PortConfig, Rule, TlsMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::lb::PickInput;
use crate::state::{PortState, Prepared};

/// A ClientHello larger than this is refused (real ones are a few hundred
/// bytes; post-quantum key shares bring them to a few KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The SNI table of one TLS port.
#[derive(Debug, Default)]
pub struct SniRoutes {
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
    routes: Vec<SniRoute>,
}

#[derive(Debug)]
pub struct SniRoute {
    pub mode: TlsMode,
    pub rule: Option<Arc<Rule>>,
}

impl SniRoutes {
    pub fn new(port: &PortConfig) -> SniRoutes {
        let mut out = SniRoutes::default();
        for r in &port.tls_routes {
            let i = out.routes.len();
            out.routes.push(SniRoute {
                mode: r.mode,
                rule: r.rule.clone(),
            });
            match &r.hostname {
                HostMatch::Exact(h) => {
                    out.exact.entry(h.clone()).or_insert(i);
                }
                HostMatch::Wildcard(s) => out.wildcards.push((s.clone(), i)),
                HostMatch::Any => {
                    out.any.get_or_insert(i);
                }
            }
        }
        out.wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        out
    }

    /// The route for an SNI (lowercase): exact, longest wildcard, catch-all.
    pub fn lookup(&self, sni: &str) -> Option<&SniRoute> {
        let i = self.exact.get(sni).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
                .map(|(_, i)| *i)
                .or(self.any)
        })?;
        self.routes.get(i)
    }
}

/// Why a TLS connection was closed without being proxied (logged at debug:
/// these are the client's doing or a route's state, and a scanner could
/// fill the log).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("timed out waiting for the ClientHello")]
    Timeout,
    #[error("no SNI in the ClientHello")]
    NoSni,
    #[error("no TLSRoute for SNI {0:?}")]
    NoRoute(String),
    #[error("{0}")]
    NoBackend(String),
    #[error("no certificate for terminating SNI {0:?}")]
    NoCertificate(String),
}

/// The ClientHello, read and kept byte for byte.
struct Hello {
    bytes: Vec<u8>,
    sni: Option<String>,
}

async fn read_client_hello(stream: &mut TcpStream) -> Result<Hello, Refused> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_CLIENT_HELLO {
            return Err(Refused::TooLarge);
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            // Consumes at least one byte of a non-empty slice, or fails
            // (its buffer full); a zero would mean neither: stop, not spin.
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(Refused::TooLarge);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Hello { bytes, sni });
            }
            Err((e, _alert)) => return Err(Refused::NotTls(e)),
        }
    }
}

/// Serves one connection of a TLS port.
pub async fn serve(
    mut stream: TcpStream,
    remote: SocketAddr,
    state: Arc<Prepared>,
    port: Arc<PortState>,
    handshake_timeout: Duration,
) -> Result<(), Refused> {
    let hello = tokio::time::timeout(handshake_timeout, read_client_hello(&mut stream))
        .await
        .map_err(|_| Refused::Timeout)??;
    let sni = hello.sni.ok_or(Refused::NoSni)?;
    let Some(routes) = port.tls_routes.as_ref() else {
        return Err(Refused::NoRoute(sni));
    };
    let route = routes
        .lookup(&sni)
        .ok_or_else(|| Refused::NoRoute(sni.clone()))?;
    let rule = route
        .rule
        .as_ref()
        .ok_or_else(|| Refused::NoRoute(sni.clone()))?;
    let backend = crate::proxy::pick_weighted(&rule.backends)
        .ok_or_else(|| Refused::NoBackend(format!("{}: no backend with weight", rule.id)))?;
    let backend = match &backend.target {
        BackendTarget::Service(b) => b,
        BackendTarget::Invalid { reason } => {
            return Err(Refused::NoBackend(format!(
                "{}: backend not usable ({reason})",
                rule.id
            )))
        }
    };
    let backend_state = state
        .backends
        .get(&backend.name)
        .ok_or_else(|| Refused::NoBackend(format!("{}: unknown backend", backend.name)))?;
    let headers = HeaderMap::new();
    let endpoint = backend_state
        .pick(&PickInput {
            headers: &headers,
            query: None,
            client_ip: remote.ip(),
            tried: &[],
        })
        .ok_or_else(|| Refused::NoBackend(format!("{}: no ready endpoint", backend.name)))?
        .clone();
    let connect_timeout = backend_state.settings.connect_timeout;
    let _active = endpoint.start_request();

    match route.mode {
        TlsMode::Passthrough => {
            let mut upstream = connect(endpoint.addr, connect_timeout, &backend.name).await?;
            upstream.write_all(&hello.bytes).await?;
            tracing::debug!(%remote, %sni, backend = %backend.name, endpoint = %endpoint.addr, "TLS passthrough");
            pipe(stream, upstream).await;
        }
        TlsMode::Terminate => {
            let tls = port
                .tls
                .as_ref()
                .ok_or_else(|| Refused::NoCertificate(sni.clone()))?;
            let replay = Replay {
                prefix: hello.bytes,
                pos: 0,
                inner: stream,
            };
            let (client, _) = tokio::time::timeout(handshake_timeout, tls.accept(replay))
                .await
                .map_err(|_| Refused::Timeout)??;
            let upstream = connect(endpoint.addr, connect_timeout, &backend.name).await?;
            tracing::debug!(%remote, %sni, backend = %backend.name, endpoint = %endpoint.addr, "TLS terminated");
            pipe(client, upstream).await;
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr, timeout: Duration, backend: &str) -> Result<TcpStream, Refused> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Refused::NoBackend(format!(
            "{backend}: connecting to {addr}: {e}"
        ))),
        Err(_) => Err(Refused::NoBackend(format!(
            "{backend}: connecting to {addr} timed out"
        ))),
    }
}

/// Copies both ways until both sides are done (a half-close is passed on).
async fn pipe<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        tracing::debug!(error = %e, "TLS route stream ended with error");
    }
}

/// A stream whose first bytes were already read: they are read again
/// before the rest (the ClientHello, for the terminating handshake).
struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::{Protocol, RouteKind, RuleId, Timeouts};

    fn rule(name: &str) -> Arc<Rule> {
        Arc::new(Rule {
            id: RuleId {
                kind: RouteKind::Tls,
                namespace: "ns".into(),
                name: name.into(),
                rule_index: 0,
                rule_name: None,
            },
            filters: vec![],
            backends: vec![],
            timeouts: Timeouts::default(),
            retry: None,
            policies: Default::default(),
        })
    }

    #[test]
    fn exact_beats_wildcard_beats_catch_all() {
        let route = |h: Option<&str>, name: Option<&str>| portcullis_model::TlsRoute {
            hostname: HostMatch::parse(h),
            mode: TlsMode::Passthrough,
            rule: name.map(rule),
        };
        let port = PortConfig {
            port: 443,
            protocol: Protocol::Tls,
            tls: None,
            virtual_hosts: vec![],
            tls_routes: vec![
                route(Some("a.example.com"), Some("exact")),
                route(Some("*.b.example.com"), None),
                route(Some("*.example.com"), Some("wild")),
                route(None, Some("any")),
            ],
        };
        let t = SniRoutes::new(&port);
        let name = |sni: &str| {
            t.lookup(sni).map(|r| {
                r.rule
                    .as_ref()
                    .map_or("closed".to_string(), |r| r.id.name.clone())
            })
        };
        assert_eq!(name("a.example.com").as_deref(), Some("exact"));
        assert_eq!(name("z.example.com").as_deref(), Some("wild"));
        assert_eq!(name("x.b.example.com").as_deref(), Some("closed"));
        assert_eq!(name("example.com").as_deref(), Some("any"));
        assert_eq!(name("other.org").as_deref(), Some("any"));
    }

    #[tokio::test]
    async fn replay_reads_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Replay {
            prefix: b"hello".to_vec(),
            pos: 0,
            inner: b,
        };
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}

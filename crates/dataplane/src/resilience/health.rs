//! Active health checks: one task per endpoint probes it (TCP connect, or
//! an HTTP/1.1 GET whose status must be in the expected ranges, over TLS
//! when the backend has a BackendTLSPolicy) every
//! interval plus random jitter. `unhealthy_threshold` failures in a row
//! take the endpoint out of load balancing, `healthy_threshold` passes in a
//! row bring it back. Endpoints start healthy, so a new table never turns
//! traffic away before its first probe.
//!
//! Tasks hold only the endpoints' state, never the backend's, and are
//! aborted by [`HealthChecker::stop`] (called when a table drops or changes
//! the checks) or when the checker is dropped: none outlives its backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_model::backend_policy::{HealthCheck, HealthCheckKind};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::EndpointState;
use crate::backend_tls::TlsConnect;

/// Bytes of a health response read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

pub struct HealthChecker {
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl HealthChecker {
    /// Starts probing; `None` (checks disabled, logged) outside a Tokio
    /// runtime.
    pub fn start(
        backend: &str,
        check: &HealthCheck,
        endpoints: &[Arc<EndpointState>],
        tls: Option<Arc<TlsConnect>>,
    ) -> Option<Arc<HealthChecker>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(backend, "no async runtime: active health checks disabled");
            return None;
        };
        let check = Arc::new(check.clone());
        let tasks = endpoints
            .iter()
            .map(|e| runtime.spawn(probe_loop(e.clone(), check.clone(), tls.clone())))
            .collect();
        Some(Arc::new(HealthChecker {
            tasks: Mutex::new(tasks),
        }))
    }

    /// Aborts every probe task (idempotent).
    pub fn stop(&self) {
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for t in tasks {
            t.abort();
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn probe_loop(
    endpoint: Arc<EndpointState>,
    check: Arc<HealthCheck>,
    tls: Option<Arc<TlsConnect>>,
) {
    // The first probe comes within the jitter, not a whole interval later.
    tokio::time::sleep(jitter(check.jitter)).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let probe = probe(&endpoint, &check, tls.as_deref());
        let ok = match tokio::time::timeout(check.timeout, probe).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %endpoint.addr, error = %e, "health check failed");
                false
            }
            Err(_) => {
                tracing::debug!(endpoint = %endpoint.addr, "health check timed out");
                false
            }
        };
        if ok {
            passes += 1;
            failures = 0;
            if passes >= check.healthy_threshold {
                endpoint.set_healthy(true);
            }
        } else {
            failures += 1;
            passes = 0;
            if failures >= check.unhealthy_threshold {
                endpoint.set_healthy(false);
            }
        }
        tokio::time::sleep(check.interval + jitter(check.jitter)).await;
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let ms = max.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

async fn probe(
    endpoint: &EndpointState,
    check: &HealthCheck,
    tls: Option<&TlsConnect>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(endpoint.addr).await?;
    let HealthCheckKind::Http {
        path,
        host,
        expected_statuses,
    } = &check.kind
    else {
        return Ok(());
    };
    match tls {
        None => http_probe(stream, endpoint, path, host, expected_statuses).await,
        Some(tls) => {
            let stream = tls.handshake(stream).await.map_err(std::io::Error::other)?;
            http_probe(stream, endpoint, path, host, expected_statuses).await
        }
    }
}

async fn http_probe<S>(
    mut stream: S,
    endpoint: &EndpointState,
    path: &str,
    host: &Option<String>,
    expected_statuses: &[(u16, u16)],
) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = host.clone().unwrap_or_else(|| endpoint.addr.to_string());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portcullis-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = parse_status(&buf).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
    })?;
    if expected_statuses
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("status {status}")))
    }
}

/// `HTTP/1.x NNN ...` -> NNN.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}

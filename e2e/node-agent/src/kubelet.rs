//! The bit of the kubelet API the API server proxies to: container logs
//! (`kubectl logs`, pods/log). HTTPS with a self-signed certificate (the API
//! server is started without --kubelet-certificate-authority).

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::info;

use crate::pod::{log_path, Shared};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub async fn serve(sh: Arc<Shared>, addr: SocketAddr) -> Result<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&sh.cfg.kubelet_cert)
        .context("reading kubelet cert")?
        .collect::<Result<_, _>>()
        .context("parsing kubelet cert")?;
    let key = PrivateKeyDer::from_pem_file(&sh.cfg.kubelet_key).context("reading kubelet key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding kubelet API on {addr}"))?;
    info!(%addr, "kubelet API (container logs) listening");
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let sh = sh.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn text(code: StatusCode, s: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(s.into()))
            .map_err(|never: Infallible| -> std::io::Error { match never {} })
            .boxed_unsync(),
    );
    *r.status_mut() = code;
    r
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => Ok(text(StatusCode::OK, "ok")),
        ["containerLogs", ns, pod, container] => Ok(logs(sh, ns, pod, container, q).await),
        _ => Ok(text(
            StatusCode::NOT_FOUND,
            format!("the e2e node agent serves only /containerLogs, not {path}\n"),
        )),
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn logs(
    sh: Arc<Shared>,
    ns: &str,
    pod: &str,
    container: &str,
    q: HashMap<String, String>,
) -> Response<Body> {
    let q: HashMap<String, String> = q.into_iter().map(|(k, v)| (k, pct_decode(&v))).collect();
    let info = sh
        .logs
        .lock()
        .unwrap()
        .get(&(ns.to_string(), pod.to_string()))
        .cloned();
    let Some(info) = info else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} is not running on this node\n"),
        );
    };
    let Some(&(restarts, _)) = info.containers.get(container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container} is not in pod {ns}/{pod}\n"),
        );
    };
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let restart = if previous { restarts - 1 } else { restarts };
    if restart < 0 {
        return text(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container} in pod {ns}/{pod} not found\n"),
        );
    }
    let mut lq = crate::logs::Query {
        since: None,
        timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
    };
    if let Some(t) = q.get("sinceTime") {
        match t.parse::<jiff::Timestamp>() {
            Ok(t) => lq.since = Some(t),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("bad sinceTime {t:?}: {e}\n"),
                )
            }
        }
    } else if let Some(secs) = q.get("sinceSeconds").and_then(|v| v.parse::<i64>().ok()) {
        lq.since = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(secs))
            .ok();
    }
    let path = log_path(&info.dir, container, restart);
    let stored = tokio::fs::read(&path).await.unwrap_or_default();
    // Only complete records; a partial last one is picked up by follow.
    let complete = stored
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let rendered = crate::logs::render(&stored[..complete], &lq);
    let mut first = match q.get("tailLines").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => crate::logs::tail(&rendered, n).to_vec(),
        None => rendered,
    };
    let limit = q.get("limitBytes").and_then(|v| v.parse::<usize>().ok());
    if let Some(l) = limit {
        first.truncate(l);
    }
    let follow = q.get("follow").is_some_and(|v| v == "true") && !previous;
    if !follow {
        return text(StatusCode::OK, String::from_utf8_lossy(&first).into_owned());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let key = (ns.to_string(), pod.to_string());
    let container = container.to_string();
    let mut offset = complete as u64;
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let mut pending: Vec<u8> = vec![];
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let cur = sh
                .logs
                .lock()
                .unwrap()
                .get(&key)
                .and_then(|i| i.containers.get(&container).copied());
            let mut buf = vec![];
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let _ = f.read_to_end(&mut buf).await;
                }
            }
            offset += buf.len() as u64;
            pending.extend_from_slice(&buf);
            if let Some(i) = pending.iter().rposition(|&b| b == b'\n') {
                let out = crate::logs::render(&pending[..=i], &lq);
                pending.drain(..=i);
                if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                    return;
                }
            }
            // This instance is over (exited, restarted or pod gone): the stream ends.
            match cur {
                Some((r, running)) if r == restart && running => {}
                _ => return,
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::new(StreamBody::new(stream).boxed_unsync())
}

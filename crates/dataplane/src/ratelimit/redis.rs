//! A small Redis client for global rate-limit counters.
//!
//! Why not a Redis crate: we need exactly one command shape (EVALSHA of one
//! script, EVAL as fallback) plus AUTH/SELECT/SCRIPT LOAD on connect. The
//! common crates pull in their own connection managers, URL parsers and TLS
//! stacks (several hundred kB of code, minutes of build on our CI), and we
//! still would have to wrap them for fail-fast behaviour during outages.
//! RESP2 over tokio + the workspace's tokio-rustls is ~300 lines.
//!
//! Shape: one multiplexed connection per Redis server, owned by a task.
//! Callers send encoded commands over a bounded channel and wait on a
//! oneshot; the task pipelines everything queued into one write and
//! matches replies in order. Calls made while a connection is being
//! established wait for it (bounded by the caller's timeout). When the
//! connection breaks every pending
//! caller gets an error at once, the task reconnects with backoff (50 ms
//! doubling to 1 s), and while it is down new calls fail immediately, so no
//! request ever waits on a dead Redis longer than its policy's timeout. A
//! connection whose oldest pending reply is overdue (a hung server) is
//! dropped and re-established the same way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use portcullis_model::ratelimit::GlobalStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unavailable: {0}")]
    Unavailable(&'static str),
    #[error("redis connection lost")]
    ConnectionLost,
    #[error("redis error reply: {0}")]
    Reply(String),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

/// Most commands waiting to be written; beyond that calls fail fast.
const QUEUE: usize = 8192;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A reply this late means the server or the path to it is hung.
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Largest bulk string or array we accept (a counter reply is tiny).
const MAX_LEN: usize = 16 << 20;

struct Call {
    command: Vec<u8>,
    reply: oneshot::Sender<Result<Value, RedisError>>,
}

/// Handle to the connection task; dropping the last one ends it.
pub struct RedisClient {
    calls: mpsc::Sender<Call>,
    connected: Arc<AtomicBool>,
    address: String,
    script: &'static str,
    /// SHA1 of `script`, as reported by the first SCRIPT LOAD.
    script_sha: Arc<OnceLock<String>>,
}

impl RedisClient {
    /// Starts the connection task (needs a tokio runtime; without one
    /// every call fails, which `failureMode` then decides).
    pub fn start(store: &GlobalStore, script: &'static str) -> RedisClient {
        let (tx, rx) = mpsc::channel(QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        let script_sha = Arc::new(OnceLock::new());
        let address = store.display_address();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let task = ConnectionTask {
                    store: store.clone(),
                    script,
                    connected: connected.clone(),
                    script_sha: script_sha.clone(),
                };
                handle.spawn(task.run(rx));
            }
            Err(_) => {
                tracing::error!(redis = %address, "no async runtime: global rate limits cannot reach redis")
            }
        }
        RedisClient {
            calls: tx,
            connected,
            address,
            script,
            script_sha,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one command and waits for its reply (callers bound the wait
    /// with their timeout). Error replies come back as `RedisError::Reply`.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let (reply, rx) = oneshot::channel();
        let call = Call {
            command: encode(args),
            reply,
        };
        self.calls.try_send(call).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                RedisError::Unavailable("too many queued commands")
            }
            mpsc::error::TrySendError::Closed(_) => RedisError::Unavailable("client stopped"),
        })?;
        match rx.await {
            Ok(Ok(Value::Error(e))) => Err(RedisError::Reply(e)),
            Ok(result) => result,
            Err(_) => Err(RedisError::ConnectionLost),
        }
    }

    /// Runs the client's script: EVALSHA, and EVAL when the server lost
    /// its script cache (restarted, SCRIPT FLUSH) since we connected.
    pub async fn eval_script(&self, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value, RedisError> {
        let numkeys = keys.len().to_string();
        let mut argv: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        // Until the first connection reported the SHA, send the script
        // itself (EVAL also caches it on the server).
        match self.script_sha.get() {
            Some(sha) => argv.extend_from_slice(&[b"EVALSHA", sha.as_bytes()]),
            None => argv.extend_from_slice(&[b"EVAL", self.script.as_bytes()]),
        }
        argv.push(numkeys.as_bytes());
        argv.extend_from_slice(keys);
        argv.extend_from_slice(args);
        match self.call(&argv).await {
            Err(RedisError::Reply(e)) if e.starts_with("NOSCRIPT") => {
                argv[0] = b"EVAL";
                argv[1] = self.script.as_bytes();
                self.call(&argv).await
            }
            other => other,
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct ConnectionTask {
    store: GlobalStore,
    script: &'static str,
    connected: Arc<AtomicBool>,
    script_sha: Arc<OnceLock<String>>,
}

impl ConnectionTask {
    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        let address = self.store.display_address();
        let mut backoff = BACKOFF_START;
        let mut was_up = true; // log the first failure
        loop {
            match self.connect().await {
                Ok(stream) => {
                    tracing::info!(redis = %address, "connected to redis");
                    self.connected.store(true, Ordering::Relaxed);
                    backoff = BACKOFF_START;
                    was_up = true;
                    let ended = serve(stream, &mut calls).await;
                    self.connected.store(false, Ordering::Relaxed);
                    match ended {
                        Ended::Closed => return,
                        Ended::Failed(why) => {
                            tracing::warn!(redis = %address, error = %why, "redis connection lost; reconnecting")
                        }
                    }
                }
                Err(e) => {
                    if was_up {
                        tracing::warn!(redis = %address, error = %e, "cannot connect to redis; retrying");
                        was_up = false;
                    }
                }
            }
            // Down: answer every call at once until the next attempt.
            let retry_at = tokio::time::sleep(backoff);
            tokio::pin!(retry_at);
            loop {
                tokio::select! {
                    _ = &mut retry_at => break,
                    call = calls.recv() => match call {
                        Some(call) => { let _ = call.reply.send(Err(RedisError::Unavailable("not connected"))); }
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn connect(&mut self) -> Result<Box<dyn Stream>, String> {
        let addr = (self.store.host.as_str(), self.store.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Stream> = match &self.store.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = tls_connector(tls)?;
                let name = ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| format!("invalid TLS server name: {e}"))?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Box::new(stream)
            }
        };
        let handshake = async {
            let mut buf = BytesMut::with_capacity(512);
            if let Some(password) = &self.store.password {
                let reply = match &self.store.username {
                    Some(user) => {
                        roundtrip(
                            &mut stream,
                            &mut buf,
                            &[b"AUTH", user.as_bytes(), password.as_bytes()],
                        )
                        .await?
                    }
                    None => {
                        roundtrip(&mut stream, &mut buf, &[b"AUTH", password.as_bytes()]).await?
                    }
                };
                expect_ok(reply, "AUTH")?;
            }
            if self.store.db != 0 {
                let db = self.store.db.to_string();
                let reply = roundtrip(&mut stream, &mut buf, &[b"SELECT", db.as_bytes()]).await?;
                expect_ok(reply, "SELECT")?;
            }
            let reply = roundtrip(
                &mut stream,
                &mut buf,
                &[b"SCRIPT", b"LOAD", self.script.as_bytes()],
            )
            .await?;
            match reply {
                Value::Bulk(Some(sha)) => {
                    // The same script always has the same SHA1.
                    let _ = self
                        .script_sha
                        .set(String::from_utf8_lossy(&sha).into_owned());
                }
                other => return Err(format!("SCRIPT LOAD answered {other:?}")),
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| "handshake timed out".to_string())??;
        Ok(stream)
    }
}

fn expect_ok(reply: Value, what: &str) -> Result<(), String> {
    match reply {
        Value::Simple(s) if s == "OK" => Ok(()),
        Value::Error(e) => Err(format!("{what} failed: {e}")),
        other => Err(format!("{what} answered {other:?}")),
    }
}

async fn roundtrip(
    stream: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    args: &[&[u8]],
) -> Result<Value, String> {
    stream
        .write_all(&encode(args))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        if let Some((value, used)) = parse(buf)? {
            buf.advance(used);
            return Ok(value);
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed during handshake".into());
        }
    }
}

fn tls_connector(
    tls: &portcullis_model::ratelimit::RedisTls,
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

enum Ended {
    /// Every client handle is gone.
    Closed,
    Failed(String),
}

/// Pipelines calls over one connection until it fails.
async fn serve(stream: Box<dyn Stream>, calls: &mut mpsc::Receiver<Call>) -> Ended {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut pending: VecDeque<(Instant, oneshot::Sender<Result<Value, RedisError>>)> =
        VecDeque::new();
    let mut read_buf = BytesMut::with_capacity(16 * 1024);
    let mut write_buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let fail = |pending: &mut VecDeque<(Instant, oneshot::Sender<Result<Value, RedisError>>)>,
                why: String| {
        for (_, reply) in pending.drain(..) {
            let _ = reply.send(Err(RedisError::ConnectionLost));
        }
        Ended::Failed(why)
    };
    loop {
        let stall_deadline = pending.front().map(|(sent, _)| *sent + STALL_LIMIT);
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else {
                    // Every handle is gone: nobody waits for replies.
                    return Ended::Closed;
                };
                let now = Instant::now();
                queue(call, now, &mut write_buf, &mut pending);
                // Everything queued right now goes out in one write.
                while write_buf.len() < 64 * 1024 {
                    match calls.try_recv() {
                        Ok(call) => queue(call, now, &mut write_buf, &mut pending),
                        Err(_) => break,
                    }
                }
                if write_buf.is_empty() {
                    continue;
                }
                if let Err(e) = writer.write_all(&write_buf).await {
                    return fail(&mut pending, e.to_string());
                }
                write_buf.clear();
            }
            read = reader.read_buf(&mut read_buf) => {
                match read {
                    Ok(0) => return fail(&mut pending, "closed by server".into()),
                    Ok(_) => loop {
                        match parse(&read_buf) {
                            Ok(Some((value, used))) => {
                                read_buf.advance(used);
                                match pending.pop_front() {
                                    Some((_, reply)) => { let _ = reply.send(Ok(value)); }
                                    None => return fail(&mut pending, format!("unsolicited reply {value:?}")),
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return fail(&mut pending, e),
                        }
                    },
                    Err(e) => return fail(&mut pending, e.to_string()),
                }
            }
            _ = sleep_until_opt(stall_deadline) => {
                return fail(&mut pending, format!("no reply within {STALL_LIMIT:?}"));
            }
        }
    }
}

type Pending = VecDeque<(Instant, oneshot::Sender<Result<Value, RedisError>>)>;

/// Adds a call to the next write, unless its caller already gave up (its
/// timeout passed while we were connecting: it got its failureMode answer,
/// so it must not be counted now).
fn queue(call: Call, now: Instant, write_buf: &mut Vec<u8>, pending: &mut Pending) {
    if !call.reply.is_closed() {
        write_buf.extend_from_slice(&call.command);
        pending.push_back((now, call.reply));
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`: `Ok(None)` when incomplete,
/// else the value and the bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let line =
        std::str::from_utf8(&buf[1..line_end]).map_err(|_| "non-UTF-8 reply line".to_string())?;
    let after = line_end + 2;
    let int = |s: &str| s.parse::<i64>().map_err(|_| format!("bad integer {s:?}"));
    match tag {
        b'+' => Ok(Some((Value::Simple(line.to_string()), after))),
        b'-' => Ok(Some((Value::Error(line.to_string()), after))),
        b':' => Ok(Some((Value::Int(int(line)?), after))),
        b'$' => {
            let len = int(line)?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = usize::try_from(len).map_err(|_| "bad length".to_string())?;
            if len > MAX_LEN {
                return Err(format!("bulk reply of {len} bytes"));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            if &buf[after + len..after + len + 2] != b"\r\n" {
                return Err("bulk reply not terminated".into());
            }
            Ok(Some((
                Value::Bulk(Some(buf[after..after + len].to_vec())),
                after + len + 2,
            )))
        }
        b'*' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| "bad length".to_string())?;
            if n > MAX_LEN {
                return Err(format!("array reply of {n} items"));
            }
            let mut items = Vec::with_capacity(n.min(64));
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((v, used)) => {
                        items.push(v);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        other => Err(format!("unknown reply type {:?}", other as char)),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn parses_every_reply_type_and_waits_for_more_bytes() {
        let full = b"*4\r\n:1\r\n$2\r\nok\r\n$-1\r\n*2\r\n+OK\r\n-ERR x\r\n".to_vec();
        let (v, used) = parse(&full).unwrap().unwrap();
        assert_eq!(used, full.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Bulk(Some(b"ok".to_vec())),
                Value::Bulk(None),
                Value::Array(Some(vec![
                    Value::Simple("OK".into()),
                    Value::Error("ERR x".into())
                ])),
            ]))
        );
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":notanumber\r\n").is_err());
        assert!(parse(b"$3\r\nabcde\r\n").is_err());
    }
}

//! Chaos under load: backends killed and restarted, slowed beyond their
//! timeout, flapping; Redis gone in the middle of rate limiting. Each test
//! runs a bounded load loop through an in-process gateway, asserts the
//! statuses clients get while things break and that service comes back
//! without restarting the gateway, then that nothing leaked: the process's
//! open file descriptors and the runtime's live tasks return to their
//! baseline once the load stops and idle connections time out.
//!
//! File descriptors and tasks are process-wide, so the tests of this file
//! take turns ([`SERIAL`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_dataplane::Limits;
use portcullis_tests::redis::RedisServer;
use portcullis_tests::*;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOST: &str = "chaos.example";

// ------------------------------------------------------------- backends

/// A backend that can die like a process does (listener and every open
/// connection gone at once), come back on the same address, and answer
/// slowly.
struct ChaosBackend {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl ChaosBackend {
    async fn start(ip: Ipv4Addr, port: u16) -> ChaosBackend {
        let mut backend = ChaosBackend {
            addr: SocketAddr::new(IpAddr::V4(ip), port),
            delay_ms: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        backend.listen().await;
        backend
    }

    async fn listen(&mut self) {
        // The port may linger for a moment after a kill: bounded retries.
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind the backend's address");
        self.addr = listener.local_addr().expect("backend address");
        self.task = Some(tokio::spawn(serve(listener, self.delay_ms.clone())));
    }

    /// Everything closes at once: requests in flight see a reset, new
    /// connections are refused.
    fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.listen().await;
    }

    fn slow_down(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for ChaosBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serves "ok" after the current delay. Connection tasks live in a JoinSet
/// owned by this task, so aborting it closes them all.
async fn serve(listener: TcpListener, delay_ms: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let delay_ms = delay_ms.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

// ----------------------------------------------------------------- load

/// Concurrent keep-alive clients sending GETs until stopped, each bounded
/// in count; every outcome is counted by status (`0`: the client got no
/// answer at all: a failure of the gateway).
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<BTreeMap<u16, usize>>>,
}

impl Load {
    fn start(url: String, clients: usize, max_per_client: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = http1_client();
                    let mut statuses = BTreeMap::new();
                    for _ in 0..max_per_client {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        *statuses.entry(status_of(&client, &url).await).or_insert(0) += 1;
                    }
                    statuses
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients (they drop their connections) and sums up.
    async fn finish(self) -> BTreeMap<u16, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = BTreeMap::new();
        for client in self.clients {
            for (status, n) in client.await.expect("load client") {
                *total.entry(status).or_insert(0) += n;
            }
        }
        total
    }
}

async fn status_of(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
) -> u16 {
    let Ok(req) = Request::get(url)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
    else {
        return 0;
    };
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            // Read the body: the connection goes back to the pool.
            match resp.into_body().collect().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        _ => 0,
    }
}

async fn probe(gw: &TestGateway) -> u16 {
    status_of(&http1_client(), &gw.url("HTTP_PORT", "/")).await
}

/// Polls (bounded) until a request gets `status`.
async fn wait_for_status(gw: &TestGateway, status: u16) -> bool {
    for _ in 0..100 {
        if probe(gw).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn only(statuses: &BTreeMap<u16, usize>, allowed: &[u16]) -> bool {
    statuses.keys().all(|s| allowed.contains(s))
}

// ---------------------------------------------------------------- leaks

/// Open sockets of the process: what a leaked connection (client, gateway
/// and backend ends are all in this process) or listener holds. Other
/// descriptors are left out: a poller or eventfd that a library creates
/// once, on its first use during the test, is not a per-request leak.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// Each open descriptor and, for sockets, its TCP endpoints (from
/// /proc/net/tcp), for the failure message.
fn describe_fds() -> String {
    let tcp = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'));
        let endpoints = inode.and_then(|inode| {
            tcp.lines()
                .find(|l| l.split_whitespace().nth(9) == Some(inode))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    format!(" {} -> {} st {}", f[1], f[2], f[3])
                })
        });
        out.push(format!("{target}{}", endpoints.unwrap_or_default()));
    }
    out.join(", ")
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// What the process holds before any traffic.
struct Baseline {
    fds: usize,
    tasks: usize,
}

impl Baseline {
    fn now() -> Baseline {
        Baseline {
            fds: open_fds(),
            tasks: live_tasks(),
        }
    }

    /// Waits (bounded: idle timeouts are 1 s here) until descriptors and
    /// tasks are back near the baseline; a little slack is left for what
    /// a first request starts once and keeps (a Redis connection, ...).
    /// One leaked connection through the gateway is 4 descriptors (client
    /// and backend are in this process too): the slack is below one.
    async fn assert_returned(&self, what: &str) {
        const SLACK: usize = 2;
        let mut now = (open_fds(), live_tasks());
        for _ in 0..100 {
            if now.0 <= self.fds + SLACK && now.1 <= self.tasks + SLACK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = (open_fds(), live_tasks());
        }
        panic!(
            "{what}: resources not released: {} fds (baseline {}), {} tasks (baseline {}); open: {}",
            now.0,
            self.fds,
            now.1,
            self.tasks,
            describe_fds()
        );
    }
}

// ---------------------------------------------------------------- setup

/// Short idle timeouts everywhere so that leaks show within seconds: client
/// connections (the gateway's limit) and pooled upstream connections (a
/// BackendPolicy on the Service).
fn short_idle(config: &mut portcullis_dataplane::DataPlaneConfig) {
    config.limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
}

fn config(endpoints: &[SocketAddr], route_extra: &str, policy_extra: &str, extra: &str) -> String {
    format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: chaos, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]
{route_extra}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: backend, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: backend}}]
  timeouts: {{idle: 1s, connect: 1s}}
{policy_extra}
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("backend", endpoints, None)
    )
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_503_then_served_again_after_restart() {
    let _turn = SERIAL.lock().await;
    let mut backend = ChaosBackend::start(Ipv4Addr::LOCALHOST, 0).await;
    let gw = TestGateway::start_with(
        &config(&[backend.addr], "", "", ""),
        &["HTTP_PORT"],
        short_idle,
    )
    .await;
    let baseline = Baseline::now();
    assert_eq!(probe(&gw).await, 200);

    let load = Load::start(gw.url("HTTP_PORT", "/"), 4, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.kill();
    // Refused connections: 503, until the backend is back.
    assert!(wait_for_status(&gw, 503).await, "a dead backend is 503");
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend.restart().await;
    assert!(
        wait_for_status(&gw, 200).await,
        "served again after the restart, without restarting the gateway"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses = load.finish().await;

    // Requests in flight when it died: 502 (reset); afterwards 503.
    assert!(only(&statuses, &[200, 502, 503]), "{statuses:?}");
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
    // The backend stays up: its connections must close from the
    // gateway's side (idle pool timeout), not because it went away.
    baseline.assert_returned("backend killed").await;
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_backend_is_504_within_the_timeout_then_fast_again() {
    let _turn = SERIAL.lock().await;
    let backend = ChaosBackend::start(Ipv4Addr::LOCALHOST, 0).await;
    let gw = TestGateway::start_with(
        &config(&[backend.addr], "    timeouts: {request: 300ms}", "", ""),
        &["HTTP_PORT"],
        short_idle,
    )
    .await;
    let baseline = Baseline::now();
    assert_eq!(probe(&gw).await, 200);

    let load = Load::start(gw.url("HTTP_PORT", "/"), 4, 20_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Far beyond the route's timeout.
    backend.slow_down(Duration::from_secs(5));
    assert!(wait_for_status(&gw, 504).await, "a slow backend is 504");
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.slow_down(Duration::ZERO);
    assert!(wait_for_status(&gw, 200).await, "fast again");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let statuses = load.finish().await;

    assert!(only(&statuses, &[200, 504]), "{statuses:?}");
    assert!(statuses.get(&504).copied().unwrap_or(0) > 0, "{statuses:?}");
    // The abandoned slow requests hold upstream connections until the
    // backend answers (5 s): wait for those before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    baseline.assert_returned("backend slowed").await;
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_endpoint_is_retried_around_without_failures() {
    let _turn = SERIAL.lock().await;
    let stable = ChaosBackend::start(Ipv4Addr::LOCALHOST, 0).await;
    let mut flapping = ChaosBackend::start(Ipv4Addr::new(127, 0, 0, 2), stable.addr.port()).await;
    let gw = TestGateway::start_with(
        &config(
            &[stable.addr, flapping.addr],
            "",
            // A budget that admits every retry here: the default (20 % of
            // requests in flight, at least 3) would, by design, refuse some
            // when all four clients hit the dead endpoint at once.
            "  retry: {retryOn: [connect-failure, reset], attempts: 2, backoff: {base: 1ms}, \
             budget: {percent: 100, minRetryConcurrency: 16}}",
            "",
        ),
        &["HTTP_PORT"],
        short_idle,
    )
    .await;
    let baseline = Baseline::now();
    assert_eq!(probe(&gw).await, 200);

    let load = Load::start(gw.url("HTTP_PORT", "/"), 4, 20_000);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        flapping.kill();
        tokio::time::sleep(Duration::from_millis(150)).await;
        flapping.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let statuses = load.finish().await;

    // Every attempt that hit the flapping endpoint while it was down was
    // retried on the other one.
    assert!(only(&statuses, &[200]), "{statuses:?}");
    assert!(statuses[&200] > 0);
    baseline.assert_returned("endpoint flapping").await;
    drop((stable, flapping));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load_fails_open_and_limits_come_back() {
    let _turn = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let backend = ChaosBackend::start(Ipv4Addr::LOCALHOST, 0).await;
    let policy = format!(
        "---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: global, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: chaos}}]
  global: {{url: \"{}\", timeout: 200ms, failureMode: Open}}
  limits:
    quota:
      mode: Global
      rates: [{{limit: 20, window: 1s}}]",
        redis.url()
    );
    let gw = TestGateway::start_with(
        &config(&[backend.addr], "", "", &policy),
        &["HTTP_PORT"],
        short_idle,
    )
    .await;
    let baseline = Baseline::now();

    // Over the limit under load: 429s. (The window is short so that the
    // gateway's cached denials expire during the outage.)
    let load = Load::start(gw.url("HTTP_PORT", "/"), 4, 20_000);
    assert!(wait_for_status(&gw, 429).await, "the limit is enforced");
    redis.kill();
    // Fail open: served while Redis is gone.
    assert!(
        wait_for_status(&gw, 200).await,
        "fail open during the outage"
    );
    let during = load.finish().await;
    assert!(only(&during, &[200, 429]), "{during:?}");

    let load = Load::start(gw.url("HTTP_PORT", "/"), 4, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    // Redis is back: the limit is enforced again, without restarting
    // the gateway.
    assert!(
        wait_for_status(&gw, 429).await,
        "the limit is enforced again after Redis came back"
    );
    let after = load.finish().await;
    assert!(only(&after, &[200, 429]), "{after:?}");
    baseline.assert_returned("redis outage").await;
    drop(backend);
}

//! Upstream connections: pooled HTTP/1.1 and h2c clients, endpoint choice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_model::{AppProtocol, Backend, RouteTable};

use crate::body::Body;

/// Connection pools shared by all tables: a config reload keeps warm
/// connections to endpoints that are still there.
#[derive(Clone)]
pub struct Upstreams {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

/// How long to wait for a TCP connection to a backend endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Upstreams {
    pub fn new() -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // We set Host ourselves: the URI authority is the endpoint
            // address, the Host header is what the client sent.
            .set_host(false);
        let http1 = builder.build(connector.clone());
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .set_host(false);
        let h2c = h2.build(connector);
        Upstreams { http1, h2c }
    }

    pub fn client(&self, protocol: AppProtocol) -> &Client<HttpConnector, Body> {
        match protocol {
            AppProtocol::H2c => &self.h2c,
            AppProtocol::Http1 | AppProtocol::WebSocket => &self.http1,
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

/// Round-robin cursors per backend, carried over from one table to the next
/// so that a reload does not send the next request of every backend to its
/// first endpoint.
#[derive(Default)]
pub struct RoundRobin {
    cursors: HashMap<String, Arc<AtomicUsize>>,
}

impl RoundRobin {
    pub fn for_table(table: &RouteTable, previous: Option<&RoundRobin>) -> RoundRobin {
        let mut cursors = HashMap::new();
        let mut visit = |backend: &Backend| {
            cursors.entry(backend.name.clone()).or_insert_with(|| {
                previous
                    .and_then(|p| p.cursors.get(&backend.name).cloned())
                    .unwrap_or_else(|| Arc::new(AtomicUsize::new(0)))
            });
        };
        for port in &table.ports {
            for vhost in &port.virtual_hosts {
                for route in &vhost.routes {
                    for b in &route.rule.backends {
                        if let portcullis_model::BackendTarget::Service(backend) = &b.target {
                            visit(backend);
                        }
                    }
                }
            }
        }
        RoundRobin { cursors }
    }

    /// Next endpoint of `backend`, or `None` when it has no ready endpoint.
    pub fn pick(&self, backend: &Backend) -> Option<SocketAddr> {
        let n = backend.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = match self.cursors.get(&backend.name) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            // Mirrors and backends added between tables: random start.
            None => rand::random::<u32>() as usize,
        };
        Some(backend.endpoints[i % n])
    }
}

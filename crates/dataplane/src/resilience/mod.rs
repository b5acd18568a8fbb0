//! Per-backend and per-endpoint state behind BackendPolicy: load
//! balancer, circuit-breaker counters, outlier detection, active health
//! checks, connection pools.
//!
//! State lives as long as the backend does, not as long as a table: a new
//! table reuses the [`BackendState`] of an unchanged backend as it is, and
//! for a changed one keeps the counters, the round-robin cursor and the
//! [`EndpointState`] of every endpoint still there (its health, ejection,
//! requests in flight). Health-check tasks of backends that are gone or
//! whose checks changed are stopped when the table is swapped.

pub mod circuit;
pub mod health;
pub mod outlier;
pub mod retry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use portcullis_model::backend_policy::BackendSettings;
use portcullis_model::{AppProtocol, Backend, BackendTarget, Filter, RouteTable};

use crate::lb::{hash64, Balancer, PickInput};
use crate::upstream::{ClientPair, ConnectionSettings, Upstreams};

pub use circuit::Counters;

/// Milliseconds since the process's first use of this clock: compact,
/// monotonic, fits an atomic.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint of one backend.
pub struct EndpointState {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once: requests name the endpoint
    /// in their URI (it keys the connection pool).
    pub authority: http::uri::Authority,
    /// Requests in flight (until the response body ends).
    active: AtomicU32,
    /// Active health checks' verdict; true without health checks.
    healthy: AtomicBool,
    pub outlier: outlier::EndpointOutlier,
    /// End of the slow-start window (ms on [`now_ms`]); 0 when none.
    slow_start_until: AtomicU64,
    slow_start_window_ms: AtomicU64,
    /// Session-persistence cookie value naming this endpoint without
    /// revealing its address.
    pub session_token: String,
}

impl EndpointState {
    pub(crate) fn new(addr: SocketAddr, slow_start: Option<Duration>) -> EndpointState {
        let window = slow_start.map_or(0, |w| w.as_millis() as u64);
        // A SocketAddr prints as `1.2.3.4:80` or `[::1]:80`, always a valid
        // authority; the fallback only keeps this free of a panic path.
        let authority = http::uri::Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid.endpoint.local:1"));
        EndpointState {
            addr,
            authority,
            active: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            outlier: outlier::EndpointOutlier::default(),
            slow_start_until: AtomicU64::new(if window > 0 { now_ms() + window } else { 0 }),
            slow_start_window_ms: AtomicU64::new(window),
            session_token: format!("{:016x}", hash64(addr.to_string().as_bytes())),
        }
    }

    /// Not ejected and not failing health checks.
    pub fn available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.outlier.is_ejected(now)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            tracing::info!(endpoint = %self.addr, healthy, "active health check changed endpoint state");
        }
    }

    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Share of its traffic a new endpoint gets now: grows from 10 % to
    /// 100 % over the slow-start window.
    pub fn slow_start_share(&self, now: u64) -> f64 {
        let until = self.slow_start_until.load(Ordering::Relaxed);
        if until == 0 || now >= until {
            return 1.0;
        }
        let window = self.slow_start_window_ms.load(Ordering::Relaxed).max(1);
        let elapsed = window.saturating_sub(until - now);
        (elapsed as f64 / window as f64).max(0.1)
    }

    pub fn start_request(self: &Arc<Self>) -> EndpointGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        EndpointGuard(self.clone())
    }
}

/// Counts one request in flight on an endpoint until dropped.
pub struct EndpointGuard(Arc<EndpointState>);

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the data path needs for one backend.
pub struct BackendState {
    pub name: String,
    /// `name` as a metric label value, made once per table.
    pub label: Arc<str>,
    pub settings: Arc<BackendSettings>,
    /// Same order as `Backend::endpoints`.
    pub endpoints: Vec<Arc<EndpointState>>,
    pub balancer: Balancer,
    /// Session token -> index into `endpoints`.
    session_tokens: HashMap<String, usize>,
    /// Precomputed `; Path=/; HttpOnly[; Max-Age=n]` for the session cookie.
    pub session_cookie_attributes: String,
    pub counters: Arc<Counters>,
    pub clients: ClientPair,
    health: Option<Arc<health::HealthChecker>>,
}

impl BackendState {
    /// The endpoint for this request attempt.
    pub fn pick(&self, input: &PickInput<'_>) -> Option<&Arc<EndpointState>> {
        if let Some(cookie) = &self.settings.load_balancer.session_cookie {
            if let Some(i) = crate::lb::cookie(input.headers, &cookie.name)
                .and_then(|token| self.session_tokens.get(token))
            {
                let e = &self.endpoints[*i];
                if e.available(now_ms()) && !input.tried.contains(&e.addr) {
                    return Some(e);
                }
            }
        }
        self.balancer
            .pick(&self.endpoints, input)
            .map(|i| &self.endpoints[i])
    }

    /// The endpoint states, for tests and the admin API.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&Arc<EndpointState>> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    fn build(
        backend: &Backend,
        previous: Option<&Arc<BackendState>>,
        upstreams: &Upstreams,
    ) -> BackendState {
        let settings = backend.settings.clone();
        let slow_start = settings.load_balancer.slow_start_window;
        let endpoints: Vec<Arc<EndpointState>> = backend
            .endpoints
            .iter()
            .map(|addr| {
                previous
                    .and_then(|p| p.endpoint(*addr).cloned())
                    .unwrap_or_else(|| {
                        // Endpoints of a backend seen for the first time
                        // are not "new": only later arrivals ramp up.
                        Arc::new(EndpointState::new(
                            *addr,
                            slow_start.filter(|_| previous.is_some()),
                        ))
                    })
            })
            .collect();
        let counters = previous
            .map(|p| p.counters.clone())
            .unwrap_or_else(|| Arc::new(Counters::default()));
        let balancer = Balancer::new(
            &settings.load_balancer.algorithm,
            &endpoints,
            counters.round_robin.clone(),
        );
        let connection = ConnectionSettings::of(&settings);
        let clients = match previous {
            Some(p) if p.clients.settings == connection && p.clients.tls == backend.tls => {
                p.clients.clone()
            }
            _ if connection == upstreams.default_pair().settings && backend.tls.is_none() => {
                upstreams.default_pair().clone()
            }
            _ => ClientPair::with_tls(&connection, backend.tls.clone()),
        };
        let health = match (&settings.health_check, previous) {
            // Endpoints are marked healthy in `for_table`, once the
            // previous checks are stopped.
            (None, _) => None,
            (Some(check), Some(p))
                if p.settings.health_check.as_ref() == Some(check)
                    && p.clients.tls == backend.tls
                    && same_addrs(&p.endpoints, &endpoints) =>
            {
                p.health.clone()
            }
            (Some(check), _) => {
                // HTTP probes speak TLS to a backend with a BackendTLSPolicy.
                let tls = backend
                    .tls
                    .as_ref()
                    .map(|t| Arc::new(crate::backend_tls::TlsConnect::new(t, AppProtocol::Http1)));
                health::HealthChecker::start(&backend.name, check, &endpoints, tls)
            }
        };
        let session_tokens = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.session_token.clone(), i))
            .collect();
        let session_cookie_attributes = settings
            .load_balancer
            .session_cookie
            .as_ref()
            .map(|c| match c.ttl {
                Some(ttl) => format!("; Path=/; HttpOnly; Max-Age={}", ttl.as_secs()),
                None => "; Path=/; HttpOnly".to_string(),
            })
            .unwrap_or_default();
        BackendState {
            name: backend.name.clone(),
            label: Arc::from(backend.name.as_str()),
            settings,
            endpoints,
            balancer,
            session_tokens,
            session_cookie_attributes,
            counters,
            clients,
            health,
        }
    }

    fn unchanged(&self, backend: &Backend) -> bool {
        *self.settings == *backend.settings
            && self.clients.tls == backend.tls
            && self.endpoints.len() == backend.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&backend.endpoints)
                .all(|(e, a)| e.addr == *a)
    }
}

fn same_addrs(a: &[Arc<EndpointState>], b: &[Arc<EndpointState>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.addr == y.addr)
}

/// The [`BackendState`] of every backend of one table, by name.
#[derive(Default)]
pub struct Backends {
    by_name: HashMap<String, Arc<BackendState>>,
}

impl Backends {
    pub fn for_table(
        table: &RouteTable,
        previous: Option<&Backends>,
        upstreams: &Upstreams,
    ) -> Backends {
        let mut by_name: HashMap<String, Arc<BackendState>> = HashMap::new();
        let mut visit = |backend: &Backend| {
            if by_name.contains_key(&backend.name) {
                return;
            }
            let prev = previous.and_then(|p| p.by_name.get(&backend.name));
            let state = match prev {
                Some(p) if p.unchanged(backend) => p.clone(),
                _ => Arc::new(BackendState::build(backend, prev, upstreams)),
            };
            by_name.insert(backend.name.clone(), state);
        };
        for port in &table.ports {
            for vhost in &port.virtual_hosts {
                for route in &vhost.routes {
                    let rule = &route.rule;
                    let mirrors = rule
                        .filters
                        .iter()
                        .chain(rule.backends.iter().flat_map(|b| b.filters.iter()))
                        .filter_map(|f| match f {
                            Filter::RequestMirror(m) => Some(&m.backend),
                            _ => None,
                        });
                    for m in mirrors {
                        visit(m);
                    }
                    for b in &rule.backends {
                        if let BackendTarget::Service(backend) = &b.target {
                            visit(backend);
                        }
                    }
                }
            }
            for rule in port.tls_routes.iter().filter_map(|r| r.rule.as_ref()) {
                for b in &rule.backends {
                    if let BackendTarget::Service(backend) = &b.target {
                        visit(backend);
                    }
                }
            }
        }
        // Health checks of backends that are gone, or were rebuilt with
        // other checks, stop now rather than when the last request still
        // holding the old table ends.
        if let Some(previous) = previous {
            for (name, old) in &previous.by_name {
                let kept = by_name
                    .get(name)
                    .is_some_and(|new| match (&new.health, &old.health) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    });
                if !kept {
                    if let Some(h) = &old.health {
                        h.stop();
                    }
                }
            }
        }
        // Without checks (now), nothing may keep an endpoint out; done after
        // the stops above so that no old probe flips one back.
        for state in by_name.values() {
            if state.health.is_none() {
                for e in &state.endpoints {
                    e.set_healthy(true);
                }
            }
        }
        Backends { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.by_name.get(name)
    }
}

/// `RoundRobin` cursors and the like start at a random offset for
/// backends never seen before, so that replicas do not all start at 0.
pub(crate) fn random_cursor() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(rand::random::<u32>() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::backend_policy::{HealthCheck, HealthCheckKind};
    use portcullis_model::{
        AppProtocol, HostMatch, PortConfig, Protocol, RequestMatch, Route, RouteKind, Rule, RuleId,
        Timeouts, VirtualHost, WeightedBackend,
    };

    fn table(endpoints: &[SocketAddr], settings: BackendSettings) -> RouteTable {
        let backend = Arc::new(Backend {
            name: "ns/svc:80".into(),
            protocol: AppProtocol::Http1,
            endpoints: endpoints.to_vec(),
            settings: Arc::new(settings),
            tls: None,
        });
        let rule = Arc::new(Rule {
            id: RuleId {
                kind: RouteKind::Http,
                namespace: "ns".into(),
                name: "r".into(),
                rule_index: 0,
                rule_name: None,
            },
            filters: vec![],
            backends: vec![WeightedBackend {
                weight: 1,
                target: BackendTarget::Service(backend),
                filters: vec![],
            }],
            timeouts: Timeouts::default(),
            retry: None,
            policies: Default::default(),
        });
        RouteTable {
            generation: 1,
            ports: vec![PortConfig {
                port: 8080,
                protocol: Protocol::Http,
                tls: None,
                tls_routes: vec![],
                virtual_hosts: vec![VirtualHost {
                    hostname: HostMatch::Any,
                    routes: vec![Route {
                        matcher: RequestMatch::default(),
                        rule,
                    }],
                }],
            }],
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 1))
    }

    #[test]
    fn unchanged_backends_are_reused_and_surviving_endpoints_keep_their_state() {
        let upstreams = Upstreams::new();
        let first = Backends::for_table(
            &table(&[addr(1), addr(2)], BackendSettings::default()),
            None,
            &upstreams,
        );
        let same = Backends::for_table(
            &table(&[addr(1), addr(2)], BackendSettings::default()),
            Some(&first),
            &upstreams,
        );
        let (a, b) = (
            first.get("ns/svc:80").unwrap(),
            same.get("ns/svc:80").unwrap(),
        );
        assert!(Arc::ptr_eq(a, b));
        // Endpoint 2 leaves, 3 arrives: 1 keeps its state (in-flight count).
        let _in_flight = a.endpoints[0].start_request();
        let next = Backends::for_table(
            &table(&[addr(1), addr(3)], BackendSettings::default()),
            Some(&same),
            &upstreams,
        );
        let c = next.get("ns/svc:80").unwrap();
        assert!(Arc::ptr_eq(&a.endpoints[0], &c.endpoints[0]));
        assert_eq!(c.endpoints[0].active_requests(), 1);
        assert_eq!(c.endpoints[1].active_requests(), 0);
        assert!(Arc::ptr_eq(&a.counters, &c.counters));
    }

    #[tokio::test]
    async fn health_checks_stop_when_the_table_drops_them() {
        let upstreams = Upstreams::new();
        let with_checks = BackendSettings {
            health_check: Some(HealthCheck {
                interval: Duration::from_secs(3600),
                timeout: Duration::from_millis(10),
                jitter: Duration::from_secs(3600),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
                kind: HealthCheckKind::Tcp,
            }),
            ..Default::default()
        };
        let first = Backends::for_table(&table(&[addr(1)], with_checks), None, &upstreams);
        let endpoint = first.get("ns/svc:80").unwrap().endpoints[0].clone();
        tokio::task::yield_now().await;
        // This test, the backend state and the probe task.
        assert_eq!(Arc::strong_count(&endpoint), 3);
        let second = Backends::for_table(
            &table(&[addr(1)], BackendSettings::default()),
            Some(&first),
            &upstreams,
        );
        // Aborted tasks release their endpoint once the runtime drops them.
        for _ in 0..100 {
            if Arc::strong_count(&endpoint) == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // This test, the old and the new backend state: no probe task.
        assert_eq!(Arc::strong_count(&endpoint), 3);
        drop(first);
        assert_eq!(Arc::strong_count(&endpoint), 2);
        drop(second);
    }
}

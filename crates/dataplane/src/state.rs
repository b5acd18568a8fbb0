//! The table being served, prepared for the data path, swapped atomically.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_model::{Protocol, RouteTable};

use crate::metrics::TableSeries;
use crate::resilience::Backends;
use crate::router::PortRoutes;
use crate::upstream::Upstreams;

/// A `RouteTable` plus the indexes and TLS configs derived from it, built
/// once per table so requests only read.
pub struct Prepared {
    pub table: Arc<RouteTable>,
    ports: HashMap<u16, Arc<PortState>>,
    /// Load balancers, breakers and health of every backend, carried
    /// over from the previous table for backends that are still there.
    pub backends: Backends,
    pub rate_limits: crate::ratelimit::Limiters,
    /// Request metric series of this table's ports, rules and backends.
    pub series: TableSeries,
}

pub struct PortState {
    pub routes: PortRoutes,
    /// Present for ports that terminate TLS and whose certificates parsed.
    pub tls: Option<crate::tls::PortTls>,
    /// TLS ports: their SNI table.
    pub tls_routes: Option<crate::tls_route::SniRoutes>,
    /// Client certificate validation (frontend mTLS), when the port has it:
    /// turns a connection's peer certificate into its identity.
    pub client_auth: Option<Arc<crate::client_cert::ClientAuth>>,
}

impl Prepared {
    pub fn new(
        table: Arc<RouteTable>,
        previous: Option<&Prepared>,
        upstreams: &Upstreams,
    ) -> Prepared {
        let mut ports = HashMap::new();
        for (i, port) in table.ports.iter().enumerate() {
            let alpn = match port.protocol {
                Protocol::Https => crate::tls::HTTP_ALPN,
                // A TLS route's stream is whatever the client and backend
                // speak: no ALPN unless a listener sets one.
                Protocol::Tls | Protocol::Http => &[],
            };
            let tls = port.tls.as_ref().and_then(|tls| match crate::tls::PortTls::new(tls, alpn) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(port = port.port, error = %e, "port has no usable certificate; its TLS connections will be refused");
                    None
                }
            });
            // Built a second time here (the server config holds its own):
            // once per table, and it keeps `tls.rs` free of identity logic.
            let client_auth = port
                .tls
                .as_ref()
                .and_then(|t| t.client_validation.as_ref())
                .and_then(|v| crate::client_cert::ClientAuth::new(v).ok())
                .map(Arc::new);
            let tls_routes =
                (port.protocol == Protocol::Tls).then(|| crate::tls_route::SniRoutes::new(port));
            ports.insert(
                port.port,
                Arc::new(PortState {
                    routes: PortRoutes::new(table.clone(), i),
                    tls,
                    client_auth,
                    tls_routes,
                }),
            );
        }
        let backends = Backends::for_table(&table, previous.map(|p| &p.backends), upstreams);
        let rate_limits =
            crate::ratelimit::Limiters::for_table(&table, previous.map(|p| &p.rate_limits));
        let series = TableSeries::new(&table);
        series.activate(table.generation, previous.map(|p| &p.series));
        Prepared {
            table,
            ports,
            backends,
            rate_limits,
            series,
        }
    }

    pub fn port(&self, port: u16) -> Option<&Arc<PortState>> {
        self.ports.get(&port)
    }
}

/// Shared by every connection of the process.
pub struct Shared {
    current: ArcSwap<Prepared>,
    pub upstreams: Upstreams,
    /// Remote JWKS caches, kept across tables.
    pub auth: crate::auth::AuthState,
    /// RouteFilter state kept across tables (response caches).
    pub route_filters: crate::route_filter::RouteFilterState,
}

impl Shared {
    pub fn new(table: Arc<RouteTable>) -> Shared {
        let upstreams = Upstreams::new();
        Shared {
            current: ArcSwap::from_pointee(Prepared::new(table, None, &upstreams)),
            upstreams,
            auth: crate::auth::AuthState::new(),
            route_filters: Default::default(),
        }
    }

    pub fn current(&self) -> Arc<Prepared> {
        self.current.load_full()
    }

    /// Swaps in a new table. Requests already running keep the old one.
    pub fn swap(&self, table: Arc<RouteTable>) {
        let previous = self.current.load();
        self.auth.remote_jwks.retain_used(&table);
        let next = Prepared::new(table, Some(&previous), &self.upstreams);
        self.current.store(Arc::new(next));
    }
}

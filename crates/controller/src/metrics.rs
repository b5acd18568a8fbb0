//! Prometheus metrics of the controller side (compiling, watching, writing
//! status). The data plane has its own registry
//! (`portcullis_dataplane::metrics`); the admin listener serves both.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    /// A Kubernetes kind (a fixed set: the kinds we watch or write).
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// `written`, `conflict` or `error`.
    pub result: &'static str,
}

pub struct ControllerMetrics {
    registry: Registry,
    compile_duration: Histogram,
    watch_errors: Family<KindLabels, Counter>,
    status_writes: Family<ResultLabels, Counter>,
    leader: Gauge,
}

static GLOBAL: LazyLock<ControllerMetrics> = LazyLock::new(ControllerMetrics::new);

pub fn global() -> &'static ControllerMetrics {
    &GLOBAL
}

impl ControllerMetrics {
    fn new() -> ControllerMetrics {
        let mut m = ControllerMetrics {
            registry: Registry::default(),
            // 100 us .. 10 s
            compile_duration: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 10.0,
            ]),
            watch_errors: Family::default(),
            status_writes: Family::default(),
            leader: Gauge::default(),
        };
        let p = m.registry.sub_registry_with_prefix("portcullis_controller");
        p.register_with_unit(
            "compile_duration",
            "Time to compile the configuration snapshot into a routing table and statuses",
            Unit::Seconds,
            m.compile_duration.clone(),
        );
        p.register(
            "watch_errors",
            "Errors watching the API server, by kind (the last configuration keeps being served)",
            m.watch_errors.clone(),
        );
        p.register(
            "status_writes",
            "Status patches sent to the API server, by result",
            m.status_writes.clone(),
        );
        p.register(
            "leader",
            "1 while this replica holds the leader Lease (writes status, provisions)",
            m.leader.clone(),
        );
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn record_compile(&self, elapsed: Duration) {
        self.compile_duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_watch_error(&self, kind: &impl std::fmt::Display) {
        self.watch_errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Adds `n` status writes with `result` (`written`, `conflict`,
    /// `error`).
    pub fn record_status_writes(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.status_writes
                .get_or_create(&ResultLabels { result })
                .inc_by(n);
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

//! Outlier detection (passive health): an endpoint that answers with N
//! consecutive 5xx, or N consecutive gateway errors (502/503/504, connect
//! failures, resets, timeouts), is ejected from load balancing. Its n-th
//! ejection in a row lasts n times the base ejection time (capped); after
//! a clean period as long as its last ejection the count starts over. No
//! more than `max_ejection_percent` of a backend's endpoints are ejected at
//! once (but one always may be).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use portcullis_model::backend_policy::OutlierDetection;

use super::{now_ms, EndpointState};

/// What one attempt against an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502/503/504.
    ServerError,
    /// 502/503/504, connect failure, reset, per-attempt timeout.
    GatewayError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

#[derive(Default)]
pub struct EndpointOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Ms on `now_ms()`; 0 when never ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row (each one longer).
    ejections: AtomicU32,
    /// Length of the last ejection, for forgetting `ejections`.
    last_ejection_ms: AtomicU64,
}

impl EndpointOutlier {
    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }
}

/// Records an attempt's outcome; may eject `endpoint` (then true).
pub fn record(
    config: &OutlierDetection,
    endpoints: &[std::sync::Arc<EndpointState>],
    endpoint: &EndpointState,
    outcome: Outcome,
) -> bool {
    let o = &endpoint.outlier;
    let now = now_ms();
    match outcome {
        Outcome::Success => {
            o.consecutive_5xx.store(0, Ordering::Relaxed);
            o.consecutive_gateway.store(0, Ordering::Relaxed);
            let until = o.ejected_until.load(Ordering::Relaxed);
            if until != 0 && now >= until.saturating_add(o.last_ejection_ms.load(Ordering::Relaxed))
            {
                o.ejections.store(0, Ordering::Relaxed);
            }
            return false;
        }
        Outcome::ServerError => {
            o.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        Outcome::GatewayError => {}
    }
    let fives = o.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
    let gateway = if outcome == Outcome::GatewayError {
        o.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        0
    };
    let tripped = (config.consecutive_5xx > 0 && fives >= config.consecutive_5xx)
        || (config.consecutive_gateway_errors > 0 && gateway >= config.consecutive_gateway_errors);
    if !tripped || o.is_ejected(now) {
        return false;
    }
    let ejected = endpoints
        .iter()
        .filter(|e| e.outlier.is_ejected(now))
        .count();
    let allowed = (endpoints.len() * config.max_ejection_percent as usize / 100).max(1);
    if ejected >= allowed {
        tracing::debug!(endpoint = %endpoint.addr, ejected, allowed, "outlier not ejected: max ejection percent reached");
        return false;
    }
    let n = o.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let base = config.base_ejection_time.as_millis() as u64;
    let length = base
        .saturating_mul(u64::from(n))
        .min(config.max_ejection_time.as_millis() as u64);
    o.last_ejection_ms.store(length, Ordering::Relaxed);
    o.ejected_until.store(now + length, Ordering::Relaxed);
    o.consecutive_5xx.store(0, Ordering::Relaxed);
    o.consecutive_gateway.store(0, Ordering::Relaxed);
    tracing::warn!(endpoint = %endpoint.addr, ejection = n, ms = length, "outlier detection ejected endpoint");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }

    fn endpoints(n: u8) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| Arc::new(EndpointState::new(([10, 0, 0, i], 80).into(), None)))
            .collect()
    }

    #[test]
    fn consecutive_errors_eject_and_success_resets_the_count() {
        let eps = endpoints(2);
        let c = config();
        record(&c, &eps, &eps[0], Outcome::ServerError);
        record(&c, &eps, &eps[0], Outcome::ServerError);
        record(&c, &eps, &eps[0], Outcome::Success);
        record(&c, &eps, &eps[0], Outcome::ServerError);
        assert!(!eps[0].outlier.is_ejected(now_ms()));
        record(&c, &eps, &eps[0], Outcome::GatewayError);
        record(&c, &eps, &eps[0], Outcome::ServerError);
        assert!(eps[0].outlier.is_ejected(now_ms()));
    }

    #[test]
    fn never_more_than_the_max_share_is_ejected() {
        let eps = endpoints(2);
        let c = config();
        for e in &eps {
            for _ in 0..3 {
                record(&c, &eps, e, Outcome::ServerError);
            }
        }
        let now = now_ms();
        assert_eq!(eps.iter().filter(|e| e.outlier.is_ejected(now)).count(), 1);
    }

    #[test]
    fn repeated_ejections_last_longer() {
        let eps = endpoints(2);
        let c = config();
        for _ in 0..3 {
            record(&c, &eps, &eps[0], Outcome::ServerError);
        }
        let first = eps[0].outlier.ejected_until.load(Ordering::Relaxed);
        // Pretend the ejection ended and the endpoint failed again.
        eps[0].outlier.ejected_until.store(0, Ordering::Relaxed);
        for _ in 0..3 {
            record(&c, &eps, &eps[0], Outcome::ServerError);
        }
        let second = eps[0].outlier.ejected_until.load(Ordering::Relaxed);
        assert!(second >= first + 29_000, "{first} {second}");
    }
}

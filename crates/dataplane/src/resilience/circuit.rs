//! Circuit-breaker counters of one backend: requests and retries in
//! flight. (Connections and requests waiting for one are limited in
//! `upstream::ConnectionLimit`.)

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis_model::backend_policy::{CircuitBreaker, RetryBudget};

use crate::upstream::Overloaded;

/// Shared by every table's state of one backend name.
pub struct Counters {
    active_requests: AtomicU32,
    active_retries: AtomicU32,
    pub round_robin: Arc<AtomicUsize>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            active_requests: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            round_robin: super::random_cursor(),
        }
    }
}

impl Counters {
    /// Admits one request, or refuses it when `max_requests` are in flight.
    pub fn start_request(
        self: &Arc<Self>,
        limits: &CircuitBreaker,
    ) -> Result<RequestGuard, Overloaded> {
        let before = self.active_requests.fetch_add(1, Ordering::AcqRel);
        let guard = RequestGuard(self.clone());
        if before >= limits.max_requests {
            return Err(Overloaded::MaxRequests);
        }
        Ok(guard)
    }

    /// Admits one retry if both the circuit breaker's `max_retries` and the
    /// retry budget allow it.
    pub fn start_retry(
        self: &Arc<Self>,
        limits: &CircuitBreaker,
        budget: &RetryBudget,
    ) -> Option<RetryGuard> {
        let active = self.active_requests.load(Ordering::Acquire);
        let budget_allows = (u64::from(active) * u64::from(budget.percent) / 100)
            .max(u64::from(budget.min_retry_concurrency));
        let limit = u64::from(limits.max_retries).min(budget_allows);
        let before = self.active_retries.fetch_add(1, Ordering::AcqRel);
        let guard = RetryGuard(self.clone());
        (u64::from(before) < limit).then_some(guard)
    }

    pub fn active_requests(&self) -> u32 {
        self.active_requests.load(Ordering::Relaxed)
    }

    pub fn active_retries(&self) -> u32 {
        self.active_retries.load(Ordering::Relaxed)
    }
}

/// One request in flight until dropped.
pub struct RequestGuard(Arc<Counters>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One retry in flight until dropped.
pub struct RetryGuard(Arc<Counters>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_requests_refuses_and_releases() {
        let c = Arc::new(Counters::default());
        let limits = CircuitBreaker {
            max_requests: 2,
            ..Default::default()
        };
        let a = c.start_request(&limits).unwrap();
        let _b = c.start_request(&limits).unwrap();
        assert_eq!(
            c.start_request(&limits).err(),
            Some(Overloaded::MaxRequests)
        );
        drop(a);
        assert!(c.start_request(&limits).is_ok());
        assert_eq!(c.active_requests(), 1);
    }

    #[test]
    fn retry_budget_is_a_share_of_active_requests_with_a_floor() {
        let c = Arc::new(Counters::default());
        let limits = CircuitBreaker::default();
        let budget = RetryBudget {
            percent: 50,
            min_retry_concurrency: 1,
        };
        let _reqs: Vec<_> = (0..4).map(|_| c.start_request(&limits).unwrap()).collect();
        // 50 % of 4 active requests: two retries.
        let r1 = c.start_retry(&limits, &budget);
        let r2 = c.start_retry(&limits, &budget);
        let r3 = c.start_retry(&limits, &budget);
        assert!(r1.is_some() && r2.is_some() && r3.is_none());
        assert_eq!(c.active_retries(), 2);
    }
}

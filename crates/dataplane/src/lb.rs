//! Endpoint choice within one backend: round robin, least request (power
//! of two choices), random, consistent hashing (a ring of virtual nodes),
//! session persistence by cookie, slow start.
//!
//! Every algorithm skips endpoints that are not available (ejected by
//! outlier detection, failing active health checks) and, on a retry, the
//! endpoints already tried. When no endpoint is left, it falls back to the
//! tried ones, then to all of them ("panic mode"): sending to an endpoint
//! believed unhealthy beats refusing every request when the belief is wrong.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderMap;
use portcullis_model::backend_policy::{HashKey, LbAlgorithm};
use rand::Rng;

use crate::resilience::{now_ms, EndpointState};

/// Virtual nodes per endpoint on the hash ring: enough that each endpoint's
/// share stays within a few percent of even for small backends.
const RING_POINTS_PER_ENDPOINT: usize = 160;
/// Slow start: a candidate refused for being new is replaced by another
/// draw at most this many times.
const SLOW_START_DRAWS: usize = 4;

/// What an algorithm may read from the request.
pub struct PickInput<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub client_ip: IpAddr,
    /// Endpoints already tried by this request (retries go elsewhere).
    pub tried: &'a [SocketAddr],
}

/// The algorithm and its precomputed state for one endpoint list.
pub enum Balancer {
    /// The cursor is shared with the previous table's balancer of the same
    /// backend, so a reload does not restart every backend at endpoint 0.
    RoundRobin(Arc<AtomicUsize>),
    LeastRequest,
    Random,
    ConsistentHash {
        key: HashKey,
        ring: Ring,
    },
}

impl Balancer {
    pub fn new(
        algorithm: &LbAlgorithm,
        endpoints: &[Arc<EndpointState>],
        cursor: Arc<AtomicUsize>,
    ) -> Balancer {
        match algorithm {
            LbAlgorithm::RoundRobin => Balancer::RoundRobin(cursor),
            LbAlgorithm::LeastRequest => Balancer::LeastRequest,
            LbAlgorithm::Random => Balancer::Random,
            LbAlgorithm::ConsistentHash(key) => Balancer::ConsistentHash {
                key: key.clone(),
                ring: Ring::new(endpoints.iter().map(|e| e.addr)),
            },
        }
    }

    /// Index into `endpoints` of the chosen one; `None` only when the list
    /// is empty.
    pub fn pick(&self, endpoints: &[Arc<EndpointState>], input: &PickInput<'_>) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        let now = now_ms();
        // Strictest filter first, then relax (see the module comment).
        let filters: [&dyn Fn(&EndpointState) -> bool; 3] = [
            &|e| e.available(now) && !input.tried.contains(&e.addr),
            &|e| e.available(now),
            &|_| true,
        ];
        for ok in filters {
            if let Some(i) = self.pick_with(endpoints, input, now, ok) {
                return Some(i);
            }
        }
        None
    }

    fn pick_with(
        &self,
        endpoints: &[Arc<EndpointState>],
        input: &PickInput<'_>,
        now: u64,
        ok: &dyn Fn(&EndpointState) -> bool,
    ) -> Option<usize> {
        let n = endpoints.len();
        match self {
            Balancer::ConsistentHash { key, ring } => match hash_key(key, input) {
                Some(h) => ring.lookup(h, |i| ok(&endpoints[i])),
                None => scan_from(endpoints, rand::rng().random_range(0..n), ok),
            },
            Balancer::RoundRobin(cursor) => slow_start(endpoints, now, || {
                scan_from(endpoints, cursor.fetch_add(1, Ordering::Relaxed) % n, ok)
            }),
            Balancer::Random => slow_start(endpoints, now, || {
                scan_from(endpoints, rand::rng().random_range(0..n), ok)
            }),
            Balancer::LeastRequest => slow_start(endpoints, now, || {
                let mut rng = rand::rng();
                let a = scan_from(endpoints, rng.random_range(0..n), ok)?;
                // Two distinct candidates: with replacement, a backend of two
                // endpoints would compare an endpoint with itself half the time.
                let b = match n {
                    1 => a,
                    _ => scan_from(endpoints, (a + rng.random_range(1..n)) % n, ok)?,
                };
                let load = |i: usize| endpoints[i].active_requests();
                Some(if load(b) < load(a) { b } else { a })
            }),
        }
    }
}

/// First endpoint from `start` on (wrapping) that passes `ok`.
fn scan_from(
    endpoints: &[Arc<EndpointState>],
    start: usize,
    ok: &dyn Fn(&EndpointState) -> bool,
) -> Option<usize> {
    let n = endpoints.len();
    (0..n).map(|k| (start + k) % n).find(|&i| ok(&endpoints[i]))
}

/// Draws with `draw` until a candidate passes its slow-start share (a new
/// endpoint at 10 % of its window passes one draw in ten), at most a few
/// times; the last draw is taken as it is.
fn slow_start(
    endpoints: &[Arc<EndpointState>],
    now: u64,
    mut draw: impl FnMut() -> Option<usize>,
) -> Option<usize> {
    let mut candidate = draw()?;
    for _ in 1..SLOW_START_DRAWS {
        let share = endpoints[candidate].slow_start_share(now);
        if share >= 1.0 || rand::random::<f64>() < share {
            break;
        }
        candidate = draw()?;
    }
    Some(candidate)
}

fn hash_key(key: &HashKey, input: &PickInput<'_>) -> Option<u64> {
    match key {
        HashKey::Header(name) => input.headers.get(&name.0).map(|v| hash64(v.as_bytes())),
        HashKey::Cookie(name) => cookie(input.headers, name).map(|v| hash64(v.as_bytes())),
        HashKey::SourceIp => Some(match input.client_ip {
            IpAddr::V4(ip) => hash64(&ip.octets()),
            IpAddr::V6(ip) => hash64(&ip.octets()),
        }),
        HashKey::QueryParameter(name) => input.query.and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash64(v.as_bytes()))
        }),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A ketama-style ring: every endpoint owns many points, a key goes to the
/// first point at or after its hash. When an endpoint leaves, only the keys
/// on its points move; every other key keeps its endpoint.
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(addrs: impl Iterator<Item = SocketAddr>) -> Ring {
        let mut points = Vec::new();
        for (i, addr) in addrs.enumerate() {
            // The point depends on the address, not the position, so the
            // ring of the other endpoints is the same with or without it.
            let base = addr.to_string();
            for replica in 0..RING_POINTS_PER_ENDPOINT {
                let mut key = Vec::with_capacity(base.len() + 8);
                key.extend_from_slice(base.as_bytes());
                key.push(b'#');
                key.extend_from_slice(&(replica as u32).to_le_bytes());
                points.push((hash64(&key), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint owning `hash`, walking on past endpoints `ok` refuses.
    pub fn lookup(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| ok(i))
    }
}

/// FNV-1a followed by the murmur3 finalizer: stable across processes and
/// builds (keys must map the same way on every replica) and well spread.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn ring_keeps_keys_when_an_unrelated_endpoint_leaves() {
        let all = addrs(5);
        let ring = Ring::new(all.iter().copied());
        let without: Vec<_> = all.iter().copied().filter(|a| *a != all[2]).collect();
        let smaller = Ring::new(without.iter().copied());
        let mut moved = 0;
        for k in 0..2000u32 {
            let h = hash64(&k.to_le_bytes());
            let before = all[ring.lookup(h, |_| true).unwrap()];
            let after = without[smaller.lookup(h, |_| true).unwrap()];
            if before != all[2] {
                assert_eq!(before, after, "key {k} moved off a remaining endpoint");
            } else {
                moved += 1;
            }
        }
        // The leaving endpoint owned roughly a fifth of the keys.
        assert!((200..700).contains(&moved), "{moved}");
    }

    #[test]
    fn ring_spreads_keys_evenly_enough() {
        let all = addrs(4);
        let ring = Ring::new(all.iter().copied());
        let mut counts = HashMap::new();
        for k in 0..8000u32 {
            let i = ring.lookup(hash64(&k.to_le_bytes()), |_| true).unwrap();
            *counts.entry(i).or_insert(0) += 1;
        }
        for (_, c) in counts {
            assert!((1400..2600).contains(&c), "{c}");
        }
    }

    #[test]
    fn new_endpoints_ramp_up_during_slow_start() {
        let endpoints: Vec<Arc<EndpointState>> = vec![
            Arc::new(EndpointState::new(addrs(1)[0], None)),
            // Just arrived, with a long window: a tenth of its share.
            Arc::new(EndpointState::new(
                SocketAddr::from(([10, 0, 0, 9], 8080)),
                Some(std::time::Duration::from_secs(3600)),
            )),
        ];
        let balancer = Balancer::new(
            &LbAlgorithm::RoundRobin,
            &endpoints,
            Arc::new(AtomicUsize::new(0)),
        );
        let headers = HeaderMap::new();
        let input = PickInput {
            headers: &headers,
            query: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            tried: &[],
        };
        let new = (0..2000)
            .filter(|_| balancer.pick(&endpoints, &input) == Some(1))
            .count();
        // Round robin alone: 1000. At a 10 % share the new endpoint passes
        // a draw one time in ten; with few redraws it stays far below half.
        assert!(new < 500, "{new}");
        assert!(new > 0, "it still gets some traffic");
    }

    #[test]
    fn cookie_values_are_found() {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; sess=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "sess"), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}

//! Per-replica counters of `mode: Local` limits.
//!
//! Keys are 64-bit hashes (from a per-process random seed, so clients cannot
//! aim collisions at each other) spread over [`SHARDS`] mutex-protected maps.
//! A lock is held for a few arithmetic operations on one key's windows, so
//! concurrent requests on one key are serialized and counted exactly, and
//! requests on different keys rarely contend. Memory is bounded: a shard
//! that reaches its share of `max_tracked_keys` first drops idle keys (whose
//! windows no longer count), then the least recently used quarter.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use portcullis_model::ratelimit::Rate;

use super::window::Window;
use super::Decision;

/// Power of two, comfortably above the core counts we run on.
const SHARDS: usize = 64;

/// The keys are already uniformly distributed hashes: use them as they are.
#[derive(Default)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for safety.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type HashedKeyMap<V> = HashMap<u64, V, BuildHasherDefault<PassThroughHasher>>;

struct Entry {
    windows: Box<[Window]>,
    last_seen_ms: u64,
}

pub struct LocalCounters {
    shards: Box<[Mutex<HashedKeyMap<Entry>>]>,
    rates: Box<[(u64, u64)]>,
    per_shard: usize,
    /// A key unused for this long has no weight in any window.
    idle_after_ms: u64,
}

impl LocalCounters {
    pub fn new(rates: &[Rate], max_keys: usize) -> LocalCounters {
        let rates: Box<[(u64, u64)]> = rates.iter().map(|r| (window_ms(r), r.limit)).collect();
        let longest = rates.iter().map(|r| r.0).max().unwrap_or(1);
        LocalCounters {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            rates,
            per_shard: max_keys.div_ceil(SHARDS).max(8),
            idle_after_ms: longest.saturating_mul(2),
        }
    }

    /// Checks every rate and, if all admit, counts the request in each.
    pub fn acquire(&self, key: u64, now_ms: u64) -> Decision {
        // High bits pick the shard; the map hashes on the full key.
        let shard = &self.shards[(key >> 58) as usize % SHARDS];
        // A poisoned lock only means another request panicked mid-update of
        // plain counters: the data is still usable.
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&key) && map.len() >= self.per_shard {
            self.evict(&mut map, now_ms);
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            windows: vec![Window::default(); self.rates.len()].into_boxed_slice(),
            last_seen_ms: now_ms,
        });
        entry.last_seen_ms = now_ms;
        let mut decision = Decision::unlimited();
        for (i, (window, &(w, limit))) in
            entry.windows.iter_mut().zip(self.rates.iter()).enumerate()
        {
            let verdict = window.check(now_ms, w, limit, 1);
            decision.combine(i, verdict, limit);
        }
        if decision.admitted() {
            for window in entry.windows.iter_mut() {
                window.count(1);
            }
        }
        decision
    }

    fn evict(&self, map: &mut HashedKeyMap<Entry>, now_ms: u64) {
        let idle_after = self.idle_after_ms;
        map.retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < idle_after);
        if map.len() < self.per_shard {
            return;
        }
        // Still full of active keys: drop the least recently used quarter
        // (amortized O(1) per insert; those keys restart from zero).
        let mut seen: Vec<u64> = map.values().map(|e| e.last_seen_ms).collect();
        let cut = seen.len() / 4;
        let (_, threshold, _) = seen.select_nth_unstable(cut);
        let threshold = *threshold;
        let mut budget = cut.max(1);
        map.retain(|_, e| {
            if budget > 0 && e.last_seen_ms <= threshold {
                budget -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Keys currently tracked (all shards).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn window_ms(rate: &Rate) -> u64 {
    u64::try_from(rate.window.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn rate(limit: u64, secs: u64) -> Rate {
        Rate {
            limit,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn every_rate_must_admit_and_rejections_are_not_counted() {
        let c = LocalCounters::new(&[rate(3, 1), rate(5, 60)], 100);
        let t = 1_000_000;
        let admitted = (0..10).filter(|_| c.acquire(1, t).admitted()).count();
        assert_eq!(admitted, 3, "3 per second");
        // Next second: 2 more fit under the 5 per minute.
        let admitted = (0..10)
            .filter(|_| c.acquire(1, t + 2000).admitted())
            .count();
        assert_eq!(admitted, 2, "5 per minute");
        // Another key is independent.
        assert!(c.acquire(2, t).admitted());
    }

    #[test]
    fn concurrent_threads_on_one_key_admit_exactly_the_limit() {
        let c = Arc::new(LocalCounters::new(&[rate(1000, 3600)], 100));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, admitted) = (c.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if c.acquire(42, 5_000).admitted() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_go_first() {
        let max = 1000;
        let c = LocalCounters::new(&[rate(1, 1)], max);
        // An active key, refreshed throughout.
        let hot = 7u64 << 58;
        assert!(c.acquire(hot, 0).admitted());
        for i in 0..50_000u64 {
            // Spread over shards like real hashes.
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let now = i / 10;
            c.acquire(key, now);
            if i % 100 == 0 {
                c.acquire(hot, now);
            }
            assert!(c.len() <= SHARDS * c.per_shard);
        }
        assert!(c.len() <= max + SHARDS * 8, "{} keys", c.len());
        // The hot key kept its count: still limited within its window.
        assert!(!c.acquire(hot, 4_999).admitted());
    }
}

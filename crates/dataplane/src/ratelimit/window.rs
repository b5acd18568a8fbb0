//! The window algorithm shared by local limits and the Redis script:
//! a **sliding window counter**.
//!
//! Time is cut into fixed windows of length `W` aligned to multiples of `W`
//! (Unix epoch milliseconds in Redis, a process-wide monotonic base
//! locally). A counter keeps the count of the current window and of the
//! previous one. At `e` milliseconds into the current window the count over
//! the sliding window `(now - W, now]` is estimated as
//!
//! ```text
//! used = previous * (W - e) / W + current
//! ```
//!
//! i.e. the previous window's requests are assumed spread evenly and only
//! the share still inside the sliding window counts. A request of cost `n`
//! is admitted iff `used + n <= limit`, evaluated exactly in integers as
//! `previous * (W - e) + (current + n) * W <= limit * W`; a rejected request
//! is not counted. Consequences a user can rely on:
//!
//! - never more than `limit` admissions inside one aligned window (the
//!   previous window only ever adds to `used`);
//! - no doubled burst at a window boundary (a full previous window still
//!   blocks at the start of the next one and releases capacity gradually);
//! - `Retry-After` is the exact time after which the same request would be
//!   admitted if nothing else arrives.
//!
//! [`redis::SCRIPT`](super::redis) implements the same formula in Lua.

/// Counts of one rate for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// `now / W` of the current window.
    pub index: u64,
    pub current: u64,
    pub previous: u64,
}

/// What one rate says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Requests of cost 1 still admissible after this one (if admitted) or
    /// now (if not).
    pub remaining: u64,
    /// Milliseconds until a rejected request would be admitted; 0 when
    /// admitted.
    pub retry_after_ms: u64,
    /// Milliseconds until the current aligned window ends.
    pub window_left_ms: u64,
}

impl Verdict {
    pub fn admitted(&self) -> bool {
        self.retry_after_ms == 0
    }
}

impl Window {
    /// Moves to the window that contains `now_ms`.
    pub fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let index = now_ms / window_ms;
        if index == self.index {
            return;
        }
        self.previous = if index == self.index + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.index = index;
    }

    /// Whole requests admissible at `now_ms` (after [`Window::roll`]).
    pub fn available(&self, now_ms: u64, window_ms: u64, limit: u64) -> u64 {
        let elapsed = now_ms % window_ms;
        let w = u128::from(window_ms);
        let used =
            u128::from(self.previous) * (w - u128::from(elapsed)) + u128::from(self.current) * w;
        let capacity = u128::from(limit) * w;
        // floor((capacity - used) / W), clamped at 0 and to u64.
        u64::try_from(capacity.saturating_sub(used) / w).unwrap_or(u64::MAX)
    }

    /// Evaluates a request of `cost` at `now_ms` without counting it (a
    /// limit checks all its rates first, then counts in each with
    /// [`Window::count`]).
    pub fn check(&mut self, now_ms: u64, window_ms: u64, limit: u64, cost: u64) -> Verdict {
        self.roll(now_ms, window_ms);
        let available = self.available(now_ms, window_ms, limit);
        let window_left_ms = window_ms - now_ms % window_ms;
        if available >= cost {
            Verdict {
                remaining: available - cost,
                retry_after_ms: 0,
                window_left_ms,
            }
        } else {
            Verdict {
                remaining: available,
                retry_after_ms: self.retry_after(now_ms, window_ms, limit, cost),
                window_left_ms,
            }
        }
    }

    /// Counts an admitted request (after [`Window::check`] at the same time).
    pub fn count(&mut self, cost: u64) {
        self.current = self.current.saturating_add(cost);
    }

    /// Smallest `t > 0` such that a request of `cost` is admitted at
    /// `now_ms + t` if nothing else is counted meanwhile. `u64::MAX` when no
    /// wait helps (cost above the limit).
    pub fn retry_after(&self, now_ms: u64, window_ms: u64, limit: u64, cost: u64) -> u64 {
        if cost > limit {
            return u64::MAX;
        }
        let w = u128::from(window_ms);
        let elapsed = u128::from(now_ms % window_ms);
        let left = w - elapsed;
        let (limit, cost) = (u128::from(limit), u128::from(cost));
        let current = u128::from(self.current);
        let previous = u128::from(self.previous);
        // Still inside this window: need previous * (left - t) <=
        // (limit - current - cost) * W.
        if current + cost <= limit && previous > 0 {
            let slack = (limit - current - cost) * w;
            // t >= left - slack / previous, i.e. t = ceil(left - slack/previous)
            let needed = (previous * left).saturating_sub(slack);
            let t = needed.div_ceil(previous);
            if t < left {
                return u64::try_from(t.max(1)).unwrap_or(u64::MAX);
            }
        }
        // In the next window (previous' = current, current' = 0) at e':
        // current * (W - e') + cost * W <= limit * W.
        let e_next = if current == 0 {
            0
        } else {
            let needed = (current * w).saturating_sub((limit - cost) * w);
            needed.div_ceil(current)
        };
        u64::try_from((left + e_next).max(1)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1000;

    /// Check and count, as a limiter does.
    fn admit(w: &mut Window, now: u64, limit: u64) -> Verdict {
        let v = w.check(now, W, limit, 1);
        if v.admitted() {
            w.count(1);
        }
        v
    }

    /// Admits requests one at a time at `now` until the first rejection.
    fn admit_until_rejected(w: &mut Window, now: u64, limit: u64) -> u64 {
        let mut n = 0;
        while admit(w, now, limit).admitted() {
            n += 1;
            assert!(n <= limit, "over-admitted");
        }
        n
    }

    #[test]
    fn exactly_limit_admissions_in_a_fresh_window() {
        let mut w = Window::default();
        assert_eq!(admit_until_rejected(&mut w, 10_500, 5), 5);
        let v = w.check(10_500, W, 5, 1);
        assert!(!v.admitted());
        assert_eq!(v.remaining, 0);
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        let mut w = Window::default();
        let remaining: Vec<u64> = (0..3).map(|_| admit(&mut w, 0, 3).remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
    }

    #[test]
    fn full_previous_window_blocks_the_start_of_the_next() {
        let mut w = Window::default();
        assert_eq!(admit_until_rejected(&mut w, 999, 10), 10);
        // 1 ms into the next window the previous 10 still weigh 9.99.
        assert!(!admit(&mut w, 1000, 10).admitted());
        // At 10% into the window, 9 of them still count: one more fits.
        assert!(admit(&mut w, 1100, 10).admitted());
        assert!(!admit(&mut w, 1100, 10).admitted());
        // Half way: 5 count from before, 1 from now -> 4 more.
        assert_eq!(admit_until_rejected(&mut w, 1500, 10), 4);
    }

    #[test]
    fn never_more_than_limit_within_one_aligned_window() {
        // Traffic spread over many windows at varying offsets.
        let mut w = Window::default();
        let limit = 7;
        let mut per_window = std::collections::HashMap::<u64, u64>::new();
        for now in (0..20_000).step_by(13) {
            if admit(&mut w, now, limit).admitted() {
                *per_window.entry(now / W).or_default() += 1;
            }
        }
        assert!(per_window.values().all(|&n| n <= limit), "{per_window:?}");
        // And the limit is actually reached in steady state.
        assert!(per_window.values().any(|&n| n == limit), "{per_window:?}");
    }

    #[test]
    fn a_gap_of_two_windows_forgets_everything() {
        let mut w = Window::default();
        admit_until_rejected(&mut w, 100, 3);
        assert_eq!(admit_until_rejected(&mut w, 2100, 3), 3);
    }

    #[test]
    fn retry_after_is_exact() {
        // Checks that the request is rejected 1 ms before retry_after and
        // admitted at it, for a range of states.
        for limit in [1u64, 2, 5, 10] {
            for prev in 0..=limit {
                for cur in 0..=limit {
                    for elapsed in [0u64, 1, 250, 999] {
                        let start = 5 * W + elapsed;
                        let base = Window {
                            index: 5,
                            current: cur,
                            previous: prev,
                        };
                        let mut probe = base;
                        if probe.check(start, W, limit, 1).admitted() {
                            continue;
                        }
                        let t = base.retry_after(start, W, limit, 1);
                        let mut at = base;
                        assert!(
                            at.check(start + t, W, limit, 1).admitted(),
                            "limit {limit} prev {prev} cur {cur} e {elapsed}: not admitted at +{t}"
                        );
                        if t > 1 {
                            let mut before = base;
                            assert!(
                                !before.check(start + t - 1, W, limit, 1).admitted(),
                                "limit {limit} prev {prev} cur {cur} e {elapsed}: admitted before +{t}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cost_above_limit_never_fits() {
        let w = Window::default();
        assert_eq!(w.retry_after(0, W, 2, 3), u64::MAX);
    }
}

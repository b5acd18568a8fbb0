//! `mode: Global` limits: counters shared by every replica in Redis.
//!
//! One Lua script ([`SCRIPT`]) checks every rate of a limit and counts the
//! request atomically on the server, with the server's clock (so replicas
//! with skewed clocks agree on windows), using the sliding window counter
//! of [`super::window`].
//!
//! Local fast path, used only when the answer is already certain:
//! - **Denials are cached** until the `Retry-After` the script computed: no
//!   request can make a counter smaller, so every request for that key is
//!   rejected until then anyway.
//! - **Admissions are leased**: when a key has plenty of room the script
//!   counts a few extra requests for this replica (1/8 of what is left, at
//!   most [`MAX_LEASE`]), and the replica admits that many later requests
//!   without asking. They are already counted in Redis, so no replica can
//!   over-admit; a lease expires at the end of the window it was counted
//!   in. Near the limit leases shrink to nothing, so every request asks.
//!   The cost: a lease not used by the end of its window is quota no one
//!   gets (an under-admission of at most 1/8 of the room left).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::local::HashedKeyMap;
use super::redis::{RedisClient, RedisError, Value};
use super::Decision;
use portcullis_model::ratelimit::Rate;

/// KEYS[i]: the counter key prefix of rate i (the window index is
/// appended). ARGV[1]: cost; ARGV[2]: lease divisor (0: no lease); ARGV[3]:
/// largest lease; ARGV[2+2i], ARGV[3+2i]: limit and window (ms) of rate i.
///
/// Returns {admitted (1/0), granted (admitted) or retry-after ms (denied),
/// remaining, reported rate (1-based), ms until the first window end,
/// ms until the reported rate's window end}.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local divisor = tonumber(ARGV[2])
local max_extra = tonumber(ARGV[3])
local function retry_after(limit, w, e, prev, curr)
  if cost > limit then return 86400000 end
  local left = w - e
  if curr + cost <= limit and prev > 0 then
    local needed = prev * left - (limit - curr - cost) * w
    if needed < 0 then needed = 0 end
    local tt = math.ceil(needed / prev)
    if tt < left then return math.max(tt, 1) end
  end
  local enext = 0
  if curr > 0 then
    local needed = curr * w - (limit - cost) * w
    if needed < 0 then needed = 0 end
    enext = math.ceil(needed / curr)
  end
  return math.max(left + enext, 1)
end
local n = #KEYS
local keys, avail, lefts = {}, {}, {}
local denied, retry, report = false, 0, 1
local min_avail, min_left = nil, nil
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local w = tonumber(ARGV[3 + 2 * i])
  local idx = math.floor(now / w)
  local e = now - idx * w
  keys[i] = KEYS[i] .. ':' .. idx
  local curr = tonumber(redis.call('GET', keys[i]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (idx - 1)) or '0')
  local a = math.floor((limit * w - prev * (w - e) - curr * w) / w)
  if a < 0 then a = 0 end
  avail[i] = a
  lefts[i] = w - e
  if min_left == nil or lefts[i] < min_left then min_left = lefts[i] end
  if a < cost then
    local r = retry_after(limit, w, e, prev, curr)
    if not denied or r > retry then retry = r; report = i end
    denied = true
  elseif not denied and (min_avail == nil or a < min_avail) then
    min_avail = a; report = i
  end
end
if denied then
  return {0, retry, avail[report], report, min_left, lefts[report]}
end
local grant = cost
if divisor > 0 then
  grant = cost + math.min(max_extra, math.floor((min_avail - cost) / divisor))
end
for i = 1, n do
  local w = tonumber(ARGV[3 + 2 * i])
  redis.call('INCRBY', keys[i], grant)
  redis.call('PEXPIRE', keys[i], 2 * w + 1000)
end
return {1, grant, min_avail - grant, report, min_left, lefts[report]}
"#;

/// Share of the room left that one replica may lease (1/LEASE_DIVISOR), as
/// the script argument.
const LEASE_DIVISOR: &[u8] = b"8";
/// Largest number of extra requests leased at once, as the script argument.
const MAX_LEASE: &[u8] = b"1000";
const SHARDS: usize = 64;

/// Quota leased to this replica (already counted in Redis).
struct Lease {
    tokens: u64,
    /// Room left in Redis after the lease was granted.
    remaining: u64,
    rate: usize,
    /// End of the window the lease was counted in.
    until: Instant,
    reset_at: Instant,
}

/// A denial: certain until `until`.
struct Denial {
    until: Instant,
    remaining: u64,
    rate: usize,
}

/// What this replica knows for sure about one key.
#[derive(Default)]
struct Cached {
    lease: Option<Lease>,
    denial: Option<Denial>,
}

impl Cached {
    fn expires(&self) -> Option<Instant> {
        let lease = self.lease.as_ref().map(|l| l.until);
        let denial = self.denial.as_ref().map(|d| d.until);
        lease.max(denial)
    }
}

pub struct GlobalCounters {
    shards: Box<[Mutex<HashedKeyMap<Cached>>]>,
    per_shard: usize,
    /// Per rate: (limit, window ms) as script arguments.
    rate_args: Box<[(Vec<u8>, Vec<u8>)]>,
    rates: Box<[Rate]>,
    /// Per rate: `portcullis:rl:{scope}:{window ms}:`; the request's key
    /// parts are appended.
    key_prefixes: Box<[Vec<u8>]>,
}

/// The outcome of asking Redis.
pub enum GlobalOutcome {
    Decided(Decision),
    Unavailable(RedisError),
}

impl GlobalCounters {
    pub fn new(scope: &str, rates: &[Rate], max_keys: usize) -> GlobalCounters {
        let rate_args = rates
            .iter()
            .map(|r| {
                let w = super::local::window_ms(r);
                (r.limit.to_string().into_bytes(), w.to_string().into_bytes())
            })
            .collect();
        let key_prefixes = rates
            .iter()
            .map(|r| format!("portcullis:rl:{scope}:{}:", super::local::window_ms(r)).into_bytes())
            .collect();
        GlobalCounters {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(8),
            rate_args,
            rates: rates.into(),
            key_prefixes,
        }
    }

    /// Answers from the local cache when certain, else asks Redis (bounded
    /// by `timeout`). `key_parts` is the request's counter key (only built
    /// when Redis is asked).
    pub async fn acquire(
        &self,
        key: u64,
        key_parts: impl FnOnce() -> Vec<u8>,
        client: &RedisClient,
        timeout: Duration,
    ) -> GlobalOutcome {
        let now = Instant::now();
        if let Some(decision) = self.cached_answer(key, now) {
            return GlobalOutcome::Decided(decision);
        }
        let parts = key_parts();
        let keys: Vec<Vec<u8>> = self
            .key_prefixes
            .iter()
            .map(|prefix| {
                let mut k = Vec::with_capacity(prefix.len() + parts.len());
                k.extend_from_slice(prefix);
                k.extend_from_slice(&parts);
                k
            })
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(3 + 2 * self.rate_args.len());
        args.extend_from_slice(&[b"1", LEASE_DIVISOR, MAX_LEASE]);
        for (limit, window) in self.rate_args.iter() {
            args.push(limit);
            args.push(window);
        }
        let reply = match tokio::time::timeout(timeout, client.eval_script(&key_refs, &args)).await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return GlobalOutcome::Unavailable(e),
            Err(_) => return GlobalOutcome::Unavailable(RedisError::Unavailable("timed out")),
        };
        match self.record(key, &reply, Instant::now()) {
            Some(decision) => GlobalOutcome::Decided(decision),
            None => GlobalOutcome::Unavailable(RedisError::Protocol(format!("{reply:?}"))),
        }
    }

    fn cached_answer(&self, key: u64, now: Instant) -> Option<Decision> {
        let mut map = self.shard(key);
        let cached = map.get_mut(&key)?;
        // Leased quota first: it is already paid for, even when a later
        // request of this replica found Redis exhausted.
        if let Some(lease) = cached
            .lease
            .as_mut()
            .filter(|l| l.until > now && l.tokens > 0)
        {
            lease.tokens -= 1;
            return Some(Decision::admit(
                lease.rate,
                self.rates[lease.rate].limit,
                lease.remaining + lease.tokens,
                ms(lease.reset_at.saturating_duration_since(now)),
            ));
        }
        let denial = cached.denial.as_ref().filter(|d| d.until > now)?;
        Some(Decision::reject(
            denial.rate,
            self.rates[denial.rate].limit,
            denial.remaining,
            ms(denial.until.saturating_duration_since(now)).max(1),
        ))
    }

    /// Turns a script reply into a decision and caches what is certain.
    fn record(&self, key: u64, reply: &Value, now: Instant) -> Option<Decision> {
        let Value::Array(Some(items)) = reply else {
            return None;
        };
        let int = |i: usize| match items.get(i) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let (admitted, amount, remaining, rate, first_left, rate_left) =
            (int(0)?, int(1)?, int(2)?, int(3)?, int(4)?, int(5)?);
        let rate = usize::try_from(rate).ok()?.checked_sub(1)?;
        let limit = self.rates.get(rate)?.limit;
        let mut map = self.shard(key);
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            evict(&mut map, now, self.per_shard);
        }
        let cached = map.entry(key).or_default();
        if admitted == 1 {
            let extra = amount.saturating_sub(1);
            let until = now + Duration::from_millis(first_left);
            let reset_at = now + Duration::from_millis(rate_left);
            // Concurrent requests of this replica may each have been
            // granted a lease for the same window: keep them all.
            let kept = match &cached.lease {
                Some(l) if l.until > now && close(l.until, until) => l.tokens,
                _ => 0,
            };
            let tokens = kept + extra;
            cached.lease = (tokens > 0).then_some(Lease {
                tokens,
                remaining,
                rate,
                until,
                reset_at,
            });
            cached.denial = None;
            Some(Decision::admit(rate, limit, remaining + tokens, rate_left))
        } else {
            let retry = amount.max(1);
            cached.denial = Some(Denial {
                until: now + Duration::from_millis(retry),
                remaining,
                rate,
            });
            Some(Decision::reject(rate, limit, remaining, retry))
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashedKeyMap<Cached>> {
        self.shards[(key >> 58) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn evict(map: &mut HashedKeyMap<Cached>, now: Instant, per_shard: usize) {
    map.retain(|_, c| c.expires().is_some_and(|e| e > now));
    if map.len() >= per_shard {
        // All still valid: drop those expiring first (the cache is only an
        // optimization; Redis stays the truth).
        let mut expiries: Vec<Instant> = map.values().filter_map(Cached::expires).collect();
        if expiries.is_empty() {
            return;
        }
        let cut = expiries.len() / 4;
        let threshold = *expiries.select_nth_unstable(cut).1;
        map.retain(|_, c| c.expires().is_some_and(|e| e > threshold));
    }
}

/// Two window ends computed from replies of the same window differ only by
/// the replies' latency.
fn close(a: Instant, b: Instant) -> bool {
    a.saturating_duration_since(b) < Duration::from_millis(50)
        && b.saturating_duration_since(a) < Duration::from_millis(50)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

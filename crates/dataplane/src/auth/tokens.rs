//! Verified-token cache: a client sends the same bearer token on every
//! request for the token's lifetime, and checking its signature again each
//! time (tens of microseconds for RS256 / ES256) would dominate the cost of
//! proxying. A token whose signature verified is remembered by its SHA-256
//! together with the identity of the key set that verified it; on a hit the
//! signature is not checked again, but the time and audience claims are
//! (they change with the clock and the configuration). A different key set
//! (JWKS rotated or refetched, policy changed) is a miss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest;
use serde_json::{Map, Value};

/// Entries are dropped after this long even if the token lives longer.
const TTL: Duration = Duration::from_secs(300);
/// Bound on entries; when full, expired entries go, then everything.
const MAX_ENTRIES: usize = 10_000;

pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

struct Entry {
    keys_id: u64,
    claims: Arc<Map<String, Value>>,
    at: Instant,
}

#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<TokenDigest, Entry>>,
}

impl VerifiedTokens {
    /// The claims of a token verified earlier with the key set `keys_id`.
    pub fn get(
        &self,
        token: &TokenDigest,
        keys_id: impl Fn(&str) -> Option<u64>,
    ) -> Option<Arc<Map<String, Value>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(token)?;
        if entry.at.elapsed() >= TTL {
            return None;
        }
        let issuer = entry.claims.get("iss").and_then(Value::as_str)?;
        (keys_id(issuer)? == entry.keys_id).then(|| entry.claims.clone())
    }

    pub fn insert(&self, token: TokenDigest, keys_id: u64, claims: Arc<Map<String, Value>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.at.elapsed() < TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            token,
            Entry {
                keys_id,
                claims,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_with_the_same_key_set() {
        let cache = VerifiedTokens::default();
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::String("https://idp".into()));
        let d = digest("a.b.c");
        cache.insert(d, 7, Arc::new(claims));
        assert!(cache
            .get(&d, |iss| (iss == "https://idp").then_some(7))
            .is_some());
        assert!(cache.get(&d, |_| Some(8)).is_none(), "keys changed");
        assert!(
            cache.get(&d, |_| None).is_none(),
            "issuer no longer configured"
        );
        assert!(cache.get(&digest("a.b.d"), |_| Some(7)).is_none());
    }
}

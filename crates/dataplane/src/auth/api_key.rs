//! API keys: looked up by SHA-256 digest, confirmed in constant time,
//! removed from the request before it is proxied.
//!
//! The table holds digests only, so the keys themselves are never in the
//! gateway's memory. Lookup goes through a hash map keyed by the digest of
//! the presented key: whatever timing that lookup shows depends on the
//! digest of the attacker's own guess, which says nothing about any valid
//! key (finding a key from digest bytes is a SHA-256 preimage). The final
//! equality is still checked in constant time.

use http::Request;
use portcullis_model::auth::ApiKeyConfig;
use ring::digest;

use super::{query, Refusal};
use crate::identity::Identity;

pub(super) fn authenticate<B>(
    config: &ApiKeyConfig,
    query: &mut Option<String>,
    req: &mut Request<B>,
) -> Result<Option<Identity>, Refusal> {
    let presented: Option<Vec<u8>> = match &config.header {
        Some(h) => req.headers().get(&h.0).map(|v| v.as_bytes().to_vec()),
        None => None,
    }
    .or_else(|| {
        let name = config.query.as_deref()?;
        query::param(query.as_deref(), name).map(|v| v.as_bytes().to_vec())
    });
    // The key never reaches the backend, valid or not.
    if let Some(h) = &config.header {
        req.headers_mut().remove(&h.0);
    }
    if let Some(name) = &config.query {
        query::remove(query, name);
    }
    let Some(presented) = presented else {
        return Ok(None);
    };
    match lookup(config, &presented) {
        Some(consumer) => Ok(Some(Identity {
            mechanism: Some("api_key"),
            subject: Some(consumer.to_string()),
            consumer: Some(consumer.to_string()),
            claims: None,
        })),
        None => Err(Refusal::Unauthenticated {
            detail: "unknown API key".into(),
            bearer_error: None,
        }),
    }
}

fn lookup<'a>(config: &'a ApiKeyConfig, presented: &[u8]) -> Option<&'a str> {
    let d = digest::digest(&digest::SHA256, presented);
    let d: [u8; 32] = d.as_ref().try_into().ok()?;
    let (stored, consumer) = config.keys.get_key_value(&d)?;
    constant_time_eq(stored, &d).then_some(&**consumer)
}

/// Compares without an early exit: the time taken does not depend on where
/// the inputs first differ.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn config() -> ApiKeyConfig {
        let mut keys = HashMap::new();
        let d = digest::digest(&digest::SHA256, b"k-123456");
        keys.insert(d.as_ref().try_into().unwrap(), Arc::from("team-a"));
        ApiKeyConfig {
            header: Some(portcullis_model::HeaderNameSer(
                http::HeaderName::from_static("x-api-key"),
            )),
            query: Some("api_key".into()),
            keys,
            optional: false,
        }
    }

    #[test]
    fn equal_length_wrong_keys_do_not_match() {
        let c = config();
        assert_eq!(lookup(&c, b"k-123456"), Some("team-a"));
        assert_eq!(lookup(&c, b"k-123457"), None);
        assert_eq!(lookup(&c, b"K-123456"), None);
        assert_eq!(lookup(&c, b""), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn key_is_stripped_from_header_and_query() {
        let c = config();
        let mut req = Request::get("/x")
            .header("x-api-key", "k-123456")
            .body(())
            .unwrap();
        let mut q = Some("a=1&api_key=zzz".to_string());
        let id = authenticate(&c, &mut q, &mut req).ok().flatten().unwrap();
        assert_eq!(id.consumer.as_deref(), Some("team-a"));
        assert!(req.headers().get("x-api-key").is_none());
        assert_eq!(q.as_deref(), Some("a=1"));
        let mut req = Request::get("/x").body(()).unwrap();
        let mut q = Some("api_key=k-123456".to_string());
        assert!(authenticate(&c, &mut q, &mut req).ok().flatten().is_some());
        assert_eq!(q, None);
    }
}

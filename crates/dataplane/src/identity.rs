//! Who sent a request, as established by authentication.
//!
//! The auth stage inserts an [`Identity`] into the request's extensions once
//! a mechanism has verified the caller; rate limiting (counters keyed by
//! consumer or claim), access logs and header forwarding read it from there.
//! A request without this extension is anonymous. Nothing in it ever comes
//! from unverified client input.

use std::sync::Arc;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The mechanism that authenticated the request: `jwt`, `api_key`,
    /// `basic` or `mtls`.
    pub mechanism: Option<&'static str>,
    /// The principal: JWT `sub`, API-key consumer, basic-auth user name or
    /// client certificate subject.
    pub subject: Option<String>,
    /// The API-key consumer name (also the subject for API keys), kept apart
    /// so that limits can be keyed by consumer whatever the mechanism.
    pub consumer: Option<String>,
    /// The verified JWT claims.
    pub claims: Option<Arc<Map<String, Value>>>,
}

impl Identity {
    /// A verified claim by name (`sub`, `scope`, `tenant`, ...).
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.as_ref()?.get(name)
    }

    /// A claim as a string: strings as they are, numbers and booleans in
    /// their JSON form, anything else `None` (so that a counter or header
    /// is never keyed by a whole object).
    pub fn claim_str(&self, name: &str) -> Option<String> {
        match self.claim(name)? {
            Value::String(s) => Some(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_as_strings_only_when_scalar() {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String("alice".into()));
        claims.insert("tier".into(), Value::from(3));
        claims.insert("roles".into(), serde_json::json!(["a", "b"]));
        let id = Identity {
            claims: Some(Arc::new(claims)),
            ..Identity::default()
        };
        assert_eq!(id.claim_str("sub").as_deref(), Some("alice"));
        assert_eq!(id.claim_str("tier").as_deref(), Some("3"));
        assert_eq!(id.claim_str("roles"), None);
        assert_eq!(id.claim_str("missing"), None);
        assert_eq!(Identity::default().claim_str("sub"), None);
    }
}

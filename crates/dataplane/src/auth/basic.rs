//! HTTP basic authentication against a compiled htpasswd file.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, Request};
use portcullis_model::auth::{BasicConfig, PasswordHash};
use ring::digest;

use super::api_key::constant_time_eq;
use super::Refusal;
use crate::identity::Identity;

/// Verified against when the user does not exist, so that an unknown user
/// costs as much as a wrong password (no user enumeration by timing).
static DUMMY_BCRYPT: LazyLock<Option<String>> = LazyLock::new(|| {
    bcrypt::hash_with_salt("portcullis", 10, [7u8; 16])
        .ok()
        .map(|h| h.to_string())
});

/// How long a verified bcrypt password is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Bound on remembered passwords; when full, the memory is cleared.
const VERIFIED_MAX: usize = 10_000;

/// bcrypt costs milliseconds of CPU by design; paying it on every request
/// of a logged-in client would cap a route at a few hundred requests per
/// second per core. A successful check is remembered for a minute, keyed
/// by SHA-256 of (stored hash, user, password): never the password itself,
/// and a changed htpasswd entry no longer matches.
#[derive(Default)]
pub struct VerifiedPasswords {
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl VerifiedPasswords {
    fn key(hash: &str, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [hash, user, password] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).is_some_and(|t| t.elapsed() < VERIFIED_TTL)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_MAX {
            entries.retain(|_, t| t.elapsed() < VERIFIED_TTL);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(key, Instant::now());
    }
}

pub(super) async fn authenticate<B>(
    verified: &VerifiedPasswords,
    config: &BasicConfig,
    req: &mut Request<B>,
) -> Result<Option<Identity>, Refusal> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Some((scheme, credentials)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // Another mechanism's credential (e.g. a bearer token).
        return Ok(None);
    }
    let refused = |detail: &str| Refusal::Unauthenticated {
        detail: detail.to_string(),
        bearer_error: None,
    };
    let decoded = STANDARD
        .decode(credentials.trim())
        .map_err(|_| refused("basic credentials are not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| refused("basic credentials are not UTF-8"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| refused("basic credentials without ':'"))?;
    let hash = config.users.get(user).cloned();
    let password = password.to_string();
    let ok = match hash {
        Some(PasswordHash::Sha1(expected)) => {
            let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
            constant_time_eq(d.as_ref(), &expected)
        }
        Some(PasswordHash::Bcrypt(hash)) => {
            let key = VerifiedPasswords::key(&hash, user, &password);
            if verified.remembered(&key) {
                true
            } else {
                let ok = bcrypt_verify(password, Some(hash)).await;
                if ok {
                    verified.remember(key);
                }
                ok
            }
        }
        None => {
            bcrypt_verify(password, None).await;
            false
        }
    };
    if !ok {
        return Err(refused("wrong user name or password"));
    }
    // The backend does not need the password.
    req.headers_mut().remove(header::AUTHORIZATION);
    Ok(Some(Identity {
        mechanism: Some("basic"),
        subject: Some(user.to_string()),
        consumer: None,
        claims: None,
    }))
}

/// bcrypt is deliberately slow (milliseconds): run it off the async
/// workers so other requests are not held up.
async fn bcrypt_verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let hash = hash.or_else(|| DUMMY_BCRYPT.clone());
        hash.is_some_and(|h| bcrypt::verify(password.as_bytes(), &h).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config() -> BasicConfig {
        let mut users = HashMap::new();
        users.insert(
            "alice".to_string(),
            PasswordHash::Bcrypt(
                bcrypt::hash_with_salt("wonderland", 4, [1u8; 16])
                    .unwrap()
                    .to_string(),
            ),
        );
        // {SHA} of "password"
        users.insert(
            "bob".to_string(),
            PasswordHash::Sha1(
                STANDARD
                    .decode("W6ph5Mm5Pz8GgiULbPgzG37mj9g=")
                    .unwrap()
                    .try_into()
                    .unwrap(),
            ),
        );
        BasicConfig {
            realm: "r".into(),
            challenge: portcullis_model::HeaderValueSer(http::HeaderValue::from_static(
                "Basic realm=\"r\"",
            )),
            users,
            optional: false,
        }
    }

    fn req(user: &str, pass: &str) -> Request<()> {
        let v = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
        Request::get("/")
            .header("authorization", v)
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn bcrypt_and_sha_entries() {
        let c = config();
        let v = VerifiedPasswords::default();
        let mut r = req("alice", "wonderland");
        let id = authenticate(&v, &c, &mut r).await.ok().flatten().unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert!(r.headers().get("authorization").is_none());
        assert!(authenticate(&v, &c, &mut req("bob", "password"))
            .await
            .ok()
            .flatten()
            .is_some());
        assert!(authenticate(&v, &c, &mut req("alice", "wonderlanD"))
            .await
            .is_err());
        assert!(authenticate(&v, &c, &mut req("bob", "passwore"))
            .await
            .is_err());
        assert!(authenticate(&v, &c, &mut req("mallory", "x"))
            .await
            .is_err());
        // Remembered: the same password passes again, a different one never.
        let remembered = authenticate(&v, &c, &mut req("alice", "wonderland")).await;
        assert!(remembered.ok().flatten().is_some());
        assert!(authenticate(&v, &c, &mut req("alice", "wonderlanx"))
            .await
            .is_err());
        let mut bearer = Request::get("/")
            .header("authorization", "Bearer x")
            .body(())
            .unwrap();
        assert!(authenticate(&v, &c, &mut bearer)
            .await
            .ok()
            .flatten()
            .is_none());
    }
}

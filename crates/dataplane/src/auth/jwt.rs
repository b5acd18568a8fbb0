//! JWT (JWS compact serialization) verification on `ring`.
//!
//! What is accepted is decided by the keys, never by the token: each key is
//! pinned to one algorithm at compile time, and a token is checked only
//! with keys whose algorithm equals its header `alg`. `none` is not an
//! algorithm here, and an RSA key is never used as an HMAC secret (the key
//! type fixes the algorithm family), so neither `alg: none` nor HS/RS
//! confusion can get a token through.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{self, HeaderValue};
use http::Request;
use portcullis_model::auth::{
    Jwk, JwksSource, JwtAlgorithm, JwtConfig, JwtProvider, KeyMaterial, TokenSource,
};
use ring::{hmac, signature};
use serde_json::{Map, Value};

use super::{query, tokens, AuthState, Refusal};
use crate::identity::Identity;

/// Why a token was refused (logged; the client gets `invalid_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JwtError {
    TooLarge,
    Malformed(&'static str),
    UnsupportedAlgorithm,
    CriticalHeader,
    UnknownIssuer,
    NoMatchingKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExpiry,
    WrongAudience,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::TooLarge => f.write_str("token too large"),
            JwtError::Malformed(what) => write!(f, "malformed token: {what}"),
            JwtError::UnsupportedAlgorithm => f.write_str("unsupported or forbidden alg"),
            JwtError::CriticalHeader => f.write_str("token has critical header extensions"),
            JwtError::UnknownIssuer => f.write_str("issuer not accepted"),
            JwtError::NoMatchingKey => f.write_str("no key for this kid and alg"),
            JwtError::BadSignature => f.write_str("signature does not verify"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::MissingExpiry => f.write_str("token has no exp"),
            JwtError::WrongAudience => f.write_str("audience not accepted"),
        }
    }
}

/// A token split and decoded, not yet verified.
pub(super) struct Decoded<'a> {
    pub alg: JwtAlgorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

pub(super) fn decode(token: &str, max_bytes: usize) -> Result<Decoded<'_>, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three segments"));
    };
    let b64 = |segment: &str| URL_SAFE_NO_PAD.decode(segment);
    let header: Map<String, Value> = b64(h)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(JwtError::Malformed("header"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(JwtAlgorithm::parse)
        .ok_or(JwtError::UnsupportedAlgorithm)?;
    // RFC 7515 4.1.11: extensions we do not understand must be refused.
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let claims: Map<String, Value> = b64(p)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(JwtError::Malformed("payload"))?;
    let signature = b64(s).map_err(|_| JwtError::Malformed("signature"))?;
    Ok(Decoded {
        alg,
        kid,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Whether `key` (pinned to `alg`) signed `input`.
pub(super) fn signature_valid(key: &Jwk, alg: JwtAlgorithm, input: &[u8], sig: &[u8]) -> bool {
    if key.alg != alg {
        return false;
    }
    use JwtAlgorithm::*;
    match (&key.material, alg) {
        (KeyMaterial::Rsa { n, e }, _) => {
            let params: &signature::RsaParameters = match alg {
                RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, input, sig)
                .is_ok()
        }
        (KeyMaterial::Ec { point }, ES256) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input, sig)
                .is_ok()
        }
        (KeyMaterial::Ec { point }, ES384) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(input, sig)
                .is_ok()
        }
        (KeyMaterial::Ed25519 { public }, EdDSA) => {
            signature::UnparsedPublicKey::new(&signature::ED25519, public)
                .verify(input, sig)
                .is_ok()
        }
        (KeyMaterial::Hmac { secret }, HS256 | HS384 | HS512) => {
            let algorithm = match alg {
                HS256 => hmac::HMAC_SHA256,
                HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            // Constant-time comparison inside ring.
            hmac::verify(&hmac::Key::new(algorithm, secret), input, sig).is_ok()
        }
        _ => false,
    }
}

/// Tries the keys that could have signed the token: same algorithm, and
/// the same `kid` when the token names one.
pub(super) fn verify_with(keys: &[Jwk], token: &Decoded<'_>) -> Result<(), JwtError> {
    let mut candidates = keys.iter().filter(|k| {
        k.alg == token.alg
            && match (&token.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            }
    });
    let mut any = false;
    let ok = candidates.any(|k| {
        any = true;
        signature_valid(k, token.alg, token.signing_input, &token.signature)
    });
    match (ok, any) {
        (true, _) => Ok(()),
        (false, true) => Err(JwtError::BadSignature),
        (false, false) => Err(JwtError::NoMatchingKey),
    }
}

/// `exp` (required), `nbf`, `aud`, with the provider's clock skew.
pub(super) fn check_claims(
    provider: &JwtProvider,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<(), JwtError> {
    let skew = provider.clock_skew.as_secs();
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(JwtError::MissingExpiry)?;
    if (now as f64) > exp + skew as f64 {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(JwtError::Malformed("nbf"))?;
        if (now + skew) as f64 + 1e-9 < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if !provider.audiences.is_empty() {
        let accepted = |a: &str| provider.audiences.iter().any(|x| x == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a token was found, so it can be removed if not forwarded.
enum Found {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
}

fn extract<B>(
    providers: &[JwtProvider],
    query: Option<&str>,
    req: &Request<B>,
) -> Option<(String, Found)> {
    for provider in providers {
        for source in &provider.sources {
            match source {
                TokenSource::Header { name, prefix } => {
                    let Some(value) = req.headers().get(&name.0).and_then(|v| v.to_str().ok())
                    else {
                        continue;
                    };
                    let token = match prefix {
                        Some(p) => match value.get(..p.len()) {
                            Some(head) if head.eq_ignore_ascii_case(p) => &value[p.len()..],
                            // Another scheme (e.g. Basic): not ours.
                            _ => continue,
                        },
                        None => value,
                    };
                    return Some((token.trim().to_string(), Found::Header(name.0.clone())));
                }
                TokenSource::Cookie(cookie) => {
                    if let Some(v) = cookie_value(req.headers(), cookie) {
                        return Some((v.to_string(), Found::Cookie(cookie.clone())));
                    }
                }
                TokenSource::Query(param) => {
                    if let Some(v) = query::param(query, param) {
                        return Some((v.to_string(), Found::Query(param.clone())));
                    }
                }
            }
        }
    }
    None
}

fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn remove_cookie(headers: &mut http::HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// `Ok(None)`: no token in the request. A token that is present must
/// verify, or the request is refused.
pub(super) async fn authenticate<B>(
    state: &AuthState,
    config: &JwtConfig,
    query: &mut Option<String>,
    req: &mut Request<B>,
) -> Result<Option<Identity>, Refusal> {
    let Some((token, found)) = extract(&config.providers, query.as_deref(), req) else {
        return Ok(None);
    };
    let invalid = |e: JwtError| Refusal::Unauthenticated {
        detail: format!("JWT refused: {e}"),
        bearer_error: Some("invalid_token"),
    };
    if token.len() > config.max_token_bytes {
        return Err(invalid(JwtError::TooLarge));
    }
    let provider_of = |issuer: Option<&str>| {
        config
            .providers
            .iter()
            .find(|p| Some(p.issuer.as_str()) == issuer)
    };
    // The identity of the key set a provider verifies with right now.
    let keys_id = |provider: &JwtProvider| match &provider.keys {
        JwksSource::Static(jwks) => jwks.id,
        JwksSource::Remote(remote) => state.remote_jwks.remote(remote).keys_id(),
    };
    let digest = tokens::digest(&token);
    let cached = state
        .tokens
        .get(&digest, |iss| provider_of(Some(iss)).map(keys_id));
    let (provider, claims) = match cached {
        Some(claims) => {
            let issuer = claims.get("iss").and_then(Value::as_str);
            let provider = provider_of(issuer).ok_or(invalid(JwtError::UnknownIssuer))?;
            (provider, claims)
        }
        None => {
            let decoded = decode(&token, config.max_token_bytes).map_err(invalid)?;
            let issuer = decoded.claims.get("iss").and_then(Value::as_str);
            let provider = provider_of(issuer).ok_or(invalid(JwtError::UnknownIssuer))?;
            let verified_with = match &provider.keys {
                JwksSource::Static(jwks) => {
                    verify_with(&jwks.keys, &decoded).map_err(invalid)?;
                    jwks.id
                }
                JwksSource::Remote(remote) => {
                    let cache = state.remote_jwks.remote(remote);
                    let keys = cache.keys(decoded.kid.as_deref()).await.map_err(|detail| {
                        Refusal::Unavailable {
                            detail: format!("provider {}: {detail}", provider.name),
                        }
                    })?;
                    verify_with(&keys.keys, &decoded).map_err(invalid)?;
                    cache.keys_id()
                }
            };
            // Expired or not-yet-valid tokens are not remembered.
            check_claims(provider, &decoded.claims, unix_now()).map_err(invalid)?;
            let claims = Arc::new(decoded.claims);
            state.tokens.insert(digest, verified_with, claims.clone());
            (provider, claims)
        }
    };
    // Time and audience depend on the clock and the configuration: checked
    // on every request, cached or not.
    check_claims(provider, &claims, unix_now()).map_err(invalid)?;
    for c in &provider.claims_to_headers {
        let mut value = claims.get(&c.claim[0]);
        for segment in &c.claim[1..] {
            value = value.and_then(|v| v.get(segment));
        }
        let text = match value {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|i| match i {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(_) | Value::Bool(_) => Some(i.to_string()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        };
        if let Some(v) = text.and_then(|t| HeaderValue::from_str(&t).ok()) {
            req.headers_mut().insert(c.header.0.clone(), v);
        }
    }
    if !provider.forward_token {
        match found {
            Found::Header(name) => {
                req.headers_mut().remove(name);
            }
            Found::Cookie(name) => remove_cookie(req.headers_mut(), &name),
            Found::Query(name) => query::remove(query, &name),
        }
    }
    Ok(Some(Identity {
        mechanism: Some("jwt"),
        subject: claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string),
        consumer: None,
        claims: Some(claims),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use std::time::Duration;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn es256_key() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let jwk = Jwk {
            kid: Some("k1".into()),
            alg: JwtAlgorithm::ES256,
            material: KeyMaterial::Ec {
                point: pair.public_key().as_ref().to_vec(),
            },
        };
        (pair, jwk)
    }

    fn sign_es256(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn provider() -> JwtProvider {
        JwtProvider {
            name: "p".into(),
            issuer: "https://issuer".into(),
            audiences: vec!["api".into()],
            keys: JwksSource::Static(Arc::default()),
            sources: vec![],
            claims_to_headers: vec![],
            clock_skew: Duration::from_secs(30),
            forward_token: true,
        }
    }

    #[test]
    fn valid_token_verifies_and_tampering_breaks_it() {
        let (pair, jwk) = es256_key();
        let token = sign_es256(
            &pair,
            &serde_json::json!({"alg": "ES256", "kid": "k1"}),
            &serde_json::json!({"sub": "a", "exp": 4_000_000_000u64}),
        );
        let d = decode(&token, 8192).unwrap();
        assert_eq!(verify_with(std::slice::from_ref(&jwk), &d), Ok(()));
        let mut tampered = token.clone();
        tampered.replace_range(
            token.len() - 3..token.len() - 2,
            if token.ends_with('A') { "B" } else { "A" },
        );
        // Either the signature bytes change or the base64 becomes invalid.
        if let Ok(d) = decode(&tampered, 8192) {
            assert!(verify_with(std::slice::from_ref(&jwk), &d).is_err());
        }
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_refused() {
        let token = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(br#"{"sub":"a","exp":4000000000}"#)
        );
        assert_eq!(
            decode(&token, 8192).err(),
            Some(JwtError::UnsupportedAlgorithm)
        );
        let token = format!("{}.{}.", b64(br#"{"alg":"NONE"}"#), b64(b"{}"));
        assert_eq!(
            decode(&token, 8192).err(),
            Some(JwtError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn key_pinned_to_es256_refuses_hs256_token() {
        let (_, jwk) = es256_key();
        let KeyMaterial::Ec { point } = &jwk.material else {
            unreachable!()
        };
        // HS256 "signed" with the public key bytes as the secret.
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"k1"}"#),
            b64(br#"{"exp":4000000000}"#)
        );
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, point), input.as_bytes());
        let token = format!("{input}.{}", b64(tag.as_ref()));
        let d = decode(&token, 8192).unwrap();
        assert_eq!(verify_with(&[jwk], &d), Err(JwtError::NoMatchingKey));
    }

    #[test]
    fn size_segments_and_crit_are_checked() {
        assert_eq!(
            decode(&"a".repeat(9000), 8192).err(),
            Some(JwtError::TooLarge)
        );
        assert!(matches!(decode("a.b", 8192), Err(JwtError::Malformed(_))));
        assert!(matches!(
            decode("a.b.c.d", 8192),
            Err(JwtError::Malformed(_))
        ));
        let t = format!(
            "{}.{}.",
            b64(br#"{"alg":"ES256","crit":["x"]}"#),
            b64(b"{}")
        );
        assert_eq!(decode(&t, 8192).err(), Some(JwtError::CriticalHeader));
    }

    #[test]
    fn time_and_audience_claims() {
        let p = provider();
        let now = 1_000_000u64;
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_claims(
                &p,
                &c(serde_json::json!({"exp": now + 10, "aud": "api"})),
                now
            ),
            Ok(())
        );
        // Within the skew.
        assert_eq!(
            check_claims(
                &p,
                &c(serde_json::json!({"exp": now - 20, "aud": ["x", "api"]})),
                now
            ),
            Ok(())
        );
        assert_eq!(
            check_claims(
                &p,
                &c(serde_json::json!({"exp": now - 31, "aud": "api"})),
                now
            ),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check_claims(
                &p,
                &c(serde_json::json!({"exp": now + 100, "nbf": now + 31, "aud": "api"})),
                now
            ),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            check_claims(&p, &c(serde_json::json!({"aud": "api"})), now),
            Err(JwtError::MissingExpiry)
        );
        assert_eq!(
            check_claims(
                &p,
                &c(serde_json::json!({"exp": now + 10, "aud": "other"})),
                now
            ),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check_claims(&p, &c(serde_json::json!({"exp": now + 10})), now),
            Err(JwtError::WrongAudience)
        );
    }

    #[test]
    fn cookies_are_read_and_removed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=tok; b=2"),
        );
        assert_eq!(cookie_value(&h, "session"), Some("tok"));
        remove_cookie(&mut h, "session");
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
    }
}

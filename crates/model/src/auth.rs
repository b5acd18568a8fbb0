//! Compiled `AuthPolicy`: everything the data plane needs, precomputed.
//!
//! Keys are decoded (JWK components as bytes, each key pinned to one
//! algorithm), API keys are stored as SHA-256 digests (never the key
//! itself), CIDRs are parsed, header names are `HeaderName`s. Secrets
//! (HMAC keys, password hashes, API-key digests) are redacted in dumps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Serialize, Serializer};

use crate::serde_helpers::redacted;
use crate::{HeaderNameSer, HeaderValueSer};

/// One route rule's effective authentication and authorization.
#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// `namespace/name` of the policies this came from, for logs.
    pub sources: Vec<String>,
    /// The same, joined: the `policy` label of auth metrics (made once
    /// per compile, not per request).
    pub metric_label: Arc<str>,
    pub ip_rules: Option<IpRules>,
    /// Where the client address comes from (IP rules and authorization
    /// CIDRs both use it).
    pub client_address: ClientAddress,
    pub jwt: Option<JwtConfig>,
    pub api_keys: Option<ApiKeyConfig>,
    pub basic: Option<BasicConfig>,
    pub authorization: Option<Authorization>,
    /// 401 answer (custom or default).
    pub unauthenticated: DenyResponse,
    /// 403 answer (custom or default).
    pub unauthorized: DenyResponse,
    /// The policy's CORS (a route rule's CORS filter wins over it).
    pub cors: Option<Arc<crate::Cors>>,
}

impl AuthConfig {
    /// Whether any authentication mechanism is configured.
    pub fn has_authentication(&self) -> bool {
        self.jwt.is_some() || self.api_keys.is_some() || self.basic.is_some()
    }

    /// A request that presents no credential at all passes as anonymous
    /// only when every configured mechanism is optional.
    pub fn anonymous_allowed(&self) -> bool {
        self.jwt.as_ref().is_none_or(|j| j.optional)
            && self.api_keys.as_ref().is_none_or(|a| a.optional)
            && self.basic.as_ref().is_none_or(|b| b.optional)
    }
}

// ------------------------------------------------------------------ CIDR

/// An IP network. IPv4-mapped IPv6 addresses are compared as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
        };
        Ok(Cidr {
            addr: unmap(addr),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A list of networks; membership is a linear scan (lists are short).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CidrSet(pub Vec<Cidr>);

impl CidrSet {
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<CidrSet, String> {
        list.iter()
            .map(|s| Cidr::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(CidrSet)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IpRules {
    /// Empty: every address not denied is allowed.
    pub allow: CidrSet,
    pub deny: CidrSet,
}

/// See `AuthPolicy.spec.*.ipRules.clientAddress`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientAddress {
    pub trusted_proxies: CidrSet,
    /// 0 means the connection's peer is the client.
    pub trusted_hops: u32,
}

// ------------------------------------------------------------------- JWT

#[derive(Debug, Clone, Serialize)]
pub struct JwtConfig {
    pub providers: Vec<JwtProvider>,
    pub optional: bool,
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct JwtProvider {
    pub name: String,
    pub issuer: String,
    /// Empty accepts any audience.
    pub audiences: Vec<String>,
    pub keys: JwksSource,
    /// Never empty (compile puts in the `Authorization: Bearer` default).
    pub sources: Vec<TokenSource>,
    pub claims_to_headers: Vec<ClaimToHeader>,
    pub clock_skew: Duration,
    pub forward_token: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum JwksSource {
    /// Inline or from a Secret: decoded at compile time.
    Static(Arc<Jwks>),
    Remote(RemoteJwks),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RemoteJwks {
    /// Validated `http(s)://host[:port]/path`.
    pub url: String,
    pub cache_duration: Duration,
    pub min_refresh_interval: Duration,
    pub timeout: Duration,
    /// PEM CA bundle for an https URL; `None` uses the system roots.
    pub ca_pem: Option<Arc<str>>,
}

#[derive(Debug, Clone, Serialize)]
pub enum TokenSource {
    /// Header and the (lowercase) scheme prefix to strip, e.g. `bearer `.
    Header {
        name: HeaderNameSer,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimToHeader {
    /// Dotted claim path, split.
    pub claim: Vec<String>,
    pub header: HeaderNameSer,
}

/// Signature algorithms we verify. `none` does not exist here, so it can
/// never be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl JwtAlgorithm {
    pub fn parse(name: &str) -> Option<JwtAlgorithm> {
        Some(match name {
            "RS256" => JwtAlgorithm::RS256,
            "RS384" => JwtAlgorithm::RS384,
            "RS512" => JwtAlgorithm::RS512,
            "PS256" => JwtAlgorithm::PS256,
            "PS384" => JwtAlgorithm::PS384,
            "PS512" => JwtAlgorithm::PS512,
            "ES256" => JwtAlgorithm::ES256,
            "ES384" => JwtAlgorithm::ES384,
            "EdDSA" => JwtAlgorithm::EdDSA,
            "HS256" => JwtAlgorithm::HS256,
            "HS384" => JwtAlgorithm::HS384,
            "HS512" => JwtAlgorithm::HS512,
            _ => return None,
        })
    }
}

/// A decoded JWKS: every key pinned to exactly one algorithm.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
    /// Fingerprint of the document the keys came from: a token verified
    /// with one key set is only trusted again (verified-token cache) while
    /// the key set is the same.
    pub id: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: JwtAlgorithm,
    pub material: KeyMaterial,
}

/// Key bytes in the form the verifier takes them. The key type and the
/// algorithm always agree (checked when parsing): an RSA key can never be
/// used as an HMAC secret.
#[derive(Clone, Serialize)]
pub enum KeyMaterial {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point `04 || x || y`.
    Ec {
        point: Vec<u8>,
    },
    Ed25519 {
        public: Vec<u8>,
    },
    Hmac {
        #[serde(serialize_with = "redacted")]
        secret: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::Rsa { .. } => "Rsa",
            KeyMaterial::Ec { .. } => "Ec",
            KeyMaterial::Ed25519 { .. } => "Ed25519",
            KeyMaterial::Hmac { .. } => "Hmac(<redacted>)",
        })
    }
}

/// Minimum RSA modulus accepted (the verifier refuses smaller keys too).
const MIN_RSA_BITS: usize = 2048;

impl Jwks {
    /// Parses a JWKS document. Keys meant for encryption (`use: enc`) are
    /// skipped; a key we cannot use is an error when `strict` (a document
    /// written by the operator), skipped with a note otherwise (a remote
    /// JWKS may carry keys for other consumers). Returns the keys and the
    /// reasons keys were skipped.
    pub fn parse(
        json: &[u8],
        allow_hmac: bool,
        strict: bool,
    ) -> Result<(Jwks, Vec<String>), String> {
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("JWKS has no \"keys\" array")?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, key) in list.iter().enumerate() {
            if key.get("use").and_then(|u| u.as_str()) == Some("enc") {
                continue;
            }
            match Jwk::parse(key, allow_hmac) {
                Ok(k) => keys.push(k),
                Err(e) if strict => return Err(format!("JWKS key {i}: {e}")),
                Err(e) => skipped.push(format!("key {i}: {e}")),
            }
        }
        if keys.is_empty() {
            return Err("JWKS has no usable signing key".into());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(json, &mut hasher);
        let id = std::hash::Hasher::finish(&hasher);
        Ok((Jwks { keys, id }, skipped))
    }
}

impl Jwk {
    pub fn parse(key: &serde_json::Value, allow_hmac: bool) -> Result<Jwk, String> {
        let field = |name: &str| key.get(name).and_then(|v| v.as_str());
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let text = field(name).ok_or_else(|| format!("missing \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("\"{name}\" is not base64url"))
        };
        let kty = field("kty").ok_or("missing \"kty\"")?;
        let alg = match field("alg") {
            Some(a) => {
                Some(JwtAlgorithm::parse(a).ok_or_else(|| format!("unsupported alg {a:?}"))?)
            }
            None => None,
        };
        use JwtAlgorithm::*;
        let (alg, material) = match kty {
            "RSA" => {
                let alg = alg.unwrap_or(RS256);
                if !matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) {
                    return Err(format!("RSA key cannot be used with {alg:?}"));
                }
                let n = strip_leading_zeros(bytes("n")?);
                let e = strip_leading_zeros(bytes("e")?);
                if n.len() * 8 < MIN_RSA_BITS {
                    return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
                }
                (alg, KeyMaterial::Rsa { n, e })
            }
            "EC" => {
                let (expected, len) = match field("crv") {
                    Some("P-256") => (ES256, 32),
                    Some("P-384") => (ES384, 48),
                    other => return Err(format!("unsupported EC curve {other:?}")),
                };
                let alg = alg.unwrap_or(expected);
                if alg != expected {
                    return Err(format!("EC key on this curve cannot be used with {alg:?}"));
                }
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != len || y.len() != len {
                    return Err("EC coordinates have the wrong length".into());
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (alg, KeyMaterial::Ec { point })
            }
            "OKP" => {
                if field("crv") != Some("Ed25519") {
                    return Err("only the Ed25519 OKP curve is supported".into());
                }
                let alg = alg.unwrap_or(EdDSA);
                if alg != EdDSA {
                    return Err(format!("Ed25519 key cannot be used with {alg:?}"));
                }
                let public = bytes("x")?;
                if public.len() != 32 {
                    return Err("Ed25519 key must be 32 bytes".into());
                }
                (alg, KeyMaterial::Ed25519 { public })
            }
            "oct" => {
                if !allow_hmac {
                    return Err("symmetric (oct) keys are only accepted from a Secret".into());
                }
                // No default: a shared secret must say which HMAC it is for.
                let alg = alg.ok_or("an oct key must name its \"alg\"")?;
                if !matches!(alg, HS256 | HS384 | HS512) {
                    return Err(format!("oct key cannot be used with {alg:?}"));
                }
                let secret = bytes("k")?;
                if secret.len() < 32 {
                    return Err("HMAC secret shorter than 32 bytes".into());
                }
                (alg, KeyMaterial::Hmac { secret })
            }
            other => return Err(format!("unsupported key type {other:?}")),
        };
        Ok(Jwk {
            kid: field("kid").map(str::to_string),
            alg,
            material,
        })
    }
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

// -------------------------------------------------------------- API keys

/// SHA-256 of an API key.
pub type ApiKeyDigest = [u8; 32];

#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyConfig {
    pub header: Option<HeaderNameSer>,
    pub query: Option<String>,
    /// Digest -> consumer name. Only consumer names are dumped.
    #[serde(serialize_with = "consumers_only")]
    pub keys: HashMap<ApiKeyDigest, Arc<str>>,
    pub optional: bool,
}

fn consumers_only<S: Serializer>(
    keys: &HashMap<ApiKeyDigest, Arc<str>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut names: Vec<&str> = keys.values().map(|c| &**c).collect();
    names.sort_unstable();
    s.collect_seq(names)
}

// ----------------------------------------------------------------- basic

#[derive(Debug, Clone, Serialize)]
pub struct BasicConfig {
    pub realm: String,
    /// `WWW-Authenticate` value, built once.
    pub challenge: HeaderValueSer,
    #[serde(serialize_with = "users_only")]
    pub users: HashMap<String, PasswordHash>,
    pub optional: bool,
}

fn users_only<S: Serializer>(
    users: &HashMap<String, PasswordHash>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut names: Vec<&str> = users.keys().map(String::as_str).collect();
    names.sort_unstable();
    s.collect_seq(names)
}

#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// The whole `$2y$...` string.
    Bcrypt(String),
    /// `{SHA}`: SHA-1 of the password.
    Sha1([u8; 20]),
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "Bcrypt(<redacted>)",
            PasswordHash::Sha1(_) => "Sha1(<redacted>)",
        })
    }
}

/// Parses an htpasswd file: `user:hash` lines; blank lines and `#`
/// comments are skipped. Unsupported hash formats are an error naming the
/// user, so the operator learns which entry to fix.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, PasswordHash>, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("htpasswd line {}: expected user:hash", n + 1))?;
        let parsed = if let Some(b64) = hash.strip_prefix("{SHA}") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| format!("htpasswd user {user:?}: {{SHA}} hash is not base64"))?;
            let digest: [u8; 20] = raw
                .try_into()
                .map_err(|_| format!("htpasswd user {user:?}: {{SHA}} hash is not 20 bytes"))?;
            PasswordHash::Sha1(digest)
        } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            if hash.len() != 60 {
                return Err(format!("htpasswd user {user:?}: malformed bcrypt hash"));
            }
            PasswordHash::Bcrypt(hash.to_string())
        } else {
            return Err(format!(
                "htpasswd user {user:?}: unsupported hash (use bcrypt `htpasswd -B` or `{{SHA}}`)"
            ));
        };
        users.insert(user.to_string(), parsed);
    }
    Ok(users)
}

// --------------------------------------------------------- authorization

#[derive(Debug, Clone, Serialize)]
pub struct Authorization {
    pub rules: Vec<AuthzRule>,
    pub default_allow: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthzRule {
    /// Name, or `rule[i]`; for logs.
    pub name: String,
    pub allow: bool,
    pub authenticated: Option<bool>,
    pub claims: Vec<ClaimCondition>,
    pub scopes: Vec<String>,
    pub subjects: Vec<String>,
    /// `None`: no address condition.
    pub client_cidrs: Option<CidrSet>,
    /// Uppercase method names.
    pub methods: Vec<String>,
    pub paths: Vec<AuthzPath>,
    pub client_certificate: Option<ClientCertificateCondition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimCondition {
    pub claim: Vec<String>,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthzPath {
    pub exact: bool,
    /// Lowercase unless `case_sensitive`; prefixes without trailing slash
    /// (except `/`).
    pub value: String,
    pub case_sensitive: bool,
}

impl AuthzPath {
    pub fn matches(&self, path: &str) -> bool {
        if self.case_sensitive {
            self.matches_exactly(path)
        } else if path.bytes().any(|b| b.is_ascii_uppercase()) {
            self.matches_exactly(&path.to_ascii_lowercase())
        } else {
            self.matches_exactly(path)
        }
    }

    fn matches_exactly(&self, path: &str) -> bool {
        if self.exact {
            // `/admin` and `/admin/` are the same resource to most
            // backends: an exact rule covers both spellings.
            path == self.value || path.strip_suffix('/').is_some_and(|p| p == self.value)
        } else {
            crate::prefix_matches(&self.value, path)
        }
    }
}

/// Verified client certificate conditions (frontend mTLS). Values are
/// compared with what the listener verified; any match is enough.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCertificateCondition {
    pub subjects: Vec<String>,
    pub sans: Vec<String>,
    /// Lowercase hex, no separators.
    pub fingerprints: Vec<String>,
}

// --------------------------------------------------------- deny answers

#[derive(Debug, Clone, Serialize)]
pub struct DenyResponse {
    pub status: u16,
    pub headers: Vec<(HeaderNameSer, HeaderValueSer)>,
    /// `None`: a short default text.
    pub body: Option<Arc<str>>,
    /// Whether the operator set the body (then it is sent as is).
    pub custom: bool,
}

impl DenyResponse {
    pub fn default_unauthenticated() -> DenyResponse {
        DenyResponse {
            status: 401,
            headers: Vec::new(),
            body: None,
            custom: false,
        }
    }

    pub fn default_unauthorized() -> DenyResponse {
        DenyResponse {
            status: 403,
            headers: Vec::new(),
            body: None,
            custom: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let set = CidrSet::parse(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]).unwrap();
        assert!(set.contains("10.1.2.3".parse().unwrap()));
        assert!(!set.contains("11.0.0.1".parse().unwrap()));
        assert!(set.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(set.contains("2001:db8::1".parse().unwrap()));
        assert!(!set.contains("2001:db9::1".parse().unwrap()));
        assert!(set.contains("192.0.2.7".parse().unwrap()));
        assert!(!set.contains("192.0.2.8".parse().unwrap()));
        let all = CidrSet::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn keys_are_pinned_to_their_type() {
        let rsa_as_hs = serde_json::json!({"kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB"});
        assert!(Jwk::parse(&rsa_as_hs, true).is_err());
        let ec_wrong_curve = serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES384",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        assert!(Jwk::parse(&ec_wrong_curve, false).is_err());
        let oct = serde_json::json!({"kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode([7u8; 32])});
        assert!(Jwk::parse(&oct, false).is_err(), "oct only from Secrets");
        assert_eq!(Jwk::parse(&oct, true).unwrap().alg, JwtAlgorithm::HS256);
        let none = serde_json::json!({"kty": "oct", "alg": "none", "k": "AA"});
        assert!(Jwk::parse(&none, true).is_err());
        let short_rsa = serde_json::json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"});
        assert!(Jwk::parse(&short_rsa, false).is_err());
        let rsa = serde_json::json!({"kty": "RSA", "kid": "a", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": "AQAB"});
        let k = Jwk::parse(&rsa, false).unwrap();
        assert_eq!(k.alg, JwtAlgorithm::RS256);
        assert_eq!(k.kid.as_deref(), Some("a"));
    }

    #[test]
    fn remote_documents_skip_unusable_keys_strict_ones_refuse() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 256]), "e": "AQAB"},
            {"kty": "XYZ"},
            {"kty": "RSA", "use": "enc", "n": "AA", "e": "AQAB"}
        ]})
        .to_string();
        let (jwks, skipped) = Jwks::parse(doc.as_bytes(), false, false).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(Jwks::parse(doc.as_bytes(), false, true).is_err());
        assert!(Jwks::parse(b"{\"keys\": []}", false, false).is_err());
    }

    #[test]
    fn htpasswd_formats() {
        let users = parse_htpasswd(
            "# comment\nalice:$2y$05$3IbMEaPgLJyM8pHSq6nPhOUkH0yUxwVPVd6n0G2sVvVQmPl0ROfB.\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\n",
        )
        .unwrap();
        assert!(matches!(users["alice"], PasswordHash::Bcrypt(_)));
        assert!(matches!(users["bob"], PasswordHash::Sha1(_)));
        let err = parse_htpasswd("carol:$apr1$abc$def").unwrap_err();
        assert!(err.contains("carol"), "{err}");
        assert!(parse_htpasswd("no-colon").is_err());
    }

    #[test]
    fn authz_paths_cover_case_and_trailing_slash_variants() {
        let prefix = AuthzPath {
            exact: false,
            value: "/admin".into(),
            case_sensitive: false,
        };
        for p in ["/admin", "/admin/", "/admin/x", "/ADMIN", "/Admin/x"] {
            assert!(prefix.matches(p), "{p}");
        }
        for p in ["/administrator", "/public", "/"] {
            assert!(!prefix.matches(p), "{p}");
        }
        let exact = AuthzPath {
            exact: true,
            value: "/login".into(),
            case_sensitive: true,
        };
        assert!(exact.matches("/login"));
        assert!(exact.matches("/login/"));
        assert!(!exact.matches("/LOGIN"));
        assert!(!exact.matches("/login/x"));
    }

    #[test]
    fn secrets_are_redacted_in_dumps() {
        let key = Jwk {
            kid: None,
            alg: JwtAlgorithm::HS256,
            material: KeyMaterial::Hmac {
                secret: b"super-secret-value-0123456789abcdef".to_vec(),
            },
        };
        let text = serde_json::to_string(&key).unwrap();
        assert!(!text.contains("super"), "{text}");
        assert!(text.contains("redacted"));
        let mut keys = HashMap::new();
        keys.insert([9u8; 32], Arc::from("team-a"));
        let api = ApiKeyConfig {
            header: None,
            query: None,
            keys,
            optional: false,
        };
        let text = serde_json::to_string(&api).unwrap();
        assert!(text.contains("team-a"));
        assert!(!text.contains('9'), "{text}");
    }
}

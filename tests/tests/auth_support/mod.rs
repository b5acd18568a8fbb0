//! Fixtures for AuthPolicy tests and benches: token minting (RS256 with a
//! fixed test key, ES256 with keys made in the test, HS256), JWKS
//! documents, and a local HTTPS JWKS server whose keys can be rotated.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_tests::{TestPki, LOOPBACK};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "api";

/// A 2048-bit RSA key made for these tests only (ring cannot generate RSA
/// keys); `RSA_N` is its modulus, base64url.
pub const RSA_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCkKZvBC5Sbrd+/
AZ+rs0lqmn24uHRLAjHL8XSOcx4wvwkWbonOOWxqQNoiqncgkR8GWgBnY8FRUrCj
XUz8nD+UP4x116webFlLCBbHGqEc1R73WZWNtqt3aRWMQaChum6mlYOVRs/EgOGZ
9FuPL8GCVbyep2ROcWU6EMQ6+2e8zphSSkCxuRylWDEc1f5DIBPEbuW2GdgfsizN
SOtVTyZ35TTS/qJF8OJFlS0EknO+sdrLOHBUoPIwcRJWbpZW9ximlz3fc/NesLwC
M/6F/YDOp1fAkKTYn5D4z+ucqbUWhy5hQ+enm5pA7dHynRoLgVvyMLWff1xr2wfE
ORYq7EbTAgMBAAECggEAG1L4TiZ7os9LFFjUgdjCrzrDEvxTZv9uLcWlIpITWVvC
yyK0+fK25+yezPGrXcFUn6hatDAiHO4di+OGDUSDP01gjLt24Pgkg1z3pZukwM7R
wQFT55WbGVy6rcYSqDixcuAkrwkX9gYvBtgUZqiKlgNn9M8PNBCjH7TAuhc0dMl4
R7ixx02ZROUkeE2GhngWuG5VrVu2N9k92/HKmmVFa6VmAnURXTWkuJPKeJaitzpk
5egFj3ALLT5jjcaOqnqmn1/iula3ZEGsIIrIBor3hsuCSmLjCfTTJnZ8rzodD9zq
IGxvs6G8OAjhR3QR7FUo1TgXQA6kNe+KUdl1UNGv2QKBgQDnmWYPPSJebJI+rjhl
0i4znumhc5DS9/CNvKe+eIWEcfVy6lVWzWrFNvVyE2dgAE0JJ+V2VLtpBC87lx/5
+8J79KrM35CgQ0E2ffBR2XoM7Q8TW0TeFG2rhhFY1dC0QyehCMw9h9CoNJyRdNDk
Q9F91uM2Hpfjzx0/pqgdQxqW3wKBgQC1dVWmkfJXj1KNegd1CRVM6PCVqblZ7t/A
8OScOxQQIWwTvQQrEfmeRrV/9xRsTva55Yu0QbYFhk6ySBHjTtKNJIvl89SbyAMc
y8xBJnJ1wadS8M+Ufj83SIKPu4pqsRQsFcPg+c+Qfu0o++Z6WE30OHXANcDgCgX8
1vCUCESSjQKBgFbDeSCsXnvRYNhqnGZI31Ynao85pD/k8xGmY5FPxXVg2/s5Hs9u
FVncxQb/jfLBKhsL/0Lda3hkQO2qKCiW0L1vY61s89mWWI/5jlabisXc6ZDu2FX6
gTuI9ma5c36UyfviN+G1R848J4u2n6tkXM8v+d8EhxKpPOPjo4eS5BsxAoGAe8Mi
fvCOJLBJMttnGKjwUTuTU9Cl7bPiAruKgRA+V94j07aYkDO7V/uMMVI5KMIWv6XT
SkeDOXNoW2qSYMHTE5c4n8dVXEbn8I0Dq+/oI27Ii+ZY/kO5JCCdhCD6gFh0lLjn
l5tquXgIk2pzwUBXMtoLXeSLv4K2oMOM5Lpa4sUCgYEAk0Q9BvcFUFTKh6pknu9b
Q5yaNXwnSizfTerU2vkKnI7d5acNUPUaFhjqWS9975MqJYkRM1Rhuc3I3J+I9nNF
qt0cfzBFqkoXiZXacgA6U/AHyNzwp0QXPMo2TklDhwrauldPKSLxstSEHN9kSP+p
uDm2spa43DTZisjTqf00oq4=
-----END PRIVATE KEY-----";
pub const RSA_N: &str = "pCmbwQuUm63fvwGfq7NJapp9uLh0SwIxy_F0jnMeML8JFm6JzjlsakDaIqp3IJEfBloAZ2PBUVKwo11M_Jw_lD-MddesHmxZSwgWxxqhHNUe91mVjbard2kVjEGgobpuppWDlUbPxIDhmfRbjy_BglW8nqdkTnFlOhDEOvtnvM6YUkpAsbkcpVgxHNX-QyATxG7lthnYH7IszUjrVU8md-U00v6iRfDiRZUtBJJzvrHayzhwVKDyMHESVm6WVvcYppc933PzXrC8AjP-hf2AzqdXwJCk2J-Q-M_rnKm1FocuYUPnp5uaQO3R8p0aC4Fb8jC1n39ca9sHxDkWKuxG0w";

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims of a token that is valid for five minutes.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": now() + 300, "iat": now(),
        "scope": "read write", "org": {"tier": "gold"}
    })
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

pub struct RsaSigner {
    pair: RsaKeyPair,
}

impl RsaSigner {
    pub fn new() -> RsaSigner {
        let der = PrivateKeyDer::from_pem_slice(RSA_PKCS8_PEM.as_bytes()).expect("test key PEM");
        let pair = RsaKeyPair::from_pkcs8(der.secret_der()).expect("test RSA key");
        RsaSigner { pair }
    }

    pub fn jwk(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"})
    }

    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let input = signing_input(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), claims);
        let mut sig = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RSA sign");
        format!("{input}.{}", b64(&sig))
    }
}

impl Default for RsaSigner {
    fn default() -> Self {
        RsaSigner::new()
    }
}

pub struct EcSigner {
    pub kid: String,
    pair: EcdsaKeyPair,
}

impl EcSigner {
    pub fn generate(kid: &str) -> EcSigner {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC key");
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("EC key");
        EcSigner {
            kid: kid.to_string(),
            pair,
        }
    }

    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256",
               "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let input = signing_input(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("EC sign");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// HS256 over `claims` with `secret`, naming `kid`.
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let input = signing_input(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), claims);
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", b64(tag.as_ref()))
}

pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A JWKS served over HTTPS on loopback; the document can be replaced
/// (key rotation) and every request is counted.
pub struct JwksServer {
    pub url: String,
    pub document: Arc<Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serves `document` at `https://localhost:<port>/jwks` with a
    /// certificate from `pki`.
    pub async fn start(pki: &TestPki, document: String) -> JwksServer {
        let (cert, key) = pki.server_cert(&["localhost"]);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind JWKS");
        let addr: SocketAddr = listener.local_addr().expect("JWKS address");
        let document = Arc::new(Mutex::new(document));
        let hits = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (doc, count) = (doc.clone(), count.clone());
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            let body = if req.uri().path() == "/jwks" {
                                doc.lock().expect("document").clone()
                            } else {
                                String::new()
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            if req.uri().path() != "/jwks" {
                                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        JwksServer {
            url: format!("https://localhost:{}/jwks", addr.port()),
            document,
            hits,
            task,
        }
    }

    pub fn rotate(&self, document: String) {
        *self.document.lock().expect("document") = document;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections (the JWKS becomes unreachable).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// YAML of a ConfigMap holding a CA bundle under `ca.crt`.
pub fn ca_config_map_yaml(name: &str, pem: &str) -> String {
    let body: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: default}}
data:
  ca.crt: |
{body}"
    )
}

/// YAML of an Opaque Secret with string data (multi-line values as
/// literal blocks).
pub fn secret_yaml(name: &str, labels: &str, annotations: &str, data: &[(&str, &str)]) -> String {
    let data: String = data
        .iter()
        .map(|(k, v)| {
            if v.contains('\n') {
                let block: String = v.lines().map(|l| format!("    {l}\n")).collect();
                format!("  {k}: |\n{block}")
            } else {
                format!("  {k}: '{}'\n", v.replace('\'', "''"))
            }
        })
        .collect();
    format!(
        "
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: default, labels: {{{labels}}}, annotations: {{{annotations}}}}}
stringData:
{data}"
    )
}

//! The auth stage: IP rules -> authentication -> authorization, run once
//! per request right after route lookup, on the rule's compiled
//! [`AuthConfig`].
//!
//! On success the verified caller is put into the request's extensions as
//! an [`Identity`] (absent for anonymous requests) and credentials that
//! must not reach the backend (API keys, optionally tokens) are removed.
//! On failure the request ends here with 401 (with a `WWW-Authenticate`
//! challenge), 403, 503 (signing keys unavailable: fail closed), or the
//! policy's custom answer.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use portcullis_model::auth::{AuthConfig, DenyResponse};

use crate::body::{self, Body};
use crate::identity::Identity;
use crate::metrics::AuthResult;

mod api_key;
mod authz;
mod basic;
mod client_ip;
mod jwks;
mod jwt;
mod query;
mod tokens;

pub use authz::VerifiedClientCertificate;
pub use client_ip::client_address;

/// Runtime state of the auth stage, shared by all tables: it survives
/// configuration reloads, like upstream connection pools do.
#[derive(Default)]
pub struct AuthState {
    pub(crate) remote_jwks: jwks::RemoteCaches,
    pub(crate) passwords: basic::VerifiedPasswords,
    pub(crate) tokens: tokens::VerifiedTokens,
}

impl AuthState {
    pub fn new() -> AuthState {
        AuthState::default()
    }

    /// How many fetches of this JWKS URL were started.
    pub fn jwks_fetches(&self, url: &str) -> u64 {
        self.remote_jwks.fetches(url)
    }

    /// How many remote JWKS caches are kept (one per URL in use).
    pub fn jwks_caches(&self) -> usize {
        self.remote_jwks.count()
    }
}

/// The parts of the request the stage reads besides headers.
pub struct AuthInput<'a> {
    /// The connection's peer.
    pub remote: IpAddr,
    /// Normalized path (what routes and authorization rules match).
    pub path: &'a str,
    /// Query string; credentials carried in it are removed in place.
    pub query: &'a mut Option<String>,
}

/// Why a request was refused, with what the client is told.
#[derive(Debug)]
enum Refusal {
    /// No valid credential. `error` is the RFC 6750 error for a bearer
    /// token that was presented and rejected.
    Unauthenticated {
        detail: String,
        bearer_error: Option<&'static str>,
    },
    /// Authenticated (or not required to be) but not allowed.
    Forbidden { detail: String },
    /// A dependency (remote JWKS) is unavailable and nothing cached can
    /// decide: fail closed.
    Unavailable { detail: String },
}

/// Runs the whole stage. `Ok` lets the request continue (with the
/// [`Identity`] inserted when authenticated); `Err` is the answer.
pub async fn check<B>(
    state: &AuthState,
    config: &AuthConfig,
    input: AuthInput<'_>,
    req: &mut Request<B>,
) -> Result<(), Response<Body>> {
    match run(state, config, input, req).await {
        Ok(identity) => {
            // Anonymous: no mechanism required one (optional credentials).
            let mechanism = identity
                .as_ref()
                .and_then(|i| i.mechanism)
                .unwrap_or("anonymous");
            record(config, mechanism, AuthResult::allowed, "ok");
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity);
            }
            Ok(())
        }
        Err(refusal) => {
            // A refusal is not tied to one mechanism (the request may have
            // carried none of them): the label is the policy's outcome.
            let (result, reason) = match &refusal {
                Refusal::Unauthenticated { bearer_error, .. } => (
                    AuthResult::unauthenticated,
                    bearer_error.unwrap_or("missing_or_invalid_credentials"),
                ),
                Refusal::Forbidden { .. } => (AuthResult::denied, "forbidden"),
                Refusal::Unavailable { .. } => (AuthResult::error, "unavailable"),
            };
            record(config, "any", result, reason);
            Err(refusal_response(config, refusal))
        }
    }
}

fn record(config: &AuthConfig, mechanism: &'static str, result: AuthResult, reason: &'static str) {
    crate::metrics::global().record_auth(&config.metric_label, mechanism, result, reason);
}

async fn run<B>(
    state: &AuthState,
    config: &AuthConfig,
    input: AuthInput<'_>,
    req: &mut Request<B>,
) -> Result<Option<Identity>, Refusal> {
    let client = client_address(&config.client_address, input.remote, req.headers());
    if let Some(rules) = &config.ip_rules {
        if rules.deny.contains(client) || (!rules.allow.is_empty() && !rules.allow.contains(client))
        {
            return Err(Refusal::Forbidden {
                detail: format!("client address {client} refused by ipRules"),
            });
        }
    }

    // Headers the gateway sets from verified claims are never taken from
    // the client, whether or not this request carries a token.
    if let Some(jwt) = &config.jwt {
        for p in &jwt.providers {
            for c in &p.claims_to_headers {
                req.headers_mut().remove(&c.header.0);
            }
        }
    }

    let identity = authenticate(state, config, input.query, req).await?;
    if identity.is_none() && config.has_authentication() && !config.anonymous_allowed() {
        return Err(Refusal::Unauthenticated {
            detail: "no credentials".into(),
            bearer_error: None,
        });
    }

    if let Some(authorization) = &config.authorization {
        // Put there per connection by the TLS stage (`client_cert`).
        let cert = req
            .extensions()
            .get::<std::sync::Arc<VerifiedClientCertificate>>()
            .map(|c| &**c);
        let ctx = authz::Context {
            identity: identity.as_ref(),
            client,
            method: req.method().as_str(),
            path: input.path,
            client_certificate: cert,
        };
        let (allowed, rule) = authz::decide(authorization, &ctx);
        if !allowed {
            let detail = format!("denied by authorization {rule}");
            // An anonymous caller refused where credentials could help is
            // told to authenticate, not that it is forbidden.
            return Err(if identity.is_none() && config.has_authentication() {
                Refusal::Unauthenticated {
                    detail,
                    bearer_error: None,
                }
            } else {
                Refusal::Forbidden { detail }
            });
        }
    }
    Ok(identity)
}

/// The first mechanism whose credential the request carries decides: a
/// presented credential that is invalid is refused, never skipped in
/// favour of another mechanism or anonymous access.
async fn authenticate<B>(
    state: &AuthState,
    config: &AuthConfig,
    query: &mut Option<String>,
    req: &mut Request<B>,
) -> Result<Option<Identity>, Refusal> {
    if let Some(jwt) = &config.jwt {
        if let Some(identity) = jwt::authenticate(state, jwt, query, req).await? {
            return Ok(Some(identity));
        }
    }
    if let Some(keys) = &config.api_keys {
        if let Some(identity) = api_key::authenticate(keys, query, req)? {
            return Ok(Some(identity));
        }
    }
    if let Some(basic) = &config.basic {
        if let Some(identity) = basic::authenticate(&state.passwords, basic, req).await? {
            return Ok(Some(identity));
        }
    }
    Ok(None)
}

fn refusal_response(config: &AuthConfig, refusal: Refusal) -> Response<Body> {
    match refusal {
        Refusal::Unauthenticated {
            detail,
            bearer_error,
        } => {
            tracing::debug!(policy = ?config.sources, reason = %detail, "request unauthenticated");
            let mut resp = deny_response(&config.unauthenticated, "unauthenticated");
            for challenge in challenges(config, bearer_error) {
                resp.headers_mut()
                    .append(header::WWW_AUTHENTICATE, challenge);
            }
            resp
        }
        Refusal::Forbidden { detail } => {
            tracing::debug!(policy = ?config.sources, reason = %detail, "request forbidden");
            deny_response(&config.unauthorized, "forbidden")
        }
        Refusal::Unavailable { detail } => {
            tracing::warn!(policy = ?config.sources, reason = %detail, "authentication unavailable; refusing (fail closed)");
            crate::proxy::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication unavailable",
            )
        }
    }
}

/// One challenge per configured mechanism (RFC 7235: a 401 carries at
/// least one). A custom response that sets its own `WWW-Authenticate`
/// replaces them.
fn challenges(config: &AuthConfig, bearer_error: Option<&'static str>) -> Vec<HeaderValue> {
    if config
        .unauthenticated
        .headers
        .iter()
        .any(|(n, _)| n.0 == header::WWW_AUTHENTICATE)
    {
        return Vec::new();
    }
    let realm = config
        .basic
        .as_ref()
        .map(|b| b.realm.as_str())
        .unwrap_or("portcullis");
    let mut out = Vec::new();
    if config.jwt.is_some() {
        let value = match bearer_error {
            Some(error) => format!("Bearer realm=\"{realm}\", error=\"{error}\""),
            None => format!("Bearer realm=\"{realm}\""),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.push(v);
        }
    }
    if let Some(basic) = &config.basic {
        out.push(basic.challenge.0.clone());
    }
    // Not a registered scheme, but it tells a client which credential
    // would be accepted.
    if config.api_keys.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("ApiKey realm=\"{realm}\"")) {
            out.push(v);
        }
    }
    out
}

fn deny_response(answer: &DenyResponse, default_text: &str) -> Response<Body> {
    let mut resp = match &answer.body {
        Some(text) => Response::new(body::full(text.to_string())),
        None => {
            let mut r = Response::new(body::full(format!("{default_text}\n")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
    };
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::FORBIDDEN);
    for (name, value) in &answer.headers {
        resp.headers_mut().insert(name.0.clone(), value.0.clone());
    }
    resp
}

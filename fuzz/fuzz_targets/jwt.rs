//! JWT parsing and verification through the auth stage, as a request with
//! `Authorization: Bearer <token>` meets a compiled AuthPolicy (HS256 key
//! from a Secret, issuer, audience, claims copied to headers).
//!
//! Input starting with `0`: the rest is the token as sent (parsing,
//! base64, JSON, algorithm and key selection, signature check). Otherwise
//! the rest is `header JSON \xff claims JSON`, signed with the policy's
//! key by the target, so claim validation and claims-to-headers see
//! arbitrary claims behind a valid signature.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use portcullis_dataplane::auth::{self, AuthInput, AuthState};
use portcullis_dataplane::router::{PortRoutes, RequestParts};
use portcullis_fuzz::fixture_routes;
use portcullis_model::auth::AuthConfig;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-fuzz";

struct Fixture {
    auth: Arc<AuthConfig>,
    state: AuthState,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}}]}}"#,
        URL_SAFE_NO_PAD.encode(SECRET)
    );
    let routes: PortRoutes = fixture_routes(&format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: idp-keys, namespace: default}}
stringData:
  jwks.json: '{jwks}'
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  jwt:
    providers:
    - name: idp
      issuer: https://issuer.example
      audiences: [api]
      jwks: {{secretRef: {{name: idp-keys}}}}
      claimsToHeaders:
      - {{claim: sub, header: x-user}}
      - {{claim: org.tier, header: x-tier}}
"
    ));
    let headers = HeaderMap::new();
    let route = routes
        .lookup(&RequestParts {
            host: "a.example",
            path: "/",
            query: None,
            method: &Method::GET,
            headers: &headers,
        })
        .expect("the fixture routes /");
    let auth = route
        .rule
        .policies
        .auth
        .clone()
        .expect("the fixture's AuthPolicy compiles");
    Fixture {
        auth,
        state: AuthState::new(),
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime"),
    }
});

fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode == b'0' {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        }
    } else {
        let split = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
        let (header, claims) = rest.split_at(split);
        signed(header, claims.get(1..).unwrap_or_default())
    };
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let mut req = Request::get("/").body(()).expect("request");
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let fixture = &*FIXTURE;
    let mut query = None;
    let input = AuthInput {
        remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
        path: "/",
        query: &mut query,
    };
    let _ = fixture
        .runtime
        .block_on(auth::check(&fixture.state, &fixture.auth, input, &mut req));
});

//! AuthPolicy end to end: a real gateway (standalone mode, YAML config) in
//! front of a real echo backend, real clients, a real HTTPS JWKS server.
//! Every mechanism, and each attack case as its own test.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis_tests::*;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;

mod auth_support;
use auth_support::*;

const HOST: &str = "api.example.com";

/// Gateway + echo backend + HTTPRoute `default/api` (one catch-all rule
/// named `all`) + whatever `extra` adds (policies, Secrets).
async fn gateway_with(extra: &str) -> TestGateway {
    let echo = start_echo("echo").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - name: all
    backendRefs: [{{name: echo, port: 80}}]
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

/// An AuthPolicy on the HTTPRoute with `rules` (YAML, indented by 2).
fn policy(rules: &str) -> String {
    format!(
        "
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
{rules}"
    )
}

fn inline_rsa_jwt_policy() -> String {
    policy(&format!(
        "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks:
        inline: '{}'
      claimsToHeaders:
      - {{claim: sub, header: x-user}}
      - {{claim: org.tier, header: x-tier}}
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    ))
}

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    get(&gw.url("HTTP_PORT", path), HOST, headers).await
}

async fn bearer(gw: &TestGateway, path: &str, token: &str) -> Answer {
    get_with(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

fn www_authenticate(a: &Answer) -> Vec<String> {
    a.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_invalid_token(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    let challenges = www_authenticate(a);
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Bearer ") && c.contains("error=\"invalid_token\"")),
        "{challenges:?}"
    );
}

// ------------------------------------------------------------------ JWT

#[tokio::test]
async fn jwt_rs256_inline_jwks_verifies_and_copies_claims_to_headers() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let signer = RsaSigner::new();

    let ok = bearer(&gw, "/orders", &signer.sign("rsa-1", &claims())).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.echoed_header("x-user").as_deref(), Some("alice"));
    assert_eq!(ok.echoed_header("x-tier").as_deref(), Some("gold"));

    // No token: 401 with a bare Bearer challenge.
    let none = get_with(&gw, "/orders", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(www_authenticate(&none), ["Bearer realm=\"portcullis\""]);

    // A client cannot set the claim headers itself.
    let spoofed = bearer(&gw, "/orders", &signer.sign("rsa-1", &claims())).await;
    assert_eq!(spoofed.echoed_header("x-user").as_deref(), Some("alice"));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    let token = signer.sign("rsa-1", &c);
    let a = get_with(
        &gw,
        "/",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-user", "admin"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.echoed_header("x-user"),
        None,
        "client's x-user must be dropped"
    );
}

#[tokio::test]
async fn jwt_es256_remote_jwks_over_https_follows_key_rotation() {
    let pki = TestPki::new();
    let old = EcSigner::generate("ec-old");
    let new = EcSigner::generate("ec-new");
    let server = JwksServer::start(&pki, jwks(&[old.jwk()])).await;
    let gw = gateway_with(&format!(
        "{}{}",
        ca_config_map_yaml("idp-ca", &pki.ca_cert.pem()),
        policy(&format!(
            "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks:
        remote:
          url: {}
          caConfigMapRef: {{name: idp-ca}}
          minRefreshIntervalSeconds: 1
",
            server.url
        ))
    ))
    .await;

    assert_eq!(
        bearer(&gw, "/", &old.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.hits(), 1);
    // Cached: no fetch per request.
    assert_eq!(
        bearer(&gw, "/", &old.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.hits(), 1);

    // The issuer rotates to a new key and retires the old one. A token
    // with the new kid triggers a refresh (once the rate limit allows).
    server.rotate(jwks(&[new.jwk()]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        bearer(&gw, "/", &new.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.hits(), 2);
    assert_invalid_token(&bearer(&gw, "/", &old.sign(&claims())).await);
}

#[tokio::test]
async fn jwt_from_cookie_and_query_parameter_and_query_token_not_forwarded() {
    let gw = gateway_with(&policy(&format!(
        "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      jwks: {{inline: '{}'}}
      from: [{{cookie: session}}, {{query: access_token}}]
      forwardToken: false
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    )))
    .await;
    let token = RsaSigner::new().sign("rsa-1", &claims());

    let by_cookie = get_with(
        &gw,
        "/c",
        &[("cookie", &format!("theme=dark; session={token}"))],
    )
    .await;
    assert_eq!(by_cookie.status, StatusCode::OK);
    assert_eq!(
        by_cookie.echoed_header("cookie").as_deref(),
        Some("theme=dark")
    );

    let by_query = get_with(&gw, &format!("/q?a=1&access_token={token}"), &[]).await;
    assert_eq!(by_query.status, StatusCode::OK);
    assert_eq!(by_query.echo()["path"], "/q?a=1");

    // The Authorization header is not a source here.
    let header = bearer(&gw, "/", &token).await;
    assert_eq!(header.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn optional_jwt_lets_anonymous_through_but_never_a_bad_token() {
    let gw = gateway_with(&policy(&format!(
        "  jwt:
    optional: true
    providers:
    - name: idp
      issuer: {ISSUER}
      jwks: {{inline: '{}'}}
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    )))
    .await;
    assert_eq!(get_with(&gw, "/", &[]).await.status, StatusCode::OK);
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

// --------------------------------------------------------- JWT attacks

#[tokio::test]
async fn attack_alg_none_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "kid": "rsa-1"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_invalid_token(&bearer(&gw, "/", &token).await);
    }
}

#[tokio::test]
async fn attack_hs256_signed_with_the_rsa_public_key_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    // Every form of the public key an attacker might use as the secret.
    let jwk = RsaSigner::jwk("rsa-1").to_string();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(RSA_N)
        .unwrap();
    for secret in [jwk.as_bytes(), RSA_N.as_bytes(), &n[..]] {
        let token = hs256(secret, "rsa-1", &claims());
        assert_invalid_token(&bearer(&gw, "/", &token).await);
    }
}

#[tokio::test]
async fn attack_expired_token_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let mut c = claims();
    // Beyond the 30 s default skew.
    c["exp"] = json!(now() - 60);
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

#[tokio::test]
async fn attack_not_yet_valid_token_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let mut c = claims();
    c["nbf"] = json!(now() + 120);
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

#[tokio::test]
async fn attack_wrong_issuer_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

#[tokio::test]
async fn attack_wrong_audience_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let mut c = claims();
    c["aud"] = json!(["other-api"]);
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

/// One JWT provider with a remote JWKS at `url` (served with a certificate
/// of `pki`), plus `settings` in its `remote` block.
async fn remote_jwks_gateway(pki: &TestPki, url: &str, settings: &str) -> TestGateway {
    gateway_with(&format!(
        "{}{}",
        ca_config_map_yaml("idp-ca", &pki.ca_cert.pem()),
        policy(&format!(
            "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      jwks:
        remote: {{url: {url}, caConfigMapRef: {{name: idp-ca}}, {settings}}}
"
        ))
    ))
    .await
}

#[tokio::test]
async fn attack_unknown_kid_flood_fetches_the_jwks_a_bounded_number_of_times() {
    let pki = TestPki::new();
    let good = EcSigner::generate("good");
    let server = JwksServer::start(&pki, jwks(&[good.jwk()])).await;
    let gw = remote_jwks_gateway(&pki, &server.url, "minRefreshIntervalSeconds: 3600").await;
    assert_eq!(
        bearer(&gw, "/", &good.sign(&claims())).await.status,
        StatusCode::OK
    );
    let client = http1_client();
    let url = gw.url("HTTP_PORT", "/");
    let mut refused = 0;
    for i in 0..60 {
        let token = EcSigner::generate(&format!("made-up-{i}")).sign(&claims());
        let req = Request::get(&url)
            .header("host", HOST)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if send(&client, req).await.status == StatusCode::UNAUTHORIZED {
            refused += 1;
        }
    }
    assert_eq!(refused, 60);
    // The first fetch, and nothing more within the refresh interval.
    assert_eq!(server.hits(), 1, "JWKS fetches must be rate limited");
    // Real tokens keep working throughout.
    assert_eq!(
        bearer(&gw, "/", &good.sign(&claims())).await.status,
        StatusCode::OK
    );
}

/// The caches of remote JWKS no policy names any more are dropped when the
/// configuration changes (the map never outgrows the configuration).
#[tokio::test]
async fn remote_jwks_caches_of_removed_policies_are_dropped() {
    let pki = TestPki::new();
    let key = EcSigner::generate("k1");
    let server = JwksServer::start(&pki, jwks(&[key.jwk()])).await;
    let gw = remote_jwks_gateway(&pki, &server.url, "minRefreshIntervalSeconds: 3600").await;
    let auth = &gw.running.dataplane.shared.auth;
    assert_eq!(
        bearer(&gw, "/", &key.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!((server.hits(), auth.jwks_caches()), (1, 1));

    let config = std::fs::read_to_string(gw.dir.path().join("config.yaml")).expect("config");
    gw.reconfigure(&config.replace(&server.url, &format!("{}?moved", server.url)))
        .await;
    assert_eq!(auth.jwks_caches(), 0, "the old URL's cache is gone");
    // Back to the first URL: a new cache, so a new fetch.
    gw.reconfigure(&config).await;
    assert_eq!(
        bearer(&gw, "/", &key.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!((server.hits(), auth.jwks_caches()), (2, 1));
}

#[tokio::test]
async fn attack_oversize_token_is_refused() {
    let gw = gateway_with(&inline_rsa_jwt_policy()).await;
    let mut c = claims();
    c["padding"] = json!("x".repeat(9000));
    // Validly signed, but over the 8 KiB default limit.
    assert_invalid_token(&bearer(&gw, "/", &RsaSigner::new().sign("rsa-1", &c)).await);
}

#[tokio::test]
async fn jwks_unreachable_fails_closed_and_cached_keys_keep_working() {
    let pki = TestPki::new();
    let key = EcSigner::generate("k");
    let server = JwksServer::start(&pki, jwks(&[key.jwk()])).await;
    // A second provider whose JWKS never answers.
    let dead = free_listener().local_addr().unwrap().port();
    let gw = gateway_with(&format!(
        "{}{}",
        ca_config_map_yaml("idp-ca", &pki.ca_cert.pem()),
        policy(&format!(
            "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      jwks:
        remote: {{url: {}, caConfigMapRef: {{name: idp-ca}}, cacheDurationSeconds: 1, minRefreshIntervalSeconds: 1}}
    - name: down
      issuer: https://down.test
      jwks:
        remote: {{url: 'https://localhost:{dead}/jwks', caConfigMapRef: {{name: idp-ca}}, timeoutSeconds: 2}}
",
            server.url
        ))
    ))
    .await;

    let mut c = claims();
    c["iss"] = json!("https://down.test");
    let down = bearer(&gw, "/", &key.sign(&c)).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "fail closed");

    assert_eq!(
        bearer(&gw, "/", &key.sign(&claims())).await.status,
        StatusCode::OK
    );
    server.stop();
    // The cache expires; the refresh fails; the cached keys still verify.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        bearer(&gw, "/", &key.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert!(server.hits() >= 1);
}

// -------------------------------------------------------------- API keys

const KEY_A: &str = "pk_live_4f9c2a7e1b3d5f60";
const KEY_B: &str = "pk_live_0aa1bb2cc3dd4ee5";

fn api_key_secrets() -> String {
    format!(
        "{}{}{}",
        secret_yaml(
            "key-a",
            "portcullis.dev/api-key: \"true\"",
            "portcullis.dev/consumer: team-a",
            &[("api_key", KEY_A)]
        ),
        secret_yaml(
            "key-b",
            "portcullis.dev/api-key: \"true\"",
            "",
            &[("api_key", KEY_B), ("consumer", "team-b")]
        ),
        // Not selected: a different label.
        secret_yaml(
            "key-c",
            "other: \"true\"",
            "",
            &[("api_key", "pk_live_not_selected_000")]
        ),
    )
}

fn api_key_policy() -> String {
    policy(
        "  apiKeys:
    selector: {matchLabels: {portcullis.dev/api-key: \"true\"}}
    header: x-api-key
    query: api_key
  authorization:
    defaultAction: Deny
    rules:
    - {action: Allow, subjects: [team-a], paths: [{value: /a}]}
    - {action: Allow, subjects: [team-b], paths: [{value: /b}]}
",
    )
}

#[tokio::test]
async fn api_keys_identify_the_consumer_and_are_stripped_before_proxying() {
    let gw = gateway_with(&format!("{}{}", api_key_secrets(), api_key_policy())).await;

    let a = get_with(&gw, "/a/x", &[("x-api-key", KEY_A)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.echoed_header("x-api-key"),
        None,
        "key must not reach the backend"
    );

    let b = get_with(&gw, &format!("/b?api_key={KEY_B}&page=2"), &[]).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.echo()["path"], "/b?page=2");

    // Authenticated, but the consumer is not allowed there.
    let forbidden = get_with(&gw, "/b", &[("x-api-key", KEY_A)]).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    // Unselected Secret, no key.
    assert_eq!(
        get_with(&gw, "/a", &[("x-api-key", "pk_live_not_selected_000")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let none = get_with(&gw, "/a", &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(www_authenticate(&none), ["ApiKey realm=\"portcullis\""]);
}

#[tokio::test]
async fn attack_equal_length_wrong_api_keys_are_refused() {
    let gw = gateway_with(&format!("{}{}", api_key_secrets(), api_key_policy())).await;
    let client = http1_client();
    let url = gw.url("HTTP_PORT", "/a");
    // Same length as a real key, differing in the first, a middle, and the
    // last byte, and in case only.
    let mut guesses = Vec::new();
    for i in [0, KEY_A.len() / 2, KEY_A.len() - 1] {
        let mut g = KEY_A.as_bytes().to_vec();
        g[i] = if g[i] == b'0' { b'1' } else { b'0' };
        guesses.push(String::from_utf8(g).unwrap());
    }
    guesses.push(KEY_A.to_uppercase());
    for guess in &guesses {
        assert_eq!(guess.len(), KEY_A.len());
        let req = Request::get(&url)
            .header("host", HOST)
            .header("x-api-key", guess)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            send(&client, req).await.status,
            StatusCode::UNAUTHORIZED,
            "{guess}"
        );
    }
    assert_eq!(
        get_with(&gw, "/a", &[("x-api-key", KEY_A)]).await.status,
        StatusCode::OK
    );
}

// ------------------------------------------------------------ basic auth

#[tokio::test]
async fn basic_auth_over_https_with_bcrypt_and_sha_entries() {
    let pki = TestPki::new();
    let (cert, key) = pki.server_cert(&[HOST]);
    let bcrypt_hash = bcrypt::hash_with_salt("correct horse", 5, [3u8; 16])
        .unwrap()
        .to_string();
    let htpasswd = format!("alice:{bcrypt_hash}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
    let echo = start_echo("echo").await;
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
{}",
        gateway(
            "  - name: https
    protocol: HTTPS
    port: ${HTTPS_PORT}
    tls: {certificateRefs: [{name: cert}]}"
        ),
        service_yaml("echo", &[echo], None),
        tls_secret_yaml("cert", &cert, &key),
        secret_yaml("users", "", "", &[("auth", &htpasswd)]),
        policy("  basic: {secretRef: {name: users}, realm: staff}\n"),
    );
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");
    let basic = |u: &str, p: &str| format!("Basic {}", STANDARD.encode(format!("{u}:{p}")));

    let ok = https_get(
        &pki,
        port,
        &[("authorization", &basic("alice", "correct horse"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.echoed_header("authorization"),
        None,
        "password not forwarded"
    );
    let sha = https_get(&pki, port, &[("authorization", &basic("bob", "password"))]).await;
    assert_eq!(sha.status, StatusCode::OK);

    for (u, p) in [
        ("alice", "correct horsE"),
        ("bob", "passwore"),
        ("mallory", "x"),
    ] {
        let refused = https_get(&pki, port, &[("authorization", &basic(u, p))]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{u}");
        assert_eq!(
            www_authenticate(&refused),
            ["Basic realm=\"staff\", charset=\"UTF-8\""]
        );
    }
}

async fn https_get(pki: &TestPki, port: u16, headers: &[(&str, &str)]) -> Answer {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]));
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from(HOST).unwrap(), tcp),
    )
    .await
    .expect("handshake timed out")
    .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

// ---------------------------------------------------------- authorization

#[tokio::test]
async fn authorization_on_claims_scopes_and_methods() {
    let gw = gateway_with(&policy(&format!(
        "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      jwks: {{inline: '{}'}}
  authorization:
    defaultAction: Deny
    rules:
    - name: writers
      action: Allow
      methods: [POST]
      scopes: [write]
    - name: gold-readers
      action: Allow
      methods: [GET]
      claims: [{{claim: org.tier, values: [gold, platinum]}}]
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    )))
    .await;
    let signer = RsaSigner::new();
    let gold = signer.sign("rsa-1", &claims());
    let mut c = claims();
    c["org"] = json!({"tier": "free"});
    c["scope"] = json!("read");
    let free = signer.sign("rsa-1", &c);

    assert_eq!(bearer(&gw, "/x", &gold).await.status, StatusCode::OK);
    assert_eq!(bearer(&gw, "/x", &free).await.status, StatusCode::FORBIDDEN);
    let post = |token: &str| {
        Request::post(gw.url("HTTP_PORT", "/x"))
            .header("host", HOST)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    assert_eq!(
        send(&http1_client(), post(&gold)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&http1_client(), post(&free)).await.status,
        StatusCode::FORBIDDEN
    );
}

/// The whole route is open except `/admin`, which needs an API key.
fn admin_protected_yaml() -> String {
    format!(
        "{}{}",
        api_key_secrets(),
        policy(
            "  apiKeys:
    selector: {matchLabels: {portcullis.dev/api-key: \"true\"}}
    optional: true
  authorization:
    defaultAction: Allow
    rules:
    - {name: admin-needs-key, action: Deny, authenticated: false, paths: [{value: /admin}]}
",
        )
    )
}

#[tokio::test]
async fn attack_path_tricks_cannot_reach_a_protected_prefix() {
    let gw = gateway_with(&admin_protected_yaml()).await;
    // Sanity: open paths are open, the prefix is protected, a key opens it.
    assert_eq!(get_with(&gw, "/public", &[]).await.status, StatusCode::OK);
    assert_eq!(
        get_with(&gw, "/admin", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_with(&gw, "/admin/users", &[("x-api-key", KEY_A)])
            .await
            .status,
        StatusCode::OK
    );

    for trick in [
        "//admin",
        "///admin/users",
        "/admin/",
        "/admin/./users",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/users",
        "/%61dmin",
        "/%41DMIN",
        "/ADMIN",
        "/Admin/users",
        "/admin//",
        "/./admin",
    ] {
        let a = get_with(&gw, trick, &[]).await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{trick} must be protected"
        );
    }
    // Encoded separators are refused outright.
    for trick in ["/admin%2Fusers", "/public%2F..%2Fadmin", "/admin%5cusers"] {
        let a = get_with(&gw, trick, &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{trick}");
    }
    // `/admin/../public` really is /public, and that is what the backend
    // is asked for.
    let a = get_with(&gw, "/admin/../public", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.echo()["path"], "/public");
    // A sibling that merely starts with the same letters is not protected.
    assert_eq!(
        get_with(&gw, "/administrator", &[]).await.status,
        StatusCode::OK
    );
}

// -------------------------------------------------------------- IP rules

#[tokio::test]
async fn ip_rules_allow_and_deny_by_connection_address() {
    let gw = gateway_with(&policy(
        "  ipRules: {allow: ['127.0.0.0/8'], deny: ['127.0.0.2/32']}\n",
    ))
    .await;
    assert_eq!(get_with(&gw, "/", &[]).await.status, StatusCode::OK);
    // From another loopback address (Linux routes all of 127/8 to lo).
    let denied = get_from("127.0.0.2", gw.port("HTTP_PORT"), &[]).await;
    assert_eq!(denied, StatusCode::FORBIDDEN);

    gw.reconfigure(&reconfigured(&policy("  ipRules: {allow: ['10.0.0.0/8']}\n")).await)
        .await;
    assert_eq!(get_with(&gw, "/", &[]).await.status, StatusCode::FORBIDDEN);
}

async fn reconfigured(extra: &str) -> String {
    let echo = start_echo("echo").await;
    format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{name: all, backendRefs: [{{name: echo, port: 80}}]}}]
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
    )
}

/// GET / from a chosen local address; returns the status.
async fn get_from(local: &str, port: u16, headers: &[(&str, &str)]) -> StatusCode {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{local}:0").parse().unwrap())
        .expect("bind local address");
    let tcp = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request")
    .status()
}

#[tokio::test]
async fn attack_spoofed_x_forwarded_for_from_an_untrusted_hop_is_ignored() {
    // Only 10/8 proxies are trusted; this client connects directly.
    let gw = gateway_with(&policy(
        "  ipRules:
    allow: ['203.0.113.0/24']
    clientAddress: {trustedProxies: ['10.0.0.0/8'], trustedHops: 3}
",
    ))
    .await;
    for xff in [
        "203.0.113.5",
        "198.51.100.1, 203.0.113.5",
        "10.0.0.1, 203.0.113.5",
    ] {
        let a = get_with(&gw, "/", &[("x-forwarded-for", xff)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{xff}");
    }
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_gives_the_client_address() {
    // The loopback client plays the trusted proxy.
    let gw = gateway_with(&policy(
        "  ipRules:
    allow: ['203.0.113.0/24']
    clientAddress: {trustedProxies: ['127.0.0.0/8'], trustedHops: 1}
",
    ))
    .await;
    let ok = get_with(
        &gw,
        "/",
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.5")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    // One hop only: what the client wrote further left is not believed.
    let a = get_with(
        &gw,
        "/",
        &[("x-forwarded-for", "203.0.113.5, 198.51.100.1")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(get_with(&gw, "/", &[]).await.status, StatusCode::FORBIDDEN);
}

// --------------------------------------------------- responses and status

#[tokio::test]
async fn custom_deny_responses_on_a_rule_attached_policy() {
    let extra = format!(
        "{}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: rule-auth, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: all}}]
  apiKeys: {{selector: {{matchLabels: {{portcullis.dev/api-key: \"true\"}}}}}}
  ipRules: {{deny: ['127.0.0.2/32']}}
  responses:
    unauthenticated:
      status: 401
      headers: {{content-type: application/json, x-login: https://login.example.com}}
      body: '{{\"error\":\"login required\"}}'
    unauthorized: {{status: 404, body: 'not here'}}
",
        api_key_secrets()
    );
    let gw = gateway_with(&extra).await;
    let a = get_with(&gw, "/", &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&a.body[..], br#"{"error":"login required"}"#);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["x-login"], "https://login.example.com");
    assert_eq!(www_authenticate(&a), ["ApiKey realm=\"portcullis\""]);
    assert_eq!(
        get_from("127.0.0.2", gw.port("HTTP_PORT"), &[("x-api-key", KEY_A)]).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_with(&gw, "/", &[("x-api-key", KEY_A)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn policy_with_a_missing_secret_is_reported_and_its_route_fails_closed() {
    let gw = gateway_with(&policy("  basic: {secretRef: {name: no-such-users}}\n")).await;
    // Not served unprotected.
    let a = get_with(&gw, "/", &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&status.body).to_string();
    assert!(text.contains("AuthPolicy"), "{text}");
    assert!(
        text.contains("Secret default/no-such-users not found"),
        "{text}"
    );
}

// --------------------------------------------------------------- example

/// `examples/auth` compiles without problems and answers as its comments
/// say (listener and backend ports moved to free ones).
#[tokio::test]
async fn the_auth_example_behaves_as_documented() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/auth");
    let (snapshot, problems) = portcullis_controller::file::load_dir(&dir);
    assert!(problems.is_empty(), "{problems:?}");
    let compiled = portcullis_controller::compile(
        &snapshot,
        &portcullis_controller::CompileOptions::default(),
    );
    for s in &compiled.statuses {
        assert!(
            s.problems.is_empty(),
            "{}: {:?}",
            s.display_name(),
            s.problems
        );
    }

    let echo = start_echo("echo").await;
    let mut yaml = String::new();
    for file in [
        "gateway.yaml",
        "routes.yaml",
        "secrets.yaml",
        "policies.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("example file");
        yaml.push_str("\n---\n");
        yaml.push_str(
            &text
                .replace("port: 8080", "port: ${HTTP_PORT}")
                .replace("port: 3000", &format!("port: {}", echo.port())),
        );
    }
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = |path: &str| gw.url("HTTP_PORT", path);
    let status = |a: Answer| a.status;
    let basic = |u: &str| format!("Basic {}", STANDARD.encode(format!("{u}:change-me")));

    assert_eq!(status(get(&url("/"), "shop", &[]).await), StatusCode::OK);
    let orders = get(&url("/orders"), "shop", &[]).await;
    assert_eq!(orders.status, StatusCode::UNAUTHORIZED);
    let challenges = www_authenticate(&orders);
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("ApiKey")),
        "{challenges:?}"
    );
    let mobile = [("x-api-key", "demo-key-mobile-0123456789")];
    assert_eq!(
        status(get(&url("/orders"), "shop", &mobile).await),
        StatusCode::OK
    );
    let partner_post = Request::post(url("/orders"))
        .header("host", "shop")
        .header("x-api-key", "demo-key-partner-987654321")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = send(&http1_client(), partner_post).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(&refused.body[..], br#"{"error":"forbidden"}"#);

    let admin = get(&url("/admin"), "shop", &[]).await;
    assert_eq!(admin.status, StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(&admin)
        .iter()
        .any(|c| c.starts_with("Basic realm=\"shop admin\"")));
    let ops = basic("ops");
    assert_eq!(
        status(get(&url("/admin"), "shop", &[("authorization", &ops)]).await),
        StatusCode::OK
    );
    let auditor = basic("auditor");
    assert_eq!(
        status(get(&url("/admin"), "shop", &[("authorization", &auditor)]).await),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(get(&url("/admin"), "shop", &mobile).await),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn cors_preflight_is_answered_without_credentials_but_the_request_needs_them() {
    let echo = start_echo("echo").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: CORS
      cors: {{allowOrigins: [\"https://app.example.com\"], allowMethods: [GET], allowHeaders: [x-api-key]}}
    backendRefs: [{{name: echo, port: 80}}]
{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
        api_key_secrets(),
        policy("  apiKeys: {selector: {matchLabels: {portcullis.dev/api-key: \"true\"}}}\n"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let preflight = Request::options(gw.url("HTTP_PORT", "/x"))
        .header("host", HOST)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-api-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1_client(), preflight).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    // An OPTIONS that is not a preflight is not let through.
    let options = Request::options(gw.url("HTTP_PORT", "/x"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&http1_client(), options).await.status,
        StatusCode::UNAUTHORIZED
    );
    let get_without_key = get_with(&gw, "/x", &[("origin", "https://app.example.com")]).await;
    assert_eq!(get_without_key.status, StatusCode::UNAUTHORIZED);
}

/// CORS as a policy field: preflights answered before authentication, and
/// the policy's own 401 readable by the allowed origin.
#[tokio::test]
async fn policy_cors_answers_preflights_and_makes_refusals_readable() {
    let gw = gateway_with(&format!(
        "{}{}",
        api_key_secrets(),
        policy(
            "  apiKeys: {selector: {matchLabels: {portcullis.dev/api-key: \"true\"}}}
  cors:
    allowOrigins: [\"https://app.example.com\"]
    allowMethods: [GET, POST]
    allowHeaders: [x-api-key]
    exposeHeaders: [x-request-id]
    allowCredentials: true
    maxAgeSeconds: 600
"
        )
    ))
    .await;
    let preflight = Request::options(gw.url("HTTP_PORT", "/orders"))
        .header("host", HOST)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1_client(), preflight).await;
    assert_eq!(answer.status, StatusCode::OK, "no credentials needed");
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(answer.headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(answer.headers["access-control-allow-headers"], "x-api-key");
    assert_eq!(answer.headers["access-control-max-age"], "600");
    assert_eq!(answer.headers["access-control-allow-credentials"], "true");

    let refused = get_with(&gw, "/orders", &[("origin", "https://app.example.com")]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        refused.headers["access-control-expose-headers"],
        "x-request-id"
    );

    let served = get_with(
        &gw,
        "/orders",
        &[("origin", "https://app.example.com"), ("x-api-key", KEY_A)],
    )
    .await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        served.headers["access-control-allow-origin"],
        "https://app.example.com"
    );

    let other = get_with(&gw, "/orders", &[("origin", "https://evil.example")]).await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);
    assert!(!other.headers.contains_key("access-control-allow-origin"));
}

/// `OPTIONS` with `Access-Control-Request-Method` but no `Origin` is not a
/// preflight: it must be authenticated like any request, never let through.
#[tokio::test]
async fn an_options_without_origin_is_not_a_preflight_and_needs_credentials() {
    let gw = gateway_with(&format!(
        "{}{}",
        api_key_secrets(),
        policy(
            "  apiKeys: {selector: {matchLabels: {portcullis.dev/api-key: \"true\"}}}
  cors: {allowOrigins: [\"*\"], allowMethods: [\"*\"]}
"
        )
    ))
    .await;
    let sneaky = Request::options(gw.url("HTTP_PORT", "/admin"))
        .header("host", HOST)
        .header("access-control-request-method", "DELETE")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&http1_client(), sneaky).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A rule's own CORS filter wins over the policy's; an invalid policy CORS
/// is refused with a status message.
#[tokio::test]
async fn route_cors_filter_wins_over_policy_cors_and_bad_origins_are_refused() {
    let gw = gateway_with(&policy(
        "  cors: {allowOrigins: [\"https://policy.example\"]}
",
    ))
    .await;
    let from_policy = get_with(&gw, "/", &[("origin", "https://policy.example")]).await;
    assert_eq!(
        from_policy.headers["access-control-allow-origin"],
        "https://policy.example"
    );

    let echo = start_echo("echo2").await;
    gw.reconfigure(&format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - name: all
    filters:
    - type: CORS
      cors: {{allowOrigins: [\"https://route.example\"]}}
    backendRefs: [{{name: echo, port: 80}}]
{}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: bad-cors, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: other}}]
  cors: {{allowOrigins: [\"app.example.com/path\"]}}
",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
        policy("  cors: {allowOrigins: [\"https://policy.example\"]}\n"),
    ))
    .await;
    let answer = get_with(&gw, "/", &[("origin", "https://policy.example")]).await;
    assert!(
        !answer.headers.contains_key("access-control-allow-origin"),
        "the route's CORS wins"
    );
    let answer = get_with(&gw, "/", &[("origin", "https://route.example")]).await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://route.example"
    );

    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&status.body);
    assert!(
        text.contains("cors.allowOrigins: \\\"app.example.com/path\\\" is not"),
        "{text}"
    );
}

#[tokio::test]
async fn jwt_hs256_with_a_shared_secret_from_a_secret() {
    let secret = b"0123456789abcdef0123456789abcdef-hs256";
    let jwks_doc =
        jwks(&[json!({"kty": "oct", "kid": "shared", "alg": "HS256", "k": b64(secret)})]);
    let gw = gateway_with(&format!(
        "{}{}",
        secret_yaml("idp-keys", "", "", &[("jwks.json", &jwks_doc)]),
        policy(&format!(
            "  jwt:
    providers:
    - name: internal
      issuer: {ISSUER}
      jwks: {{secretRef: {{name: idp-keys}}}}
"
        ))
    ))
    .await;
    assert_eq!(
        bearer(&gw, "/", &hs256(secret, "shared", &claims()))
            .await
            .status,
        StatusCode::OK
    );
    assert_invalid_token(
        &bearer(
            &gw,
            "/",
            &hs256(
                b"another secret of the same length!!!!!",
                "shared",
                &claims(),
            ),
        )
        .await,
    );
    // The secret never shows in the config dump.
    let dump = get(&gw.admin_url("/config_dump"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&dump.body);
    assert!(text.contains("redacted"), "{text}");
    assert!(
        !text.contains(&b64(secret)),
        "HMAC key leaked into /config_dump"
    );
}

#[tokio::test]
async fn a_token_remembered_as_verified_still_expires() {
    let gw = gateway_with(&policy(&format!(
        "  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      clockSkewSeconds: 0
      jwks: {{inline: '{}'}}
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    )))
    .await;
    let mut c = claims();
    c["exp"] = json!(now() + 2);
    let token = RsaSigner::new().sign("rsa-1", &c);
    assert_eq!(bearer(&gw, "/", &token).await.status, StatusCode::OK);
    // Verified once, so the signature is not checked again; the expiry is.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_invalid_token(&bearer(&gw, "/", &token).await);
}

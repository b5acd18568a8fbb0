//! RouteFilter `masking` end to end (crates/dataplane/src/route_filter/
//! masking.rs): JSON fields by pointer (arrays included) and values by
//! pattern leave the gateway redacted; compressed responses are decoded,
//! masked and encoded again; what cannot be masked (unknown encoding, over
//! the limit, not the JSON it claims to be) is refused with 502 — the
//! original value never reaches the client.

use std::io::{Read, Write};

use bytes::Bytes;
use portcullis_tests::*;
use serde_json::json;

mod route_filter_support;
use route_filter_support::*;

const HOST: &str = "api.example.com";

/// `spec.masking` YAML one level deeper.
fn indent(spec: &str) -> String {
    spec.lines().map(|l| format!("  {l}\n")).collect()
}

/// Gateway with RouteFilter `default/mask` (`spec.masking`: `spec`, indented by 2) on the
/// catch-all rule of HTTPRoute `default/api` to Service `backend`.
async fn gateway(spec: &str, addr: std::net::SocketAddr) -> TestGateway {
    let spec = indent(spec);
    let yaml = format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: mask, namespace: default}}
spec:
  masking:
{spec}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: mask}}
    backendRefs: [{{name: backend, port: 80}}]
",
        portcullis_tests::gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], None),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

const SPEC: &str = "  fields:
  - {pointer: /user/ssn, action: Remove}
  - {pointer: /accounts/*/iban, action: Replace, replacement: '<iban>'}
  - {pointer: /accounts/*/owner/email, action: Mask, keepLast: 4, maskCharacter: '#'}
  - {pointer: /secrets, action: Mask}
  patterns:
  - {builtin: PaymentCard, action: Mask, keepLast: 4}
  - {builtin: UsSsn, action: Replace, replacement: '***-**-****'}
  - {builtin: Iban, action: Replace}
  - {builtin: Email, action: Mask, keepLast: 11}
  - {regex: 'tok_[a-z0-9]{8}', action: Remove}
";

fn document() -> serde_json::Value {
    json!({
        "user": {"name": "Ann", "ssn": "123-45-6789"},
        "accounts": [
            {"iban": "DE89370400440532013000", "owner": {"email": "ann@example.com"}},
            {"iban": "GB82WEST12345698765432", "owner": {"email": "bob@example.org"}}
        ],
        "secrets": {"pin": 1234, "codes": ["ab", null]},
        "payment": {
            "card": "4111 1111 1111 1111",
            "number": 4012888888881881u64,
            "not_a_card": "4111 1111 1111 1112",
            "order": 1234567890123u64
        },
        "note": "call 078-05-1120 (or 666-12-3456), ref tok_abcd1234 from ceo@corp.example.com, IBAN DE89 3704 0044 0532 0130 00"
    })
}

fn expected() -> serde_json::Value {
    json!({
        "user": {"name": "Ann"},
        "accounts": [
            {"iban": "<iban>", "owner": {"email": "###########.com"}},
            {"iban": "<iban>", "owner": {"email": "###########.org"}}
        ],
        "secrets": {"pin": "****", "codes": ["**", null]},
        "payment": {
            "card": "***************1111",
            "number": "************1881",
            "not_a_card": "4111 1111 1111 1112",
            "order": 1234567890123u64
        },
        "note": "call ***-**-**** (or 666-12-3456), ref  from *********example.com, IBAN [REDACTED]"
    })
}

#[tokio::test]
async fn json_fields_and_patterns_are_masked() {
    let body = document().to_string();
    let (backend, addr) =
        Backend::fixed(&[("content-type", "application/json")], body.clone()).await;
    let gw = gateway(SPEC, addr).await;
    let answer = get(
        &gw.url("HTTP_PORT", "/"),
        HOST,
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let got: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(got, expected());
    assert_eq!(
        answer
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(answer.body.len().to_string().as_str())
    );
    for secret in [
        "123-45-6789",
        "4111 1111 1111 1111",
        "DE89370400440532013000",
        "ann@",
        "tok_abcd1234",
        "\"pin\":1234",
    ] {
        assert!(
            !String::from_utf8_lossy(&answer.body).contains(secret),
            "{secret} leaked"
        );
    }
    assert_eq!(
        backend
            .last()
            .headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("gzip".to_string()),
        "the backend is asked only for encodings the gateway can decode"
    );

    // A document with nothing to mask is relayed as the backend sent it.
    let (_b, addr) =
        Backend::fixed(&[("content-type", "application/json")], "{ \"ok\" : true }").await;
    let gw = gateway(SPEC, addr).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(&answer.body[..], b"{ \"ok\" : true }");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

#[tokio::test]
async fn gzip_responses_are_decompressed_masked_and_recompressed() {
    let body = document().to_string();
    let (_backend, addr) = Backend::fixed(
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(body.as_bytes()),
    )
    .await;
    let gw = gateway(SPEC, addr).await;
    let answer = get(
        &gw.url("HTTP_PORT", "/"),
        HOST,
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert_eq!(
        answer
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(answer.body.len().to_string().as_str())
    );
    let plain = gunzip(&answer.body);
    let text = String::from_utf8_lossy(&plain);
    for secret in [
        "123-45-6789",
        "4111 1111 1111 1111",
        "DE89370400440532013000",
        "tok_abcd1234",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked in the decompressed body"
        );
    }
    let got: serde_json::Value = serde_json::from_slice(&plain).expect("JSON");
    assert_eq!(got, expected());
}

#[tokio::test]
async fn what_cannot_be_masked_is_refused_never_leaked() {
    let body = document().to_string();
    // An encoding the gateway cannot decode.
    for encoding in ["br", "zstd", "gzip, br"] {
        let (_b, addr) = Backend::fixed(
            &[
                ("content-type", "application/json"),
                ("content-encoding", encoding),
            ],
            body.clone(),
        )
        .await;
        let gw = gateway(SPEC, addr).await;
        let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
        assert_eq!(answer.status, 502, "{encoding}");
        assert!(!String::from_utf8_lossy(&answer.body).contains("4111"));
    }
    // Claims JSON but is not.
    let (_b, addr) = Backend::fixed(
        &[("content-type", "application/json")],
        "card 4111 1111 1111 1111",
    )
    .await;
    let gw = gateway(SPEC, addr).await;
    assert_eq!(get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await.status, 502);
    // Corrupt gzip.
    let (_b, addr) = Backend::fixed(
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        body.clone(),
    )
    .await;
    let gw = gateway(SPEC, addr).await;
    assert_eq!(get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await.status, 502);
}

#[tokio::test]
async fn bodies_over_the_limit_fail_closed_unless_told_to_pass_through() {
    let big = json!({"card": "4111111111111111", "pad": "x".repeat(5000)}).to_string();
    let (_b, addr) = Backend::fixed(&[("content-type", "application/json")], big.clone()).await;
    let gw = gateway(&format!("{SPEC}  maxBodyBytes: 1000\n"), addr).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(answer.status, 502);
    assert!(!String::from_utf8_lossy(&answer.body).contains("4111111111111111"));

    // A small gzip body that inflates past the limit is over it too.
    let (_b, addr) = Backend::fixed(
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(big.as_bytes()),
    )
    .await;
    let gw = gateway(&format!("{SPEC}  maxBodyBytes: 1000\n"), addr).await;
    assert_eq!(get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await.status, 502);

    let gw = gateway(
        &format!("{SPEC}  maxBodyBytes: 1000\n  overLimit: PassThrough\n"),
        addr,
    )
    .await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        gunzip(&answer.body),
        big.as_bytes(),
        "explicitly allowed: relayed as it was"
    );
}

#[tokio::test]
async fn text_bodies_are_masked_by_pattern_only_when_asked() {
    let text = "Card: 5500 0000 0000 0004, mail ann@example.com";
    let (_b, addr) = Backend::fixed(&[("content-type", "text/plain; charset=utf-8")], text).await;
    let gw = gateway(SPEC, addr).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(
        &answer.body[..],
        text.as_bytes(),
        "text bodies pass unless textBodies"
    );

    let gw = gateway(&format!("{SPEC}  textBodies: true\n"), addr).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(
        answer.body,
        Bytes::from("Card: ***************0004, mail ****example.com")
    );
}

#[tokio::test]
async fn invalid_masking_config_makes_the_rule_answer_500() {
    let (backend, addr) = Backend::fixed(&[("content-type", "application/json")], "{}").await;
    for spec in [
        "  fields: [{pointer: 'a/b', action: Remove}]\n",
        "  patterns: [{regex: '(', action: Remove}]\n",
        "  patterns: [{regex: 'a*', action: Remove}]\n",
        "  patterns: [{builtin: Email, regex: 'x', action: Remove}]\n",
        "  fields: [{pointer: /a, action: Mask, maskCharacter: '**'}]\n",
        "  {}\n",
    ] {
        let gw = gateway(spec, addr).await;
        assert_eq!(
            get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await.status,
            500,
            "{spec}"
        );
    }
    assert_eq!(backend.count(), 0);
}

/// `examples/transform-masking` compiles without problems and answers as
/// its comments say (listener and backend ports moved to free ones).
#[tokio::test]
async fn the_transform_and_masking_example_behaves_as_documented() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/transform-masking");
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
    for file in ["gateway.yaml", "filters.yaml", "routes.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("example file");
        yaml.push_str("\n---\n");
        yaml.push_str(
            &text
                .replace("port: 8080", "port: ${HTTP_PORT}")
                .replace("port: 3000", &format!("port: {}", echo.port())),
        );
    }
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;

    let answer = get(
        &gw.url("HTTP_PORT", "/api/orders?customer=c42"),
        "shop",
        &[
            ("x-card", "4111 1111 1111 1111"),
            ("x-api-key", "s3cr3t"),
            ("x-contact", "ann@example.com"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.echoed_header("x-card").as_deref(),
        Some("***************1111")
    );
    assert_eq!(
        answer.echoed_header("x-contact").as_deref(),
        Some("[email]")
    );
    assert_eq!(
        answer.echoed_header("x-api-key").as_deref(),
        Some("[key]"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.echoed_header("x-customer").as_deref(), Some("c42"));
    assert_eq!(
        answer.echoed_header("x-client").as_deref(),
        Some("127.0.0.1 GET /api/orders")
    );
    assert_eq!(answer.echoed_header("x-forwarded-for"), None);
    assert_eq!(
        answer.echo()["gateway"],
        json!({"name": "portcullis", "route": "api"})
    );
    assert!(answer.headers.contains_key("x-request-id"));

    let xml = get(&gw.url("HTTP_PORT", "/xml/anything"), "shop", &[]).await;
    assert_eq!(xml.status, 200);
    let text = String::from_utf8_lossy(&xml.body);
    assert!(
        text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><echo>"),
        "{text}"
    );
    assert!(text.contains("<path>/xml/anything</path>"), "{text}");

    let head =
        "POST /demo.Echo/Say HTTP/1.1\r\nhost: shop\r\ncontent-type: application/grpc-web+proto";
    let resp = raw_http1(gw.port("HTTP_PORT"), head, &grpc_frame(b"hi")).await;
    assert_eq!(resp.status, 200);
    let frames = grpc_frames(&resp.body);
    assert_eq!(frames[0], (0x00, Bytes::from_static(b"hi")));
    assert_eq!(frames[1].0, 0x80);
    assert!(frames[1].1.starts_with(b"grpc-status: 0\r\n"), "{frames:?}");
}

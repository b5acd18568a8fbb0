//! RouteFilter `transform` end to end (crates/dataplane/src/route_filter/
//! transform.rs): templated headers from the request, JWT claims and the
//! route; JSON body edits; size limits; XML <-> JSON; gRPC-Web -> gRPC to a
//! real h2c gRPC backend. Bodies and headers are compared byte for byte as
//! the backend saw them and as the client got them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis_tests::*;
use serde_json::json;

mod auth_support;
use auth_support::*;
mod route_filter_support;
use route_filter_support::*;

const HOST: &str = "api.example.com";

/// Gateway with RouteFilter `default/xf` (`spec`: YAML of `spec.transform`,
/// indented by 2) on HTTPRoute `default/api` rule `main` (catch-all) to Service
/// `backend` at `addr`, plus `extra` YAML.
async fn gateway(
    spec: &str,
    addr: std::net::SocketAddr,
    app_protocol: Option<&str>,
    extra: &str,
) -> TestGateway {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let yaml = format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: xf, namespace: default}}
spec:
  transform:
{spec}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - name: main
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: xf}}
    backendRefs: [{{name: backend, port: 80}}]
{extra}",
        portcullis_tests::gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], app_protocol),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

fn jwt_policy() -> String {
    format!(
        "
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  jwt:
    providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks:
        inline: '{}'
",
        jwks(&[RsaSigner::jwk("rsa-1")])
    )
}

async fn post(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut builder = Request::post(gw.url("HTTP_PORT", path)).header("host", HOST);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(
        &http1_client(),
        builder.body(Full::new(body.into())).expect("request"),
    )
    .await
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("text header"))
}

// --------------------------------------------------------------- headers

#[tokio::test]
async fn request_and_response_headers_are_rendered_from_the_request_claims_and_route() {
    let (backend, addr) = Backend::fixed(&[("x-internal", "secret")], "ok").await;
    let spec = "  request:
    headers:
      remove: [x-drop-me]
      set:
      - {name: x-tenant, value: '${claim.org_id}/${identity.subject}'}
      - {name: x-origin, value: '${request.method} ${request.host}${request.path}?q=${request.query.q}'}
      - {name: x-client, value: '${request.clientIp}'}
      - {name: x-rid, value: '${request.id}'}
      - {name: x-route, value: '${route.namespace}/${route.name}/${route.rule} via ${identity.mechanism}'}
      - {name: x-missing, value: 'm=${claim.nope}'}
      - {name: x-price, value: '$$5 ${request.header.x-currency}'}
      add:
      - {name: x-via, value: portcullis}
  response:
    headers:
      remove: [x-internal]
      set:
      - {name: x-served-for, value: '${identity.subject}'}
";
    let gw = gateway(spec, addr, None, &jwt_policy()).await;
    let mut claims = claims();
    claims["org_id"] = json!(42);
    let token = RsaSigner::new().sign("rsa-1", &claims);
    let answer = get(
        &gw.url("HTTP_PORT", "/orders/7?q=J%C3%B6rg+M&x=1"),
        HOST,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-drop-me", "please"),
            ("x-via", "client-proxy"),
            ("x-currency", "EUR"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = backend.last();
    let h = |n| header(&seen.headers, n);
    assert_eq!(h("x-tenant"), Some("42/alice"));
    assert_eq!(
        seen.headers.get("x-origin").map(|v| v.as_bytes()),
        Some("GET api.example.com/orders/7?q=Jörg M".as_bytes())
    );
    assert_eq!(h("x-client"), Some("127.0.0.1"));
    let rid = h("x-rid").expect("request id rendered");
    assert!(!rid.is_empty());
    assert_eq!(h("x-request-id"), Some(rid), "the gateway's request id");
    assert_eq!(h("x-route"), Some("default/api/main via jwt"));
    assert_eq!(
        h("x-missing"),
        Some("m="),
        "missing variables render empty by default"
    );
    assert_eq!(h("x-price"), Some("$5 EUR"));
    assert_eq!(h("x-drop-me"), None);
    let via: Vec<_> = seen
        .headers
        .get_all("x-via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(via, ["client-proxy", "portcullis"]);
    // Response side: backend header removed, templated one set.
    assert_eq!(header(&answer.headers, "x-internal"), None);
    assert_eq!(header(&answer.headers, "x-served-for"), Some("alice"));
    assert_eq!(&answer.body[..], b"ok");
}

#[tokio::test]
async fn missing_variables_can_skip_the_header_and_invalid_dynamic_values_are_skipped() {
    let (backend, addr) = Backend::fixed(&[], "ok").await;
    let spec = "  missingVariable: SkipHeader
  request:
    headers:
      set:
      - {name: x-tenant, value: 'tenant-${claim.tenant}'}
      - {name: x-user, value: 'user-${claim.sub}'}
      - {name: x-raw, value: '${claim.note}'}
      - {name: x-client-header, value: 'forced'}
";
    let gw = gateway(spec, addr, None, &jwt_policy()).await;
    let mut claims = claims();
    // A claim that would make an invalid header value (control character).
    claims["note"] = json!("line1\nline2");
    let token = RsaSigner::new().sign("rsa-1", &claims);
    let answer = get(
        &gw.url("HTTP_PORT", "/"),
        HOST,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-tenant", "spoofed"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let seen = backend.last();
    assert_eq!(header(&seen.headers, "x-user"), Some("user-alice"));
    assert_eq!(
        header(&seen.headers, "x-tenant"),
        None,
        "a set header whose variable is missing is left out, also the client's value"
    );
    assert_eq!(
        header(&seen.headers, "x-raw"),
        None,
        "an invalid rendered value is skipped"
    );
    assert_eq!(header(&seen.headers, "x-client-header"), Some("forced"));
}

#[tokio::test]
async fn invalid_templates_make_the_rule_answer_500_without_reaching_the_backend() {
    let (backend, addr) = Backend::fixed(&[], "ok").await;
    for spec in [
        "  request:\n    headers:\n      set: [{name: x-a, value: '${request.nope}'}]\n",
        "  request:\n    headers:\n      set: [{name: 'bad name', value: v}]\n",
        "  request:\n    json: [{op: add, path: 'no-slash', value: 1}]\n",
        "  request:\n    convert: {from: Json, to: Xml, rootElement: '1bad'}\n",
        "  maxBodyBytes: 0\n",
    ] {
        let gw = gateway(spec, addr, None, "").await;
        let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
        assert_eq!(answer.status, 500, "{spec}");
    }
    assert_eq!(backend.count(), 0);
}

// ------------------------------------------------------------ JSON bodies

const JSON_EDITS: &str = "    json:
    - {op: remove, path: /password}
    - {op: move, from: /user/login, path: /username}
    - {op: add, path: /meta/source, template: '${request.header.x-app}'}
    - {op: add, path: /meta/version, value: 2}
    - {op: add, path: /tags/-, value: {gw: true}}
    - {op: add, path: /a~1b, value: null}
";

#[tokio::test]
async fn json_request_edits_reach_the_backend_byte_exact_with_a_correct_length() {
    let (backend, addr) = Backend::fixed(&[], "ok").await;
    let gw = gateway(&format!("  request:\n{JSON_EDITS}"), addr, None, "").await;
    let body = r#"{"user": {"login": "bob", "id": 7}, "password": "hunter2", "tags": ["x"]}"#;
    let answer = post(
        &gw,
        "/",
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("x-app", "web"),
        ],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = backend.last();
    let expected = r#"{"a/b":null,"meta":{"source":"web","version":2},"tags":["x",{"gw":true}],"user":{"id":7},"username":"bob"}"#;
    assert_eq!(String::from_utf8_lossy(&seen.body), expected);
    assert_eq!(
        header(&seen.headers, "content-length"),
        Some(expected.len().to_string().as_str())
    );

    // Not JSON: untouched.
    let text = "password=hunter2";
    post(&gw, "/", &[("content-type", "text/plain")], text).await;
    assert_eq!(&backend.last().body[..], text.as_bytes());

    // Invalid JSON is the client's error.
    let bad = post(&gw, "/", &[("content-type", "application/json")], "{nope").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn json_response_edits_reach_the_client_byte_exact() {
    let (_backend, addr) = Backend::fixed(
        &[
            ("content-type", "application/problem+json"),
            ("etag", "\"v1\""),
        ],
        r#"{"user":{"login":"bob"},"password":"x","tags":[]}"#,
    )
    .await;
    let gw = gateway(&format!("  response:\n{JSON_EDITS}"), addr, None, "").await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[("x-app", "ios")]).await;
    assert_eq!(answer.status, 200);
    let expected = r#"{"a/b":null,"meta":{"source":"ios","version":2},"tags":[{"gw":true}],"user":{},"username":"bob"}"#;
    assert_eq!(String::from_utf8_lossy(&answer.body), expected);
    assert_eq!(
        header(&answer.headers, "content-length"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(
        header(&answer.headers, "etag"),
        Some("W/\"v1\""),
        "the bytes changed: weak validator"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_or_pass_through_or_502() {
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(2000));
    let (backend, addr) =
        Backend::fixed(&[("content-type", "application/json")], big.clone()).await;
    let spec = format!("  maxBodyBytes: 1000\n  request:\n{JSON_EDITS}  response:\n{JSON_EDITS}");
    let gw = gateway(&spec, addr, None, "").await;
    let answer = post(
        &gw,
        "/",
        &[("content-type", "application/json")],
        big.clone(),
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        backend.count(),
        0,
        "a rejected request never reaches the backend"
    );

    // The response is over the limit too: relayed unmodified by default.
    let small = r#"{"password":"x"}"#;
    let answer = post(&gw, "/", &[("content-type", "application/json")], small).await;
    assert_eq!(answer.status, 200);
    assert_eq!(String::from_utf8_lossy(&answer.body), big);

    let spec =
        format!("  maxBodyBytes: 1000\n  responseOverLimit: Reject\n  response:\n{JSON_EDITS}");
    let gw = gateway(&spec, addr, None, "").await;
    let answer = get(&gw.url("HTTP_PORT", "/"), HOST, &[]).await;
    assert_eq!(answer.status, 502);
}

// --------------------------------------------------------------- XML

#[tokio::test]
async fn json_to_xml_to_the_backend_and_xml_to_json_back_round_trips() {
    let (backend, addr) = Backend::echo_body().await;
    let spec = "  request:
    json:
    - {op: add, path: /order/@channel, value: web}
    convert: {from: Json, to: Xml}
  response:
    convert: {from: Xml, to: Json}
";
    let gw = gateway(spec, addr, None, "").await;
    let sent = json!({"order": {
        "@id": "7",
        "customer": "Ann & \"Bob\" <co>",
        "item": [{"@sku": "a1", "#text": "Tea"}, {"@sku": "b2", "#text": "Cake"}],
        "note": ""
    }});
    let answer = post(
        &gw,
        "/orders",
        &[("content-type", "application/json")],
        sent.to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let xml = String::from_utf8_lossy(&backend.last().body).to_string();
    assert_eq!(
        xml,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><order channel=\"web\" id=\"7\">\
         <customer>Ann &amp; &quot;Bob&quot; &lt;co&gt;</customer>\
         <item sku=\"a1\">Tea</item><item sku=\"b2\">Cake</item><note></note></order>"
    );
    assert_eq!(
        header(&backend.last().headers, "content-type"),
        Some("application/xml; charset=utf-8")
    );

    let mut expected = sent.clone();
    expected["order"]["@channel"] = json!("web");
    assert_eq!(
        header(&answer.headers, "content-type"),
        Some("application/json")
    );
    let got: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON answer");
    assert_eq!(got, expected);
    assert_eq!(
        header(&answer.headers, "content-length"),
        Some(answer.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn xml_requests_become_json_and_bad_xml_is_refused() {
    let (backend, addr) = Backend::fixed(
        &[("content-type", "application/json")],
        r#"{"r":{"ok":true,"n":[1,2]}}"#,
    )
    .await;
    let spec = "  request:
    convert: {from: Xml, to: Json}
  response:
    convert: {from: Json, to: Xml}
";
    let gw = gateway(spec, addr, None, "").await;
    let xml = r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="urn:s"><soap:Body><q lang="en">a &lt; b</q><q>c</q></soap:Body></soap:Envelope>"#;
    let answer = post(&gw, "/", &[("content-type", "text/xml")], xml).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&backend.last().body),
        r##"{"soap:Envelope":{"@xmlns:soap":"urn:s","soap:Body":{"q":[{"#text":"a < b","@lang":"en"},"c"]}}}"##
    );
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r><n>1</n><n>2</n><ok>true</ok></r>"
    );
    for bad in [
        "<a><b></a>",
        "<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
        "<a/><b/>",
    ] {
        let answer = post(&gw, "/", &[("content-type", "application/xml")], bad).await;
        assert_eq!(answer.status, 400, "{bad}");
    }
    let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
    let answer = post(&gw, "/", &[("content-type", "application/xml")], deep).await;
    assert_eq!(answer.status, 400, "deeper than maxDepth (64)");
}

// -------------------------------------------------------------- gRPC-Web

#[tokio::test]
async fn grpc_web_unary_calls_from_a_raw_http1_client_reach_an_h2c_grpc_backend() {
    let (calls, addr) = start_grpc().await;
    // The Service does not say h2c: the gRPC-Web filter makes it so.
    let gw = gateway("  grpcWeb: {}\n", addr, None, "").await;
    let port = gw.port("HTTP_PORT");

    // Binary gRPC-Web.
    let request = grpc_frame(b"ann");
    let head = format!(
        "POST /test.Greeter/Hello HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1"
    );
    let resp = raw_http1(port, &head, &request).await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web+proto")
    );
    let frames = grpc_frames(&resp.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0], (0x00, Bytes::from_static(b"hello, ann")));
    assert_eq!(
        frames[1],
        (
            0x80,
            Bytes::from_static(b"grpc-status: 0\r\ngrpc-message: ok\r\n")
        )
    );
    let call = calls
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("the backend got the call");
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.path, "/test.Greeter/Hello");
    assert_eq!(
        header(&call.headers, "content-type"),
        Some("application/grpc+proto")
    );
    assert_eq!(header(&call.headers, "te"), Some("trailers"));
    assert_eq!(call.messages, vec![Bytes::from_static(b"ann")]);

    // grpc-web-text: base64 both ways, padded per chunk by the client.
    let mut text = STANDARD.encode(&grpc_frame(b"bo")[..4]);
    text.push_str(&STANDARD.encode(&grpc_frame(b"bo")[4..]));
    let head = format!("POST /test.Greeter/Hello HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/grpc-web-text\r\naccept: application/grpc-web-text");
    let resp = raw_http1(port, &head, text.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/grpc-web-text+proto"),
        "the backend's subtype"
    );
    let decoded = STANDARD
        .decode(resp.body.as_slice())
        .expect("base64 response body");
    let frames = grpc_frames(&decoded);
    assert_eq!(frames[0], (0x00, Bytes::from_static(b"hello, bo")));
    assert_eq!(
        frames[1],
        (
            0x80,
            Bytes::from_static(b"grpc-status: 0\r\ngrpc-message: ok\r\n")
        )
    );
    let call = calls.lock().unwrap().last().cloned().expect("call");
    assert_eq!(
        header(&call.headers, "content-type"),
        Some("application/grpc")
    );
    assert_eq!(call.messages, vec![Bytes::from_static(b"bo")]);

    // A failing call: the status travels in the trailer frame.
    let head = format!(
        "POST /test.Greeter/Fail HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/grpc-web"
    );
    let resp = raw_http1(port, &head, &grpc_frame(b"x")).await;
    assert_eq!(resp.status, 200);
    let frames = grpc_frames(&resp.body);
    assert_eq!(
        frames,
        vec![(
            0x80,
            Bytes::from_static(b"grpc-status: 5\r\ngrpc-message: no such greeting\r\n")
        )]
    );
}

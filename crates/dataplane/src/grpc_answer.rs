//! A gRPC client gets a gRPC answer. When the gateway itself refuses a gRPC
//! call (401/403 from an AuthPolicy, 429 from a rate limit, 503 from a
//! circuit breaker, 404 without a route, ...), or a backend answers a gRPC
//! call with a bare HTTP error, the answer is rewritten to a trailers-only
//! gRPC response: HTTP 200, `content-type: application/grpc`, `grpc-status`
//! and `grpc-message` in the headers, no body. gRPC libraries then report
//! the real reason (`UNAUTHENTICATED: ...`) instead of a protocol error;
//! the other headers (`www-authenticate`, `retry-after`, rate-limit
//! headers, `x-portcullis-overloaded`) are kept.
//!
//! Applied after the access log and metrics have seen the HTTP status, so
//! that those keep the gateway's reason (401, 429, ...).

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::body::{self, Body};

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// A gRPC call (not gRPC-Web, whose answers are framed differently).
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
        })
}

/// The gRPC status for an HTTP error, as in gRPC's "HTTP to gRPC status
/// code mapping", except where the gateway knows better: a 429 is our rate
/// limit (RESOURCE_EXHAUSTED), a 504 our timeout (DEADLINE_EXCEEDED), and
/// an oversize request RESOURCE_EXHAUSTED.
fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                  // INTERNAL
        401 => 16,                  // UNAUTHENTICATED
        403 => 7,                   // PERMISSION_DENIED
        404 => 12,                  // UNIMPLEMENTED
        413 | 414 | 431 | 429 => 8, // RESOURCE_EXHAUSTED
        504 => 4,                   // DEADLINE_EXCEEDED
        502 | 503 => 14,            // UNAVAILABLE
        _ => 2,                     // UNKNOWN
    }
}

/// Rewrites a non-gRPC error answer to a gRPC call; anything that already
/// is a gRPC answer (a `grpc-status`, or HTTP 200) passes unchanged.
pub fn answer(resp: Response<Body>) -> Response<Body> {
    if resp.status() == StatusCode::OK || resp.headers().contains_key(&GRPC_STATUS) {
        return resp;
    }
    let (mut parts, _body) = resp.into_parts();
    let code = grpc_code(parts.status);
    // grpc-message is percent-encoded text; the reason phrase needs none.
    let message = format!(
        "HTTP {} {}",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .replace(' ', "%20");
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE.clone(), v);
    }
    Response::from_parts(parts, body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> Response<Body> {
        let mut r =
            crate::proxy::error_response(StatusCode::from_u16(status).expect("status"), "refused");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        r
    }

    #[test]
    fn gateway_errors_become_trailers_only_grpc_answers() {
        for (http, grpc) in [
            (401, "16"),
            (403, "7"),
            (429, "8"),
            (503, "14"),
            (504, "4"),
            (404, "12"),
        ] {
            let r = answer(refused(http));
            assert_eq!(r.status(), 200, "{http}");
            assert_eq!(r.headers()["grpc-status"], grpc, "{http}");
            assert_eq!(r.headers()["content-type"], "application/grpc");
            assert_eq!(r.headers()["retry-after"], "3", "other headers are kept");
            assert!(r.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .starts_with(&format!("HTTP%20{http}")));
        }
    }

    #[test]
    fn grpc_answers_pass_unchanged() {
        let mut ok = Response::new(body::empty());
        ok.headers_mut()
            .insert(GRPC_STATUS.clone(), HeaderValue::from_static("0"));
        assert_eq!(answer(ok).headers()["grpc-status"], "0");
        let mut backend_status = refused(503);
        backend_status
            .headers_mut()
            .insert(GRPC_STATUS.clone(), HeaderValue::from_static("14"));
        assert_eq!(
            answer(backend_status).status(),
            503,
            "already a gRPC answer"
        );
    }

    #[test]
    fn only_grpc_calls_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc_request(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+proto"),
        );
        assert!(!is_grpc_request(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc_request(&h));
    }
}

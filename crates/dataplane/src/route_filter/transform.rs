//! RouteFilter request and response transformation: templated headers,
//! JSON body edits, XML <-> JSON conversion, gRPC-Web -> gRPC.
//!
//! Bodies are read only when this direction edits them and the content
//! type is the one the edit applies to, up to `max_body_bytes`. Over the
//! limit a request is answered 413; a response is relayed unmodified or
//! answered 502 (`responseOverLimit`). A body that cannot be parsed is the
//! sender's error: 400 for the client's request, 502 for the backend's
//! response.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use portcullis_model::route_filter::transform::{
    BodyFormat, JsonEdit, JsonValue, MessageTransform, TransformConfig,
};
use portcullis_model::{Filter, Rule};
use serde_json::Value;

use super::body_buffer::{self, Buffered};
use super::{grpc_web, json_edit, template, xml, ClientRequest};
use crate::body::{self, Body};
use crate::proxy::error_response;

/// Does a RouteFilter of this rule translate gRPC-Web? Its backends are
/// then gRPC servers, reached over h2c (see `proxy::upstream_protocol`).
pub(crate) fn speaks_grpc(rule: &Rule) -> bool {
    let any = |filters: &[Filter]| {
        filters.iter().any(|f| {
            matches!(f, Filter::RouteFilter(rf)
                if rf.transform.as_ref().is_some_and(|t| t.grpc_web))
        })
    };
    any(&rule.filters) || rule.backends.iter().any(|b| any(&b.filters))
}

/// Rewrites the upstream request; `Err` is the rejection to send.
pub(crate) async fn request(
    config: &TransformConfig,
    client: &ClientRequest,
    req: Request<Body>,
) -> Result<Request<Body>, Response<Body>> {
    let (mut parts, mut body) = req.into_parts();
    if config.grpc_web {
        if let Some((mode, suffix)) = grpc_web::mode(&client.headers) {
            body = grpc_web::request(&mut parts.headers, body, mode, suffix);
        }
    }
    edit_headers(&config.request, config, client, &mut parts.headers);
    let edits = &config.request;
    if !edits.edits_body() || !applies(edits, &parts.headers) {
        return Ok(Request::from_parts(parts, body));
    }
    let bytes = match body_buffer::read(&parts.headers, body, config.max_body_bytes).await {
        Ok(Buffered::Complete(bytes)) => bytes,
        Ok(Buffered::Over { .. }) => {
            tracing::debug!(
                limit = config.max_body_bytes,
                "request body over the transform limit: 413"
            );
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading the request body failed");
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "cannot read request body",
            ));
        }
    };
    match edit_body(edits, config, client, &mut parts.headers, &bytes) {
        Ok(Some(new)) => {
            body_buffer::body_replaced(&mut parts.headers, new.len());
            Ok(Request::from_parts(parts, body::full(new)))
        }
        Ok(None) => Ok(Request::from_parts(parts, body::full(bytes))),
        Err(e) => {
            tracing::debug!(error = %e, "request body cannot be transformed: 400");
            Err(error_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            ))
        }
    }
}

/// Rewrites the backend's response.
pub(crate) async fn response(
    config: &TransformConfig,
    client: &ClientRequest,
    resp: Response<Body>,
) -> Response<Body> {
    let (mut parts, mut body) = resp.into_parts();
    if config.grpc_web {
        if let Some((mode, _)) = grpc_web::mode(&client.headers) {
            body = grpc_web::response(&mut parts.headers, body, mode);
        }
    }
    edit_headers(&config.response, config, client, &mut parts.headers);
    let edits = &config.response;
    if !edits.edits_body() || !applies(edits, &parts.headers) || is_encoded(&parts.headers) {
        return Response::from_parts(parts, body);
    }
    let bytes = match body_buffer::read(&parts.headers, body, config.max_body_bytes).await {
        Ok(Buffered::Complete(bytes)) => bytes,
        Ok(over @ Buffered::Over { .. }) => {
            if config.reject_response_over_limit {
                tracing::warn!(
                    limit = config.max_body_bytes,
                    "response body over the transform limit: 502"
                );
                return error_response(StatusCode::BAD_GATEWAY, "upstream response too large");
            }
            tracing::debug!(
                limit = config.max_body_bytes,
                "response body over the transform limit: relayed unmodified"
            );
            return Response::from_parts(parts, over.into_body());
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the upstream response body failed");
            return error_response(StatusCode::BAD_GATEWAY, "upstream response body failed");
        }
    };
    match edit_body(edits, config, client, &mut parts.headers, &bytes) {
        Ok(Some(new)) => {
            body_buffer::body_replaced(&mut parts.headers, new.len());
            Response::from_parts(parts, body::full(new))
        }
        Ok(None) => Response::from_parts(parts, body::full(bytes)),
        Err(e) => {
            tracing::warn!(error = %e, "upstream response body cannot be transformed: 502");
            error_response(
                StatusCode::BAD_GATEWAY,
                "upstream response cannot be transformed",
            )
        }
    }
}

/// Is the body of the type this direction's body edits read?
fn applies(edits: &MessageTransform, headers: &HeaderMap) -> bool {
    match &edits.convert {
        Some(c) if c.from == BodyFormat::Xml => body_buffer::is_xml(headers),
        _ => body_buffer::is_json(headers),
    }
}

/// Compressed bodies are left alone by transforms (masking, which must
/// not leak, decodes them).
fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

fn edit_headers(
    edits: &MessageTransform,
    config: &TransformConfig,
    client: &ClientRequest,
    headers: &mut HeaderMap,
) {
    if !edits.edits_headers() {
        return;
    }
    for name in &edits.remove_headers {
        headers.remove(name);
    }
    let strict = config.skip_header_on_missing;
    let render = |t: &portcullis_model::route_filter::transform::HeaderTemplate| {
        let text = template::render(&t.value, client, strict)?;
        match HeaderValue::from_bytes(text.as_bytes()) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::debug!(header = %t.name, "templated header value is not a valid header value: skipped");
                None
            }
        }
    };
    for t in &edits.set_headers {
        match render(t) {
            Some(v) => {
                headers.insert(t.name.clone(), v);
            }
            None => {
                headers.remove(&t.name);
            }
        }
    }
    for t in &edits.add_headers {
        if let Some(v) = render(t) {
            headers.append(t.name.clone(), v);
        }
    }
}

/// The new body, `None` when nothing changed.
fn edit_body(
    edits: &MessageTransform,
    config: &TransformConfig,
    client: &ClientRequest,
    headers: &mut HeaderMap,
    bytes: &Bytes,
) -> Result<Option<Vec<u8>>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut doc: Value = match &edits.convert {
        Some(c) if c.from == BodyFormat::Xml => {
            xml::xml_to_json(bytes, config.max_depth).map_err(|e| e.to_string())?
        }
        _ => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?,
    };
    for edit in &edits.json {
        match edit {
            JsonEdit::Add { path, value } => {
                let value = match value {
                    JsonValue::Literal(v) => v.clone(),
                    JsonValue::Template(t) => {
                        Value::String(template::render(t, client, false).unwrap_or_default())
                    }
                };
                if !json_edit::add(&mut doc, &path.tokens, value) {
                    tracing::debug!(path = %path.source, "JSON add: no such place in the document, skipped");
                }
            }
            JsonEdit::Remove { path } => {
                let _ = json_edit::remove(&mut doc, &path.tokens);
            }
            JsonEdit::Move { from, path } => {
                json_edit::move_value(&mut doc, &from.tokens, &path.tokens)
            }
        }
    }
    let out = match &edits.convert {
        Some(c) if c.to == BodyFormat::Xml => {
            let xml = xml::json_to_xml(&doc, c.root_element.as_deref(), config.max_depth)
                .map_err(|e| e.to_string())?;
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            );
            xml.into_bytes()
        }
        Some(_) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            serde_json::to_vec(&doc).map_err(|e| e.to_string())?
        }
        None => serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
    };
    Ok(Some(out))
}

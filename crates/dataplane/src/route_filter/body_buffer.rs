//! Reading a body into memory up to a limit, without losing what was read
//! when the limit is passed (a caller may still relay the body unmodified).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;

use crate::body::{self, Body, BoxError};

pub(crate) enum Buffered {
    /// The whole body (trailers, if any, are dropped: JSON/XML documents
    /// have none).
    Complete(Bytes),
    /// Over the limit: what was read and the rest, to relay unmodified
    /// with [`Buffered::into_body`] or to drop.
    Over { prefix: Bytes, rest: Body },
}

/// Reads `body` up to `limit` bytes. A `Content-Length` over the limit is
/// known before anything is read.
pub(crate) async fn read(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Buffered, BoxError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Buffered::Over {
            prefix: Bytes::new(),
            rest: body,
        });
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                buf.extend_from_slice(&data);
                return Ok(Buffered::Over {
                    prefix: buf.freeze(),
                    rest: body,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Buffered::Complete(buf.freeze()))
}

impl Buffered {
    /// The body as it was: the prefix read, then the rest as it streams.
    pub(crate) fn into_body(self) -> Body {
        match self {
            Buffered::Complete(bytes) => body::full(bytes),
            Buffered::Over { prefix, rest } if prefix.is_empty() => rest,
            Buffered::Over { prefix, rest } => {
                let head = futures_util::stream::once(async move {
                    Ok::<_, BoxError>(http_body::Frame::data(prefix))
                });
                let tail = http_body_util::BodyStream::new(rest);
                body::boxed(http_body_util::StreamBody::new(
                    futures_util::StreamExt::chain(head, tail),
                ))
            }
        }
    }
}

/// After a body was replaced: its length, and validators that described
/// the old bytes (a strong ETag becomes weak: same meaning, other bytes).
pub(crate) fn body_replaced(headers: &mut HeaderMap, len: usize) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    headers.remove("content-md5");
    headers.remove("digest");
    headers.remove("repr-digest");
    headers.remove("content-digest");
    if let Some(etag) = headers.get(http::header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match http::HeaderValue::from_bytes(&weak) {
                Ok(v) => {
                    headers.insert(http::header::ETAG, v);
                }
                Err(_) => {
                    headers.remove(http::header::ETAG);
                }
            }
        }
    }
}

/// `application/json`, `application/problem+json`, ... (parameters ignored).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

/// `application/xml`, `text/xml`, `application/soap+xml`, ...
pub(crate) fn is_xml(headers: &HeaderMap) -> bool {
    media_type(headers)
        .is_some_and(|m| m == "application/xml" || m == "text/xml" || m.ends_with("+xml"))
}

/// The lowercased media type without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let m = v.split(';').next()?.trim();
    (!m.is_empty()).then(|| m.to_ascii_lowercase())
}

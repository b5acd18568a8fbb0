//! gRPC-Web -> gRPC, so that browsers can call gRPC services.
//!
//! A gRPC-Web request (`application/grpc-web[+proto|+json]`, or
//! `application/grpc-web-text[+...]` whose body is base64) goes to the
//! backend as gRPC (`application/grpc[+...]`, HTTP/2, `te: trailers`). The
//! backend's response streams back unchanged except that its HTTP/2
//! trailers (grpc-status, grpc-message, ...) become the body's last frame,
//! flagged 0x80, in the HTTP/1.1 header block format — HTTP/1.1 clients
//! and browsers' fetch cannot read trailers. For -text the whole response
//! body is base64, encoded as it streams. A trailers-only response
//! (grpc-status in the headers) keeps its headers as they are, as the
//! gRPC-Web protocol allows.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};

use crate::body::{self, Body, BoxError};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How the client framed its gRPC-Web request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Binary,
    Text,
}

/// The gRPC-Web mode of a request and its subtype suffix (`+proto`).
pub(crate) fn mode(headers: &HeaderMap) -> Option<(Mode, &str)> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim();
    let rest = strip_prefix_ignore_case(media, "application/grpc-web")?;
    if let Some(suffix) = strip_prefix_ignore_case(rest, "-text") {
        return (suffix.is_empty() || suffix.starts_with('+')).then_some((Mode::Text, suffix));
    }
    (rest.is_empty() || rest.starts_with('+')).then_some((Mode::Binary, rest))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Rewrites a gRPC-Web request into gRPC; `body` is decoded for -text.
pub(crate) fn request(headers: &mut HeaderMap, body: Body, mode: Mode, suffix: &str) -> Body {
    let content_type = format!("application/grpc{suffix}");
    match HeaderValue::from_str(&content_type) {
        Ok(v) => headers.insert(header::CONTENT_TYPE, v),
        // The suffix came from a valid header value.
        Err(_) => headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ),
    };
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.remove(header::CONTENT_LENGTH);
    match mode {
        Mode::Binary => body,
        Mode::Text => body::boxed(TextDecoder {
            inner: body,
            pending: BytesMut::new(),
        }),
    }
}

/// Rewrites the backend's gRPC response for a gRPC-Web client, keeping
/// its subtype (`application/grpc+proto` -> `application/grpc-web+proto`).
/// An answer that is not gRPC (an error page of a misconfigured backend)
/// is relayed as it is.
pub(crate) fn response(headers: &mut HeaderMap, body: Body, mode: Mode) -> Body {
    let suffix = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|media| strip_prefix_ignore_case(media.trim(), "application/grpc"))
        .filter(|s| s.is_empty() || s.starts_with('+'))
        .map(str::to_string);
    let Some(suffix) = suffix else {
        return body;
    };
    let content_type = match mode {
        Mode::Binary => format!("application/grpc-web{suffix}"),
        Mode::Text => format!("application/grpc-web-text{suffix}"),
    };
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.remove(header::CONTENT_LENGTH);
    body::boxed(ResponseEncoder {
        inner: body,
        text: mode == Mode::Text,
        pending: BytesMut::new(),
        done: false,
    })
}

/// Base64 of a gRPC-Web-text request body, decoded as it streams. Clients
/// may pad each chunk they send, so padding can appear mid-stream: each
/// run of 4-character groups up to and including one with `=` is decoded
/// on its own.
struct TextDecoder {
    inner: Body,
    pending: BytesMut,
}

impl TextDecoder {
    fn decode_complete_groups(&mut self) -> Result<Bytes, BoxError> {
        let usable = self.pending.len() / 4 * 4;
        let input = self.pending.split_to(usable);
        let mut out = Vec::with_capacity(usable / 4 * 3);
        let mut rest = &input[..];
        while !rest.is_empty() {
            let end = match rest.iter().position(|b| *b == b'=') {
                Some(at) => (at / 4 + 1) * 4,
                None => rest.len(),
            };
            BASE64
                .decode_vec(&rest[..end], &mut out)
                .map_err(|e| format!("invalid grpc-web-text body: {e}"))?;
            rest = &rest[end..];
        }
        Ok(Bytes::from(out))
    }
}

impl http_body::Body for TextDecoder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending
                            .extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                        let decoded = this.decode_complete_groups()?;
                        if !decoded.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(decoded))));
                        }
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Poll::Ready(None) if !this.pending.is_empty() => {
                    this.pending.clear();
                    return Poll::Ready(Some(Err(
                        "invalid grpc-web-text body: truncated base64".into()
                    )));
                }
                other => return other,
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The backend's data frames as they come, then its trailers as a
/// gRPC-Web trailer frame; all in base64 for -text.
struct ResponseEncoder {
    inner: Body,
    text: bool,
    /// -text: bytes not yet encoded (fewer than 3).
    pending: BytesMut,
    done: bool,
}

impl ResponseEncoder {
    /// Encodes (for -text) what can be encoded; `last` flushes with
    /// padding.
    fn out(&mut self, data: &[u8], last: bool) -> Bytes {
        if !self.text {
            return Bytes::copy_from_slice(data);
        }
        self.pending.extend_from_slice(data);
        let usable = if last {
            self.pending.len()
        } else {
            self.pending.len() / 3 * 3
        };
        let chunk = self.pending.split_to(usable);
        Bytes::from(BASE64.encode(&chunk))
    }
}

/// `0x80`, big-endian length, then `name: value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    // A header block is far below 4 GiB (hyper bounds header lists).
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.extend_from_slice(&block);
    frame.freeze()
}

impl http_body::Body for ResponseEncoder {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if this.text => {
                        let out = this.out(&data, false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        this.done = true;
                        let encoded = trailer_frame(&trailers);
                        let out = this.out(&encoded, true);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    if this.text && !this.pending.is_empty() {
                        let out = this.out(&[], true);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn ct(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn modes_from_content_type() {
        assert_eq!(mode(&ct("application/grpc-web")), Some((Mode::Binary, "")));
        assert_eq!(
            mode(&ct("application/grpc-web+proto")),
            Some((Mode::Binary, "+proto"))
        );
        assert_eq!(
            mode(&ct("application/grpc-web-text")),
            Some((Mode::Text, ""))
        );
        assert_eq!(
            mode(&ct("Application/gRPC-Web-Text+proto; x=1")),
            Some((Mode::Text, "+proto"))
        );
        assert_eq!(mode(&ct("application/grpc")), None);
        assert_eq!(mode(&ct("application/grpc-webx")), None);
    }

    #[tokio::test]
    async fn text_bodies_decode_with_padding_mid_stream() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from(BASE64.encode(b"ab")))),
            Ok(Frame::data(Bytes::from(
                BASE64.encode(b"cdef")[..3].to_string(),
            ))),
            Ok(Frame::data(Bytes::from(
                BASE64.encode(b"cdef")[3..].to_string(),
            ))),
        ];
        let inner = body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )));
        let mut headers = ct("application/grpc-web-text");
        let decoded = request(&mut headers, inner, Mode::Text, "")
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&decoded[..], b"abcdef");
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
    }
}

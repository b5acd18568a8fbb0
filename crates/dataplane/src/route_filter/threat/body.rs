//! Reading a request body for inspection, bounded; and giving it back
//! whole when it is too large to inspect but a Report-mode check lets it
//! through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

pub(super) enum ReadError {
    /// More than the limit: what was read, and the unread rest.
    TooLarge {
        prefix: Vec<Bytes>,
        rest: Body,
    },
    Failed,
}

/// The whole body if it is at most `limit` bytes. A declared length
/// above the limit fails before anything is read.
pub(super) async fn read(mut body: Body, limit: u64) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > limit {
        return Err(ReadError::TooLarge {
            prefix: Vec::new(),
            rest: body,
        });
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Failed)?;
        // Trailers of a request body are dropped: nothing we inspect
        // produces them and HTTP/1.1 backends rarely accept them.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        chunks.push(data);
        if total > limit {
            return Err(ReadError::TooLarge {
                prefix: chunks,
                rest: body,
            });
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(total as usize);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    })
}

/// The chunks already read, then the rest of the stream.
pub(super) fn prefixed(prefix: Vec<Bytes>, rest: Body) -> Body {
    crate::body::boxed(Prefixed {
        prefix: prefix.into_iter(),
        rest,
    })
}

struct Prefixed {
    prefix: std::vec::IntoIter<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.next() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_slice().is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.as_slice().iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

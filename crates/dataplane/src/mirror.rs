//! Request mirroring: a copy of the request goes to each mirror backend,
//! fire-and-forget. The copy of the body is teed frame by frame through a
//! small bounded channel; a mirror that cannot keep up is cut off rather than
//! slowing the real request down.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::body::BoxError;

/// Frames buffered per mirror before it is cut off.
const MIRROR_BUFFER_FRAMES: usize = 32;

/// Wraps the client's request body and copies each data frame to mirrors.
pub struct TeeBody<B> {
    inner: B,
    mirrors: Vec<mpsc::Sender<Bytes>>,
}

impl<B> TeeBody<B> {
    pub fn new(inner: B) -> TeeBody<B> {
        TeeBody {
            inner,
            mirrors: Vec::new(),
        }
    }

    /// Adds a mirror and returns the body to send to it.
    pub fn add_mirror(&mut self) -> MirrorBody {
        let (tx, rx) = mpsc::channel(MIRROR_BUFFER_FRAMES);
        self.mirrors.push(tx);
        MirrorBody { rx }
    }
}

impl<B> HttpBody for TeeBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // A full or closed channel drops that mirror: its body
                    // ends early and its request fails, the real one does not.
                    this.mirrors.retain(|tx| tx.try_send(data.clone()).is_ok());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.mirrors.clear();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.mirrors.clear();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body a mirror receives.
pub struct MirrorBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

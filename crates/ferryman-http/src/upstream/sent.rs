use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::{BoxError, ProxyBody};

/// The request body on its way upstream; tells when its last byte was handed
/// to the connection, which starts the response-header timeout.
pub struct SentBody {
    inner: ProxyBody,
    sent: Option<oneshot::Sender<()>>,
}

impl SentBody {
    pub(crate) fn new(inner: ProxyBody) -> Self {
        Self { inner, sent: None }
    }

    /// Returns a receiver that resolves once the body is fully sent.
    pub(crate) fn arm(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.sent = Some(tx);
        if self.inner.is_end_stream() {
            self.fire();
        }
        rx
    }

    fn fire(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if polled.is_none() || self.inner.is_end_stream() {
            self.fire();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

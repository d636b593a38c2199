//! A response body that ends, as a failure, when its exchange is closed from
//! outside: HTTP/1 then drops the connection, HTTP/2 resets the stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ferryman_http::body::BoxError;
use ferryman_http::ProxyBody;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the exchange was closed")
    }
}

impl std::error::Error for Closed {}

pub(crate) struct Closable {
    inner: ProxyBody,
    token: CancellationToken,
    /// Waits for the token once the body has had to wait: a body whose
    /// frames are ready (most) never registers a waiter.
    closed: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Closable {
    pub(crate) fn new(inner: ProxyBody, token: CancellationToken) -> Self {
        Self {
            inner,
            token,
            closed: None,
        }
    }
}

impl Body for Closable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.token.is_cancelled() {
            return Poll::Ready(Some(Err(Closed.into())));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending() {
            let token = &this.token;
            let closed = this
                .closed
                .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(Closed.into())));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

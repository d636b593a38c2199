//! Body wrappers: everything streams frame by frame; nothing here buffers a body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that crosses ferryman, in both directions.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Which way a body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

/// Told about the bytes of a body as they pass, and how the body ended.
pub trait BodyObserver: Send + Sync {
    fn on_data(&self, direction: Direction, bytes: &Bytes);
    fn on_trailers(&self, _direction: Direction, _trailers: &http::HeaderMap) {}
    /// `complete` is false when the body was abandoned or failed before its end.
    fn on_end(&self, direction: Direction, complete: bool);
}

/// Reports every data frame and the end of the body to an observer.
pub struct Observed<B> {
    inner: B,
    observer: Arc<dyn BodyObserver>,
    direction: Direction,
    ended: bool,
}

impl<B> Observed<B> {
    pub fn new(inner: B, observer: Arc<dyn BodyObserver>, direction: Direction) -> Self
    where
        B: Body,
    {
        let mut observed = Self {
            inner,
            observer,
            direction,
            ended: false,
        };
        // An empty body may never be polled; it is complete from the start.
        if observed.inner.is_end_stream() {
            observed.end(true);
        }
        observed
    }

    fn end(&mut self, complete: bool) {
        if !self.ended {
            self.ended = true;
            self.observer.on_end(self.direction, complete);
        }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.observer.on_data(self.direction, data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.observer.on_trailers(self.direction, trailers);
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Some(Err(_)) => self.end(false),
            None => self.end(true),
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

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        let complete = self.ended;
        self.end(complete);
    }
}

/// What an `Expect: 100-continue` request body is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    Waiting,
    Open,
    Closed,
    /// Closed, and the upstream's answer has been relayed: the body may now
    /// fail, taking the upstream connection (which cannot be reused) with it.
    Finished,
}

/// Controls a [`GatedBody`]: opened by the upstream's `100 Continue`, closed by
/// its final answer.
#[derive(Clone)]
pub struct Gate(watch::Sender<GateState>);

impl Gate {
    /// The upstream said `100 Continue`: send the body.
    pub fn open(&self) {
        self.0
            .send_if_modified(|s| replace_waiting(s, GateState::Open));
    }

    /// The upstream answered before asking for the body: never read it, so the
    /// client is not told to send it. The body stays pending (an error now
    /// would end the upstream connection before its answer is read) until
    /// [`Gate::finish`].
    pub fn close(&self) {
        self.0
            .send_if_modified(|s| replace_waiting(s, GateState::Closed));
    }

    /// The upstream's answer is over: a closed body now fails.
    pub fn finish(&self) {
        self.0.send_if_modified(|s| {
            let closed = *s == GateState::Closed;
            if closed {
                *s = GateState::Finished;
            }
            closed
        });
    }
}

fn replace_waiting(state: &mut GateState, next: GateState) -> bool {
    if *state == GateState::Waiting {
        *state = next;
        true
    } else {
        false
    }
}

type GateWait = Pin<Box<dyn Future<Output = GateState> + Send>>;

/// A request body that is not polled (so hyper's server does not send
/// `100 Continue` to the client) until the gate opens or the wait times out.
pub struct GatedBody<B> {
    inner: B,
    wait: Option<GateWait>,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream answered before the request body was sent")]
pub struct BodyNotSent;

impl<B> GatedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> (Self, Gate) {
        let (tx, mut rx) = watch::channel(GateState::Waiting);
        let wait = Box::pin(async move {
            let decided = rx.wait_for(|s| *s != GateState::Waiting);
            let state = match tokio::time::timeout(timeout, decided).await {
                Ok(Ok(state)) => *state,
                // Gate dropped: nobody will decide, so behave as if it timed out.
                Ok(Err(_)) | Err(_) => GateState::Open,
            };
            if state == GateState::Closed {
                // Finished, or every gate dropped: either way the answer is done.
                let _ = rx.wait_for(|s| *s == GateState::Finished).await;
            }
            state
        });
        (
            Self {
                inner,
                wait: Some(wait),
            },
            Gate(tx),
        )
    }
}

impl<B> Body for GatedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(wait) = self.wait.as_mut() {
            match ready!(wait.as_mut().poll(cx)) {
                GateState::Closed | GateState::Finished => {
                    return Poll::Ready(Some(Err(BodyNotSent.into())))
                }
                _ => self.wait = None,
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.wait.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Tally {
        bytes: AtomicU64,
        ends: AtomicUsize,
        complete: AtomicUsize,
    }

    impl BodyObserver for Tally {
        fn on_data(&self, _: Direction, bytes: &Bytes) {
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        fn on_end(&self, _: Direction, complete: bool) {
            self.ends.fetch_add(1, Ordering::Relaxed);
            self.complete
                .fetch_add(complete as usize, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn observed_counts_and_ends_once() {
        let tally = Arc::new(Tally::default());
        let body = Observed::new(
            Full::new(Bytes::from_static(b"hello")),
            tally.clone(),
            Direction::Down,
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(tally.bytes.load(Ordering::Relaxed), 5);
        assert_eq!(tally.ends.load(Ordering::Relaxed), 1);
        assert_eq!(tally.complete.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn observed_dropped_early_is_incomplete() {
        let tally = Arc::new(Tally::default());
        drop(Observed::new(
            Full::new(Bytes::from_static(b"x")),
            tally.clone(),
            Direction::Up,
        ));
        assert_eq!(tally.ends.load(Ordering::Relaxed), 1);
        assert_eq!(tally.complete.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn gate_closed_never_polls_inner_and_fails_once_finished() {
        let (body, gate) =
            GatedBody::new(Full::new(Bytes::from_static(b"x")), Duration::from_secs(60));
        gate.close();
        let mut collect = Box::pin(body.collect());
        let pending = futures_util_poll(collect.as_mut()).await;
        assert!(pending.is_none(), "pending until the answer is over");
        gate.finish();
        let err = collect.await.expect_err("closed gate fails the body");
        assert!(err.is::<BodyNotSent>());
    }

    /// Polls once, yielding to the runtime first so watchers have run.
    async fn futures_util_poll<F: Future + Unpin>(mut fut: F) -> Option<F::Output> {
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut fut).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn gate_opened_releases_body() {
        let (body, gate) =
            GatedBody::new(Full::new(Bytes::from_static(b"x")), Duration::from_secs(60));
        gate.open();
        gate.close(); // too late: the first decision stands
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
    }

    #[tokio::test(start_paused = true)]
    async fn gate_times_out_open() {
        let (body, _gate) =
            GatedBody::new(Full::new(Bytes::from_static(b"x")), Duration::from_secs(1));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
    }
}

//! Deadlines on bytes that must keep moving. A request body that sends
//! nothing for a while, or trickles slower than a floor on average (a
//! "slow POST" holding a connection and an upstream slot open for ever),
//! fails with [`TooSlow`]; time spent waiting while the upstream does not
//! take the bytes is not the client's and does not count. The model is
//! Apache's mod_reqtimeout: a first allowance, extended by each byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How fast a body must move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The longest wait for the next byte.
    pub idle: Duration,
    /// Bytes per second a body must average, after a first `idle`; 0 for
    /// no floor.
    pub min_rate: u64,
}

impl Pace {
    /// How much longer a wait that began now may last, for a body that has
    /// moved `moved` bytes after the client kept it waiting `waited`.
    fn allowance(&self, moved: u64, waited: Duration) -> Duration {
        if self.min_rate == 0 {
            return self.idle;
        }
        let earned = Duration::from_secs_f64(moved as f64 / self.min_rate as f64);
        self.idle.min((self.idle + earned).saturating_sub(waited))
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the request body was too slow: nothing for {idle:?}, or under {min_rate} bytes/s on average"
)]
pub struct TooSlow {
    idle: Duration,
    min_rate: u64,
}

/// A body held to a [`Pace`]; the flag it returns tells, after a failure,
/// that slowness was the cause.
pub struct Paced<B> {
    inner: B,
    pace: Pace,
    moved: u64,
    /// Time the client kept the body waiting, before the current wait.
    waited: Duration,
    /// The current wait for the client, and when it runs out.
    waiting: Option<(Instant, Pin<Box<Sleep>>)>,
    slow: Arc<AtomicBool>,
}

impl<B> Paced<B> {
    pub fn new(inner: B, pace: Pace) -> (Self, Arc<AtomicBool>) {
        let slow = Arc::new(AtomicBool::new(false));
        let body = Self {
            inner,
            pace,
            moved: 0,
            waited: Duration::ZERO,
            waiting: None,
            slow: slow.clone(),
        };
        (body, slow)
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((since, _)) = this.waiting.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    this.moved += data.map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                // Waiting on the client: from here its clock runs.
                let (pace, moved, waited) = (this.pace, this.moved, this.waited);
                let (_, timer) = this.waiting.get_or_insert_with(|| {
                    let now = Instant::now();
                    let deadline = now + pace.allowance(moved, waited);
                    (now, Box::pin(tokio::time::sleep_until(deadline)))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    this.slow.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(TooSlow {
                        idle: this.pace.idle,
                        min_rate: this.pace.min_rate,
                    }))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn channel() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(Box::pin(stream)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_the_idle_time() {
        let pace = Pace {
            idle: Duration::from_secs(4),
            min_rate: 0,
        };
        let (tx, body) = channel();
        let (mut body, slow) = Paced::new(body, pace);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let failed = body.frame().await.unwrap();
        assert!(failed.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        assert!(slow.load(Ordering::Acquire));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_once_below_the_floor_on_average() {
        let pace = Pace {
            idle: Duration::from_secs(4),
            min_rate: 100,
        };
        let (tx, body) = channel();
        let (mut body, slow) = Paced::new(body, pace);
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            // One byte a second: never idle for 4 s, far below 100 bytes/s.
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let failed = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        };
        assert!(matches!(failed, Some(Err(_))));
        // 4 s allowance plus 10 ms per byte received.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(slow.load(Ordering::Acquire));
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_upstream_takes_to_ask_is_not_the_clients() {
        let pace = Pace {
            idle: Duration::from_secs(4),
            min_rate: 100,
        };
        let (tx, body) = channel();
        let (mut body, slow) = Paced::new(body, pace);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The upstream does not read for a minute; the client has sent more.
        tx.send(Bytes::from_static(b"second")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(body.frame().await.unwrap().is_ok());
        assert!(!slow.load(Ordering::Acquire));
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_never_fails() {
        let pace = Pace {
            idle: Duration::from_secs(4),
            min_rate: 100,
        };
        let (tx, body) = channel();
        let (mut body, slow) = Paced::new(body, pace);
        let feeder = tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(Bytes::from(vec![0u8; 200])).await.unwrap();
            }
        });
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            total += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(total, 6000);
        assert!(!slow.load(Ordering::Acquire));
        feeder.await.unwrap();
    }
}

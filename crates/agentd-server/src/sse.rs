//! Server-sent event responses, written as whole frames.
//!
//! Every event of every stream goes through here, once per reader, so a
//! frame is built in one buffer of about its final size and handed to hyper
//! as is: no per-field growth, no copy of the data into a second buffer.
//! (axum's `Sse` grows its buffer field by field and resets its keep-alive
//! timer on every event; with a run's deltas fanned out to each reader that
//! was a measurable share of the server's CPU, see bench/README.md.)

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

/// One frame: `event:` and `id:` when given, then the `data:` that `data`
/// writes. Data is JSON here, which never holds a raw line break; should it
/// hold one anyway, each line gets a `data:` field of its own, as the
/// format requires.
pub(crate) fn frame(
    event: Option<&str>,
    id: Option<i64>,
    size_hint: usize,
    data: impl FnOnce(&mut String),
) -> Bytes {
    let mut buf = String::with_capacity(size_hint + 48);
    if let Some(name) = event {
        buf.push_str("event: ");
        buf.push_str(name);
        buf.push('\n');
    }
    if let Some(id) = id {
        let _ = writeln!(buf, "id: {id}");
    }
    buf.push_str("data: ");
    let start = buf.len();
    data(&mut buf);
    if buf[start..].contains(['\n', '\r']) {
        let text = buf.split_off(start).replace("\r\n", "\n");
        for (i, line) in text.split(['\n', '\r']).enumerate() {
            if i > 0 {
                buf.push_str("\ndata: ");
            }
            buf.push_str(line);
        }
    }
    buf.push_str("\n\n");
    Bytes::from(buf)
}

/// A frame of `data` alone.
pub(crate) fn data_frame(data: &str) -> Bytes {
    frame(None, None, data.len(), |buf| buf.push_str(data))
}

/// A frame known when compiling, `text` written out whole (a `: comment`
/// line, which clients ignore, or a `retry:` hint).
pub(crate) const fn fixed_frame(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

/// Heartbeat comments keep proxies from closing idle streams (DESIGN §3).
const HEARTBEAT: Duration = Duration::from_secs(15);
const HEARTBEAT_FRAME: Bytes = fixed_frame(": heartbeat\n\n");

/// The `text/event-stream` response for `frames`, with a heartbeat comment
/// whenever nothing else was sent for [`HEARTBEAT`].
pub(crate) fn response<S>(frames: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = KeepAlive {
        frames: Box::pin(frames),
        timer: Box::pin(tokio::time::sleep(HEARTBEAT)),
        last_sent: Instant::now(),
        every: HEARTBEAT,
        heartbeat: HEARTBEAT_FRAME,
    }
    .map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// `frames`, with a heartbeat after every `every` of silence. The timer is
/// not pushed back per frame (a timer-wheel update per event per reader):
/// each frame only notes when it went out, and the timer, when it fires,
/// either sends a heartbeat or sleeps until `every` after the last frame.
struct KeepAlive<S> {
    frames: Pin<Box<S>>,
    timer: Pin<Box<Sleep>>,
    last_sent: Instant,
    every: Duration,
    heartbeat: Bytes,
}

impl<S: Stream<Item = Bytes>> Stream for KeepAlive<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        match this.frames.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                this.last_sent = Instant::now();
                return Poll::Ready(Some(frame));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            let due = this.last_sent + this.every;
            let now = Instant::now();
            if due <= now {
                this.last_sent = now;
                this.timer.as_mut().reset(now + this.every);
                return Poll::Ready(Some(this.heartbeat.clone()));
            }
            // A frame went out since the timer was set: sleep on from it.
            this.timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_has_its_fields_in_order() {
        let f = frame(Some("run_event"), Some(42), 8, |b| b.push_str(r#"{"a":1}"#));
        assert_eq!(&f[..], b"event: run_event\nid: 42\ndata: {\"a\":1}\n\n");
        assert_eq!(&data_frame("[DONE]")[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn line_breaks_in_data_become_data_fields() {
        let f = frame(None, None, 0, |b| b.push_str("one\r\ntwo\nthree\rfour"));
        assert_eq!(
            &f[..],
            b"data: one\ndata: two\ndata: three\ndata: four\n\n".as_slice()
        );
    }

    #[tokio::test]
    async fn heartbeats_fill_silence_only() {
        let every = Duration::from_millis(200);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let mut s = KeepAlive {
            frames: Box::pin(tokio_stream_of(rx)),
            timer: Box::pin(tokio::time::sleep(every)),
            last_sent: Instant::now(),
            every,
            heartbeat: fixed_frame(": hb\n\n"),
        };
        tokio::time::sleep(every / 2).await;
        tx.send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(s.next().await.unwrap(), "x");
        let sent = Instant::now();
        // The first deadline passes while the frame is recent: the
        // heartbeat comes `every` after the frame, not after the start.
        assert_eq!(s.next().await.unwrap(), ": hb\n\n");
        assert!(sent.elapsed() >= every);
        let first = Instant::now();
        assert_eq!(s.next().await.unwrap(), ": hb\n\n");
        assert!(first.elapsed() >= every);
        drop(tx);
        assert!(s.next().await.is_none());
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) -> impl Stream<Item = Bytes> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

//! What the HTTP providers share: the upstream's server-sent events, each
//! wait for the next one bounded by the model's idle timeout.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

/// An upstream's event stream with its idle timeout. One timer serves the
/// whole stream, pushed back as each event arrives: a timeout per wait
/// would register a timer and drop it again for every token.
pub(crate) struct UpstreamEvents {
    events: Events,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

/// Nothing came from the upstream for the idle timeout.
pub(crate) struct Stalled;

impl UpstreamEvents {
    pub fn new<S>(events: S, idle: Duration) -> UpstreamEvents
    where
        S: Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send + 'static,
    {
        UpstreamEvents {
            events: Box::pin(events),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// The next event (`None` at the end of the stream), or `Stalled` when
    /// none has come for `idle` since the previous one. An event already
    /// received wins over an elapsed timer: a reader that was slow to ask
    /// has not seen the upstream stall.
    pub async fn next(
        &mut self,
    ) -> Result<Option<Result<Event, EventStreamError<reqwest::Error>>>, Stalled> {
        tokio::select! {
            biased;
            item = self.events.next() => {
                // Later than the timer's deadline: tokio only moves the
                // deadline, without touching the timer wheel.
                self.timer.as_mut().reset(Instant::now() + self.idle);
                Ok(item)
            }
            _ = self.timer.as_mut() => Err(Stalled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;

    /// `frames` as the upstream's first bytes, then silence.
    fn upstream(frames: &str, idle: Duration) -> UpstreamEvents {
        let chunks = vec![Ok::<_, reqwest::Error>(frames.as_bytes().to_vec())];
        let silent = futures::stream::iter(chunks).chain(futures::stream::pending());
        UpstreamEvents::new(silent.eventsource(), idle)
    }

    fn data(
        item: Result<Option<Result<Event, EventStreamError<reqwest::Error>>>, Stalled>,
    ) -> String {
        match item {
            Ok(Some(Ok(e))) => e.data,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(Stalled) => panic!("stalled"),
        }
    }

    #[tokio::test]
    async fn silence_after_the_last_event_stalls_the_stream_after_the_idle_time() {
        let idle = Duration::from_millis(200);
        let mut events = upstream("data: one\n\n", idle);
        assert_eq!(data(events.next().await), "one");
        let waited = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the idle timeout fires");
        assert!(matches!(next, Err(Stalled)));
        assert!(waited.elapsed() >= idle - Duration::from_millis(20));
    }

    #[tokio::test]
    async fn an_event_that_arrived_while_the_reader_was_busy_wins_over_the_timer() {
        let idle = Duration::from_millis(100);
        let mut events = upstream("data: one\n\ndata: two\n\n", idle);
        assert_eq!(data(events.next().await), "one");
        // Longer than the idle time: the timer has fired, but "two" is there.
        tokio::time::sleep(idle * 3).await;
        assert_eq!(data(events.next().await), "two");
        assert!(matches!(events.next().await, Err(Stalled)));
    }
}

//! Replaying a stream's log from any offset.

use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::Stream;
use sea_orm::DatabaseConnection;

use crate::backend;
use crate::error::{MqError, Result};
use crate::message::Message;

/// Default number of messages read per page.
pub const DEFAULT_REPLAY_BATCH_SIZE: u64 = 100;

/// Builds a [`Replay`]; returned by [`MessageQueue::stream`](crate::MessageQueue::stream).
#[derive(Debug, Clone)]
#[must_use = "a replay builder does nothing until `build` is called"]
pub struct ReplayBuilder {
    db: DatabaseConnection,
    stream: String,
    from_offset: i64,
    batch_size: u64,
}

impl ReplayBuilder {
    pub(crate) fn new(db: DatabaseConnection, stream: String) -> Self {
        ReplayBuilder {
            db,
            stream,
            from_offset: 1,
            batch_size: DEFAULT_REPLAY_BATCH_SIZE,
        }
    }

    /// First offset to yield (offsets start at 1; 0 also means "from the beginning").
    pub fn from_offset(mut self, offset: i64) -> Self {
        self.from_offset = offset;
        self
    }

    /// Messages read per database round trip (default 100); memory use is bounded by one page.
    pub fn batch_size(mut self, size: u64) -> Self {
        self.batch_size = size;
        self
    }

    /// The replay: a [`Stream`] of the stream's messages with offset >= `from_offset`, in
    /// offset order, ending at the head of the log as it is when the last page is read.
    ///
    /// An invalid stream name, an unknown stream or a batch size of 0 yields one error and
    /// ends; so does a database error.
    pub fn build(self) -> Replay {
        let ReplayBuilder {
            db,
            stream,
            from_offset,
            batch_size,
        } = self;
        let inner = async_stream::try_stream! {
            if batch_size == 0 {
                Err(MqError::InvalidConfig("replay batch size must be at least 1".into()))?;
            }
            crate::topic::validate_name(&stream)?;
            let stream_row = backend::find_stream(&db, &stream)
                .await?
                .ok_or_else(|| MqError::UnknownStream(stream.clone()))?;
            let mut next = from_offset.max(1);
            loop {
                let page = backend::read_messages(&db, stream_row.id, next, batch_size).await?;
                let full = u64::try_from(page.len()).unwrap_or(u64::MAX) >= batch_size;
                for row in page {
                    next = row.stream_offset + 1;
                    yield from_row(row, &stream);
                }
                if !full {
                    break;
                }
            }
        };
        Replay {
            inner: Box::pin(inner),
        }
    }
}

/// A stream's messages in offset order; see [`ReplayBuilder::build`].
///
/// Implements [`Stream`] and is `Unpin`, so `replay.next().await` works directly. It touches
/// no consumer group state.
#[must_use = "streams do nothing unless polled"]
pub struct Replay {
    inner: Pin<Box<dyn Stream<Item = Result<Message>> + Send>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Stream for Replay {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

pub(crate) fn from_row(row: entity::message::Model, stream: &str) -> Message {
    let mut message = Message::new(stream, row.topic, row.payload);
    message.id = row.id;
    message.offset = row.stream_offset;
    message.priority = row.priority;
    message.created_at = millis_to_time(row.created_at);
    message.deliver_at = millis_to_time(row.deliver_at);
    message
}

pub(crate) fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

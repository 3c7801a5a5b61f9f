//! What the queue reports about consumer groups and their members.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A registered member of a consumer group, as listed by
/// [`MessageQueue::consumers`](crate::MessageQueue::consumers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// The member's name.
    pub consumer_id: String,
    /// The group it belongs to.
    pub group: String,
    /// The stream it consumes.
    pub stream: String,
    /// Its topic patterns (empty: every topic).
    pub topics: Vec<String>,
    /// Its last sign of life: a poll, a heartbeat, or an acknowledgement.
    pub last_heartbeat: DateTime<Utc>,
    /// The highest offset it has acknowledged (0 before its first ack).
    pub acked_offset: i64,
    /// When it first registered.
    pub registered_at: DateTime<Utc>,
}

/// The state of one consumer group, as reported by
/// [`MessageQueue::group_stats`](crate::MessageQueue::group_stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages that can be claimed now.
    pub ready: u64,
    /// Messages leased to a member and not yet acknowledged.
    pub in_flight: u64,
    /// Messages waiting for their delay or retry backoff to pass.
    pub delayed: u64,
    /// Dead letters: messages that used up their attempts.
    pub dead: u64,
    /// Messages of the stream the group has not acknowledged yet (everything above: ready,
    /// in flight, delayed and dead).
    pub lag: u64,
    /// How long the oldest ready message has been waiting, if any is ready.
    pub oldest_ready_age: Option<Duration>,
}

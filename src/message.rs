//! [`Message`]: what is published, replayed and delivered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::error::{MqError, Result};

/// Longest accepted delay: delivery times must stay representable, as epoch milliseconds on
/// both databases and as a `DateTime<Utc>`.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A message of a stream.
///
/// The same type is built for publishing ([`Message::new`], then [`with_priority`] and
/// [`with_delay`]) and returned by replay and by subscribers. Fields that the database assigns
/// (`id`, `offset`, `created_at`, `deliver_at`, `attempt`) are meaningless on a message that
/// has not been stored yet.
///
/// [`with_priority`]: Message::with_priority
/// [`with_delay`]: Message::with_delay
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Unique id of the stored message (0 before it is stored).
    pub id: i64,
    /// Name of the stream the message belongs to.
    pub stream: String,
    /// Position in the stream: 1, 2, 3, ... without gaps (0 before it is stored).
    pub offset: i64,
    /// Routing topic, matched against subscribers' patterns.
    pub topic: String,
    /// The JSON payload.
    pub payload: Value,
    /// Higher priorities are delivered first within a consumer group; default 0.
    pub priority: i32,
    /// When the message was stored, by the database's clock.
    pub created_at: DateTime<Utc>,
    /// The message is not delivered before this time (equals `created_at` unless delayed).
    pub deliver_at: DateTime<Utc>,
    /// Delivery attempt, starting at 1 for the first delivery to a group (0 on messages that
    /// were not delivered by a subscriber, such as replayed ones).
    pub attempt: i32,
    pub(crate) delay: Duration,
}

impl Message {
    /// A message to publish on `stream` under `topic`, with priority 0 and no delay.
    pub fn new(stream: impl Into<String>, topic: impl Into<String>, payload: Value) -> Self {
        let now = Utc::now();
        Message {
            id: 0,
            stream: stream.into(),
            offset: 0,
            topic: topic.into(),
            payload,
            priority: 0,
            created_at: now,
            deliver_at: now,
            attempt: 0,
            delay: Duration::ZERO,
        }
    }

    /// A message whose payload is any serializable value.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidPayload`] if `payload` cannot be represented as JSON (a map with
    /// non-string keys, for instance).
    pub fn typed<T: Serialize + ?Sized>(
        stream: impl Into<String>,
        topic: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        let value =
            serde_json::to_value(payload).map_err(|e| MqError::InvalidPayload(e.to_string()))?;
        Ok(Message::new(stream, topic, value))
    }

    /// Sets the priority: within a consumer group, higher priorities are delivered first.
    #[must_use]
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Delays delivery: subscribers receive the message no earlier than `delay` after it is
    /// stored (by the database's clock). Replay sees it at once. Delays longer than 100 years
    /// are refused when the message is published ([`MqError::InvalidConfig`]).
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The delay set by [`Message::with_delay`].
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Deserializes the payload into `T`.
    ///
    /// # Errors
    ///
    /// [`MqError::Deserialize`] if the payload does not have the shape of `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload).map_err(MqError::Deserialize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Order {
        id: u32,
        amount: f64,
    }

    #[test]
    fn typed_payload_round_trips() {
        let order = Order {
            id: 7,
            amount: 99.5,
        };
        let msg = Message::typed("orders", "order.created", &order).unwrap();
        assert_eq!(msg.payload, json!({"id": 7, "amount": 99.5}));
        assert_eq!(msg.payload_as::<Order>().unwrap(), order);
        assert!(matches!(
            msg.payload_as::<Vec<u8>>(),
            Err(MqError::Deserialize(_))
        ));
    }

    #[test]
    fn builder_sets_priority_and_delay() {
        let msg = Message::new("s", "t", json!(null))
            .with_priority(5)
            .with_delay(Duration::from_secs(10));
        assert_eq!(msg.priority, 5);
        assert_eq!(msg.delay(), Duration::from_secs(10));
    }
}

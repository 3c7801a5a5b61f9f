//! The error type of every fallible operation.

use sea_orm::DbErr;

/// `Result<T, MqError>`.
pub type Result<T, E = MqError> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to the queue.
///
/// Validation failures (`MessageTooLarge`, `InvalidTopic`, ...) are detected before any
/// database call and leave the database unchanged. `Database` is reserved for failures of the
/// database itself; [`MqError::is_retryable`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqError {
    /// The serialized JSON payload is larger than the configured limit: `(actual_bytes,
    /// max_bytes)`. Exactly `max_bytes` is accepted.
    #[error("message too large: {0} bytes exceeds the limit of {1} bytes")]
    MessageTooLarge(usize, usize),

    /// The database reported an error, or the connection to it failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),

    /// The database could not be reached when the queue was created.
    #[error("could not connect to the {backend} database: {source}")]
    Connection {
        /// Which database was asked for.
        backend: &'static str,
        /// What the driver reported.
        #[source]
        source: DbErr,
    },

    /// The named stream does not exist; create it with `MessageQueue::create_stream`.
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),

    /// A stream or group name is empty, too long, or contains characters other than ASCII
    /// letters, digits and `_ - . :`.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A topic is empty, longer than 255 characters, or contains whitespace, control
    /// characters or `*`.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A topic pattern is empty, longer than 255 characters, or contains whitespace or
    /// control characters.
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The rejected pattern.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The payload cannot be stored: it failed to serialize, or it contains a NUL character
    /// (`\u0000`), which PostgreSQL's `jsonb` rejects and which is therefore refused on both
    /// databases.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),

    /// A stored payload could not be deserialized into the requested type.
    #[error("payload does not match the requested type: {0}")]
    Deserialize(#[source] serde_json::Error),

    /// The consumer group does not exist on that stream (it is created by the first subscriber
    /// that joins it).
    #[error("consumer group {group:?} does not exist on stream {stream:?}")]
    UnknownGroup {
        /// The stream.
        stream: String,
        /// The group that was asked for.
        group: String,
    },

    /// The message is not leased to this subscriber: it was never delivered to it, or it was
    /// already acknowledged or negatively acknowledged.
    #[error("message {0} is not leased to this subscriber")]
    NotLeased(i64),

    /// The lease on the message was lost before the call: it expired and the message was
    /// claimed again (possibly by another member), or a cleanup released it. Nothing was
    /// changed; the message will be, or has been, delivered again.
    #[error("the lease on message {0} was lost; the message is delivered again")]
    LeaseLost(i64),

    /// The configuration is inconsistent: a `DatabaseType` that does not match the URL, a
    /// malformed URL, an option out of range, or an unsupported database.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The queue was told not to apply migrations
    /// ([`QueueOptions::run_migrations`](crate::QueueOptions::run_migrations) off), and the
    /// database lacks this many of the migrations this version needs. Apply them (`migrate
    /// up` with the `migration` crate) or let the queue apply them.
    #[error(
        "the database lacks {0} migration(s) this version of dabgent_mq needs; apply them with `migrate up`"
    )]
    MigrationsPending(usize),
}

impl MqError {
    /// Whether the same call may succeed if tried again: lost or refused connections, pool
    /// timeouts, deadlocks, serialization failures, a server shutting down, and SQLite's
    /// "database is busy". Validation errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            MqError::Database(err) | MqError::Connection { source: err, .. } => {
                crate::backend::is_transient(err)
            }
            _ => false,
        }
    }
}

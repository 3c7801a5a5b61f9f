//! Configuration of a [`MessageQueue`](crate::MessageQueue).

use std::time::Duration;

use crate::error::{MqError, Result};

/// Default payload limit: 1 MiB of serialized JSON.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1_048_576;

/// Options of a [`MessageQueue`](crate::MessageQueue), set with builder methods.
///
/// ```
/// use std::time::Duration;
/// use dabgent_mq::QueueOptions;
///
/// let options = QueueOptions::new()
///     .pool_size(8)
///     .max_payload_bytes(64 * 1024)
///     .run_migrations(false)
///     .backstop_poll_interval(Duration::from_millis(500));
/// ```
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub(crate) pool_size: Option<u32>,
    pub(crate) max_payload_bytes: usize,
    pub(crate) run_migrations: bool,
    pub(crate) backstop_poll_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) sqlite_busy_timeout: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            pool_size: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            run_migrations: true,
            backstop_poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

impl QueueOptions {
    /// Default options: pool of 20 connections on PostgreSQL and 8 on a SQLite file (an
    /// in-memory SQLite database always has exactly one), 1 MiB payload limit, migrations run
    /// on start, 1 s backstop poll.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maximum number of pooled connections (ignored by
    /// [`MessageQueue::from_connection`](crate::MessageQueue::from_connection), which uses the
    /// host's pool). On a SQLite file the queue opens one more connection beside the pool, which
    /// does its writes (SQLite writes one at a time anyway, and one writer keeps its page cache
    /// warm); the pool serves reads and `publish_in`.
    #[must_use]
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// Largest accepted payload, in bytes of serialized JSON (default 1,048,576).
    #[must_use]
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Whether the queue applies its pending migrations when it is created (default `true`).
    /// Turn it off when the schema is managed with `sea-orm-cli migrate up -d migration`; the
    /// queue then checks that none is pending, and fails to start with
    /// [`MqError::MigrationsPending`](crate::MqError::MigrationsPending) otherwise.
    #[must_use]
    pub fn run_migrations(mut self, run: bool) -> Self {
        self.run_migrations = run;
        self
    }

    /// Longest time a waiting subscriber goes without looking at the database, bounding the
    /// delay when a wake-up notification is lost (default 1 s).
    #[must_use]
    pub fn backstop_poll_interval(mut self, interval: Duration) -> Self {
        self.backstop_poll_interval = interval;
        self
    }

    /// How long to wait for a new database connection to open (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free pooled connection before failing (default 30 s).
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long SQLite waits for another writer's lock before failing (default 10 s).
    #[must_use]
    pub fn sqlite_busy_timeout(mut self, timeout: Duration) -> Self {
        self.sqlite_busy_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.pool_size == Some(0) {
            return Err(MqError::InvalidConfig(
                "pool size must be at least 1".into(),
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(MqError::InvalidConfig(
                "payload limit must be at least 1 byte".into(),
            ));
        }
        if self.backstop_poll_interval.is_zero() {
            return Err(MqError::InvalidConfig(
                "backstop poll interval must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Longest visibility timeout accepted: lease expiry times must stay representable.
const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Name of the consumer group that plain [`subscribe`](crate::MessageQueue::subscribe) joins.
pub const DEFAULT_GROUP: &str = "default";

/// How a subscriber joins a stream; pass to
/// [`MessageQueue::subscribe_with_options`](crate::MessageQueue::subscribe_with_options).
///
/// ```
/// use std::time::Duration;
/// use dabgent_mq::SubscribeOptions;
///
/// let options = SubscribeOptions::new("orders")
///     .group("billing")
///     .consumer_id("worker-1")
///     .topics(vec!["order.created".to_string()])
///     .batch_size(50)
///     .visibility_timeout(Duration::from_secs(30))
///     .poll_timeout(Duration::from_secs(5))
///     .max_attempts(5);
/// ```
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub(crate) stream: String,
    pub(crate) consumer_id: Option<String>,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) batch_size: u32,
    pub(crate) from_offset: Option<i64>,
    pub(crate) visibility_timeout: Duration,
    pub(crate) poll_timeout: Duration,
    pub(crate) max_attempts: i32,
    pub(crate) retry_backoff: Duration,
}

impl SubscribeOptions {
    /// Options for subscribing to `stream`: the default group, every topic, batches of 100,
    /// 30 s visibility timeout, 30 s poll timeout, 5 attempts, 1 s base retry backoff.
    pub fn new(stream: impl Into<String>) -> Self {
        SubscribeOptions {
            stream: stream.into(),
            consumer_id: None,
            group: DEFAULT_GROUP.to_owned(),
            topics: Vec::new(),
            batch_size: 100,
            from_offset: None,
            visibility_timeout: Duration::from_secs(30),
            poll_timeout: Duration::from_secs(30),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
        }
    }

    /// Names this member (letters, digits, `_ - . :`); generated when not set. A member that
    /// subscribes again under the same name takes over its registration.
    #[must_use]
    pub fn consumer_id(mut self, id: impl Into<String>) -> Self {
        self.consumer_id = Some(id.into());
        self
    }

    /// The consumer group to join (default `"default"`). Members of one group share the
    /// messages; every group receives every message.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Topic patterns this member wants (`*` matches any run of characters); empty means
    /// every topic.
    #[must_use]
    pub fn topics(mut self, topics: Vec<String>) -> Self {
        self.topics = topics;
        self
    }

    /// Most messages one `poll` returns (default 100).
    #[must_use]
    pub fn batch_size(mut self, size: u32) -> Self {
        self.batch_size = size;
        self
    }

    /// First offset this member receives. A group created by this subscription starts here
    /// instead of at the beginning of the stream; either way, this member never receives a
    /// message below it.
    #[must_use]
    pub fn from_offset(mut self, offset: i64) -> Self {
        self.from_offset = Some(offset);
        self
    }

    /// How long a claimed message stays leased to this member before it is delivered again
    /// (default 30 s). [`Subscriber::heartbeat`](crate::Subscriber::heartbeat) extends it.
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Longest time `poll` waits for a message before returning an empty batch (default
    /// 30 s; zero means "look once", `Duration::MAX` means "until a message comes").
    #[must_use]
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = timeout;
        self
    }

    /// Deliveries of a message before it becomes a dead letter for the group (default 5).
    #[must_use]
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Base delay before a nacked message is delivered again (default 1 s); it doubles with
    /// every attempt, up to 15 minutes, with ±20 % jitter.
    #[must_use]
    pub fn retry_backoff(mut self, base: Duration) -> Self {
        self.retry_backoff = base;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        crate::topic::validate_name(&self.stream)?;
        crate::topic::validate_name(&self.group)?;
        if let Some(id) = &self.consumer_id {
            crate::topic::validate_name(id)?;
        }
        for pattern in &self.topics {
            crate::topic::validate_pattern(pattern)?;
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(MqError::InvalidConfig(
                "batch size must be between 1 and 10000".into(),
            ));
        }
        if self.visibility_timeout < Duration::from_millis(1)
            || self.visibility_timeout > MAX_VISIBILITY_TIMEOUT
        {
            return Err(MqError::InvalidConfig(
                "visibility timeout must be between 1 ms and 365 days".into(),
            ));
        }
        if self.max_attempts < 1 {
            return Err(MqError::InvalidConfig(
                "max attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

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
    /// host's pool).
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
    /// Turn it off when the schema is managed with `sea-orm-cli migrate up -d migration`.
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

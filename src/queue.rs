//! [`MessageQueue`]: connecting, creating streams, publishing and replaying.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use serde_json::Value;
use tracing::Instrument;

use crate::backend::delivery;
use crate::backend::{self, NewMessage, WriteGate};
use crate::error::{MqError, Result};
use crate::group::{Consumer, GroupStats};
use crate::message::{MAX_DELAY, Message};
use crate::notify::{Listener, Notifier};
use crate::options::QueueOptions;
use crate::options::SubscribeOptions;
use crate::payload::serialize_payload;
use crate::publisher::{self, Publisher};
use crate::replay::ReplayBuilder;
use crate::replay::{from_row, millis_to_time};
use crate::subscriber::{Membership, Subscriber};
use crate::topic;

/// Deepest nesting of arrays and objects accepted in a payload. serde_json refuses to parse
/// documents nested deeper than 128 levels, so a deeper payload could be stored but never read
/// back; the margin leaves room for the envelope of a caller's own framing.
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// How many bytes of serialized payload in one publish keep their callers' values alive until
/// after the write (see `MessageQueue::prepare_all`).
const KEEP_PAYLOADS_UP_TO: usize = 1 << 20;

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatabaseType {
    /// An embedded SQLite file (`sqlite://path/to/file.db`), created if missing, or an
    /// in-memory database (`sqlite::memory:`).
    Sqlite,
    /// A PostgreSQL server (`postgres://user:pass@host/db`).
    Postgres,
}

impl DatabaseType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DatabaseType::Sqlite => "sqlite",
            DatabaseType::Postgres => "postgres",
        }
    }
}

impl fmt::Display for DatabaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A durable message queue and message bus inside a SQLite or PostgreSQL database.
///
/// Cheap to clone: clones share one connection pool (and, on a SQLite file the queue opened,
/// one writer connection).
///
/// # Streams and offsets
///
/// A stream is a named, append-only log. Every message gets the next offset of its stream, 1,
/// 2, 3, ... with no gaps, assigned inside the publishing transaction under the stream row's
/// lock, so offsets become visible in commit order: a reader that has seen offset N never later
/// sees a smaller offset appear. [`MessageQueue::stream`] replays a stream from any offset.
///
/// # Publishing
///
/// Input is validated before any database call (names, topics, payload size and shape) and a
/// failed call writes nothing. [`publish_batch`](MessageQueue::publish_batch) is atomic, even
/// across streams. [`publish_in`](MessageQueue::publish_in) writes inside a transaction of
/// the caller's: the message exists, and is delivered, only if that transaction commits.
///
/// # Delivery contract
///
/// Delivery to subscribers is at least once, per consumer group: each group receives every
/// message of its stream (fan-out), and the members of a group share them, each message held by
/// one member at a time under a lease (the visibility timeout). A message is finished for the
/// group when it is acknowledged; a lease that runs out makes the message available again and
/// counts as an attempt, so a crash while processing leads to redelivery, never to loss.
/// Without crashes or expired leases, every message is delivered exactly once per group.
/// Within a group, ready messages are delivered by priority (higher first), then by offset;
/// there is no ordering guarantee between messages processed concurrently by different members.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dabgent_mq::Result<()> {
/// use dabgent_mq::{DatabaseType, MessageQueue};
/// use futures::StreamExt;
/// use serde_json::json;
///
/// let queue = MessageQueue::new(DatabaseType::Sqlite, "sqlite::memory:").await?;
/// queue.create_stream("orders").await?;
/// let id = queue.publish("orders", "order.created", json!({"order_id": 1})).await?;
///
/// let mut replay = queue.stream("orders").from_offset(1).build();
/// let first = replay.next().await.expect("one message")?;
/// assert_eq!((first.id, first.offset), (id, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MessageQueue {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    db_type: DatabaseType,
    options: QueueOptions,
    notifier: Arc<Notifier>,
    gate: WriteGate,
    publisher: Publisher,
    /// The LISTEN connection (PostgreSQL), started by the first subscriber.
    listener: OnceLock<Listener>,
}

impl fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("database", &self.inner.db_type)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl MessageQueue {
    /// Connects to `url` with default [`QueueOptions`] and applies pending migrations.
    ///
    /// A SQLite file is created if it does not exist (`sqlite://messages.db` works in an empty
    /// folder) and opened in WAL mode with `synchronous=NORMAL`.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidConfig`] if the URL is malformed or does not belong to `db_type`;
    /// [`MqError::Connection`] if the database cannot be reached; [`MqError::Database`] if a
    /// migration fails.
    pub async fn new(db_type: DatabaseType, url: &str) -> Result<Self> {
        Self::with_options(db_type, url, QueueOptions::default()).await
    }

    /// Connects to `url` with the given options.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::new`], [`MqError::InvalidConfig`] for options out of range, and
    /// [`MqError::MigrationsPending`] if migrations are off and the database lacks some.
    pub async fn with_options(
        db_type: DatabaseType,
        url: &str,
        options: QueueOptions,
    ) -> Result<Self> {
        options.validate()?;
        let db = backend::connect(db_type, url, &options).await?;
        let writer = backend::connect_writer(db_type, url, &options).await?;
        Self::start(db, writer, db_type, options).await
    }

    /// Uses the host application's SeaORM connection (and its pool) with default options.
    ///
    /// The pool is used as configured. SeaORM's default pings a connection before every
    /// checkout, a round trip ahead of each statement: for throughput, configure the pool with
    /// `ConnectOptions::test_before_acquire_if_idle_for` (PostgreSQL) or
    /// `test_before_acquire(false)` (SQLite), as the pool [`MessageQueue::new`] opens does.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidConfig`] for a database other than PostgreSQL or SQLite;
    /// [`MqError::Database`] if a migration fails.
    pub async fn from_connection(db: DatabaseConnection) -> Result<Self> {
        Self::from_connection_with_options(db, QueueOptions::default()).await
    }

    /// Uses the host application's SeaORM connection with the given options (the pool size
    /// option does not apply: the host's pool is used as it is).
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::from_connection`], and [`MqError::MigrationsPending`] if migrations
    /// are off and the database lacks some.
    pub async fn from_connection_with_options(
        db: DatabaseConnection,
        options: QueueOptions,
    ) -> Result<Self> {
        options.validate()?;
        let db_type = backend::database_type(&db)?;
        Self::start(db, None, db_type, options).await
    }

    async fn start(
        db: DatabaseConnection,
        writer: Option<DatabaseConnection>,
        db_type: DatabaseType,
        options: QueueOptions,
    ) -> Result<Self> {
        if options.run_migrations {
            backend::migrate(&db).await?;
        } else {
            // The statements depend on the schema (on SQLite, a catch-up trigger), so a
            // database behind this version must not be used as if it were current.
            let pending = backend::pending_migrations(&db).await?;
            if pending > 0 {
                return Err(MqError::MigrationsPending(pending));
            }
        }
        let gate = WriteGate::new(db_type, writer);
        gate.start_checkpoints(db.clone());
        Ok(MessageQueue {
            inner: Arc::new(Inner {
                db,
                db_type,
                options,
                notifier: Arc::new(Notifier::default()),
                gate,
                publisher: Publisher::default(),
                listener: OnceLock::new(),
            }),
        })
    }

    /// The connection the queue uses, for running a transaction to pass to
    /// [`publish_in`](MessageQueue::publish_in).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The database this queue runs on.
    pub fn database_type(&self) -> DatabaseType {
        self.inner.db_type
    }

    /// The options this queue was created with.
    pub fn options(&self) -> &QueueOptions {
        &self.inner.options
    }

    /// Creates a stream. Idempotent: creating an existing stream succeeds and changes nothing.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidName`] for a name that is empty, longer than 255 characters, or uses
    /// characters other than ASCII letters, digits and `_ - . :`.
    pub async fn create_stream(&self, name: &str) -> Result<()> {
        topic::validate_name(name)?;
        let turn = self.inner.gate.enter().await;
        backend::create_stream(turn.conn(&self.inner.db), name).await
    }

    /// Publishes a message with priority 0 and returns its id.
    ///
    /// # Errors
    ///
    /// [`MqError::UnknownStream`], [`MqError::InvalidName`], [`MqError::InvalidTopic`],
    /// [`MqError::MessageTooLarge`], [`MqError::InvalidPayload`] and, for a delay over 100
    /// years, [`MqError::InvalidConfig`] for bad input (nothing is written);
    /// [`MqError::Database`] if the database fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dabgent_mq::Result<()> {
    /// # let queue = dabgent_mq::MessageQueue::new(dabgent_mq::DatabaseType::Sqlite, "sqlite::memory:").await?;
    /// use dabgent_mq::MqError;
    /// use serde_json::json;
    ///
    /// queue.create_stream("orders").await?;
    /// let id = queue.publish("orders", "order.created", json!({"amount": 99.99})).await?;
    ///
    /// let huge = json!("x".repeat(2 << 20));
    /// match queue.publish("orders", "order.created", huge).await {
    ///     Err(MqError::MessageTooLarge(size, max)) => assert!(size > max),
    ///     other => panic!("unexpected: {other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, stream: &str, topic: &str, payload: Value) -> Result<i64> {
        self.publish_message(Message::new(stream, topic, payload))
            .await
    }

    /// Publishes a message with the given priority (higher is delivered first) and returns its
    /// id.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::publish`].
    pub async fn publish_with_priority(
        &self,
        stream: &str,
        topic: &str,
        payload: Value,
        priority: i32,
    ) -> Result<i64> {
        self.publish_message(Message::new(stream, topic, payload).with_priority(priority))
            .await
    }

    /// Publishes a message built with [`Message::new`] (with its priority and delay) and
    /// returns its id.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::publish`].
    pub async fn publish_message(&self, message: Message) -> Result<i64> {
        let mut ids = self.publish_batch(vec![message]).await?;
        ids.pop()
            .ok_or_else(|| MqError::InvalidConfig("publish returned no id".into()))
    }

    /// Publishes many messages atomically, in one transaction: all are stored or none is.
    /// The batch may span streams. Returns the ids in input order.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::publish`]; one invalid message fails the whole batch and nothing is
    /// written.
    pub async fn publish_batch(&self, messages: Vec<Message>) -> Result<Vec<i64>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (prepared, payloads) = self.prepare_all(messages)?;
        let span = tracing::debug_span!("publish", count = prepared.len());
        let write = publisher::submit(self, prepared).instrument(span);
        free_during_write(self.inner.db_type, write, payloads).await
    }

    /// Writes validated messages atomically (one statement for a single message, otherwise one
    /// transaction), then wakes this process's waiting subscribers of their streams (after the
    /// commit, not before). A single message is moved into its statement (see
    /// [`backend::publish_one`]).
    pub(crate) async fn write_batch(&self, mut messages: Vec<NewMessage>) -> Result<Vec<i64>> {
        let [message] = &mut messages[..] else {
            return self.write_all(&messages).await;
        };
        let id = {
            let turn = self.inner.gate.enter().await;
            backend::publish_one(turn.conn(&self.inner.db), message).await?
        };
        self.inner.notifier.wake([message.stream.as_str()]);
        Ok(vec![id])
    }

    /// [`write_batch`](Self::write_batch) for messages the caller keeps (to write them again
    /// one request at a time if the combined write fails).
    pub(crate) async fn write_all(&self, messages: &[NewMessage]) -> Result<Vec<i64>> {
        let ids = {
            let turn = self.inner.gate.enter().await;
            backend::publish_messages(turn.conn(&self.inner.db), messages).await?
        };
        let mut streams: Vec<&str> = messages.iter().map(|m| m.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        self.inner.notifier.wake(streams);
        Ok(ids)
    }

    /// Publishes a message inside the caller's connection or transaction (the outbox
    /// pattern): it is stored, and delivered, only if that transaction commits.
    ///
    /// Inside a transaction the insert runs in a savepoint, so a failed publish leaves the
    /// caller's transaction usable. Until the caller commits, other publishers to the same
    /// stream wait for it, as they wait for each other: that is what keeps offsets gapless
    /// and in commit order. Keep such transactions short.
    ///
    /// On SQLite, start the caller's transaction with `BEGIN IMMEDIATE` (SeaORM:
    /// `begin_with_options` with `SqliteTransactionMode::Immediate`) when it reads before it
    /// writes, or it may fail with "database is locked" under contention. Waiting subscribers
    /// of this process find the message by their backstop poll, since the queue cannot see the
    /// caller's commit; on PostgreSQL they are woken by the commit's notification.
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::publish`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dabgent_mq::Result<()> {
    /// # let queue = dabgent_mq::MessageQueue::new(dabgent_mq::DatabaseType::Sqlite, "sqlite::memory:").await?;
    /// use dabgent_mq::Message;
    /// use sea_orm::TransactionTrait;
    /// use serde_json::json;
    ///
    /// queue.create_stream("orders").await?;
    /// let txn = queue.connection().begin().await?;
    /// // ... the application's own writes on `txn` ...
    /// queue.publish_in(&txn, Message::new("orders", "order.created", json!({"id": 7}))).await?;
    /// txn.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_in<C>(&self, conn: &C, message: Message) -> Result<i64>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let mut ids = self.publish_batch_in(conn, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| MqError::InvalidConfig("publish returned no id".into()))
    }

    /// Publishes many messages atomically inside the caller's connection or transaction; see
    /// [`publish_in`](MessageQueue::publish_in).
    ///
    /// # Errors
    ///
    /// As [`MessageQueue::publish_batch`].
    pub async fn publish_batch_in<C>(&self, conn: &C, messages: Vec<Message>) -> Result<Vec<i64>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (prepared, payloads) = self.prepare_all(messages)?;
        let span = tracing::debug_span!("publish_in", count = prepared.len());
        let result = async {
            let txn = backend::begin_write(conn).await?;
            let result = backend::insert_messages(&txn, &prepared).await;
            backend::finish(txn, result).await
        }
        .instrument(span)
        .await;
        // After the write, as on SQLite in `publish_batch`: this write starts with a `BEGIN`
        // or a savepoint, during which the frees would run.
        drop(payloads);
        result
    }

    /// Starts a replay of the stream `name`; see [`ReplayBuilder`].
    pub fn stream(&self, name: &str) -> ReplayBuilder {
        ReplayBuilder::new(self.inner.db.clone(), name.to_owned())
    }

    /// Joins the stream's default group (`"default"`) as a new member that receives the
    /// topics matching `topics` (every topic if empty). Several plain subscribers of one stream
    /// share its messages.
    ///
    /// # Errors
    ///
    /// [`MqError::UnknownStream`], [`MqError::InvalidPattern`], [`MqError::Database`].
    pub async fn subscribe(&self, stream: &str, topics: Vec<String>) -> Result<Subscriber> {
        self.subscribe_with_options(SubscribeOptions::new(stream).topics(topics))
            .await
    }

    /// Joins a consumer group as configured by `options`. A group that does not exist yet is
    /// created, starting at the beginning of the stream or at `from_offset`.
    ///
    /// # Errors
    ///
    /// [`MqError::UnknownStream`], [`MqError::InvalidName`], [`MqError::InvalidPattern`],
    /// [`MqError::InvalidConfig`] for options out of range, [`MqError::Database`].
    pub async fn subscribe_with_options(&self, options: SubscribeOptions) -> Result<Subscriber> {
        options.validate()?;
        let db = &self.inner.db;
        let stream = backend::find_stream(db, &options.stream)
            .await?
            .ok_or_else(|| MqError::UnknownStream(options.stream.clone()))?;
        let consumer_id = options
            .consumer_id
            .clone()
            .unwrap_or_else(generate_consumer_id);
        let group_id = {
            let turn = self.inner.gate.enter().await;
            let db = turn.conn(db);
            let group_id = delivery::ensure_group(
                db,
                stream.id,
                &options.group,
                options.from_offset.unwrap_or(1),
            )
            .await?;
            delivery::register_consumer(db, stream.id, group_id, &consumer_id, &options.topics)
                .await?;
            group_id
        };
        if self.inner.db_type == DatabaseType::Postgres {
            let listener = self.inner.listener.get_or_init(|| {
                Listener::start(
                    db.get_postgres_connection_pool().clone(),
                    Arc::downgrade(&self.inner.notifier),
                )
            });
            listener.wait_listening(Duration::from_secs(5)).await;
        }
        let membership = Membership {
            stream: stream.name,
            stream_id: stream.id,
            group_id,
            consumer_id,
            patterns: options.topics.clone(),
        };
        Ok(Subscriber::new(self.clone(), membership, &options))
    }

    /// The dead letters of a group: messages that failed `max_attempts` times, in offset
    /// order, with `attempt` set to the attempts they used.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidName`], [`MqError::UnknownStream`], [`MqError::UnknownGroup`],
    /// [`MqError::Database`].
    pub async fn dead_letters(&self, stream: &str, group: &str) -> Result<Vec<Message>> {
        let (_, group_id) = self.resolve_group(stream, group).await?;
        let rows = delivery::dead_letters(&self.inner.db, group_id).await?;
        Ok(rows
            .into_iter()
            .map(|(row, attempts)| {
                let mut message = from_row(row, stream);
                message.attempt = attempts;
                message
            })
            .collect())
    }

    /// Makes every dead letter of a group ready for delivery again, with a fresh attempt count.
    /// Returns how many were requeued.
    ///
    /// # Errors
    ///
    /// As [`dead_letters`](MessageQueue::dead_letters).
    pub async fn requeue_dead_letters(&self, stream: &str, group: &str) -> Result<u64> {
        let (_, group_id) = self.resolve_group(stream, group).await?;
        let requeued = {
            let turn = self.inner.gate.enter().await;
            delivery::requeue_dead_letters(turn.conn(&self.inner.db), group_id).await?
        };
        self.inner.notifier.wake([stream]);
        Ok(requeued)
    }

    /// Counts of a group's messages by state, its lag, and the age of its oldest ready
    /// message.
    ///
    /// # Errors
    ///
    /// As [`dead_letters`](MessageQueue::dead_letters).
    pub async fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats> {
        let (_, group_id) = self.resolve_group(stream, group).await?;
        let db = &self.inner.db;
        let stream_row = backend::find_stream(db, stream)
            .await?
            .ok_or_else(|| MqError::UnknownStream(stream.to_owned()))?;
        let group_row = delivery::find_group(db, stream_row.id, group)
            .await?
            .ok_or_else(|| unknown_group(stream, group))?;
        let counts =
            delivery::state_counts(db, group_id, stream_row.id, group_row.materialized_offset)
                .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let oldest = [counts.oldest_ready_at, counts.unmaterialized_oldest]
            .into_iter()
            .flatten()
            .min();
        let ready = count(counts.ready) + count(counts.unmaterialized_ready);
        let delayed = count(counts.delayed) + count(counts.unmaterialized_delayed);
        let in_flight = count(counts.in_flight);
        let dead = count(counts.dead);
        Ok(GroupStats {
            ready,
            in_flight,
            delayed,
            dead,
            lag: ready + delayed + in_flight + dead,
            oldest_ready_age: (ready > 0)
                .then(|| oldest.map(|at| Duration::from_millis(count(counts.now - at))))
                .flatten(),
        })
    }

    /// The registered members of a stream, in every group, by consumer id.
    ///
    /// # Errors
    ///
    /// [`MqError::InvalidName`], [`MqError::UnknownStream`], [`MqError::Database`].
    pub async fn consumers(&self, stream: &str) -> Result<Vec<Consumer>> {
        topic::validate_name(stream)?;
        let db = &self.inner.db;
        let stream_row = backend::find_stream(db, stream)
            .await?
            .ok_or_else(|| MqError::UnknownStream(stream.to_owned()))?;
        let rows = delivery::list_consumers(db, stream_row.id).await?;
        rows.into_iter()
            .map(|(row, group)| {
                Ok(Consumer {
                    topics: serde_json::from_value(row.patterns).map_err(|e| {
                        DbErr::Json(format!("patterns of consumer {}: {e}", row.consumer_id))
                    })?,
                    consumer_id: row.consumer_id,
                    group,
                    stream: stream.to_owned(),
                    last_heartbeat: millis_to_time(row.last_heartbeat_at),
                    acked_offset: row.acked_offset,
                    registered_at: millis_to_time(row.created_at),
                })
            })
            .collect()
    }

    /// Removes every member, of any stream and group, that has shown no sign of life (poll,
    /// heartbeat) for more than `max_silence_secs` seconds, and makes the messages they held
    /// available to the rest of their group at once. Returns how many members were removed.
    ///
    /// # Errors
    ///
    /// [`MqError::Database`].
    pub async fn cleanup_expired_consumers(&self, max_silence_secs: u64) -> Result<u64> {
        let silence_ms = i64::try_from(max_silence_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let removed = {
            let turn = self.inner.gate.enter().await;
            delivery::cleanup_expired_consumers(turn.conn(&self.inner.db), silence_ms).await?
        };
        if removed > 0 {
            self.inner.notifier.wake_all();
        }
        Ok(removed)
    }

    async fn resolve_group(&self, stream: &str, group: &str) -> Result<(i64, i64)> {
        topic::validate_name(stream)?;
        topic::validate_name(group)?;
        let db = &self.inner.db;
        let stream_row = backend::find_stream(db, stream)
            .await?
            .ok_or_else(|| MqError::UnknownStream(stream.to_owned()))?;
        let group_row = delivery::find_group(db, stream_row.id, group)
            .await?
            .ok_or_else(|| unknown_group(stream, group))?;
        Ok((stream_row.id, group_row.id))
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    pub(crate) fn write_gate(&self) -> &WriteGate {
        &self.inner.gate
    }

    /// Validates `messages` and turns them into rows to write; also returns payload values for
    /// the caller to drop while the write is in flight (see `publish_batch`). Only the first
    /// [`KEEP_PAYLOADS_UP_TO`] bytes of serialized payload keep their values: beyond that the
    /// batch is large enough for its frees to be a small part of its cost, and holding every
    /// value beside its text until the commit would double the batch's peak memory.
    fn prepare_all(&self, messages: Vec<Message>) -> Result<(Vec<NewMessage>, Vec<Value>)> {
        // A batch mostly repeats one stream and topic: each distinct run is checked once.
        let mut checked: Option<(&str, &str)> = None;
        for m in &messages {
            if checked.is_none_or(|(s, _)| s != m.stream) {
                topic::validate_name(&m.stream)?;
            }
            if checked.is_none_or(|(_, t)| t != m.topic) {
                topic::validate_topic(&m.topic)?;
            }
            checked = Some((&m.stream, &m.topic));
        }
        let max_payload_bytes = self.inner.options.max_payload_bytes;
        let mut payloads = Vec::with_capacity(messages.len());
        let mut kept_bytes = 0;
        let rows = messages
            .into_iter()
            .map(|m| {
                let (row, payload) = prepare(m, max_payload_bytes)?;
                kept_bytes += row.payload.len();
                if kept_bytes <= KEEP_PAYLOADS_UP_TO {
                    payloads.push(payload);
                }
                Ok(row)
            })
            .collect::<Result<_>>()?;
        Ok((rows, payloads))
    }

    /// Whether the database, evaluating a topic pattern the way subscriptions do, finds that
    /// `topic` matches `pattern`. Used to check the SQL form against [`topic::matches()`];
    /// not part of the stable API.
    #[doc(hidden)]
    pub async fn topic_matches_in_database(&self, pattern: &str, topic: &str) -> Result<bool> {
        backend::topic_matches(&self.inner.db, topic, pattern).await
    }
}

fn unknown_group(stream: &str, group: &str) -> MqError {
    MqError::UnknownGroup {
        stream: stream.to_owned(),
        group: group.to_owned(),
    }
}

/// A consumer id unique across processes and restarts: process id, start time, counter.
fn generate_consumer_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "consumer-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a publish's `write` and frees the callers' payload values, on PostgreSQL while the
/// server works on the write, on SQLite after it.
///
/// Freeing a batch's values costs about a third of the time it takes to validate and
/// serialize the batch (1,000 messages of 200 bytes, measured). On PostgreSQL, `join!` polls
/// the write first, which for a batch to one stream sends its one statement (or queues the
/// batch behind a write in flight), and frees the values while the answer is outstanding
/// (batch publish, three interleaved pairs: 0.87-0.89 -> 0.88-0.96 of the plain insert). A
/// batch to several streams starts with a `BEGIN`, during which the frees run; that case was
/// not measured. A SQLite batch is several short round trips to a thread of this process, the
/// first of which comes back long before the frees are done, so the frees would delay the
/// write's own statements instead (measured: 0.95-1.04 -> 0.90-0.99); they come after it, not
/// before: a burst of frees just before the write filled glibc's free lists with small chunks,
/// which the write's first large allocation then had to consolidate (about 6 % of the CPU time
/// of a 1,000-message batch).
async fn free_during_write<T>(
    db_type: DatabaseType,
    write: impl Future<Output = Result<T>>,
    payloads: Vec<Value>,
) -> Result<T> {
    match db_type {
        DatabaseType::Postgres => tokio::join!(write, async move { drop(payloads) }).0,
        DatabaseType::Sqlite => {
            let result = write.await;
            drop(payloads);
            result
        }
    }
}

/// Checks what is left of a message whose stream name and topic are valid and turns it into a
/// row to write, returned with the message's payload value. No database call.
fn prepare(message: Message, max_payload_bytes: usize) -> Result<(NewMessage, Value)> {
    let payload = serialize_payload(&message.payload, max_payload_bytes)?;
    if message.delay > MAX_DELAY {
        return Err(MqError::InvalidConfig(
            "delay must be at most 100 years".into(),
        ));
    }
    let delay_ms = i64::try_from(message.delay.as_millis())
        .map_err(|_| MqError::InvalidConfig("delay is too long".into()))?;
    let row = NewMessage {
        stream: message.stream,
        topic: message.topic,
        payload,
        priority: message.priority,
        delay_ms,
    };
    Ok((row, message.payload))
}

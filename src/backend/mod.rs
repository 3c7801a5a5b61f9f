//! Every statement the library runs. Crate-private.
//!
//! Portable SeaORM / SeaQuery code lives here; the few statements a dialect must say in its own
//! words live in the twin modules [`postgres`] and [`sqlite`], which have the same function
//! names. Dispatch on the backend happens here, once per operation.

mod combine;
pub(crate) mod delivery;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Weak};

use entity::{message, stream};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, RuntimeErr, SqliteTransactionMode,
    TransactionOptions, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use crate::error::{MqError, Result};
use crate::options::QueueOptions;
use crate::queue::DatabaseType;

/// Rows per multi-row `INSERT`: at most 7 bind parameters each stays far below SQLite's limit of
/// 32,766 parameters per statement (and PostgreSQL's 65,535).
const INSERT_CHUNK_ROWS: usize = 1000;

/// How long a pooled PostgreSQL connection may sit idle before it is pinged on checkout.
const POOL_PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest `pg_notify` payload we send (PostgreSQL's limit is 8000 bytes); a longer list of
/// streams is replaced by `*`, meaning "look at every stream".
const MAX_NOTIFY_PAYLOAD: usize = 7900;

/// Serializes this process's writes to a SQLite database.
///
/// SQLite has one writer at a time. Left to itself, a connection that finds the write lock
/// taken sleeps in its busy handler (1, 2, 5, 10 ms and longer) and retries, so a few
/// concurrent writers of one process spend most of their time asleep while the lock is free.
/// Queuing them on an async mutex instead hands the lock over the moment it is released.
/// Other processes still meet at SQLite's lock, with the busy timeout. PostgreSQL needs no
/// gate: its row locks are fine-grained.
///
/// On a SQLite file the queue opened itself, the gate also owns the one connection that does
/// the queue's writes (all but `publish_in`, which writes with the caller's connection). SQLite keeps a page cache per connection and drops all of it
/// when a transaction starts and finds that another connection has written since: with writes
/// spread over a pool, nearly every write starts cold and reads the tables' upper levels
/// again. One writer finds its own changes only, so its cache stays warm. Since writes take
/// turns anyway, one connection costs no concurrency; reads keep using the pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteGate(Option<Arc<Gate>>);

#[derive(Debug)]
struct Gate {
    turns: tokio::sync::Mutex<()>,
    writer: Option<DatabaseConnection>,
    /// Turns taken so far: the checkpointer skips a checkpoint when nothing was written.
    taken: std::sync::atomic::AtomicU64,
    /// Claims and acks waiting to be written together (see [`combine`]).
    combiner: combine::Combiner,
}

impl Gate {
    async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let turn = self.turns.lock().await;
        self.taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        turn
    }
}

/// How often the checkpointer (see [`WriteGate::start_checkpoints`]) looks for new writes.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A WAL longer than this (in 4 KiB pages) is checkpointed once with writes held, so that it
/// starts over (see [`WriteGate::start_checkpoints`]).
const WAL_RESTART_PAGES: i64 = 4000;

/// Before it holds writes to start the WAL over, the checkpointer repeats its passive
/// checkpoint (at most `WAL_RESTART_PASSES` more times) until at most this many pages were
/// appended during the last one.
const WAL_RESTART_LEFT_PAGES: i64 = 256;

/// See [`WAL_RESTART_LEFT_PAGES`].
const WAL_RESTART_PASSES: u32 = 4;

/// Rows the writer's worker thread may hand over before the task reading them catches up
/// (the driver's default is 50). A combined script returns the rows of several claims at
/// once; with room for only 50, the worker thread stopped every 50 rows until the reading task
/// had woken and drained them. The writer's results are read whole by their callers anyway,
/// so a deeper buffer holds nothing they would not hold.
const WRITER_ROW_BUFFER: usize = 1024;

/// The writer's own automatic checkpoint: only a backstop for the checkpointer task.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "20000";

/// Once the WAL starts over, its file is truncated to this size (SQLite otherwise keeps it at
/// its largest).
const WAL_SIZE_LIMIT_BYTES: &str = "67108864";

/// This process's turn to write, until dropped.
pub(crate) struct Turn<'a> {
    _turn: Option<tokio::sync::MutexGuard<'a, ()>>,
    writer: Option<&'a DatabaseConnection>,
}

impl Turn<'_> {
    /// The connection to write with: the gate's writer if it has one, else `pool`.
    pub(crate) fn conn<'c>(&'c self, pool: &'c DatabaseConnection) -> &'c DatabaseConnection {
        self.writer.unwrap_or(pool)
    }
}

impl WriteGate {
    /// A gate for `db_type`; `writer` is the connection for all writes, if there is one.
    pub(crate) fn new(db_type: DatabaseType, writer: Option<DatabaseConnection>) -> Self {
        match db_type {
            DatabaseType::Sqlite => WriteGate(Some(Arc::new(Gate {
                turns: tokio::sync::Mutex::new(()),
                writer,
                taken: std::sync::atomic::AtomicU64::new(0),
                combiner: combine::Combiner::default(),
            }))),
            DatabaseType::Postgres => WriteGate(None),
        }
    }

    /// Waits for this process's turn to write (at once on PostgreSQL).
    pub(crate) async fn enter(&self) -> Turn<'_> {
        match &self.0 {
            Some(gate) => {
                let turn = gate.turn().await;
                Turn {
                    _turn: Some(turn),
                    writer: gate.writer.as_ref(),
                }
            }
            None => Turn {
                _turn: None,
                writer: None,
            },
        }
    }
}

impl WriteGate {
    /// Moves WAL checkpoints off the write path, for a gate with its own writer (see
    /// [`connect_writer`]).
    ///
    /// With `synchronous=NORMAL`, a commit in WAL mode does not wait for the disk; only a
    /// checkpoint does (it syncs the WAL, copies it into the database file, and syncs that).
    /// SQLite runs its automatic checkpoint inside the commit that crosses 1,000 WAL pages, so
    /// that write, and every write queued on the gate behind it, would wait for two disk
    /// syncs. Here a task checkpoints from a pooled connection instead, every
    /// `CHECKPOINT_INTERVAL` after which the gate was entered, while writes go on: a passive
    /// checkpoint takes no lock that a writer needs.
    ///
    /// SQLite starts the WAL over from its beginning only when a write finds it entirely
    /// copied, which a checkpoint running beside steady writes never leaves behind. So when a
    /// checkpoint reports more than `WAL_RESTART_PAGES` pages, the task (after more passive
    /// passes, see [`checkpoint_round`]) takes a turn at the gate and checkpoints once more
    /// while no write can run; the next write then starts the WAL over. (The writer keeps an
    /// automatic checkpoint at `WRITER_AUTOCHECKPOINT_PAGES` as a backstop, should this task
    /// ever stop.) The task ends once the gate is gone.
    pub(crate) fn start_checkpoints(&self, pool: DatabaseConnection) {
        let Some(gate) = &self.0 else { return };
        if gate.writer.is_none() {
            return;
        }
        let gate = Arc::downgrade(gate);
        tokio::spawn(async move {
            let mut checkpointed = 0;
            loop {
                tokio::time::sleep(CHECKPOINT_INTERVAL).await;
                let Some(taken) = gate
                    .upgrade()
                    .map(|g| g.taken.load(std::sync::atomic::Ordering::Relaxed))
                else {
                    return;
                };
                if taken == checkpointed {
                    continue;
                }
                match checkpoint_round(&gate, &pool).await {
                    Ok(()) => checkpointed = taken,
                    Err(err) => {
                        tracing::debug!(error = %err, "dabgent_mq: WAL checkpoint failed");
                    }
                }
            }
        });
    }
}

/// One round of the checkpointer (see [`WriteGate::start_checkpoints`]): a passive
/// checkpoint, and once the WAL is longer than `WAL_RESTART_PAGES`, a checkpoint with writes
/// held, so that the next write starts the WAL over.
///
/// Holding writes costs the checkpoint's two disk syncs plus the copy of whatever the last
/// checkpoint left behind (with 1 MiB messages, 25-45 ms per hold, measured). So first the
/// passive checkpoint is repeated, while writes go on, until one pass finds at most
/// `WAL_RESTART_LEFT_PAGES` pages appended since the previous one (at most
/// `WAL_RESTART_PASSES` more passes): the held checkpoint then has little to copy, and when a
/// write finds a pass's copy complete, it starts the WAL over by itself and writes need not
/// be held at all (the WAL is then short again). 1 MiB publish + consume against the plain
/// insert, interleaved benchmark runs: on its own, 0.58-0.64 -> 0.64-0.68 (three pairs); after
/// the million-message scenarios, as in the full benchmark, 0.53-0.59 -> 0.77-0.80 (two pairs).
async fn checkpoint_round(gate: &Weak<Gate>, pool: &DatabaseConnection) -> Result<(), DbErr> {
    let mut wal_pages = sqlite::checkpoint(pool).await?;
    let mut passes = 0;
    let mut appended = i64::MAX;
    while wal_pages > WAL_RESTART_PAGES
        && appended > WAL_RESTART_LEFT_PAGES
        && passes < WAL_RESTART_PASSES
    {
        let pages = sqlite::checkpoint(pool).await?;
        // Negative when a write started the WAL over meanwhile.
        appended = pages - wal_pages;
        wal_pages = pages;
        passes += 1;
    }
    if wal_pages > WAL_RESTART_PAGES
        && let Some(gate) = gate.upgrade()
    {
        let _turn = gate.turns.lock().await;
        sqlite::checkpoint(pool).await?;
    }
    Ok(())
}

/// A validated message, ready to be written.
#[derive(Debug)]
pub(crate) struct NewMessage {
    pub(crate) stream: String,
    pub(crate) topic: String,
    /// The payload's JSON text, serialized once at validation.
    pub(crate) payload: String,
    pub(crate) priority: i32,
    pub(crate) delay_ms: i64,
}

/// Opens a pool for `url`, after checking that the URL is well formed and belongs to
/// `db_type`.
///
/// A SQLite file is created if missing and opened in WAL mode with `synchronous=NORMAL` and a
/// busy timeout. An in-memory SQLite database lives in its connection, so its pool has exactly
/// one connection that is never recycled.
pub(crate) async fn connect(
    db_type: DatabaseType,
    url: &str,
    options: &QueueOptions,
) -> Result<DatabaseConnection> {
    open(db_type, url, options, options.pool_size, false).await
}

/// Opens the connection for the queue's own writes to a SQLite file (see [`WriteGate`]): a
/// pool of one that is never recycled, configured like the queue's pool, whose automatic WAL
/// checkpoint is only a backstop (the gate's checkpointer runs them, see
/// [`WriteGate::start_checkpoints`]). `None` for PostgreSQL, and for an in-memory SQLite
/// database, which lives in the queue's one pooled connection.
pub(crate) async fn connect_writer(
    db_type: DatabaseType,
    url: &str,
    options: &QueueOptions,
) -> Result<Option<DatabaseConnection>> {
    if db_type != DatabaseType::Sqlite || is_sqlite_in_memory(url) {
        return Ok(None);
    }
    open(db_type, url, options, Some(1), true).await.map(Some)
}

fn is_sqlite_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

async fn open(
    db_type: DatabaseType,
    url: &str,
    options: &QueueOptions,
    pool_size: Option<u32>,
    writer: bool,
) -> Result<DatabaseConnection> {
    let mut connect = ConnectOptions::new(url.to_owned());
    connect
        .sqlx_logging(false)
        .connect_timeout(options.connect_timeout)
        .acquire_timeout(options.acquire_timeout);
    match db_type {
        DatabaseType::Sqlite => {
            if !url.starts_with("sqlite:") {
                return Err(mismatch(db_type, url));
            }
            SqliteConnectOptions::from_str(url)
                .map_err(|e| MqError::InvalidConfig(format!("malformed sqlite url: {e}")))?;
            let in_memory = is_sqlite_in_memory(url);
            let busy_timeout = options.sqlite_busy_timeout;
            if in_memory || writer {
                // An in-memory database lives in its connection; the writer's page cache is
                // what it is there for. Neither is ever recycled.
                connect
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            } else {
                connect.max_connections(pool_size.unwrap_or(8));
            }
            // The driver pings a connection before handing it out, which for SQLite is a round
            // trip to the connection's worker thread on every statement; a SQLite connection is
            // a file handle in this process, which nothing in between can break.
            connect.test_before_acquire(false);
            connect.map_sqlx_sqlite_opts(move |sqlite| {
                let sqlite = sqlite
                    .create_if_missing(true)
                    .foreign_keys(true)
                    .busy_timeout(busy_timeout);
                if in_memory {
                    sqlite
                } else {
                    let sqlite = sqlite
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal);
                    if writer {
                        sqlite
                            .row_buffer_size(WRITER_ROW_BUFFER)
                            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
                            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES)
                    } else {
                        sqlite
                    }
                }
            });
        }
        DatabaseType::Postgres => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(mismatch(db_type, url));
            }
            PgConnectOptions::from_str(url)
                .map_err(|e| MqError::InvalidConfig(format!("malformed postgres url: {e}")))?;
            connect.max_connections(pool_size.unwrap_or(20));
            // By default the driver pings a connection before handing it out: a round trip to
            // the server ahead of every statement. It also pings each connection as it comes
            // back to the pool and closes it if that fails, so a connection used within the
            // last second was known good a moment ago; only one idle for longer (which the
            // server, a proxy or a firewall may have dropped meanwhile) is pinged first. After
            // a server restart, a connection in use can fail one call, and is then replaced.
            connect.test_before_acquire_if_idle_for(POOL_PING_AFTER_IDLE);
        }
    }
    // Opening a SQLite file switches it to WAL, which needs a moment of exclusive access: when
    // several queues open a new file at once, SQLite reports "database is locked" without
    // waiting on its busy timeout. Try again until the busy timeout has passed.
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match Database::connect(connect.clone()).await {
            Ok(db) => return Ok(db),
            Err(err)
                if db_type == DatabaseType::Sqlite
                    && is_sqlite_busy(&err)
                    && started.elapsed() < options.sqlite_busy_timeout =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(source) => {
                return Err(MqError::Connection {
                    backend: db_type.name(),
                    source,
                });
            }
        }
    }
}

fn is_sqlite_busy(err: &DbErr) -> bool {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sea_orm::sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517")),
            _ => false,
        },
        _ => false,
    }
}

fn mismatch(db_type: DatabaseType, url: &str) -> MqError {
    let scheme = url.split(':').next().unwrap_or_default();
    MqError::InvalidConfig(format!(
        "database type {} does not match a url with scheme {scheme:?}",
        db_type.name()
    ))
}

/// The database type of a connection, if the library supports it: a real SQLite or
/// PostgreSQL pool (not a mock connection, which cannot listen or lock).
pub(crate) fn database_type(conn: &DatabaseConnection) -> Result<DatabaseType> {
    if conn.is_mock_connection() {
        return Err(MqError::InvalidConfig(
            "a mock connection cannot run the queue; use SQLite (sqlite::memory: works) or PostgreSQL".into(),
        ));
    }
    match conn.get_database_backend() {
        DbBackend::Postgres => Ok(DatabaseType::Postgres),
        DbBackend::Sqlite => Ok(DatabaseType::Sqlite),
        other => Err(MqError::InvalidConfig(format!(
            "{other:?} is not supported; use PostgreSQL or SQLite"
        ))),
    }
}

/// How many of this version's migrations the database has not applied. Reads only: it creates
/// no migration table where there is none (then every migration is pending).
pub(crate) async fn pending_migrations(db: &DatabaseConnection) -> Result<usize> {
    Ok(Migrator::get_pending_migrations_read_only(db).await?.len())
}

/// Applies pending migrations, one process at a time: under an advisory lock on PostgreSQL,
/// inside `BEGIN IMMEDIATE` on SQLite.
pub(crate) async fn migrate(db: &DatabaseConnection) -> Result<()> {
    let txn = begin_write(db).await?;
    match db.get_database_backend() {
        DbBackend::Postgres => postgres::lock_migrations(&txn).await?,
        _ => sqlite::lock_migrations(&txn).await?,
    }
    Migrator::up(&txn, None).await?;
    txn.commit().await?;
    Ok(())
}

/// Begins a transaction that will write: `BEGIN IMMEDIATE` on SQLite (pitfall: a deferred
/// transaction that reads first fails with "database is locked" when it later writes under
/// contention), a plain `BEGIN` on PostgreSQL. Inside a transaction, a savepoint.
pub(crate) async fn begin_write<C: TransactionTrait>(conn: &C) -> Result<C::Transaction> {
    Ok(conn
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

/// Commits on success, rolls back (explicitly, rather than on drop) on failure.
pub(crate) async fn finish<T>(txn: impl TransactionSession, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            txn.commit().await?;
            Ok(value)
        }
        Err(err) => {
            // The original error is what the caller needs; a failed rollback (say, of a broken
            // connection) is discarded with the transaction anyway.
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

fn now_ms(backend: DbBackend) -> Expr {
    Expr::cust(match backend {
        DbBackend::Postgres => postgres::NOW_MS,
        _ => sqlite::NOW_MS,
    })
}

/// The head (greatest offset) of the stream of the `mq_streams` row in scope.
pub(crate) fn head(backend: DbBackend) -> Expr {
    Expr::cust(match backend {
        DbBackend::Postgres => postgres::HEAD,
        _ => sqlite::HEAD,
    })
}

/// Creates the stream unless it exists. Safe to race: the unique name and `ON CONFLICT DO
/// NOTHING` make concurrent creators agree on one row.
pub(crate) async fn create_stream<C: ConnectionTrait>(conn: &C, name: &str) -> Result<()> {
    let backend = conn.get_database_backend();
    let stmt = Query::insert()
        .into_table(stream::Entity)
        .columns([
            stream::Column::Name,
            stream::Column::LastOffset,
            stream::Column::Config,
            stream::Column::CreatedAt,
        ])
        .values([
            name.into(),
            0i64.into(),
            Expr::val(Value::Object(Default::default())),
            now_ms(backend),
        ])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::column(stream::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    conn.execute(&stmt).await?;
    Ok(())
}

/// The stream named `name`, if it exists.
pub(crate) async fn find_stream<C: ConnectionTrait>(
    conn: &C,
    name: &str,
) -> Result<Option<stream::Model>> {
    Ok(stream::Entity::find()
        .filter(stream::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// Appends one message (already validated) to its stream in a single autocommit statement
/// and returns its id. The payload text moves into the statement (`message.payload` is left
/// empty) instead of being copied: for a large payload that saves a copy its size, in a fresh
/// allocation whose pages the kernel must fault in.
pub(crate) async fn publish_one(db: &DatabaseConnection, message: &mut NewMessage) -> Result<i64> {
    let payload = std::mem::take(&mut message.payload);
    let id = match db.get_database_backend() {
        DbBackend::Postgres => postgres::append_one(db, message, payload).await?,
        _ => sqlite::append_one(db, message, payload).await?,
    };
    id.ok_or_else(|| MqError::UnknownStream(message.stream.clone()))
}

/// Appends `messages` (already validated, two or more; one goes to [`publish_one`]) to their
/// streams, atomically, and returns their ids in input order. On PostgreSQL a batch for one
/// stream is a single autocommit statement; otherwise the messages are written in a
/// transaction.
pub(crate) async fn publish_messages(
    db: &DatabaseConnection,
    messages: &[NewMessage],
) -> Result<Vec<i64>> {
    let backend = db.get_database_backend();
    if backend == DbBackend::Postgres
        && let Some(first) = messages.first()
        && messages.iter().all(|m| m.stream == first.stream)
    {
        return postgres::append_messages(db, &first.stream, messages)
            .await?
            .ok_or_else(|| MqError::UnknownStream(first.stream.clone()));
    }
    let txn = begin_write(db).await?;
    let result = insert_messages(&txn, messages).await;
    finish(txn, result).await
}

/// Appends `messages` (already validated) to their streams and returns their ids in input
/// order. Must run inside a transaction.
///
/// Offsets: for each stream, in name order (so two batches spanning the same streams cannot
/// deadlock), one `UPDATE ... RETURNING` reserves the next `n` offsets (on PostgreSQL it
/// advances `last_offset` by `n`; on SQLite it takes the write lock and reads the head from the
/// log). The lock is held until the transaction ends, so a second publisher waits, and offsets
/// become visible in commit order without gaps; a rollback returns them.
/// The same statement reads the database clock, so all times come from one clock.
pub(crate) async fn insert_messages<C: ConnectionTrait>(
    conn: &C,
    messages: &[NewMessage],
) -> Result<Vec<i64>> {
    let backend = conn.get_database_backend();
    let mut counts: Vec<(&str, i64)> = Vec::new();
    {
        let mut by_stream: HashMap<&str, i64> = HashMap::new();
        for m in messages {
            *by_stream.entry(m.stream.as_str()).or_default() += 1;
        }
        counts.extend(by_stream);
        counts.sort_unstable();
    }

    // stream name -> (stream id, next offset to hand out)
    let mut next: HashMap<String, (i64, i64)> = HashMap::with_capacity(counts.len());
    let mut now = 0i64;
    for (name, count) in &counts {
        // PostgreSQL keeps the head in the row and advances it here. SQLite reads it from the
        // log (see `sqlite::HEAD`); its no-op update still takes the write lock first, so a
        // caller's deferred transaction cannot read a head that another writer then moves.
        let advanced = match backend {
            DbBackend::Postgres => Expr::col(stream::Column::LastOffset).add(*count),
            _ => Expr::col(stream::Column::LastOffset),
        };
        let stmt = Query::update()
            .table(stream::Entity)
            .value(stream::Column::LastOffset, advanced)
            .and_where(Expr::col(stream::Column::Name).eq(*name))
            .returning(Query::returning().exprs([
                Expr::col(stream::Column::Id),
                head(backend),
                now_ms(backend),
            ]))
            .to_owned();
        let row = conn
            .query_one(&stmt)
            .await?
            .ok_or_else(|| MqError::UnknownStream((*name).to_owned()))?;
        let id: i64 = row.try_get_by_index(0)?;
        let head: i64 = row.try_get_by_index(1)?;
        now = row.try_get_by_index(2)?;
        let first = match backend {
            DbBackend::Postgres => head - count + 1,
            _ => head + 1,
        };
        next.insert((*name).to_owned(), (id, first));
    }
    let notify_payload = notify_payload(counts.iter().map(|(name, _)| *name));

    let total = messages.len();
    let mut ids = Vec::with_capacity(total);
    if backend != DbBackend::Postgres {
        for chunk in messages.chunks(INSERT_CHUNK_ROWS) {
            let mut rows = Vec::with_capacity(chunk.len());
            for m in chunk {
                let slot = next
                    .get_mut(&m.stream)
                    .ok_or_else(|| MqError::UnknownStream(m.stream.clone()))?;
                rows.push(sqlite::Row {
                    stream_id: slot.0,
                    offset: slot.1,
                    message: m,
                });
                slot.1 += 1;
            }
            let last = sqlite::insert_rows(conn, &rows, now).await?;
            let count = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            ids.extend((last - count + 1)..=last);
        }
        sqlite::notify(conn, &notify_payload).await?;
        return Ok(ids);
    }
    // (stream id, offset) -> input position, to return ids in input order whatever order the
    // database returns rows in.
    let mut position: HashMap<(i64, i64), usize> = HashMap::new();
    ids.resize(total, 0);
    let mut rows = messages.iter().enumerate().peekable();
    while rows.peek().is_some() {
        let mut insert = Query::insert();
        insert.into_table(message::Entity).columns([
            message::Column::StreamId,
            message::Column::StreamOffset,
            message::Column::Topic,
            message::Column::Payload,
            message::Column::Priority,
            message::Column::CreatedAt,
            message::Column::DeliverAt,
        ]);
        for (index, m) in rows.by_ref().take(INSERT_CHUNK_ROWS) {
            let slot = next
                .get_mut(&m.stream)
                .ok_or_else(|| MqError::UnknownStream(m.stream.clone()))?;
            let (stream_id, offset) = (slot.0, slot.1);
            slot.1 += 1;
            position.insert((stream_id, offset), index);
            insert
                .values([
                    stream_id.into(),
                    offset.into(),
                    m.topic.as_str().into(),
                    // The text written at validation, so the payload is serialized once.
                    Expr::val(m.payload.as_str()).cast_as("jsonb"),
                    m.priority.into(),
                    now.into(),
                    now.saturating_add(m.delay_ms).into(),
                ])
                .map_err(|e| DbErr::Custom(e.to_string()))?;
        }
        insert.returning(Query::returning().columns([
            message::Column::Id,
            message::Column::StreamId,
            message::Column::StreamOffset,
        ]));
        for row in conn.query_all(&insert).await? {
            let id: i64 = row.try_get_by_index(0)?;
            let key: (i64, i64) = (row.try_get_by_index(1)?, row.try_get_by_index(2)?);
            if let Some(&index) = position.get(&key) {
                ids[index] = id;
            }
        }
    }
    postgres::notify(conn, &notify_payload).await?;
    Ok(ids)
}

fn notify_payload<'a>(streams: impl Iterator<Item = &'a str>) -> String {
    let mut payload = String::new();
    for name in streams {
        if !payload.is_empty() {
            payload.push(',');
        }
        payload.push_str(name);
        if payload.len() > MAX_NOTIFY_PAYLOAD {
            return "*".to_owned();
        }
    }
    payload
}

/// Up to `limit` messages of a stream with offset >= `from_offset`, in offset order. Served by
/// the unique (stream, offset) index, so each page costs the same however long the log is.
pub(crate) async fn read_messages<C: ConnectionTrait>(
    conn: &C,
    stream_id: i64,
    from_offset: i64,
    limit: u64,
) -> Result<Vec<message::Model>> {
    // The drivers bind a limit as a signed 64-bit integer and panic beyond it; no stream holds
    // more messages than that anyway.
    let limit = Ord::min(limit, i64::MAX.unsigned_abs());
    Ok(message::Entity::find()
        .filter(message::Column::StreamId.eq(stream_id))
        .filter(message::Column::StreamOffset.gte(from_offset))
        .order_by_asc(message::Column::StreamOffset)
        .limit(limit)
        .all(conn)
        .await?)
}

/// Whether the database, with the operator the claim uses, finds that `topic` matches
/// `pattern`. Exists to check the SQL form against [`crate::topic::matches`].
pub(crate) async fn topic_matches<C: ConnectionTrait>(
    conn: &C,
    topic: &str,
    pattern: &str,
) -> Result<bool> {
    Ok(match conn.get_database_backend() {
        DbBackend::Postgres => postgres::topic_matches(conn, topic, pattern).await?,
        _ => sqlite::topic_matches(conn, topic, pattern).await?,
    })
}

/// Whether a database error is likely to go away on retry: connections lost or refused, pool
/// timeouts, deadlocks, serialization failures, a server shutting down or starting, and
/// SQLite's busy and locked. A closed pool, bad credentials or a missing database are not.
pub(crate) fn is_transient(err: &DbErr) -> bool {
    use sea_orm::ConnAcquireErr;
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => true,
        DbErr::ConnectionAcquire(_) => false,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => is_transient_sqlx(e),
        _ => false,
    }
}

fn is_transient_sqlx(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    match err {
        SqlxError::Io(_) | SqlxError::PoolTimedOut | SqlxError::WorkerCrashed => true,
        SqlxError::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                // serialization failure, deadlock, server shutting down or starting
                "40001" | "40P01" | "57P01" | "57P02" | "57P03"
                // SQLITE_BUSY, SQLITE_LOCKED and their extended codes
                | "5" | "6" | "261" | "262" | "517" | "773"
            ) || code.starts_with("08")
        }),
        _ => false,
    }
}

/// The SQL form of a topic pattern for this backend's match operator.
pub(crate) fn pattern_to_sql(backend: DbBackend, pattern: &str) -> String {
    match backend {
        DbBackend::Postgres => postgres::pattern_to_sql(pattern),
        _ => sqlite::pattern_to_sql(pattern),
    }
}

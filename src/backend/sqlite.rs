//! Statements only SQLite runs.
//!
//! Concurrency: every writing transaction starts with `BEGIN IMMEDIATE` (see
//! `backend::begin_write`), which takes SQLite's single write lock up front, so writers queue
//! on the busy timeout instead of failing with "database is locked" when a deferred
//! transaction tries to upgrade. Readers run concurrently thanks to WAL.
//! Same function names, in the same order, as `postgres.rs`.

use sea_orm::sqlx::{self, error::ErrorKind};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, RuntimeErr, Statement,
};

use super::combine::Piece;
use super::delivery::{ClaimRequest, Claimed, release_leases, sort_claimed};
use super::{NewMessage, WriteGate};
use crate::error::MqError;

/// Epoch milliseconds by the application host's clock. `'now'` is fixed for one statement.
/// (`julianday` works on every SQLite version; `unixepoch('subsec')` needs 3.42.)
pub(crate) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The head of the stream of the `mq_streams` row in scope: its greatest offset, read from the
/// log's `(stream_id, stream_offset)` index (one seek). SQLite does not keep the head in
/// `mq_streams.last_offset`: updating it per message needs a trigger, and a trigger costs more
/// per row than the insert itself. Every writer holds SQLite's single write lock from this
/// read to its commit, so offsets stay gapless and in commit order.
pub(crate) const HEAD: &str = "COALESCE((SELECT m.stream_offset FROM mq_messages m \
     WHERE m.stream_id = mq_streams.id ORDER BY m.stream_offset DESC LIMIT 1), 0)";

/// SQLite has no advisory locks: `BEGIN IMMEDIATE` already serializes concurrent migrations.
pub(crate) async fn lock_migrations<C: ConnectionTrait>(_conn: &C) -> Result<(), DbErr> {
    Ok(())
}

/// SQLite has no notifications: other processes find new messages by the backstop poll, and
/// waiters in the same process are woken by the queue itself after commit.
pub(crate) async fn notify<C: ConnectionTrait>(_conn: &C, _payload: &str) -> Result<(), DbErr> {
    Ok(())
}

/// Copies the WAL into the database file as far as readers allow (`PASSIVE`) and returns the
/// WAL's length in pages. Concurrency: takes only the checkpoint lock, never waits, and never
/// blocks a writer; writers keep appending to the WAL meanwhile. A write that finds the WAL
/// entirely copied starts it over from its beginning.
pub(crate) async fn checkpoint<C: ConnectionTrait>(conn: &C) -> Result<i64, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    // (busy, pages in the WAL, pages copied)
    row.map_or(Ok(0), |row| row.try_get_by_index::<i64>(1))
}

/// The SQL form of a topic pattern, for `topic GLOB ?`. GLOB is case-sensitive (SQLite's LIKE
/// is not, for ASCII); its own wildcards `?` and `[` are wrapped in brackets, which makes them
/// literal, and `*` keeps its meaning. Topics cannot contain `*`, so it needs no escape.
pub(crate) fn pattern_to_sql(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            _ => out.push(c),
        }
    }
    out
}

/// Tests `topic` against the SQL form of a pattern, in the database, with the same operator the
/// claim uses.
pub(crate) async fn topic_matches<C: ConnectionTrait>(
    conn: &C,
    topic: &str,
    pattern: &str,
) -> Result<bool, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT (? GLOB ?) AS m",
            [topic.into(), pattern_to_sql(pattern).into()],
        ))
        .await?;
    row.map_or(Ok(false), |row| row.try_get_by_index::<bool>(0))
}

/// Moves the group's position to the head of its stream; the trigger
/// `mq_consumer_groups_materialize` (see the migration that creates it) inserts the delivery
/// rows of the messages it moves over, within the same statement. Its one parameter is the
/// group.
///
/// Concurrency: one statement, under SQLite's single write lock, reads the head and the
/// position, inserts the range between them and moves the position, so no other materializer
/// can interleave and no range is inserted twice. The head is read as committed, and a
/// publisher writes its messages in one statement or transaction, so every offset up to it is
/// there.
fn catch_up_sql() -> String {
    format!(
        "UPDATE mq_consumer_groups AS g \
         SET materialized_offset = (SELECT {HEAD} FROM mq_streams WHERE mq_streams.id = g.stream_id) \
         WHERE g.id = ? AND g.materialized_offset < \
            (SELECT {HEAD} FROM mq_streams WHERE mq_streams.id = g.stream_id)"
    )
}

/// Catches the group up (see [`catch_up_sql`]), then leases up to `req.limit` ready rows of it
/// and returns them with their messages, in claim order. The two statements go to the writer
/// as one piece (see `combine`), which SQLite runs in order on the connection, so a claim
/// costs one round trip to the driver's worker thread (on a small machine such a round trip,
/// two thread wake-ups, costs more than either statement), or a share of one when other
/// members' claims and acks are combined with it. Catching up right before the pick keeps
/// priorities exact among everything committed before the claim. A picked row that has
/// already used `max_attempts` becomes a dead letter instead (see `postgres::claim`); the
/// second value counts those.
///
/// Concurrency: each statement runs under SQLite's write lock, so no other writer can
/// interleave with either; the subquery's `LIMIT` is therefore exact (there is no SKIP LOCKED
/// to misbehave), and one `UPDATE ... RETURNING` leases the rows, increments their lease
/// tokens and reads their messages: the payload by a correlated subquery on the primary key
/// (one over `INLINE_PAYLOAD_BYTES` is read after the statement, one query each),
/// the timestamps from the delivery row, where the catch-up copied them (a row materialized
/// without them falls back to the lookup). The picked rows
/// travel from the subquery to the `UPDATE` by rowid, which the ready index holds, so the
/// `UPDATE` finds each with one seek rather than two (primary key, then row; `sqlite3` shell,
/// 300 claims of 100: 7 % less time). The outer `WHERE` has nothing else an index could
/// serve (`+state` is not indexable): given `group_id = ?` there, SQLite walked the group's
/// ready index and tested every row against the list. A publish that
/// commits between the two statements is left for the next claim, as one that commits just
/// after the claim would be.
pub(crate) async fn claim(
    gate: &WriteGate,
    pool: &DatabaseConnection,
    req: &ClaimRequest<'_>,
) -> Result<(Vec<Claimed>, usize), MqError> {
    let tag = Piece::next_tag();
    // In the order the parameters appear in the text.
    let mut values: Vec<sea_orm::Value> = vec![
        req.group_id.into(),
        req.max_attempts.into(),
        req.max_attempts.into(),
        req.max_attempts.into(),
        req.visibility_ms.into(),
        req.max_attempts.into(),
        req.consumer_id.into(),
        req.group_id.into(),
        req.from_offset.into(),
    ];
    let filter = topic_filter(req.sql_patterns, &mut values);
    // Written into the text, not bound: SQLite (3.47 and later) compiles a bound `LIMIT` as
    // the constant it was first bound to and marks the statement expired whenever that
    // parameter is bound again, so every claim re-parsed and re-planned the whole statement
    // (about 6 % of the CPU of a consuming process). A subscriber's batch size is fixed, so
    // the prepared statement is reused (a further round after dead letters, with a smaller
    // limit, is a statement of its own).
    let limit = req.limit;
    values.push(tag.into());
    let catch_up = catch_up_sql();
    let sql = format!(
        "{catch_up}; \
         UPDATE mq_deliveries \
         SET state = CASE WHEN attempts >= ? THEN 2 ELSE 1 END, \
             attempts = CASE WHEN attempts >= ? THEN attempts ELSE attempts + 1 END, \
             lease_token = COALESCE(lease_token, 0) + 1, \
             lease_expires_at = CASE WHEN attempts >= ? THEN NULL ELSE {NOW_MS} + ? END, \
             consumer_id = CASE WHEN attempts >= ? THEN NULL ELSE ? END \
         WHERE rowid IN ( \
            SELECT rowid FROM mq_deliveries \
            WHERE group_id = ? AND state = 0 AND available_at <= {NOW_MS} \
              AND stream_offset >= ?{filter} \
            ORDER BY priority DESC, stream_offset \
            LIMIT {limit}) \
           AND +state = 0 \
         RETURNING message_id, state, attempts, lease_token, stream_offset, priority, topic, \
            (SELECT CASE WHEN octet_length(m.payload) <= {INLINE_PAYLOAD_BYTES} \
                         THEN m.payload END \
             FROM mq_messages m WHERE m.id = mq_deliveries.message_id), \
            COALESCE(message_created_at, \
               (SELECT m.created_at FROM mq_messages m WHERE m.id = mq_deliveries.message_id)), \
            COALESCE(message_deliver_at, \
               (SELECT m.deliver_at FROM mq_messages m WHERE m.id = mq_deliveries.message_id)), \
            ? AS {TAG_COLUMN}"
    );
    let rows = gate.run(pool, Piece { sql, values, tag }).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut large = Vec::new();
    let mut buried = 0;
    for row in &rows {
        // Rows that had used their attempts were turned into dead letters, not leased.
        if row.try_get_by_index::<i16>(1)? != 1 {
            buried += 1;
            continue;
        }
        claimed.push(Claimed {
            message: entity::message::Model {
                id: row.try_get_by_index(0)?,
                stream_id: req.stream_id,
                stream_offset: row.try_get_by_index(4)?,
                topic: row.try_get_by_index(6)?,
                // Parsed from the row's own bytes, with no copy into a `String` and no
                // separate UTF-8 pass first. A large payload is read below.
                payload: match row.try_get_by_index::<Option<serde_json::Value>>(7)? {
                    Some(payload) => payload,
                    None => {
                        large.push(claimed.len());
                        serde_json::Value::Null
                    }
                },
                priority: row.try_get_by_index(5)?,
                created_at: row.try_get_by_index(8)?,
                deliver_at: row.try_get_by_index(9)?,
            },
            attempts: row.try_get_by_index(2)?,
            lease_token: row.try_get_by_index(3)?,
        });
    }
    let mut unread = Vec::new();
    let mut read_error = None;
    for i in large {
        let Some(c) = claimed.get_mut(i) else {
            continue;
        };
        match read_payload(pool, c.message.id).await {
            Ok(payload) => c.message.payload = payload,
            Err(err) => {
                unread.push(i);
                read_error = Some(err);
            }
        }
    }
    if let Some(err) = read_error {
        give_back_unread(gate, pool, req.group_id, &mut claimed, &unread).await;
        if claimed.is_empty() {
            return Err(err);
        }
        tracing::warn!(error = %err, "dabgent_mq: a claimed message's payload could not be read");
    }
    sort_claimed(&mut claimed);
    Ok((claimed, buried))
}

/// The claim has committed, but the payloads of `claimed[unread]` could not be read: those
/// leases are given back at once (their messages become ready again; the attempt the claim
/// counted stays counted), and the rest of the batch is handed out, rather than every lease of
/// the claim stranded until it expires. If giving them back fails too, those leases expire.
async fn give_back_unread(
    gate: &WriteGate,
    pool: &DatabaseConnection,
    group_id: i64,
    claimed: &mut Vec<Claimed>,
    unread: &[usize],
) {
    let leases: Vec<(i64, i64)> = unread
        .iter()
        .filter_map(|&i| claimed.get(i))
        .map(|c| (c.message.id, c.lease_token))
        .collect();
    // Highest index first, so that each removal leaves the lower indexes in place.
    for &i in unread.iter().rev() {
        if i < claimed.len() {
            claimed.remove(i);
        }
    }
    let turn = gate.enter().await;
    if let Err(err) = release_leases(turn.conn(pool), group_id, &leases).await {
        tracing::debug!(error = %err, "dabgent_mq: giving back unread leases failed");
    }
}

/// Payloads up to this size come back in the claim's `RETURNING`; a larger one is read by
/// [`read_payload`] after the claim. SQLite stores every `RETURNING` row in a temporary table
/// until the statement ends, so a returned payload is copied twice more, into that table and
/// out of it: for a 1 MiB payload, the claim took 0.95 ms instead of 0.54 ms for the claim and
/// a separate read (Python's `sqlite3`, 50 claims, median of 7 rounds). In this library the
/// poll of a 1 MiB message went from 3.3-3.6 ms to 1.9 ms with glibc's default allocator,
/// mostly by faulting in fewer fresh pages, and stayed at 1.3-1.5 ms with an allocator tuned
/// never to return memory. `octet_length` tells the size from the record header without
/// loading the value.
const INLINE_PAYLOAD_BYTES: usize = 64 * 1024;

/// The payload of message `id`, read on its own (see [`INLINE_PAYLOAD_BYTES`]).
///
/// Concurrency: messages never change, so any connection reads the same value. Runs after the
/// claim committed; see `give_back_unread` for a read that fails.
async fn read_payload(pool: &DatabaseConnection, id: i64) -> Result<serde_json::Value, MqError> {
    let row = pool
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT payload FROM mq_messages WHERE id = ?",
            [id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("message {id}")))?;
    Ok(row.try_get_by_index(0)?)
}

/// ` AND (topic GLOB ? OR ...)` for the patterns, binding them after `values`; empty when
/// every topic is wanted.
fn topic_filter(patterns: Option<&[String]>, values: &mut Vec<sea_orm::Value>) -> String {
    let Some(patterns) = patterns else {
        return String::new();
    };
    let mut filter = String::from(" AND (");
    for (i, pattern) in patterns.iter().enumerate() {
        if i > 0 {
            filter.push_str(" OR ");
        }
        values.push(pattern.as_str().into());
        filter.push_str("topic GLOB ?");
    }
    filter.push(')');
    filter
}

/// The column, last in the `RETURNING` of every statement of a [`Piece`], that holds the
/// piece's tag.
pub(crate) const TAG_COLUMN: &str = "mq_piece";

/// Runs a piece's statements on their own, each committing by itself, as outside a
/// combined script.
pub(crate) async fn run_piece<C: ConnectionTrait>(
    conn: &C,
    piece: Piece,
) -> Result<Vec<QueryResult>, DbErr> {
    conn.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        piece.sql,
        piece.values,
    ))
    .await
}

/// Runs the pieces in order as one transaction, sent as one script
/// (`BEGIN IMMEDIATE; ...; COMMIT`, one call), and returns every row with its piece's tag. If
/// the script fails, its transaction is rolled back: none of it remains.
///
/// Concurrency: `BEGIN IMMEDIATE` takes SQLite's write lock for the whole script, and the
/// pieces run one after another, each seeing the writes of those before it, exactly as
/// consecutive transactions would; they only share the commit. Must run on a connection that
/// only one task uses at a time (the gate's writer, in its turn): the transaction spans the
/// script and, after a failure, the `ROLLBACK`.
pub(crate) async fn run_combined(
    conn: &DatabaseConnection,
    pieces: &[&Piece],
) -> Result<Vec<(i64, QueryResult)>, DbErr> {
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    let mut values = Vec::with_capacity(pieces.iter().map(|p| p.values.len()).sum());
    for piece in pieces {
        sql.push_str(&piece.sql);
        sql.push_str("; ");
        values.extend(piece.values.iter().cloned());
    }
    sql.push_str("COMMIT");
    let rows = match conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            // The driver stops at the failing statement, leaving the transaction open (unless
            // it was `BEGIN` that failed; then this fails too, harmlessly).
            let _ = conn.execute_unprepared("ROLLBACK").await;
            return Err(err);
        }
    };
    // Committed: a row without a tag (none has one missing) could not be handed to anyone,
    // and running anything again now would run it twice, so such a row is dropped.
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let tag = row.try_get::<i64>("", TAG_COLUMN).ok()?;
            Some((tag, row))
        })
        .collect())
}

/// Appends one message in a single statement: the offset is the stream's head plus one, read
/// and written under SQLite's write lock, so no transaction is needed.
/// Returns the id, or `None` if the stream does not exist (then nothing was written).
///
/// The row is written with `VALUES` and scalar subqueries rather than `INSERT ... SELECT ...
/// FROM mq_streams`: a `SELECT` that reads the table it inserts into makes SQLite stage every
/// result row in a temporary table first, payload and all, which for a 1 MiB payload costs
/// about 30 % of the insert. The head is the same [`HEAD`] as the catch-up's, selected from
/// the stream's row by name. An unknown stream makes the stream id (and the offset) NULL,
/// which the columns' `NOT NULL` refuses before anything is written; for a known stream no
/// column of the row can be NULL.
pub(crate) async fn append_one<C: ConnectionTrait>(
    conn: &C,
    message: &NewMessage,
    payload: String,
) -> Result<Option<i64>, MqError> {
    let sql = format!(
        "INSERT INTO mq_messages \
            (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) \
         VALUES ((SELECT id FROM mq_streams WHERE name = ?), \
            (SELECT {HEAD} FROM mq_streams WHERE name = ?) + 1, \
            ?, ?, ?, {NOW_MS}, {NOW_MS} + ?)"
    );
    let result = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [
                message.stream.as_str().into(),
                message.stream.as_str().into(),
                message.topic.as_str().into(),
                payload.into(),
                message.priority.into(),
                message.delay_ms.into(),
            ],
        ))
        .await;
    let result = match result {
        Ok(result) => result,
        Err(err) if is_not_null_violation(&err) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let id = i64::try_from(result.last_insert_id()).map_err(|e| DbErr::Custom(e.to_string()))?;
    Ok(Some(id))
}

/// Whether SQLite refused a row for a NULL in a `NOT NULL` column.
fn is_not_null_violation(err: &DbErr) -> bool {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(&**e, sqlx::Error::Database(db) if db.kind() == ErrorKind::NotNullViolation)
        }
        _ => false,
    }
}

/// One row of a multi-row insert: the message and where it goes.
pub(crate) struct Row<'a> {
    pub(crate) stream_id: i64,
    pub(crate) offset: i64,
    pub(crate) message: &'a NewMessage,
}

/// Inserts `rows` with one multi-row `INSERT`, every row with the same clock value `now`, and
/// returns the rowid of the last row. The statement is written by hand rather than by the
/// query builder: for a batch of 1,000 messages the builder's expression tree and value copies
/// cost more than SQLite's insert. Its text depends only on the number of rows, so SQLite's
/// prepared statement is reused across batches. The parameters are anonymous (`?`): the
/// driver looks up every numbered parameter (`?NNN`) by name, which SQLite answers with a
/// linear search, so a numbered 1,000-row insert binds in quadratic time.
///
/// Concurrency: must run in a write transaction (the caller holds SQLite's write lock, so
/// the offsets it assigned cannot be taken meanwhile). SQLite inserts the rows of one
/// statement in order, each with the next rowid, so the ids are the run ending at the result.
pub(crate) async fn insert_rows<C: ConnectionTrait>(
    conn: &C,
    rows: &[Row<'_>],
    now: i64,
) -> Result<i64, MqError> {
    const ROW: &str = "(?,?,?,?,?,?,?)";
    let mut sql = String::with_capacity(128 + rows.len() * (ROW.len() + 1));
    sql.push_str(
        "INSERT INTO mq_messages \
         (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) VALUES ",
    );
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(rows.len() * 7);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
        let m = row.message;
        values.extend([
            row.stream_id.into(),
            row.offset.into(),
            m.topic.as_str().into(),
            m.payload.as_str().into(),
            m.priority.into(),
            now.into(),
            now.saturating_add(m.delay_ms).into(),
        ]);
    }
    let result = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?;
    i64::try_from(result.last_insert_id()).map_err(|e| MqError::from(DbErr::Custom(e.to_string())))
}

//! Statements only PostgreSQL runs.
//!
//! Concurrency: publishers serialize per stream on the stream row's lock (taken by the
//! `UPDATE` in `backend::insert_messages` and held to commit); notifications are sent with
//! `pg_notify`, which PostgreSQL delivers only when the transaction commits.
//! Same function names, in the same order, as `sqlite.rs`.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// Epoch milliseconds by the server's clock. `statement_timestamp()` is fixed for one
/// statement, so every row of a multi-row insert gets the same time, and unlike `now()` it
/// does not stand still for the length of a transaction.
pub(crate) const NOW_MS: &str = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint";

/// Channel of the wake-up notifications. The payload names the streams that received
/// messages.
pub(crate) const NOTIFY_CHANNEL: &str = "dabgent_mq";

/// Arbitrary constant key of the advisory lock that serializes concurrent `up` migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6461_6267_6d71; // "dabgmq"

/// Takes the migration lock for the rest of the transaction: a second process starting at the
/// same time waits here, then finds the migrations applied.
pub(crate) async fn lock_migrations<C: ConnectionTrait>(conn: &C) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK_KEY.into()],
    ))
    .await
    .map(drop)
}

/// Queues one notification for the transaction (delivered at commit, dropped on rollback).
pub(crate) async fn notify<C: ConnectionTrait>(conn: &C, payload: &str) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [NOTIFY_CHANNEL.into(), payload.into()],
    ))
    .await
    .map(drop)
}

/// The SQL form of a topic pattern, for `topic LIKE $n ESCAPE '\'`: the escape character and
/// LIKE's own wildcards (`\`, `%`, `_`) are escaped, then `*` becomes `%`.
pub(crate) fn pattern_to_sql(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '\\' | '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            '*' => out.push('%'),
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
            DbBackend::Postgres,
            r"SELECT ($1::text LIKE $2::text ESCAPE '\') AS m",
            [topic.into(), pattern_to_sql(pattern).into()],
        ))
        .await?;
    row.map_or(Ok(false), |row| row.try_get_by_index::<bool>(0))
}

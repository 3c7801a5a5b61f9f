//! Statements only SQLite runs.
//!
//! Concurrency: every writing transaction starts with `BEGIN IMMEDIATE` (see
//! `backend::begin_write`), which takes SQLite's single write lock up front, so writers queue
//! on the busy timeout instead of failing with "database is locked" when a deferred
//! transaction tries to upgrade. Readers run concurrently thanks to WAL.
//! Same function names, in the same order, as `postgres.rs`.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// Epoch milliseconds by the application host's clock. `'now'` is fixed for one statement.
/// (`julianday` works on every SQLite version; `unixepoch('subsec')` needs 3.42.)
pub(crate) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// SQLite has no advisory locks: `BEGIN IMMEDIATE` already serializes concurrent migrations.
pub(crate) async fn lock_migrations<C: ConnectionTrait>(_conn: &C) -> Result<(), DbErr> {
    Ok(())
}

/// SQLite has no notifications: other processes find new messages by the backstop poll, and
/// waiters in the same process are woken by the queue itself after commit.
pub(crate) async fn notify<C: ConnectionTrait>(_conn: &C, _payload: &str) -> Result<(), DbErr> {
    Ok(())
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

//! SQLite: the head of a stream is read from the log, not kept in `mq_streams.last_offset`.
//!
//! The `mq_messages_advance_head` trigger made a single publish one statement, but SQLite runs
//! a trigger's program for every inserted row, which cost more than the insert itself in a
//! batch. The library now reads a stream's head as its greatest offset (one seek in the log's
//! `(stream_id, stream_offset)` index), under SQLite's single write lock, so offsets stay
//! gapless and in commit order, and `last_offset` is no longer maintained on SQLite.
//! PostgreSQL is unchanged.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(manager, "DROP TRIGGER IF EXISTS mq_messages_advance_head").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let conn = manager.get_connection();
        // The previous schema keeps the head in the row: bring it up to date first.
        conn.execute_unprepared(
            "UPDATE mq_streams SET last_offset = COALESCE((SELECT MAX(m.stream_offset) \
             FROM mq_messages m WHERE m.stream_id = mq_streams.id), 0)",
        )
        .await?;
        conn.execute_unprepared(
            super::m20260102_000001_sqlite_single_statement_publish::CREATE_TRIGGER,
        )
        .await
        .map(drop)
    }
}

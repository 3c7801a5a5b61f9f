//! SQLite: a trigger that advances a stream's head when a message is inserted above it, so
//! that publishing one message is a single statement.
//!
//! The library publishes one message on SQLite as `INSERT INTO mq_messages ... SELECT
//! last_offset + 1 ... FROM mq_streams WHERE name = ?`; this trigger moves `last_offset` to
//! the new offset within the same statement, so the pair is atomic without an explicit
//! transaction (every statement runs under SQLite's single write lock). Batches advance the
//! head themselves first, and the trigger's `WHEN` then skips. PostgreSQL publishes with one
//! statement of its own and gets no trigger.

use sea_orm_migration::prelude::*;

/// Also used by the migration that drops the trigger again, to restore it on `down`.
pub(crate) const CREATE_TRIGGER: &str = "CREATE TRIGGER mq_messages_advance_head AFTER INSERT ON mq_messages \
     WHEN NEW.stream_offset > (SELECT last_offset FROM mq_streams WHERE id = NEW.stream_id) \
     BEGIN \
         UPDATE mq_streams SET last_offset = NEW.stream_offset WHERE id = NEW.stream_id; \
     END";

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(manager, CREATE_TRIGGER).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(manager, "DROP TRIGGER IF EXISTS mq_messages_advance_head").await
    }
}

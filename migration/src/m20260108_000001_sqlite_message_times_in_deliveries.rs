//! SQLite: each delivery row carries its message's two timestamps.
//!
//! A SQLite claim returns its messages from one `UPDATE ... RETURNING`, which can read another
//! table only through a correlated subquery per column, and each such subquery is a lookup of
//! its own in `mq_messages`. The catch-up trigger now copies `created_at` and `deliver_at`
//! into the delivery row, where the claim reads them without a lookup. Messages never change,
//! so the copies cannot go stale.
//!
//! The columns are nullable and not backfilled: a claim falls back to the lookup for a row
//! without them (one materialized before this migration, or by a process that predates it).
//! PostgreSQL needs no copy: its claim joins the messages once per row.

use sea_orm_migration::prelude::*;

/// The catch-up trigger of `m20260105_000001_sqlite_catch_up_trigger`, copying the message's
/// timestamps too.
const TRIGGER: &str = "CREATE TRIGGER mq_consumer_groups_materialize \
     AFTER UPDATE OF materialized_offset ON mq_consumer_groups \
     WHEN NEW.materialized_offset > OLD.materialized_offset \
     BEGIN \
         INSERT INTO mq_deliveries \
             (group_id, message_id, stream_offset, priority, topic, state, attempts, \
              available_at, message_created_at, message_deliver_at) \
         SELECT NEW.id, m.id, m.stream_offset, m.priority, m.topic, 0, 0, m.deliver_at, \
                m.created_at, m.deliver_at \
         FROM mq_messages m \
         WHERE m.stream_id = NEW.stream_id \
           AND m.stream_offset > OLD.materialized_offset \
           AND m.stream_offset <= NEW.materialized_offset \
         ON CONFLICT (group_id, message_id) DO NOTHING; \
     END";

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// In one transaction, also when run by the CLI (which runs SQLite migrations without
    /// one by default): between dropping and re-creating the trigger, another process's
    /// catch-up would move a group's position without inserting its delivery rows.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(
            manager,
            &format!(
                "ALTER TABLE mq_deliveries ADD COLUMN message_created_at INTEGER NULL; \
                 ALTER TABLE mq_deliveries ADD COLUMN message_deliver_at INTEGER NULL; \
                 DROP TRIGGER IF EXISTS mq_consumer_groups_materialize; \
                 {TRIGGER}"
            ),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(
            manager,
            &format!(
                "DROP TRIGGER IF EXISTS mq_consumer_groups_materialize; \
                 {}; \
                 ALTER TABLE mq_deliveries DROP COLUMN message_created_at; \
                 ALTER TABLE mq_deliveries DROP COLUMN message_deliver_at",
                super::m20260105_000001_sqlite_catch_up_trigger::CREATE_TRIGGER
            ),
        )
        .await
    }
}

//! SQLite: catching a consumer group up is one statement.
//!
//! A group's delivery rows are filled lazily: a claimer moves the group's position
//! (`materialized_offset`) to the head of its stream and inserts the delivery rows of the
//! messages in between. The two must be atomic, or a second materializer could insert a row
//! again after it was delivered and acknowledged. PostgreSQL does both in one statement with
//! a data-modifying CTE; SQLite has none, so this trigger inserts the rows of the range the
//! position moves over, within the `UPDATE` that moves it, under SQLite's single write lock.
//!
//! As one statement, the catch-up can share a round trip with the claim that follows it
//! (SQLite runs the statements of one call in order on its connection); before, it was a
//! transaction of five statements and a read, each a round trip to the driver's worker thread.
//! The position only ever moves forward and only through this catch-up, so the range is never
//! inserted twice by the library; `ON CONFLICT DO NOTHING` keeps a process that still
//! inserts the rows itself before moving the position (an earlier version, against this
//! schema) correct too.

use sea_orm_migration::prelude::*;

/// Also what `m20260108_000001_sqlite_message_times_in_deliveries` restores when it is undone.
pub(crate) const CREATE_TRIGGER: &str = "CREATE TRIGGER mq_consumer_groups_materialize \
     AFTER UPDATE OF materialized_offset ON mq_consumer_groups \
     WHEN NEW.materialized_offset > OLD.materialized_offset \
     BEGIN \
         INSERT INTO mq_deliveries \
             (group_id, message_id, stream_offset, priority, topic, state, attempts, \
              available_at) \
         SELECT NEW.id, m.id, m.stream_offset, m.priority, m.topic, 0, 0, m.deliver_at \
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
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(manager, CREATE_TRIGGER).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_sqlite(
            manager,
            "DROP TRIGGER IF EXISTS mq_consumer_groups_materialize",
        )
        .await
    }
}

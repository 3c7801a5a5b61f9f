//! PostgreSQL: `mq_consumer_groups.materialized_from`, the position a group's last catch-up
//! started from.
//!
//! The catch-up moves a group's position and inserts the delivery rows of the range it moved
//! over, in one statement. To lock the group row only once (in its `UPDATE`) and still know
//! the range, the `UPDATE` keeps the old position in this column and returns it; PostgreSQL
//! 15 cannot return a column's old value otherwise. SQLite catches up with a trigger that
//! sees the old value, and gets no column.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // A constant default: PostgreSQL adds the column without rewriting the table.
        super::on_postgres(
            manager,
            "ALTER TABLE mq_consumer_groups \
             ADD COLUMN materialized_from BIGINT NOT NULL DEFAULT 0",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(
            manager,
            "ALTER TABLE mq_consumer_groups DROP COLUMN materialized_from",
        )
        .await
    }
}

//! PostgreSQL: storage parameters for tables whose rows are rewritten or deleted all the time.
//!
//! A queue turns over its delivery rows constantly (each is inserted, updated by its claim
//! and deleted by its ack), and it rewrites a few small rows on every publish and claim (a
//! stream's head, a group's catch-up position, a member's heartbeat). PostgreSQL's defaults
//! vacuum a table once a fifth of it is dead, which for a table that is mostly dead at every
//! moment means rarely and late, throttled by the cost delay: dead index entries pile up and
//! claims slow down. So:
//!
//! - `mq_deliveries` is vacuumed after a fixed number of dead rows (not a fraction), without
//!   the cost delay, and analyzed often, so the planner's picture of the ready set stays
//!   current;
//! - the small, hot rows of `mq_streams` and `mq_consumer_groups` get pages half empty
//!   (`fillfactor = 50`): their updates (a stream's head, a group's catch-up position) touch
//!   no indexed column, so they stay heap-only (HOT) updates pruned within the page instead of
//!   new index entries;
//! - `mq_consumers` is vacuumed after a fixed number of dead rows too (a heartbeat updates an
//!   indexed column, so its updates cannot be heap-only).
//!
//! These settings take effect wherever autovacuum runs (the server default). SQLite needs no
//! counterpart: it reuses freed pages itself.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Tables of small rows rewritten all the time without touching an indexed column.
const HOT_ROWS: [&str; 2] = ["mq_streams", "mq_consumer_groups"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let conn = manager.get_connection();
        conn.execute_unprepared(
            "ALTER TABLE mq_deliveries SET (\
                 autovacuum_vacuum_scale_factor = 0, \
                 autovacuum_vacuum_threshold = 2000, \
                 autovacuum_vacuum_cost_delay = 0, \
                 autovacuum_analyze_scale_factor = 0, \
                 autovacuum_analyze_threshold = 5000)",
        )
        .await?;
        for table in HOT_ROWS {
            conn.execute_unprepared(&format!("ALTER TABLE {table} SET (fillfactor = 50)"))
                .await?;
        }
        for table in HOT_ROWS.iter().chain(&["mq_consumers"]) {
            conn.execute_unprepared(&format!(
                "ALTER TABLE {table} SET (\
                     autovacuum_vacuum_scale_factor = 0, \
                     autovacuum_vacuum_threshold = 1000, \
                     autovacuum_vacuum_cost_delay = 0)"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let conn = manager.get_connection();
        conn.execute_unprepared(
            "ALTER TABLE mq_deliveries RESET (\
                 autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
                 autovacuum_vacuum_cost_delay, autovacuum_analyze_scale_factor, \
                 autovacuum_analyze_threshold)",
        )
        .await?;
        for table in HOT_ROWS {
            conn.execute_unprepared(&format!("ALTER TABLE {table} RESET (fillfactor)"))
                .await?;
        }
        for table in HOT_ROWS.iter().chain(&["mq_consumers"]) {
            conn.execute_unprepared(&format!(
                "ALTER TABLE {table} RESET (\
                     autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
                     autovacuum_vacuum_cost_delay)"
            ))
            .await?;
        }
        Ok(())
    }
}

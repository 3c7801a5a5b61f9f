//! Schema migrations of dabgent_mq.
//!
//! The migrations record themselves in the `dabgent_mq_migrations` table, not in SeaORM's
//! default `seaql_migrations`, so they live beside a host application's own migrator in the
//! same database without either one seeing the other's versions.
//!
//! Run them with `sea-orm-cli migrate up -d migration` or `cargo run -p migration -- up`
//! (both read `DATABASE_URL`), or let `dabgent_mq::MessageQueue` run them on start.

pub use sea_orm_migration::prelude::*;

mod m20260101_000001_create_queue_tables;
mod m20260102_000001_sqlite_single_statement_publish;
mod m20260103_000001_postgres_table_storage;
mod m20260104_000001_sqlite_head_from_log;
mod m20260105_000001_sqlite_catch_up_trigger;
mod m20260106_000001_postgres_catch_up_range;
mod m20260107_000001_postgres_lz4_payloads;
mod m20260108_000001_sqlite_message_times_in_deliveries;

/// Runs `sql` on SQLite only: the SQLite-specific migrations have nothing to do on PostgreSQL.
async fn on_sqlite(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    on_backend(manager, sea_orm_migration::sea_orm::DbBackend::Sqlite, sql).await
}

/// Runs `sql` on PostgreSQL only: the PostgreSQL-specific migrations have nothing to do on
/// SQLite.
async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    on_backend(
        manager,
        sea_orm_migration::sea_orm::DbBackend::Postgres,
        sql,
    )
    .await
}

async fn on_backend(
    manager: &SchemaManager<'_>,
    backend: sea_orm_migration::sea_orm::DbBackend,
    sql: &str,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != backend {
        return Ok(());
    }
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(drop)
}

/// Name of the table in which these migrations record the versions they have applied.
pub const MIGRATION_TABLE: &str = "dabgent_mq_migrations";

/// The migrator of dabgent_mq's tables, in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_create_queue_tables::Migration),
            Box::new(m20260102_000001_sqlite_single_statement_publish::Migration),
            Box::new(m20260103_000001_postgres_table_storage::Migration),
            Box::new(m20260104_000001_sqlite_head_from_log::Migration),
            Box::new(m20260105_000001_sqlite_catch_up_trigger::Migration),
            Box::new(m20260106_000001_postgres_catch_up_range::Migration),
            Box::new(m20260107_000001_postgres_lz4_payloads::Migration),
            Box::new(m20260108_000001_sqlite_message_times_in_deliveries::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        MIGRATION_TABLE.into_iden()
    }
}

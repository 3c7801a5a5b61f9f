//! The migrations round-trip and coexist with a host application's own migrator.

use dabgent_mq::sea_orm::{ConnectionTrait, DbBackend, Statement};
use dabgent_mq::{MessageQueue, QueueOptions};
use migration::{Migrator, MigratorTrait};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{pk_auto, string};
use serde_json::json;

use crate::common::{self, migrations};

const QUEUE_TABLES: [&str; 5] = [
    "mq_streams",
    "mq_messages",
    "mq_consumer_groups",
    "mq_deliveries",
    "mq_consumers",
];

async fn table_exists<C: ConnectionTrait>(conn: &C, table: &str) -> bool {
    let backend = conn.get_database_backend();
    let stmt = match backend {
        DbBackend::Postgres => Statement::from_sql_and_values(
            backend,
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1",
            [table.into()],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            [table.into()],
        ),
    };
    let row = conn.query_one_raw(stmt).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap() == 1
}

#[tokio::test]
async fn migrations_run_up_down_and_up_again() {
    let db = common::fresh_db("migration_round_trip").await;
    let conn = common::connect(&db).await;
    Migrator::up(&conn, None).await.unwrap();
    for table in QUEUE_TABLES {
        assert!(table_exists(&conn, table).await, "{table} after up");
    }
    Migrator::down(&conn, None).await.unwrap();
    for table in QUEUE_TABLES {
        assert!(!table_exists(&conn, table).await, "{table} after down");
    }
    assert_eq!(common::count(&conn, "dabgent_mq_migrations").await, 0);
    Migrator::up(&conn, None).await.unwrap();
    let queue = MessageQueue::from_connection_with_options(
        conn.clone(),
        QueueOptions::new().run_migrations(false),
    )
    .await
    .unwrap();
    queue.create_stream("s").await.unwrap();
    queue.publish("s", "t", json!(1)).await.unwrap();
    assert_eq!(
        Migrator::get_pending_migrations(&conn).await.unwrap().len(),
        0,
        "nothing pending after up"
    );
}

#[derive(DeriveIden)]
enum HostItems {
    Table,
    Id,
    Name,
}

struct HostMigration;

impl MigrationName for HostMigration {
    fn name(&self) -> &str {
        "m20250101_000001_create_host_items"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for HostMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(HostItems::Table)
                    .col(pk_auto(HostItems::Id))
                    .col(string(HostItems::Name))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(HostItems::Table).to_owned())
            .await
    }
}

/// A host application's migrator, with SeaORM's default `seaql_migrations` table.
struct HostMigrator;

#[async_trait::async_trait]
impl MigratorTrait for HostMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(HostMigration)]
    }
}

#[tokio::test]
async fn migrations_coexist_with_a_host_migrator_in_the_same_database() {
    let db = common::fresh_db("migration_coexist").await;
    let conn = common::connect(&db).await;
    HostMigrator::up(&conn, None).await.unwrap();
    let queue = MessageQueue::from_connection(conn.clone()).await.unwrap();
    queue.create_stream("s").await.unwrap();

    assert_eq!(common::count(&conn, "seaql_migrations").await, 1);
    assert_eq!(
        common::count(&conn, "dabgent_mq_migrations").await,
        migrations()
    );
    assert!(
        HostMigrator::get_pending_migrations(&conn)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        Migrator::get_pending_migrations(&conn)
            .await
            .unwrap()
            .is_empty()
    );

    // Each migrator sees only its own versions: taking the queue down leaves the host alone.
    Migrator::down(&conn, None).await.unwrap();
    assert!(table_exists(&conn, "host_items").await);
    assert_eq!(common::count(&conn, "seaql_migrations").await, 1);
    assert!(!table_exists(&conn, "mq_streams").await);
    Migrator::up(&conn, None).await.unwrap();
    HostMigrator::down(&conn, None).await.unwrap();
    assert!(table_exists(&conn, "mq_streams").await);
    assert_eq!(
        common::count(&conn, "dabgent_mq_migrations").await,
        migrations()
    );
}

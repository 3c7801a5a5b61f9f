//! Test databases: every test gets its own, migrated, so the suite runs in parallel.
//!
//! `DATABASE_URL` unset (or `sqlite:...`): a fresh SQLite file per test under Cargo's
//! target tmp dir. `DATABASE_URL=postgres://...`: a fresh schema per test in that database.
//! A Postgres run that cannot reach its server fails; it never falls back to SQLite.

#![allow(dead_code)]

use std::path::PathBuf;

use dabgent_mq::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use dabgent_mq::{DatabaseType, MessageQueue, QueueOptions};

/// Where a test's isolated database lives.
#[derive(Debug, Clone)]
pub(crate) struct TestDb {
    pub(crate) db_type: DatabaseType,
    /// URL of the isolated database (for Postgres it carries the schema's search_path).
    pub(crate) url: String,
    /// Postgres schema name, or SQLite file path.
    pub(crate) name: String,
}

pub(crate) fn database_type() -> DatabaseType {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => DatabaseType::Postgres,
        _ => DatabaseType::Sqlite,
    }
}

pub(crate) fn is_postgres() -> bool {
    database_type() == DatabaseType::Postgres
}

fn sqlite_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-dbs");
    std::fs::create_dir_all(&dir).expect("create test db dir");
    dir
}

/// A fresh, empty database (not migrated) named after the test.
pub(crate) async fn fresh_db(test: &str) -> TestDb {
    match database_type() {
        DatabaseType::Sqlite => {
            let path = sqlite_dir().join(format!("{test}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            TestDb {
                db_type: DatabaseType::Sqlite,
                url: format!("sqlite://{}", path.display()),
                name: path.display().to_string(),
            }
        }
        DatabaseType::Postgres => {
            let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
            let schema = format!("t_{}", test.to_lowercase());
            assert!(schema.len() <= 63, "schema name too long: {schema}");
            let admin = Database::connect(ConnectOptions::new(base.clone()))
                .await
                .unwrap_or_else(|e| panic!("DATABASE_URL={base} is unreachable: {e}"));
            admin
                .execute_unprepared(&format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\""
                ))
                .await
                .expect("create test schema");
            admin.close().await.expect("close admin connection");
            let sep = if base.contains('?') { '&' } else { '?' };
            TestDb {
                db_type: DatabaseType::Postgres,
                url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                name: schema,
            }
        }
    }
}

/// Options the tests use: a pool large enough for the concurrency tests, small enough that
/// parallel tests stay under PostgreSQL's connection limit.
pub(crate) fn options() -> QueueOptions {
    QueueOptions::new().pool_size(10)
}

/// A migrated queue on a fresh database named after the test.
pub(crate) async fn queue(test: &str) -> (MessageQueue, TestDb) {
    queue_with(test, options()).await
}

pub(crate) async fn queue_with(test: &str, options: QueueOptions) -> (MessageQueue, TestDb) {
    let db = fresh_db(test).await;
    let queue = MessageQueue::with_options(db.db_type, &db.url, options)
        .await
        .unwrap_or_else(|e| panic!("queue on {}: {e}", db.url));
    (queue, db)
}

/// A plain SeaORM connection to the test's database, as a host application would have.
pub(crate) async fn connect(db: &TestDb) -> DatabaseConnection {
    let url = match db.db_type {
        DatabaseType::Sqlite => format!("{}?mode=rwc", db.url),
        DatabaseType::Postgres => db.url.clone(),
    };
    let mut options = ConnectOptions::new(url);
    options.max_connections(4).sqlx_logging(false);
    Database::connect(options).await.expect("connect")
}

/// Number of rows in `table`.
pub(crate) async fn count<C: ConnectionTrait>(conn: &C, table: &str) -> i64 {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT COUNT(*) FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("count value")
}

/// Row counts of every queue table, to check that a failed call changed nothing.
pub(crate) async fn snapshot(queue: &MessageQueue) -> Vec<i64> {
    let conn = queue.connection();
    let mut counts = Vec::new();
    for table in [
        "mq_streams",
        "mq_messages",
        "mq_consumer_groups",
        "mq_deliveries",
        "mq_consumers",
    ] {
        counts.push(count(conn, table).await);
    }
    let backend = conn.get_database_backend();
    // The streams' heads: kept in `last_offset` on PostgreSQL, the log's greatest offsets on
    // SQLite.
    let heads_sql = match backend {
        DbBackend::Postgres => {
            "SELECT CAST(COALESCE(SUM(last_offset), 0) AS BIGINT) FROM mq_streams"
        }
        _ => {
            "SELECT COALESCE(SUM(head), 0) FROM \
             (SELECT MAX(stream_offset) AS head FROM mq_messages GROUP BY stream_id)"
        }
    };
    let heads = conn
        .query_one_raw(Statement::from_string(backend, heads_sql.to_owned()))
        .await
        .expect("sum")
        .expect("row");
    counts.push(heads.try_get_by_index::<i64>(0).expect("sum"));
    counts
}

/// How many migrations the library has (rows of `dabgent_mq_migrations` once all ran).
pub(crate) fn migrations() -> i64 {
    use migration::MigratorTrait;
    i64::try_from(migration::Migrator::migrations().len()).expect("a few migrations")
}

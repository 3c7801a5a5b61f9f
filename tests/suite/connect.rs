//! Connecting: URLs, database types, options, a host's connection, concurrent starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dabgent_mq::sea_orm::{ConnectionTrait, Statement, TryGetable};
use dabgent_mq::{DatabaseType, MessageQueue, MqError, QueueOptions};
use migration::{MIGRATION_TABLE, Migrator, MigratorTrait, SchemaManager};
use serde_json::json;

use crate::common::{self, migrations};

#[tokio::test]
async fn a_database_type_that_does_not_match_the_url_is_rejected() {
    let err = MessageQueue::new(DatabaseType::Postgres, "sqlite://messages.db")
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("postgres"), "{err}");
    let err = MessageQueue::new(DatabaseType::Sqlite, "postgres://postgres@127.0.0.1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
    let err = MessageQueue::new(DatabaseType::Sqlite, "mysql://root@127.0.0.1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
}

#[tokio::test]
async fn malformed_urls_are_rejected_before_connecting() {
    for (db_type, url) in [
        (DatabaseType::Postgres, "postgres://user@host:notaport/db"),
        (DatabaseType::Postgres, "postgres://[::1/db"),
        (DatabaseType::Sqlite, "sqlite://x.db?mode=sideways"),
        (DatabaseType::Sqlite, "not a url"),
        (DatabaseType::Postgres, ""),
    ] {
        let err = MessageQueue::new(db_type, url).await.unwrap_err();
        assert!(matches!(err, MqError::InvalidConfig(_)), "{url:?}: {err:?}");
    }
}

#[tokio::test]
async fn an_unreachable_server_gives_a_connection_error_promptly() {
    let started = Instant::now();
    let options = QueueOptions::new()
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(3));
    // Port 1 on loopback: nothing listens there.
    let err = MessageQueue::with_options(
        DatabaseType::Postgres,
        "postgres://postgres@127.0.0.1:1/test",
        options,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MqError::Connection { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = MessageQueue::new(DatabaseType::Sqlite, "sqlite:///nonexistent-dir/sub/q.db")
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::Connection { .. }), "{err:?}");
}

#[tokio::test]
async fn a_sqlite_file_is_created_in_an_empty_folder_in_wal_mode() {
    let (queue, path) = queue_on_new_sqlite_file("empty_folder_test").await;
    assert!(path.exists());
    queue.create_stream("orders").await.unwrap();
    queue
        .publish("orders", "order.created", json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(pragma::<String>(&queue, "journal_mode").await, "wal");
    assert_eq!(
        pragma::<i64>(&queue, "synchronous").await,
        1,
        "synchronous=NORMAL"
    );
}

/// A queue on a new SQLite file, `messages.db` in an empty folder of its own, and the file's path.
async fn queue_on_new_sqlite_file(folder: &str) -> (MessageQueue, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(folder);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("messages.db");
    let queue = MessageQueue::new(
        DatabaseType::Sqlite,
        &format!("sqlite://{}", path.display()),
    )
    .await
    .unwrap();
    (queue, path)
}

/// The value of a SQLite PRAGMA as a pooled connection of the queue sees it.
async fn pragma<T: TryGetable>(queue: &MessageQueue, name: &str) -> T {
    let conn = queue.connection();
    conn.query_one_raw(Statement::from_string(
        conn.get_database_backend(),
        format!("PRAGMA {name}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<T>(0)
    .unwrap()
}

#[tokio::test]
async fn sqlite_writes_reach_the_database_file_by_background_checkpoints() {
    // The queue's writer runs no checkpoint itself (it would stall the writes queued behind
    // it on the disk); a background task does. Without it, everything would stay in the WAL.
    let (queue, path) = queue_on_new_sqlite_file("checkpoint_test").await;
    queue.create_stream("blobs").await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let body = json!({ "blob": "x".repeat(64 * 1024) });
    for _ in 0..64 {
        queue.publish("blobs", "blob", body.clone()).await.unwrap();
    }
    // 4 MiB written; the checkpointer looks every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&path).unwrap().len();
        if size >= before + 4 * 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database file stayed at {size} bytes (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only the writer's automatic checkpoint is moved out of the way; pooled connections,
    // which other writers such as `publish_in` use, keep SQLite's.
    assert_eq!(
        pragma::<i64>(&queue, "wal_autocheckpoint").await,
        1000,
        "pooled connections keep SQLite's default"
    );
}

#[tokio::test]
async fn the_sqlite_wal_stays_bounded_under_steady_writes() {
    // Checkpoints beside steady writes never leave the WAL entirely copied, and SQLite only
    // starts it over when a write finds it so; the checkpointer then holds writes once.
    let (queue, path) = queue_on_new_sqlite_file("wal_bound_test").await;
    queue.create_stream("blobs").await.unwrap();
    let body = json!({ "blob": "x".repeat(64 * 1024) });
    let wal = path.with_extension("db-wal");
    let mut largest = 0;
    // 64 MiB of messages without a pause.
    for _ in 0..1024 {
        queue.publish("blobs", "blob", body.clone()).await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        largest < 40 * 1024 * 1024,
        "the WAL grew to {largest} bytes while 64 MiB were written"
    );
}

#[tokio::test]
async fn an_in_memory_sqlite_database_works_with_its_single_connection() {
    let queue = MessageQueue::new(DatabaseType::Sqlite, "sqlite::memory:")
        .await
        .unwrap();
    queue.create_stream("mem").await.unwrap();
    let ids = queue
        .publish_batch(vec![
            dabgent_mq::Message::new("mem", "a", json!(1)),
            dabgent_mq::Message::new("mem", "b", json!(2)),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn options_out_of_range_are_rejected() {
    for options in [
        QueueOptions::new().pool_size(0),
        QueueOptions::new().max_payload_bytes(0),
        QueueOptions::new().backstop_poll_interval(Duration::ZERO),
    ] {
        let err = MessageQueue::with_options(DatabaseType::Sqlite, "sqlite::memory:", options)
            .await
            .unwrap_err();
        assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
    }
}

#[tokio::test]
async fn from_connection_uses_the_host_pool_and_migrates() {
    let db = common::fresh_db("from_connection").await;
    let host = common::connect(&db).await;
    let queue = MessageQueue::from_connection(host.clone()).await.unwrap();
    assert_eq!(queue.database_type(), db.db_type);
    queue.create_stream("orders").await.unwrap();
    queue.publish("orders", "t", json!(1)).await.unwrap();
    assert_eq!(common::count(&host, "mq_messages").await, 1);
    // Migrations already applied: a second queue on the same connection starts fine.
    let again = MessageQueue::from_connection(host.clone()).await.unwrap();
    again.publish("orders", "t", json!(2)).await.unwrap();
    assert_eq!(
        common::count(&host, "dabgent_mq_migrations").await,
        migrations()
    );
}

#[tokio::test]
async fn from_connection_without_migrations_refuses_a_database_without_the_schema() {
    let db = common::fresh_db("from_connection_nomigrate").await;
    let host = common::connect(&db).await;
    let err = MessageQueue::from_connection_with_options(
        host.clone(),
        QueueOptions::new().run_migrations(false),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MqError::MigrationsPending(n) if n == usize::try_from(migrations()).unwrap()),
        "{err:?}"
    );
    // The check only reads: it created no migration table.
    let manager = SchemaManager::new(&host);
    assert!(!manager.has_table(MIGRATION_TABLE).await.unwrap());
}

#[tokio::test]
async fn without_migrations_a_database_one_migration_behind_is_refused() {
    let db = common::fresh_db("one_migration_behind").await;
    let host = common::connect(&db).await;
    let all = u32::try_from(migrations()).unwrap();
    Migrator::up(&host, Some(all - 1)).await.unwrap();
    let options = || QueueOptions::new().run_migrations(false);
    let err = MessageQueue::from_connection_with_options(host.clone(), options())
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::MigrationsPending(1)), "{err:?}");
    assert!(!err.is_retryable());
    Migrator::up(&host, None).await.unwrap();
    let queue = MessageQueue::from_connection_with_options(host, options())
        .await
        .unwrap();
    queue.create_stream("orders").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_apply_the_migrations_once() {
    let db = common::fresh_db("concurrent_migrations").await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let db = db.clone();
        starts.push(tokio::spawn(async move {
            MessageQueue::with_options(db.db_type, &db.url, QueueOptions::new().pool_size(2)).await
        }));
    }
    let mut queues = Vec::new();
    for start in starts {
        queues.push(start.await.unwrap().unwrap());
    }
    let conn = queues[0].connection();
    assert_eq!(
        common::count(conn, "dabgent_mq_migrations").await,
        migrations()
    );
    queues[1].create_stream("s").await.unwrap();
    queues[2].publish("s", "t", json!(1)).await.unwrap();
}

#[tokio::test]
async fn a_missing_database_is_a_connection_error_that_retrying_cannot_fix() {
    if !common::is_postgres() {
        eprintln!("SQLite creates a missing database file; nothing to test");
        return;
    }
    let base = std::env::var("DATABASE_URL").unwrap();
    let url = match base.rfind('/') {
        Some(at) => format!("{}/dabgent_mq_no_such_database", &base[..at]),
        None => panic!("DATABASE_URL without a database name: {base}"),
    };
    let options = QueueOptions::new().acquire_timeout(Duration::from_secs(3));
    let err = MessageQueue::with_options(DatabaseType::Postgres, &url, options)
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::Connection { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
}

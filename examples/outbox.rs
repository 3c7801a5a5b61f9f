//! The outbox pattern: the application writes its own table and publishes an event in one
//! SeaORM transaction, so the event exists exactly when the write does.
//!
//! ```text
//! cargo run --example outbox
//! ```

use std::error::Error;
use std::time::Duration;

use dabgent_mq::sea_orm::{
    ConnectionTrait, Database, DbBackend, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait,
};
use dabgent_mq::{Message, MessageQueue, SubscribeOptions};
use futures::TryStreamExt;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    // The application's own connection and table; the queue shares the connection.
    let db = Database::connect(url).await?;
    db.execute_unprepared("CREATE TABLE orders (id INTEGER PRIMARY KEY, total TEXT NOT NULL)")
        .await?;
    let queue = MessageQueue::from_connection(db.clone()).await?;
    queue.create_stream("orders").await?;

    // Committed: the order row and its event both exist.
    let txn = begin(&db).await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO orders (id, total) VALUES (?, ?)",
        [7.into(), "99.99".into()],
    ))
    .await?;
    let id = queue
        .publish_in(
            &txn,
            Message::new("orders", "order.created", json!({"order_id": 7})),
        )
        .await?;
    txn.commit().await?;
    println!("order 7 stored and event {id} published, atomically");

    // Rolled back: neither exists.
    let txn = begin(&db).await?;
    txn.execute_unprepared("INSERT INTO orders (id, total) VALUES (8, '5.00')")
        .await?;
    queue
        .publish_in(
            &txn,
            Message::new("orders", "order.created", json!({"order_id": 8})),
        )
        .await?;
    txn.rollback().await?;
    let events: Vec<Message> = queue.stream("orders").build().try_collect().await?;
    println!(
        "after the rollback the stream holds {} event(s)",
        events.len()
    );

    let mut subscriber = queue
        .subscribe_with_options(SubscribeOptions::new("orders").poll_timeout(Duration::ZERO))
        .await?;
    let delivered = subscriber.poll().await?;
    for msg in &delivered {
        println!("delivered: {}", msg.payload);
        subscriber.ack(msg.id).await?;
    }
    if delivered.len() != 1 || delivered[0].id != id || events.len() != 1 {
        return Err("only the committed event must exist".into());
    }
    Ok(())
}

/// A transaction that will write. On SQLite `BEGIN IMMEDIATE` takes the write lock up front,
/// so the transaction cannot fail later with "database is locked".
async fn begin(
    db: &dabgent_mq::sea_orm::DatabaseConnection,
) -> Result<dabgent_mq::sea_orm::DatabaseTransaction, dabgent_mq::sea_orm::DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_sqlite() {
        super::run("sqlite::memory:").await.unwrap();
    }
}

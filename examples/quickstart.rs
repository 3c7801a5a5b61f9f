//! Quick start: publish to an embedded SQLite stream and replay it.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Creates `messages.db` in the current folder if it is missing; run it again and the stream
//! keeps growing.

use std::error::Error;

use dabgent_mq::{DatabaseType, Message, MessageQueue, MqError};
use futures::StreamExt;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite://messages.db").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("orders").await?; // idempotent

    let first = queue
        .publish(
            "orders",
            "order.created",
            json!({"order_id": "12345", "amount": 99.99}),
        )
        .await?;
    println!("Published: {first}");
    let ids = queue
        .publish_batch(vec![
            Message::new("orders", "order.paid", json!({"order_id": "12345"})),
            Message::new("orders", "order.shipped", json!({"order_id": "12345"})).with_priority(5),
        ])
        .await?;
    println!("Published batch: {ids:?}");

    match queue
        .publish("orders", "order.created", json!("x".repeat(2_000_000)))
        .await
    {
        Ok(id) => println!("Published: {id}"),
        Err(MqError::MessageTooLarge(size, max)) => {
            println!("Message too large: {size} > {max}")
        }
        Err(e) => return Err(e.into()),
    }

    // Replay what this run published: find the offset of the first message, then read on.
    let mut replay = queue
        .stream("orders")
        .from_offset(0)
        .batch_size(100)
        .build();
    let mut start = None;
    while let Some(msg) = replay.next().await {
        let msg = msg?;
        if msg.id == first {
            start = Some(msg.offset);
            break;
        }
    }
    let start = start.ok_or("the published message was not found")?;
    let mut replay = queue.stream("orders").from_offset(start).build();
    let mut replayed = 0;
    while let Some(msg) = replay.next().await {
        let msg = msg?;
        println!(
            "Replaying: offset {} topic {} payload {}",
            msg.offset, msg.topic, msg.payload
        );
        replayed += 1;
    }
    if replayed != 3 {
        return Err(format!("expected to replay 3 messages, got {replayed}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_a_fresh_sqlite_file() {
        let dir =
            std::env::temp_dir().join(format!("dabgent_mq_quickstart_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("messages.db").display());
        super::run(&url).await.unwrap();
        // Running again on the same file works too.
        super::run(&url).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

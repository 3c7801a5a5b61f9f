//! The quick start: publish, subscribe, poll and ack, priorities, batches, a subscriber
//! stream, replay, and error handling, on an embedded SQLite file.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Creates `messages.db` in the current folder if it is missing; every run adds to it.

use std::error::Error;
use std::time::Duration;

use dabgent_mq::{DatabaseType, Message, MessageQueue, MqError, SubscribeOptions};
use futures::StreamExt;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite://messages.db").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?; // file is created if missing
    queue.create_stream("orders").await?; // idempotent
    let msg_id = queue
        .publish(
            "orders",
            "order.created",
            json!({"order_id": "12345", "amount": 99.99}),
        )
        .await?;
    println!("Published: {msg_id}");

    let mut subscriber = queue
        .subscribe("orders", vec!["order.*".to_string()])
        .await?;
    let messages = subscriber.poll().await?; // long poll, returns at once: a message is ready
    for msg in messages {
        println!("Received: {} {} {}", msg.id, msg.topic, msg.payload);
        subscriber.ack(msg.id).await?;
    }

    queue.create_stream("notifications").await?;
    queue
        .publish_with_priority(
            "notifications",
            "alert.critical",
            json!({"message": "System down!"}),
            10,
        )
        .await?;

    queue.create_stream("events").await?;
    let ids = queue
        .publish_batch(vec![
            Message::new("events", "user.login", json!({"user_id": 1})),
            Message::new("events", "user.logout", json!({"user_id": 2})),
        ])
        .await?;
    println!("Published batch: {ids:?}");

    let subscriber = queue
        .subscribe("events", vec!["user.*".to_string()])
        .await?;
    let mut stream = subscriber.into_stream();
    let mut seen = 0;
    while let Some(message) = stream.next().await {
        let message = message?;
        println!("Streamed: {} {}", message.topic, message.payload);
        if message.id == ids[1] {
            break;
        }
        seen += 1;
        if seen > 1_000 {
            return Err("the batch never arrived".into());
        }
    }
    stream.close().await?; // acknowledges the last message processed

    let mut replay = queue
        .stream("events")
        .from_offset(0)
        .batch_size(100)
        .build();
    while let Some(msg) = replay.next().await {
        let msg = msg?;
        if ids.contains(&msg.id) {
            println!("Replaying: offset {} {}", msg.offset, msg.topic);
        }
    }

    let options = SubscribeOptions::new("orders")
        .consumer_id("worker-1")
        .topics(vec!["order.created".to_string()])
        .batch_size(50)
        .from_offset(1000)
        .poll_timeout(Duration::from_millis(100));
    let subscriber = queue.subscribe_with_options(options).await?;
    subscriber.heartbeat().await?;
    let removed = queue.cleanup_expired_consumers(60).await?; // seconds of silence
    println!("Removed {removed} silent consumers");

    let payload = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    match queue.publish("orders", "order.created", payload).await {
        Ok(id) => println!("Published: {id}"),
        Err(MqError::MessageTooLarge(size, max)) => println!("Message too large: {size} > {max}"),
        Err(MqError::Database(e)) => println!("Database error: {e}"),
        Err(e) => println!("Other error: {e}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_twice_on_a_fresh_sqlite_file() {
        let dir =
            std::env::temp_dir().join(format!("dabgent_mq_quickstart_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("messages.db").display());
        super::run(&url).await.unwrap();
        super::run(&url).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Batches: publish many messages atomically (even across streams), consume them in batches,
//! and acknowledge a batch in one round trip.
//!
//! ```text
//! cargo run --example batch
//! ```

use std::error::Error;
use std::time::Duration;

use dabgent_mq::{DatabaseType, Message, MessageQueue, MqError, SubscribeOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("events").await?;
    queue.create_stream("audit").await?;

    // One transaction: 1,000 events and an audit record, all or nothing.
    let mut batch: Vec<Message> = (0..1000)
        .map(|i| Message::new("events", "user.login", json!({"user_id": i})))
        .collect();
    batch.push(Message::new(
        "audit",
        "import.finished",
        json!({"count": 1000}),
    ));
    let ids = queue.publish_batch(batch).await?;
    println!(
        "published {} messages, ids {}..={}",
        ids.len(),
        ids[0],
        ids[ids.len() - 1]
    );

    // One invalid message fails the whole batch, and nothing is written.
    let bad = vec![
        Message::new("events", "user.login", json!({})),
        Message::new("events", "not a topic", json!({})),
    ];
    match queue.publish_batch(bad).await {
        Err(MqError::InvalidTopic { topic, reason }) => println!("rejected {topic:?}: {reason}"),
        other => return Err(format!("expected a rejected batch, got {other:?}").into()),
    }

    let mut subscriber = queue
        .subscribe_with_options(
            SubscribeOptions::new("events")
                .batch_size(250)
                .poll_timeout(Duration::ZERO),
        )
        .await?;
    let mut received = 0;
    loop {
        let messages = subscriber.poll().await?;
        if messages.is_empty() {
            break;
        }
        received += messages.len();
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        subscriber.ack_batch(&ids).await?;
        println!("processed a batch of {}", ids.len());
    }
    if received != 1000 {
        return Err(format!("received {received} of 1000").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_sqlite() {
        super::run("sqlite::memory:").await.unwrap();
    }
}

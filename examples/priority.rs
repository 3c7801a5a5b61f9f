//! Priorities: within a consumer group, higher priorities are delivered first, then lower
//! offsets.
//!
//! ```text
//! cargo run --example priority
//! ```

use std::error::Error;
use std::time::Duration;

use dabgent_mq::{DatabaseType, Message, MessageQueue, SubscribeOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("notifications").await?;
    queue
        .publish("notifications", "digest.daily", json!({"n": 1}))
        .await?;
    queue
        .publish_with_priority(
            "notifications",
            "alert.critical",
            json!({"message": "System down!"}),
            10,
        )
        .await?;
    queue
        .publish_message(
            Message::new("notifications", "alert.warning", json!({"disk": "91%"})).with_priority(5),
        )
        .await?;
    queue
        .publish("notifications", "digest.weekly", json!({"n": 2}))
        .await?;

    let mut subscriber = queue
        .subscribe_with_options(SubscribeOptions::new("notifications").poll_timeout(Duration::ZERO))
        .await?;
    let messages = subscriber.poll().await?;
    let order: Vec<(i32, &str)> = messages
        .iter()
        .map(|m| (m.priority, m.topic.as_str()))
        .collect();
    for (priority, topic) in &order {
        println!("priority {priority:>3}  {topic}");
    }
    if order
        != [
            (10, "alert.critical"),
            (5, "alert.warning"),
            (0, "digest.daily"),
            (0, "digest.weekly"),
        ]
    {
        return Err(format!("unexpected order: {order:?}").into());
    }
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    subscriber.ack_batch(&ids).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_sqlite() {
        super::run("sqlite::memory:").await.unwrap();
    }
}

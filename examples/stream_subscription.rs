//! A subscriber as an endless stream: each message is acknowledged when the next one is asked
//! for, leases are kept alive while you process, and transient errors are retried.
//!
//! ```text
//! cargo run --example stream_subscription
//! ```

use std::error::Error;
use std::time::Duration;

use dabgent_mq::{DatabaseType, Message, MessageQueue, SubscribeOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Login {
    user_id: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("events").await?;

    // A producer that keeps publishing while the consumer runs.
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for user_id in 0..5 {
                queue
                    .publish_message(Message::typed("events", "user.login", &Login { user_id })?)
                    .await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, dabgent_mq::MqError>(())
        })
    };

    let subscriber = queue
        .subscribe_with_options(SubscribeOptions::new("events").topics(vec!["user.*".to_string()]))
        .await?;
    let mut stream = subscriber.into_stream();
    let mut processed = 0;
    while let Some(message) = stream.next().await {
        let message = message?;
        let login: Login = message.payload_as()?;
        println!(
            "offset {}: user {} logged in (attempt {})",
            message.offset, login.user_id, message.attempt
        );
        processed += 1;
        if processed == 5 {
            break;
        }
    }
    // Acknowledge the last message and stop; dropping the stream would deliver it again.
    stream.close().await?;
    producer.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_sqlite() {
        super::run("sqlite::memory:").await.unwrap();
    }
}

//! Error handling: validation errors that write nothing, retries with backoff via `nack`,
//! dead letters after `max_attempts`, and requeueing them.
//!
//! ```text
//! cargo run --example error_handling
//! ```

use std::error::Error;
use std::time::Duration;

use dabgent_mq::{DatabaseType, MessageQueue, MqError, SubscribeOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("payments").await?;

    // Bad input is rejected before anything is written.
    let too_big = json!({"blob": "x".repeat(2 * 1024 * 1024)});
    for (stream, topic, payload) in [
        ("payments", "payment.received", too_big),
        ("refunds", "refund.issued", json!({})),
        ("payments", "", json!({})),
    ] {
        match queue.publish(stream, topic, payload).await {
            Ok(id) => println!("published {id}"),
            Err(MqError::MessageTooLarge(size, max)) => println!("too large: {size} > {max} bytes"),
            Err(MqError::UnknownStream(name)) => println!("no stream named {name:?}"),
            Err(e @ MqError::InvalidTopic { .. }) => println!("{e}"),
            Err(e) if e.is_retryable() => println!("temporary failure, try again: {e}"),
            Err(e) => return Err(e.into()),
        }
    }

    // A message whose processing keeps failing: retried with backoff, then a dead letter.
    let id = queue
        .publish("payments", "payment.received", json!({"card": "declined"}))
        .await?;
    let mut subscriber = queue
        .subscribe_with_options(
            SubscribeOptions::new("payments")
                .group("settlement")
                .max_attempts(3)
                .retry_backoff(Duration::from_millis(20))
                .poll_timeout(Duration::from_secs(2)),
        )
        .await?;
    for _ in 0..3 {
        for msg in subscriber.poll().await? {
            println!("attempt {} of message {} failed; nack", msg.attempt, msg.id);
            subscriber.nack(msg.id).await?;
        }
    }
    let dead = queue.dead_letters("payments", "settlement").await?;
    println!(
        "dead letters: {:?}",
        dead.iter().map(|m| (m.id, m.attempt)).collect::<Vec<_>>()
    );
    if dead.len() != 1 || dead[0].id != id {
        return Err("expected one dead letter".into());
    }

    // After fixing the cause, put them back.
    let requeued = queue.requeue_dead_letters("payments", "settlement").await?;
    println!("requeued {requeued}");
    let retry = subscriber.poll().await?;
    for msg in &retry {
        println!(
            "delivered again (attempt {}); this time it works",
            msg.attempt
        );
        subscriber.ack(msg.id).await?;
    }
    if retry.len() != 1 {
        return Err("the requeued message did not come back".into());
    }

    // Settling a message twice is an error, not a silent success.
    match subscriber.ack(id).await {
        Err(MqError::NotLeased(id)) => println!("message {id} was already settled"),
        other => return Err(format!("unexpected: {other:?}").into()),
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

//! Consumer groups: every group receives every message (fan-out), and the members of one
//! group share them (load balancing).
//!
//! ```text
//! cargo run --example consumer_groups
//! ```

use std::collections::BTreeSet;
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
    queue.create_stream("orders").await?;
    let batch = (0..40).map(|i| Message::new("orders", "order.created", json!({"n": i})));
    let ids: BTreeSet<i64> = queue
        .publish_batch(batch.collect())
        .await?
        .into_iter()
        .collect();

    // Two groups: each sees all 40 orders.
    let audit = consume(&queue, "audit", "auditor", 40).await?;
    println!("audit received {} orders", audit.len());

    // One group with two members: they split the 40 orders between them.
    let (a, b) = tokio::try_join!(
        consume(&queue, "billing", "billing-1", 5),
        consume(&queue, "billing", "billing-2", 5),
    )?;
    println!(
        "billing-1 handled {}, billing-2 handled {}",
        a.len(),
        b.len()
    );

    let billing: BTreeSet<i64> = a.union(&b).copied().collect();
    if audit != ids || billing != ids || !a.is_disjoint(&b) {
        return Err("fan-out or load balancing went wrong".into());
    }
    Ok(())
}

/// Consumes as member `consumer` of `group` until nothing is left.
async fn consume(
    queue: &MessageQueue,
    group: &str,
    consumer: &str,
    batch_size: u32,
) -> Result<BTreeSet<i64>, dabgent_mq::MqError> {
    let mut subscriber = queue
        .subscribe_with_options(
            SubscribeOptions::new("orders")
                .group(group)
                .consumer_id(consumer)
                .batch_size(batch_size)
                .poll_timeout(Duration::from_millis(200)),
        )
        .await?;
    let mut handled = BTreeSet::new();
    loop {
        let messages = subscriber.poll().await?;
        if messages.is_empty() {
            return Ok(handled);
        }
        for msg in messages {
            tokio::time::sleep(Duration::from_millis(2)).await; // the work
            subscriber.ack(msg.id).await?;
            handled.insert(msg.id);
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_on_sqlite() {
        super::run("sqlite::memory:").await.unwrap();
    }
}

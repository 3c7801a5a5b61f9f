//! Replay: read a stream's log from any offset, in pages, in constant memory. Replay touches
//! no consumer group state.
//!
//! ```text
//! cargo run --example replay
//! ```

use std::error::Error;

use dabgent_mq::{DatabaseType, Message, MessageQueue};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run("sqlite::memory:").await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let queue = MessageQueue::new(DatabaseType::Sqlite, url).await?;
    queue.create_stream("ledger").await?;
    let entries = (1..=250).map(|n| Message::new("ledger", "entry.posted", json!({"amount": n})));
    queue.publish_batch(entries.collect()).await?;

    // Rebuild a balance from the whole log, 100 messages per round trip.
    let mut replay = queue
        .stream("ledger")
        .from_offset(0)
        .batch_size(100)
        .build();
    let mut balance = 0i64;
    while let Some(msg) = replay.next().await {
        balance += msg?.payload["amount"].as_i64().unwrap_or_default();
    }
    println!("balance after replay: {balance}");
    if balance != (1..=250).sum::<i64>() {
        return Err("wrong balance".into());
    }

    // Resume from a known offset.
    let tail: Vec<Message> = queue
        .stream("ledger")
        .from_offset(248)
        .build()
        .try_collect()
        .await?;
    for msg in &tail {
        println!("offset {}: {}", msg.offset, msg.payload);
    }
    if tail.iter().map(|m| m.offset).collect::<Vec<_>>() != [248, 249, 250] {
        return Err("wrong tail".into());
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

//! Consumer management: named members, heartbeats, listing members, group statistics, and
//! removing members that went silent (their messages go to the rest of the group at once).
//!
//! ```text
//! cargo run --example consumer_management
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
    queue.create_stream("orders").await?;
    let batch = (0..10).map(|i| Message::new("orders", "order.created", json!({"n": i})));
    queue.publish_batch(batch.collect()).await?;

    let options = |id: &str| {
        SubscribeOptions::new("orders")
            .consumer_id(id)
            .topics(vec!["order.*".to_string()])
            .batch_size(4)
            .visibility_timeout(Duration::from_secs(60))
            .poll_timeout(Duration::ZERO)
    };
    let mut worker1 = queue.subscribe_with_options(options("worker-1")).await?;
    let mut worker2 = queue.subscribe_with_options(options("worker-2")).await?;

    let held_by_worker1 = worker1.poll().await?;
    for msg in worker2.poll().await? {
        worker2.ack(msg.id).await?;
    }
    worker2.heartbeat().await?; // marks it alive and extends the leases it holds

    for member in queue.consumers("orders").await? {
        println!(
            "{} in group {:?}: topics {:?}, acked up to offset {}, last seen {}",
            member.consumer_id,
            member.group,
            member.topics,
            member.acked_offset,
            member.last_heartbeat
        );
    }
    let stats = queue.group_stats("orders", "default").await?;
    println!(
        "ready {}, in flight {}, lag {}",
        stats.ready, stats.in_flight, stats.lag
    );

    // worker-1 goes silent while holding 4 messages (a hung process, say).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    worker2.heartbeat().await?;
    let removed = queue.cleanup_expired_consumers(2).await?;
    println!("removed {removed} silent member(s)");
    let mut recovered = 0;
    loop {
        let messages = worker2.poll().await?;
        if messages.is_empty() {
            break;
        }
        for msg in messages {
            recovered += usize::from(held_by_worker1.iter().any(|m| m.id == msg.id));
            worker2.ack(msg.id).await?;
        }
    }
    println!(
        "worker-2 took over {recovered} of worker-1's messages without waiting for their leases"
    );
    if removed != 1 || recovered != held_by_worker1.len() {
        return Err("the silent member's messages were not recovered".into());
    }
    let stats = queue.group_stats("orders", "default").await?;
    if stats.lag != 0 {
        return Err(format!("lag should be 0: {stats:?}").into());
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

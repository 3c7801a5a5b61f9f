//! Replay: order, starting offset, paging, the end of the log.

use dabgent_mq::{Message, MqError};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::common;

async fn publish_n(queue: &dabgent_mq::MessageQueue, stream: &str, n: usize) {
    queue.create_stream(stream).await.unwrap();
    let batch = (0..n)
        .map(|i| Message::new(stream, format!("topic.{}", i % 3), json!({"n": i + 1})))
        .collect();
    queue.publish_batch(batch).await.unwrap();
}

#[tokio::test]
async fn replay_yields_every_message_in_offset_order_and_ends_at_the_head() {
    let (queue, _db) = common::queue("replay_order").await;
    publish_n(&queue, "events", 25).await;
    let mut replay = queue
        .stream("events")
        .from_offset(0)
        .batch_size(100)
        .build();
    let mut seen = Vec::new();
    while let Some(msg) = replay.next().await {
        let msg = msg.unwrap();
        assert_eq!(msg.stream, "events");
        assert_eq!(msg.payload["n"], json!(msg.offset));
        assert_eq!(msg.attempt, 0);
        seen.push(msg.offset);
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    assert!(replay.next().await.is_none(), "stays ended");
}

#[tokio::test]
async fn replay_from_offset_skips_earlier_messages() {
    let (queue, _db) = common::queue("replay_from").await;
    publish_n(&queue, "events", 20).await;
    let offsets: Vec<i64> = queue
        .stream("events")
        .from_offset(15)
        .build()
        .map_ok(|m| m.offset)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(offsets, (15..=20).collect::<Vec<_>>());
    let past_head: Vec<Message> = queue
        .stream("events")
        .from_offset(21)
        .build()
        .try_collect()
        .await
        .unwrap();
    assert!(past_head.is_empty());
}

#[tokio::test]
async fn replay_reads_in_pages_of_the_batch_size() {
    let (queue, _db) = common::queue("replay_paging").await;
    publish_n(&queue, "events", 50).await;
    for batch in [1u64, 7, 10, 49, 50, 51] {
        let offsets: Vec<i64> = queue
            .stream("events")
            .from_offset(3)
            .batch_size(batch)
            .build()
            .map_ok(|m| m.offset)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(offsets, (3..=50).collect::<Vec<_>>(), "batch size {batch}");
    }
}

#[tokio::test]
async fn replay_continues_past_messages_published_while_it_runs() {
    let (queue, _db) = common::queue("replay_live_head").await;
    publish_n(&queue, "events", 4).await;
    let mut replay = queue.stream("events").batch_size(2).build();
    assert_eq!(replay.next().await.unwrap().unwrap().offset, 1);
    queue
        .publish("events", "late", json!({"n": 5}))
        .await
        .unwrap();
    let rest: Vec<i64> = replay.map_ok(|m| m.offset).try_collect().await.unwrap();
    assert_eq!(rest, [2, 3, 4, 5]);
}

#[tokio::test]
async fn replay_of_an_unknown_stream_yields_one_error() {
    let (queue, _db) = common::queue("replay_unknown").await;
    let mut replay = queue.stream("ghost").build();
    let err = replay.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, MqError::UnknownStream(ref s) if s == "ghost"),
        "{err:?}"
    );
    assert!(replay.next().await.is_none());
}

#[tokio::test]
async fn replay_with_batch_size_zero_is_a_configuration_error() {
    let (queue, _db) = common::queue("replay_zero_batch").await;
    publish_n(&queue, "events", 3).await;
    let mut replay = queue.stream("events").batch_size(0).build();
    let err = replay.next().await.unwrap().unwrap_err();
    assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
    assert!(replay.next().await.is_none());
}

#[tokio::test]
async fn replay_of_an_empty_stream_ends_at_once_and_sees_only_its_stream() {
    let (queue, _db) = common::queue("replay_isolated").await;
    queue.create_stream("empty").await.unwrap();
    publish_n(&queue, "full", 5).await;
    let empty: Vec<Message> = queue.stream("empty").build().try_collect().await.unwrap();
    assert!(empty.is_empty());
    let full: Vec<Message> = queue.stream("full").build().try_collect().await.unwrap();
    assert!(full.iter().all(|m| m.stream == "full"));
    assert_eq!(full.len(), 5);
}

#[tokio::test]
async fn replay_touches_no_consumer_group_state() {
    let (queue, _db) = common::queue("replay_no_state").await;
    publish_n(&queue, "events", 10).await;
    let before = common::snapshot(&queue).await;
    let all: Vec<Message> = queue.stream("events").build().try_collect().await.unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(common::snapshot(&queue).await, before);
}

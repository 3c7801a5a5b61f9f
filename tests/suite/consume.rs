//! Consumption: groups, ordering, leases, acks, dead letters, liveness and stats.

use std::collections::BTreeSet;
use std::time::Duration;

use dabgent_mq::sea_orm::ConnectionTrait;
use dabgent_mq::{Message, MessageQueue, MqError, SubscribeOptions, Subscriber};
use futures::StreamExt;
use serde_json::json;

use crate::common;

/// Options that never wait: tests that want a message ready now poll with these.
fn now(stream: &str) -> SubscribeOptions {
    SubscribeOptions::new(stream).poll_timeout(Duration::ZERO)
}

async fn publish_n(queue: &MessageQueue, stream: &str, n: usize) -> Vec<i64> {
    queue.create_stream(stream).await.unwrap();
    let batch = (0..n)
        .map(|i| Message::new(stream, format!("t.{}", i % 4), json!({"i": i})))
        .collect();
    queue.publish_batch(batch).await.unwrap()
}

/// Polls and acks until `expected` messages were received or `limit` passes.
async fn drain(sub: &mut Subscriber, expected: usize, limit: Duration) -> Vec<i64> {
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < expected && started.elapsed() < limit {
        for msg in sub.poll().await.unwrap() {
            sub.ack(msg.id).await.unwrap();
            got.push(msg.id);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_of_one_group_share_the_messages_each_to_exactly_one() {
    let (queue, _db) = common::queue("load_balancing").await;
    let ids = publish_n(&queue, "jobs", 200).await;
    let mut tasks = Vec::new();
    for member in 0..2 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut sub = queue
                .subscribe_with_options(
                    SubscribeOptions::new("jobs")
                        .consumer_id(format!("member-{member}"))
                        .batch_size(7)
                        .poll_timeout(Duration::from_millis(300)),
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            loop {
                let batch = sub.poll().await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                for msg in batch {
                    sub.ack(msg.id).await.unwrap();
                    got.push(msg.id);
                }
            }
        }));
    }
    let a = tasks.remove(0).await.unwrap();
    let b = tasks.remove(0).await.unwrap();
    let sa: BTreeSet<i64> = a.iter().copied().collect();
    let sb: BTreeSet<i64> = b.iter().copied().collect();
    assert_eq!(sa.len(), a.len(), "member A got a message twice");
    assert_eq!(sb.len(), b.len(), "member B got a message twice");
    assert!(sa.is_disjoint(&sb), "a message went to both members");
    let all: BTreeSet<i64> = sa.union(&sb).copied().collect();
    assert_eq!(all, ids.into_iter().collect::<BTreeSet<_>>());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members worked: {} / {}",
        a.len(),
        b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_members_of_two_groups_each_get_exactly_their_own_messages() {
    // On SQLite, the claims and acks of concurrent members of one queue are written together,
    // several to one commit; every member must still get back exactly the rows of its own
    // claim. Two groups of four members, with batch sizes from 1 to 4, all polling and acking
    // at once: each group receives every message exactly once, and every ack succeeds.
    let (queue, _db) = common::queue("combined_members").await;
    let ids = publish_n(&queue, "jobs", 600).await;
    let mut tasks = Vec::new();
    for group in ["billing", "audit"] {
        for member in 0..4u32 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let mut sub = queue
                    .subscribe_with_options(
                        SubscribeOptions::new("jobs")
                            .group(group)
                            .consumer_id(format!("{group}-{member}"))
                            .batch_size(member + 1)
                            .poll_timeout(Duration::from_millis(300)),
                    )
                    .await
                    .unwrap();
                let mut got = Vec::new();
                loop {
                    let batch = sub.poll().await.unwrap();
                    if batch.is_empty() {
                        return (group, got);
                    }
                    let batch_ids: Vec<i64> = batch.iter().map(|m| m.id).collect();
                    if member % 2 == 0 {
                        sub.ack_batch(&batch_ids).await.unwrap();
                    } else {
                        for id in &batch_ids {
                            sub.ack(*id).await.unwrap();
                        }
                    }
                    got.extend(batch_ids);
                }
            }));
        }
    }
    let mut received: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for task in tasks {
        let (group, got) = task.await.unwrap();
        received.entry(group).or_default().extend(got);
    }
    let expected: BTreeSet<i64> = ids.into_iter().collect();
    for (group, mut got) in received {
        got.sort_unstable();
        let unique: BTreeSet<i64> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "group {group} got a message twice");
        assert_eq!(unique, expected, "group {group} did not get every message");
    }
}

#[tokio::test]
async fn every_group_receives_every_message() {
    let (queue, _db) = common::queue("fan_out").await;
    let ids = publish_n(&queue, "events", 30).await;
    let mut billing = queue
        .subscribe_with_options(now("events").group("billing"))
        .await
        .unwrap();
    let mut audit = queue
        .subscribe_with_options(now("events").group("audit"))
        .await
        .unwrap();
    let got_billing = drain(&mut billing, 30, Duration::from_secs(5)).await;
    let got_audit = drain(&mut audit, 30, Duration::from_secs(5)).await;
    assert_eq!(got_billing, ids);
    assert_eq!(got_audit, ids);
}

#[tokio::test]
async fn a_plain_subscribe_receives_messages_published_before_it() {
    let (queue, _db) = common::queue("plain_subscribe").await;
    queue.create_stream("orders").await.unwrap();
    let id = queue
        .publish("orders", "order.created", json!({"order_id": "12345"}))
        .await
        .unwrap();
    queue
        .publish("orders", "invoice.sent", json!({}))
        .await
        .unwrap();
    let mut subscriber = queue
        .subscribe("orders", vec!["order.*".to_string()])
        .await
        .unwrap();
    let messages = subscriber.poll().await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!((messages[0].id, messages[0].attempt), (id, 1));
    assert_eq!(messages[0].stream, "orders");
    subscriber.ack(id).await.unwrap();
}

/// A delivered message carries the times stored with it in the log. On SQLite the catch-up
/// copies them into the delivery rows; rows materialized without the copies (before the
/// migration that added them) must still deliver the right times.
#[tokio::test]
async fn delivered_messages_carry_the_times_of_the_log_even_for_rows_without_copies() {
    let (queue, _db) = common::queue("delivery_times").await;
    queue.create_stream("s").await.unwrap();
    queue
        .publish_batch(vec![
            Message::new("s", "t", json!(1)),
            Message::new("s", "t", json!(2)).with_delay(Duration::from_millis(1)),
            Message::new("s", "t", json!(3)),
        ])
        .await
        .unwrap();
    let logged: Vec<Message> = queue
        .stream("s")
        .build()
        .map(|m| m.unwrap())
        .collect()
        .await;
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(1))
        .await
        .unwrap();
    let mut got = sub.poll().await.unwrap();
    if !common::is_postgres() {
        queue
            .connection()
            .execute_unprepared(
                "UPDATE mq_deliveries SET message_created_at = NULL, message_deliver_at = NULL",
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..2 {
        got.extend(sub.poll().await.unwrap());
    }
    got.sort_by_key(|m| m.offset);
    let times = |ms: &[Message]| {
        ms.iter()
            .map(|m| (m.id, m.created_at, m.deliver_at))
            .collect::<Vec<_>>()
    };
    assert_eq!(times(&got), times(&logged));
    assert!(logged[1].deliver_at > logged[1].created_at);
}

#[tokio::test]
async fn higher_priority_is_delivered_first_then_lower_offset() {
    let (queue, _db) = common::queue("priority_order").await;
    queue.create_stream("s").await.unwrap();
    let priorities = [0, 5, -1, 5, 10, 0, 10, 3];
    let batch = priorities
        .iter()
        .map(|p| Message::new("s", "t", json!({"p": p})).with_priority(*p))
        .collect();
    queue.publish_batch(batch).await.unwrap();
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(3))
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        for msg in sub.poll().await.unwrap() {
            order.push((msg.priority, msg.offset));
            sub.ack(msg.id).await.unwrap();
        }
    }
    assert_eq!(
        order,
        [
            (10, 5),
            (10, 7),
            (5, 2),
            (5, 4),
            (3, 8),
            (0, 1),
            (0, 6),
            (-1, 3)
        ]
    );
}

#[tokio::test]
async fn a_claim_after_a_full_batch_still_sees_messages_published_since_in_priority_order() {
    // After a full batch, the next claim first checks that the group is caught up (on
    // PostgreSQL); here it never is, so every claim must catch up and pick by priority.
    let (queue, _db) = common::queue("priority_after_full_batch").await;
    queue.create_stream("s").await.unwrap();
    let publish = |p: i32| queue.publish_with_priority("s", "t", json!({"p": p}), p);
    for _ in 0..4 {
        publish(0).await.unwrap();
    }
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(2))
        .await
        .unwrap();
    let mut polls = Vec::new();
    for next in [Some(9), Some(5), None, None] {
        let got = sub.poll().await.unwrap();
        for msg in &got {
            sub.ack(msg.id).await.unwrap();
        }
        polls.push(
            got.iter()
                .map(|m| (m.priority, m.offset))
                .collect::<Vec<_>>(),
        );
        if let Some(p) = next {
            publish(p).await.unwrap();
        }
    }
    assert_eq!(
        polls,
        [
            vec![(0, 1), (0, 2)],
            vec![(9, 5), (0, 3)],
            vec![(5, 6), (0, 4)],
            vec![],
        ]
    );
}

#[tokio::test]
async fn payloads_of_every_size_come_back_whole_from_one_claim_in_priority_order() {
    // On SQLite a claim returns payloads of up to 64 KiB itself and reads larger ones after
    // it; one batch mixes both kinds, at that limit's edge, and text that needs escaping.
    let (queue, _db) = common::queue("payload_sizes_in_one_claim").await;
    queue.create_stream("s").await.unwrap();
    // A JSON string that serializes to exactly `bytes` bytes, quotes included.
    let exact = |bytes: usize| json!("x".repeat(bytes - 2));
    let escaped = |units: usize| json!({"text": "é\\\"\n\u{1}\u{1F600}ab".repeat(units)});
    let payloads = [
        json!({"small": true}),
        exact(65_535),
        exact(65_536),
        exact(65_537),
        escaped(20_000),
        exact(1_000_000),
        escaped(3),
    ];
    let mut sent = Vec::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let priority = i32::try_from(i % 3).unwrap();
        let id = queue
            .publish_with_priority("s", "t", payload.clone(), priority)
            .await
            .unwrap();
        sent.push((priority, id, payload));
    }
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(10))
        .await
        .unwrap();
    let got = sub.poll().await.unwrap();
    sent.sort_by_key(|(priority, id, _)| (-priority, *id));
    let expected: Vec<_> = sent.iter().map(|(_, id, p)| (*id, p.clone())).collect();
    let got: Vec<_> = got.iter().map(|m| (m.id, m.payload.clone())).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn each_member_receives_only_topics_matching_its_patterns() {
    let (queue, _db) = common::queue("topic_filters").await;
    queue.create_stream("s").await.unwrap();
    let topics = [
        "order.created",
        "user.login",
        "order.paid.v2",
        "user_login",
        "audit",
    ];
    for t in topics {
        queue.publish("s", t, json!({})).await.unwrap();
    }
    let mut orders = queue
        .subscribe_with_options(now("s").topics(vec!["order.*".into()]))
        .await
        .unwrap();
    let mut users = queue
        .subscribe_with_options(now("s").topics(vec!["user.*".into(), "audit".into()]))
        .await
        .unwrap();
    let got: Vec<String> = orders
        .poll()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(got, ["order.created", "order.paid.v2"]);
    let got: Vec<String> = users
        .poll()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(
        got,
        ["user.login", "audit"],
        "`user_login` does not match `user.*`"
    );
}

#[tokio::test]
async fn from_offset_starts_a_new_group_there_and_bounds_every_member() {
    let (queue, _db) = common::queue("from_offset").await;
    publish_n(&queue, "s", 10).await;
    let mut late = queue
        .subscribe_with_options(now("s").group("late").from_offset(6))
        .await
        .unwrap();
    let offsets: Vec<i64> = late
        .poll()
        .await
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(offsets, [6, 7, 8, 9, 10]);
    // In an existing group that started at the beginning, a member that asks for a later
    // offset still gets nothing below it, while the rest of the group does.
    let mut other = queue
        .subscribe_with_options(now("s").group("early"))
        .await
        .unwrap();
    let mut member = queue
        .subscribe_with_options(now("s").group("early").from_offset(9))
        .await
        .unwrap();
    let offsets: Vec<i64> = member
        .poll()
        .await
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(offsets, [9, 10]);
    let offsets: Vec<i64> = other
        .poll()
        .await
        .unwrap()
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(
        offsets,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "9 and 10 are leased to the other member"
    );
}

#[tokio::test]
async fn delayed_messages_are_not_delivered_early() {
    let (queue, _db) = common::queue("delayed").await;
    queue.create_stream("s").await.unwrap();
    let id = queue
        .publish_message(Message::new("s", "t", json!({})).with_delay(Duration::from_millis(1500)))
        .await
        .unwrap();
    let mut sub = queue.subscribe_with_options(now("s")).await.unwrap();
    assert!(sub.poll().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        sub.poll().await.unwrap().is_empty(),
        "delivered before its delay"
    );
    let started = std::time::Instant::now();
    let mut waiting = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    let got = waiting.poll().await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_acknowledged_message_is_never_delivered_again() {
    let (queue, _db) = common::queue("ack_final").await;
    publish_n(&queue, "s", 3).await;
    let mut sub = queue
        .subscribe_with_options(now("s").visibility_timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let msgs = sub.poll().await.unwrap();
    assert_eq!(msgs.len(), 3);
    sub.ack_batch(&msgs.iter().map(|m| m.id).collect::<Vec<_>>())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = queue.subscribe_with_options(now("s")).await.unwrap();
    assert!(other.poll().await.unwrap().is_empty());
    assert!(sub.poll().await.unwrap().is_empty());
    assert_eq!(
        common::count(queue.connection(), "mq_deliveries").await,
        0,
        "acked rows are deleted"
    );
    assert_eq!(
        common::count(queue.connection(), "mq_messages").await,
        3,
        "the log keeps them"
    );
}

#[tokio::test]
async fn an_expired_lease_is_delivered_again_and_the_late_ack_is_rejected() {
    let (queue, _db) = common::queue("lease_expiry").await;
    let ids = publish_n(&queue, "s", 1).await;
    let opts = now("s").visibility_timeout(Duration::from_millis(300));
    let mut first = queue.subscribe_with_options(opts.clone()).await.unwrap();
    let mut second = queue.subscribe_with_options(opts).await.unwrap();
    let got = first.poll().await.unwrap();
    assert_eq!((got[0].id, got[0].attempt), (ids[0], 1));
    assert!(
        second.poll().await.unwrap().is_empty(),
        "leased to the first member"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = second.poll().await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (ids[0], 2));

    let err = first.ack(ids[0]).await.unwrap_err();
    assert!(
        matches!(err, MqError::LeaseLost(id) if id == ids[0]),
        "{err:?}"
    );
    assert_eq!(
        common::count(queue.connection(), "mq_deliveries").await,
        1,
        "late ack changed nothing"
    );
    second.ack(ids[0]).await.unwrap();
    assert_eq!(common::count(queue.connection(), "mq_deliveries").await, 0);
}

#[tokio::test]
async fn acking_an_unknown_or_settled_message_is_rejected() {
    let (queue, _db) = common::queue("ack_unknown").await;
    publish_n(&queue, "s", 1).await;
    let mut sub = queue.subscribe_with_options(now("s")).await.unwrap();
    let err = sub.ack(123_456).await.unwrap_err();
    assert!(matches!(err, MqError::NotLeased(123_456)), "{err:?}");
    let msg = sub.poll().await.unwrap().remove(0);
    sub.ack(msg.id).await.unwrap();
    let err = sub.ack(msg.id).await.unwrap_err();
    assert!(matches!(err, MqError::NotLeased(_)), "{err:?}");
    let err = sub.nack(msg.id).await.unwrap_err();
    assert!(matches!(err, MqError::NotLeased(_)), "{err:?}");
}

#[tokio::test]
async fn a_nacked_message_comes_back_after_its_backoff() {
    let (queue, _db) = common::queue("nack_backoff").await;
    let ids = publish_n(&queue, "s", 1).await;
    let mut sub = queue
        .subscribe_with_options(now("s").retry_backoff(Duration::from_millis(500)))
        .await
        .unwrap();
    let msg = sub.poll().await.unwrap().remove(0);
    sub.nack(msg.id).await.unwrap();
    assert!(
        sub.poll().await.unwrap().is_empty(),
        "redelivered before the backoff"
    );
    let stats = queue.group_stats("s", "default").await.unwrap();
    assert_eq!((stats.delayed, stats.ready, stats.in_flight), (1, 0, 0));
    tokio::time::sleep(Duration::from_millis(650)).await;
    let again = sub.poll().await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (ids[0], 2));
    // The second backoff is twice as long (±20 %, so at least 0.8 s): still away after 0.6 s.
    sub.nack(ids[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(sub.poll().await.unwrap().is_empty(), "backoff did not grow");
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(sub.poll().await.unwrap()[0].attempt, 3);
}

#[tokio::test]
async fn after_max_attempts_a_message_is_a_dead_letter_until_requeued() {
    let (queue, _db) = common::queue("dead_letters").await;
    let ids = publish_n(&queue, "s", 2).await;
    let mut sub = queue
        .subscribe_with_options(
            now("s")
                .group("billing")
                .max_attempts(2)
                .retry_backoff(Duration::from_millis(1))
                .batch_size(1),
        )
        .await
        .unwrap();
    for attempt in 1..=2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let msg = sub.poll().await.unwrap().remove(0);
        assert_eq!((msg.id, msg.attempt), (ids[0], attempt));
        sub.nack(msg.id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let next = sub.poll().await.unwrap().remove(0);
    assert_eq!(next.id, ids[1], "the dead letter is no longer delivered");
    sub.ack(next.id).await.unwrap();
    assert!(sub.poll().await.unwrap().is_empty());

    let dead = queue.dead_letters("s", "billing").await.unwrap();
    assert_eq!(
        dead.iter().map(|m| (m.id, m.attempt)).collect::<Vec<_>>(),
        [(ids[0], 2)]
    );
    assert_eq!(dead[0].payload, json!({"i": 0}));
    assert_eq!(queue.group_stats("s", "billing").await.unwrap().dead, 1);

    assert_eq!(queue.requeue_dead_letters("s", "billing").await.unwrap(), 1);
    assert!(queue.dead_letters("s", "billing").await.unwrap().is_empty());
    let back = sub.poll().await.unwrap().remove(0);
    assert_eq!((back.id, back.attempt), (ids[0], 1));
    sub.ack(back.id).await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_on_the_last_attempt_becomes_a_dead_letter() {
    let (queue, _db) = common::queue("dead_by_expiry").await;
    let ids = publish_n(&queue, "s", 1).await;
    let mut sub = queue
        .subscribe_with_options(
            now("s")
                .max_attempts(1)
                .visibility_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(sub.poll().await.unwrap()[0].id, ids[0]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sub.poll().await.unwrap().is_empty());
    let dead = queue.dead_letters("s", "default").await.unwrap();
    assert_eq!(dead.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn heartbeats_keep_a_lease_alive_past_the_visibility_timeout() {
    let (queue, _db) = common::queue("heartbeat").await;
    let ids = publish_n(&queue, "s", 1).await;
    let opts = now("s").visibility_timeout(Duration::from_millis(400));
    let mut holder = queue.subscribe_with_options(opts.clone()).await.unwrap();
    let mut rival = queue.subscribe_with_options(opts).await.unwrap();
    assert_eq!(holder.poll().await.unwrap()[0].id, ids[0]);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder.heartbeat().await.unwrap();
        assert!(
            rival.poll().await.unwrap().is_empty(),
            "the lease ran out despite heartbeats"
        );
    }
    holder.ack(ids[0]).await.unwrap();
}

#[tokio::test]
async fn cleanup_removes_silent_members_and_releases_their_leases_at_once() {
    let (queue, _db) = common::queue("cleanup_consumers").await;
    let ids = publish_n(&queue, "s", 2).await;
    let mut silent = queue
        .subscribe_with_options(
            now("s")
                .consumer_id("silent")
                .visibility_timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(silent.poll().await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut alive = queue
        .subscribe_with_options(now("s").consumer_id("alive"))
        .await
        .unwrap();
    assert!(alive.poll().await.unwrap().is_empty(), "leased for 60 s");
    assert_eq!(queue.cleanup_expired_consumers(2).await.unwrap(), 1);
    let members: Vec<String> = queue
        .consumers("s")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.consumer_id)
        .collect();
    assert_eq!(members, ["alive"]);
    let got: Vec<i64> = alive.poll().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(got, ids, "released without waiting for the lease");
    let err = silent.ack(ids[0]).await.unwrap_err();
    assert!(matches!(err, MqError::LeaseLost(_)), "{err:?}");
}

#[tokio::test]
async fn consumers_are_listed_with_their_group_topics_and_acked_offset() {
    let (queue, _db) = common::queue("list_consumers").await;
    publish_n(&queue, "s", 3).await;
    let mut a = queue
        .subscribe_with_options(now("s").consumer_id("worker-1").topics(vec!["t.*".into()]))
        .await
        .unwrap();
    let b = queue
        .subscribe_with_options(now("s").consumer_id("worker-2").group("audit"))
        .await
        .unwrap();
    let msgs = a.poll().await.unwrap();
    for m in &msgs {
        a.ack(m.id).await.unwrap();
    }
    a.heartbeat().await.unwrap();
    let members = queue.consumers("s").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(
        (
            members[0].consumer_id.as_str(),
            members[0].group.as_str(),
            members[0].stream.as_str()
        ),
        ("worker-1", "default", "s")
    );
    assert_eq!(members[0].topics, ["t.*"]);
    assert_eq!(members[0].acked_offset, 3);
    assert_eq!(
        (members[1].consumer_id.as_str(), members[1].group.as_str()),
        ("worker-2", "audit")
    );
    let age = chrono::Utc::now() - members[0].last_heartbeat;
    assert!(age.num_seconds().abs() < 30, "{age}");
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queue.consumers("s").await.unwrap().len(),
        1,
        "a dropped subscriber deregisters"
    );
}

#[tokio::test]
async fn group_stats_count_ready_in_flight_delayed_dead_and_lag() {
    let (queue, _db) = common::queue("group_stats").await;
    publish_n(&queue, "s", 6).await;
    queue
        .publish_message(Message::new("s", "t", json!({})).with_delay(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(3).max_attempts(1))
        .await
        .unwrap();
    let stats = queue.group_stats("s", "default").await.unwrap();
    assert_eq!(
        (
            stats.ready,
            stats.in_flight,
            stats.delayed,
            stats.dead,
            stats.lag
        ),
        (6, 0, 1, 0, 7)
    );
    assert!(stats.oldest_ready_age.is_some());
    let msgs = sub.poll().await.unwrap();
    sub.ack(msgs[0].id).await.unwrap();
    sub.nack(msgs[1].id).await.unwrap();
    let stats = queue.group_stats("s", "default").await.unwrap();
    assert_eq!(
        (
            stats.ready,
            stats.in_flight,
            stats.delayed,
            stats.dead,
            stats.lag
        ),
        (3, 1, 1, 1, 6)
    );
    let err = queue.group_stats("s", "nope").await.unwrap_err();
    assert!(matches!(err, MqError::UnknownGroup { .. }), "{err:?}");
}

#[tokio::test]
async fn subscribing_validates_the_stream_patterns_and_options() {
    let (queue, _db) = common::queue("subscribe_validation").await;
    let err = queue.subscribe("ghost", vec![]).await.unwrap_err();
    assert!(matches!(err, MqError::UnknownStream(_)), "{err:?}");
    queue.create_stream("s").await.unwrap();
    let err = queue.subscribe("s", vec!["a b".into()]).await.unwrap_err();
    assert!(matches!(err, MqError::InvalidPattern { .. }), "{err:?}");
    let err = queue.subscribe("s", vec![String::new()]).await.unwrap_err();
    assert!(matches!(err, MqError::InvalidPattern { .. }), "{err:?}");
    for opts in [
        SubscribeOptions::new("s").batch_size(0),
        SubscribeOptions::new("s").max_attempts(0),
        SubscribeOptions::new("s").visibility_timeout(Duration::ZERO),
    ] {
        let err = queue.subscribe_with_options(opts).await.unwrap_err();
        assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
    }
    let err = queue
        .subscribe_with_options(SubscribeOptions::new("s").group("bad group"))
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::InvalidName { .. }), "{err:?}");
    let err = queue.dead_letters("s", "nope").await.unwrap_err();
    assert!(matches!(err, MqError::UnknownGroup { .. }), "{err:?}");
}

#[tokio::test]
async fn a_poll_with_nothing_ready_returns_empty_after_its_timeout() {
    let (queue, _db) = common::queue("poll_timeout").await;
    queue.create_stream("s").await.unwrap();
    let mut sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_millis(400)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(sub.poll().await.unwrap().is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn the_stream_acks_on_next_and_a_dropped_stream_gives_its_message_back() {
    let (queue, _db) = common::queue("into_stream").await;
    let ids = publish_n(&queue, "s", 3).await;
    let sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let mut stream = sub.into_stream();
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((first.id, second.id), (ids[0], ids[1]));
    drop(stream); // "crash" while processing the second message
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = queue.subscribe_with_options(now("s")).await.unwrap();
    let again: Vec<(i64, i32)> = other
        .poll()
        .await
        .unwrap()
        .iter()
        .map(|m| (m.id, m.attempt))
        .collect();
    assert_eq!(
        again,
        [(ids[1], 2), (ids[2], 2)],
        "the first was acked; the rest come back"
    );
}

#[tokio::test]
async fn the_stream_heartbeats_while_the_caller_processes() {
    let (queue, _db) = common::queue("stream_heartbeat").await;
    let ids = publish_n(&queue, "s", 2).await;
    let sub = queue
        .subscribe_with_options(
            SubscribeOptions::new("s")
                .visibility_timeout(Duration::from_millis(600))
                .poll_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let mut stream = sub.into_stream();
    let first = stream.next().await.unwrap().unwrap();
    // Processing takes three visibility timeouts; the leases must survive it.
    let mut rival = queue.subscribe_with_options(now("s")).await.unwrap();
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            rival.poll().await.unwrap().is_empty(),
            "a lease ran out while processing"
        );
    }
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((first.id, second.id, second.attempt), (ids[0], ids[1], 1));
}

#[tokio::test]
async fn a_waiting_poll_wakes_within_100_ms_of_a_publish_in_the_same_process() {
    let (queue, _db) = common::queue_with(
        "wake_same_process",
        common::options().backstop_poll_interval(Duration::from_secs(30)),
    )
    .await;
    queue.create_stream("s").await.unwrap();
    let mut sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    let mut latencies = Vec::new();
    for round in 0..5 {
        let waiter = tokio::spawn(async move {
            let batch = sub.poll().await.unwrap();
            (sub, batch, std::time::Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let published = std::time::Instant::now();
        let id = queue
            .publish("s", "t", json!({"round": round}))
            .await
            .unwrap();
        let (returned, batch, woke) = waiter.await.unwrap();
        sub = returned;
        assert_eq!(batch.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
        sub.ack(id).await.unwrap();
        latencies.push(woke.saturating_duration_since(published));
    }
    latencies.sort();
    eprintln!("same-process wake-up latencies: {latencies:?}");
    assert!(latencies[4] < Duration::from_millis(100), "{latencies:?}");
}

#[tokio::test]
async fn a_message_published_in_a_host_transaction_is_delivered_only_after_commit() {
    let (queue, db) = common::queue("outbox_delivery").await;
    queue.create_stream("orders").await.unwrap();
    let mut sub = queue.subscribe_with_options(now("orders")).await.unwrap();
    let host = common::connect(&db).await;
    let txn = dabgent_mq::sea_orm::TransactionTrait::begin(&host)
        .await
        .unwrap();
    let id = queue
        .publish_in(
            &txn,
            Message::new("orders", "order.created", json!({"id": 7})),
        )
        .await
        .unwrap();
    if common::is_postgres() {
        assert!(
            sub.poll().await.unwrap().is_empty(),
            "delivered before commit"
        );
    } else {
        // On SQLite a claim is a write, and the open host transaction holds the single write
        // lock, so a poll would wait for the commit; read the log instead.
        let visible = futures::TryStreamExt::try_collect::<Vec<_>>(queue.stream("orders").build())
            .await
            .unwrap();
        assert!(visible.is_empty(), "visible before commit");
    }
    dabgent_mq::sea_orm::TransactionSession::commit(txn)
        .await
        .unwrap();
    assert_eq!(sub.poll().await.unwrap()[0].id, id);
}

#[tokio::test]
async fn closing_the_stream_acks_the_last_message_and_releases_the_rest() {
    let (queue, _db) = common::queue("stream_close").await;
    let ids = publish_n(&queue, "s", 3).await;
    let sub = queue.subscribe_with_options(now("s")).await.unwrap();
    let mut stream = sub.into_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.id, ids[0]);
    stream.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = queue.subscribe_with_options(now("s")).await.unwrap();
    let rest: Vec<i64> = other.poll().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(
        rest,
        &ids[1..],
        "the processed message is acked, the buffered ones released"
    );
}

#[tokio::test]
async fn a_waiting_poll_receives_a_delayed_message_when_it_becomes_due() {
    let (queue, _db) = common::queue_with(
        "delayed_on_time",
        common::options().backstop_poll_interval(Duration::from_secs(30)),
    )
    .await;
    queue.create_stream("s").await.unwrap();
    let mut sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let id = queue
        .publish_message(Message::new("s", "t", json!({})).with_delay(Duration::from_millis(500)))
        .await
        .unwrap();
    let got = sub.poll().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
    assert!(
        waited >= Duration::from_millis(490) && waited < Duration::from_millis(800),
        "delivered after {waited:?}, due after 500 ms"
    );
}

#[tokio::test]
async fn a_message_released_after_its_last_attempt_becomes_a_dead_letter() {
    let (queue, _db) = common::queue("released_poison").await;
    let ids = publish_n(&queue, "s", 1).await;
    let opts = now("s")
        .max_attempts(1)
        .visibility_timeout(Duration::from_secs(60));
    let mut crashing = queue
        .subscribe_with_options(opts.clone().consumer_id("crashing"))
        .await
        .unwrap();
    assert_eq!(crashing.poll().await.unwrap()[0].attempt, 1);
    // The member hangs; a cleanup releases its lease long before the lease would expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(queue.cleanup_expired_consumers(1).await.unwrap(), 1);
    let mut next = queue
        .subscribe_with_options(opts.consumer_id("next"))
        .await
        .unwrap();
    assert!(
        next.poll().await.unwrap().is_empty(),
        "delivered beyond max_attempts"
    );
    let dead = queue.dead_letters("s", "default").await.unwrap();
    assert_eq!(
        dead.iter().map(|m| (m.id, m.attempt)).collect::<Vec<_>>(),
        [(ids[0], 1)]
    );
}

#[tokio::test]
async fn a_queue_with_a_single_connection_still_subscribes_and_delivers() {
    let (queue, _db) = common::queue_with(
        "single_connection",
        dabgent_mq::QueueOptions::new()
            .pool_size(1)
            .acquire_timeout(Duration::from_secs(3)),
    )
    .await;
    queue.create_stream("s").await.unwrap();
    let mut sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    let id = queue.publish("s", "t", json!({})).await.unwrap();
    assert_eq!(sub.poll().await.unwrap()[0].id, id);
    sub.ack(id).await.unwrap();
}

#[tokio::test]
async fn extreme_timeouts_are_handled_without_panicking() {
    let (queue, _db) = common::queue("extreme_timeouts").await;
    let ids = publish_n(&queue, "s", 1).await;
    let mut forever = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(forever.poll().await.unwrap()[0].id, ids[0]);
    let err = queue
        .subscribe_with_options(SubscribeOptions::new("s").visibility_timeout(Duration::MAX))
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::InvalidConfig(_)), "{err:?}");
}

#[tokio::test]
async fn a_waiting_poll_receives_a_message_whose_lease_expired() {
    let (queue, _db) = common::queue_with(
        "expiry_wakes_waiting_poll",
        common::options().backstop_poll_interval(Duration::from_secs(30)),
    )
    .await;
    let ids = publish_n(&queue, "s", 1).await;
    let mut holder = queue
        .subscribe_with_options(now("s").visibility_timeout(Duration::from_millis(400)))
        .await
        .unwrap();
    assert_eq!(holder.poll().await.unwrap()[0].id, ids[0]);
    let mut waiting = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = waiting.poll().await.unwrap();
    let waited = started.elapsed();
    assert_eq!((got[0].id, got[0].attempt), (ids[0], 2));
    assert!(
        waited < Duration::from_millis(1200),
        "took {waited:?} with a 30 s backstop"
    );
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_and_settling_a_batch_cost_the_same_behind_a_large_backlog() {
    // Claims, acks and lease extensions of a batch must find their rows by key. A plan that
    // walked the group instead (SQLite's once made acking quadratic, and a claim that named
    // the group beside the picked rowids walked its ready index; on PostgreSQL, the plans made
    // for the first runs of each prepared statement on a table without statistics scanned the
    // group's whole primary key) makes them grow with the backlog. One connection, so that
    // the first runs of each statement, which PostgreSQL plans for their values, are timed.
    let (queue, _db) =
        common::queue_with("settle_cost", dabgent_mq::QueueOptions::new().pool_size(1)).await;
    let mut subs = Vec::new();
    for (stream, backlog) in [("large", 200_000), ("small", 1_000)] {
        queue.create_stream(stream).await.unwrap();
        for start in (0..backlog).step_by(10_000) {
            let batch = (start..backlog.min(start + 10_000))
                .map(|i| Message::new(stream, "t", json!({"i": i})))
                .collect();
            queue.publish_batch(batch).await.unwrap();
        }
        subs.push(
            queue
                .subscribe_with_options(now(stream).batch_size(100))
                .await
                .unwrap(),
        );
    }
    let mut claim: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut extend: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut ack: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6 {
        // Large first in every round, so that it gets its share of the first runs.
        for (i, sub) in subs.iter_mut().enumerate() {
            let started = std::time::Instant::now();
            let ids: Vec<i64> = sub.poll().await.unwrap().iter().map(|m| m.id).collect();
            // The first poll also fills the group's delivery rows, 200,000 against 1,000.
            if round > 0 {
                claim[i].push(started.elapsed());
            }
            assert_eq!(ids.len(), 100);
            let started = std::time::Instant::now();
            sub.heartbeat().await.unwrap();
            extend[i].push(started.elapsed());
            let started = std::time::Instant::now();
            sub.ack_batch(&ids).await.unwrap();
            ack[i].push(started.elapsed());
        }
    }
    for (what, [large, small]) in [("poll", claim), ("heartbeat", extend), ("ack_batch", ack)] {
        let (large, small) = (median(large), median(small));
        assert!(
            large < small * 3,
            "{what} of 100 leases took {large:?} behind 200,000 ready messages, {small:?} behind 1,000"
        );
    }
}

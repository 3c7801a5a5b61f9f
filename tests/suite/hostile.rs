//! Hostile input: oversize and over-nested payloads, empty, overlong and meta-character names,
//! topics and patterns, unknown streams and groups, stray acknowledgements, and handles that
//! outlive their queue. Every rejected call names the specific error (never
//! `MqError::Database`, never a panic or a hang) and leaves the database unchanged.
//!
//! Cases already covered elsewhere are not repeated here: the exact payload bound and one byte
//! over on a single publish, topics with plain whitespace, tabs, newlines, `*` and NUL, quotes
//! and SQL keywords stored literally, NUL in payloads, nesting on a single publish
//! (`publish.rs`); mismatched database types, malformed and unreachable URLs (`connect.rs`).

use std::time::Duration;

use dabgent_mq::sea_orm::{
    DatabaseConnection, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use dabgent_mq::{
    DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, Message, MessageQueue, MqError, SubscribeOptions,
    Subscriber,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::common;

/// The default payload limit.
const MAX: usize = DEFAULT_MAX_PAYLOAD_BYTES;

/// 10 MiB.
const TEN_MIB: usize = 10 * 1024 * 1024;

/// Longest any single call may take before it counts as hanging.
const HANG: Duration = Duration::from_secs(20);

/// Asserts that a call failed with the given error variant and returns the error. An optional
/// trailing format string says which input was being tried.
macro_rules! assert_rejected {
    ($call:expr, $variant:pat $(if $guard:expr)?) => {
        assert_rejected!($call, $variant $(if $guard)?, "{}", stringify!($call))
    };
    ($call:expr, $variant:pat $(if $guard:expr)?, $($context:tt)+) => {{
        let context = format!($($context)+);
        let err = $call.expect_err(&format!("{context}: hostile input was accepted"));
        assert!(matches!(err, $variant $(if $guard)?), "{context}: {err:?}");
        err
    }};
}

/// Options that never wait: polls return at once with whatever is ready.
fn now(stream: &str) -> SubscribeOptions {
    SubscribeOptions::new(stream).poll_timeout(Duration::ZERO)
}

/// A JSON string whose serialized form (with its two quotes) is exactly `bytes` long.
fn payload_of(bytes: usize) -> Value {
    Value::String("x".repeat(bytes - 2))
}

fn serialized_len(payload: &Value) -> usize {
    serde_json::to_vec(payload).unwrap().len()
}

/// `depth` arrays nested in each other around a number.
fn nested_arrays(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

/// `depth` objects nested in each other around a number.
fn nested_objects(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "k": inner }))
}

/// A host transaction that will write: `BEGIN IMMEDIATE` on SQLite, as documented for
/// `publish_in`.
async fn begin(host: &DatabaseConnection) -> dabgent_mq::sea_orm::DatabaseTransaction {
    host.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Replays a whole stream: its messages, or the error it yields (after which it must end).
async fn replay(queue: &MessageQueue, stream: &str) -> dabgent_mq::Result<Vec<Message>> {
    let mut replay = queue.stream(stream).build();
    let mut messages = Vec::new();
    while let Some(item) = tokio::time::timeout(HANG, replay.next()).await.unwrap() {
        match item {
            Ok(message) => messages.push(message),
            Err(err) => {
                assert!(
                    replay.next().await.is_none(),
                    "a replay ends after its error"
                );
                return Err(err);
            }
        }
    }
    Ok(messages)
}

fn topics_of(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.topic.clone()).collect()
}

/// Every call that names a stream, except `create_stream`, applied to `stream` (a valid
/// stream `known` exists beside it). Each result is reduced to `()` so the caller can check
/// them in one loop.
async fn stream_calls(
    queue: &MessageQueue,
    stream: &str,
) -> Vec<(&'static str, Result<(), MqError>)> {
    let message = || Message::new(stream, "t", json!({}));
    vec![
        (
            "publish",
            queue.publish(stream, "t", json!({})).await.map(drop),
        ),
        (
            "publish_with_priority",
            queue
                .publish_with_priority(stream, "t", json!({}), 9)
                .await
                .map(drop),
        ),
        (
            "publish_message",
            queue.publish_message(message()).await.map(drop),
        ),
        (
            "publish_batch",
            queue
                .publish_batch(vec![Message::new("known", "t", json!({})), message()])
                .await
                .map(drop),
        ),
        (
            "publish_batch (one stream)",
            queue
                .publish_batch(vec![message(), message()])
                .await
                .map(drop),
        ),
        (
            "publish_in",
            queue
                .publish_in(queue.connection(), message())
                .await
                .map(drop),
        ),
        ("subscribe", queue.subscribe(stream, vec![]).await.map(drop)),
        (
            "subscribe_with_options",
            queue
                .subscribe_with_options(now(stream).group("g").consumer_id("c"))
                .await
                .map(drop),
        ),
        ("stream", replay(queue, stream).await.map(drop)),
        (
            "group_stats",
            queue.group_stats(stream, "default").await.map(drop),
        ),
        (
            "dead_letters",
            queue.dead_letters(stream, "default").await.map(drop),
        ),
        (
            "requeue_dead_letters",
            queue
                .requeue_dead_letters(stream, "default")
                .await
                .map(drop),
        ),
        ("consumers", queue.consumers(stream).await.map(drop)),
    ]
}

/// Every call that looks up a consumer group, applied to `group` on the existing stream
/// `stream`. (Subscribing is not one: it creates the group it joins.)
async fn group_calls(
    queue: &MessageQueue,
    stream: &str,
    group: &str,
) -> Vec<(&'static str, Result<(), MqError>)> {
    vec![
        (
            "group_stats",
            queue.group_stats(stream, group).await.map(drop),
        ),
        (
            "dead_letters",
            queue.dead_letters(stream, group).await.map(drop),
        ),
        (
            "requeue_dead_letters",
            queue.requeue_dead_letters(stream, group).await.map(drop),
        ),
    ]
}

/// A queue with the stream `known`, one message on it, and a member of its default group, so
/// that every table has rows a stray write could disturb.
async fn populated_queue(test: &str) -> (MessageQueue, common::TestDb, Subscriber) {
    let (queue, db) = common::queue(test).await;
    queue.create_stream("known").await.unwrap();
    queue.publish("known", "t", json!({"n": 1})).await.unwrap();
    let mut member = queue.subscribe_with_options(now("known")).await.unwrap();
    assert_eq!(member.poll().await.unwrap().len(), 1);
    (queue, db, member)
}

/// Names that are not stream, group or consumer names: empty, too long, or with characters
/// outside ASCII letters, digits and `_ - . :`.
/// Creates stream `s` with `n` messages of topic `t` and returns their ids.
async fn stream_of(queue: &MessageQueue, n: i64) -> Vec<i64> {
    queue.create_stream("s").await.unwrap();
    let batch = (0..n).map(|i| Message::new("s", "t", json!(i))).collect();
    queue.publish_batch(batch).await.unwrap()
}

fn invalid_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "",
        "a'b",
        "a\"b",
        "a;b",
        "x; DROP TABLE mq_streams; --",
        "a%b",
        "%",
        "a\\b",
        "a\0b",
        "\0",
        "a b",
        " a",
        "a\tb",
        "a\nb",
        "a\r",
        "\\x00",
        "\\u0000",
        "%00",
        "\u{FFFD}",
        "a\u{202E}b",
        "a\u{00A0}b",
        "a/b",
        "a*b",
        "a?b",
        "a[b]",
        "ünïcode",
        "\u{1F600}",
    ]
    .map(String::from)
    .to_vec();
    names.push("n".repeat(256));
    names.push("n".repeat(10_000));
    names
}

// ---------------------------------------------------------------------------------------------
// Oversize payloads

#[tokio::test]
async fn ten_mib_payload_is_rejected_before_touching_the_database() {
    let (queue, _db) = common::queue("hostile_ten_mib").await;
    queue.create_stream("blobs").await.unwrap();
    let before = common::snapshot(&queue).await;
    let huge = payload_of(TEN_MIB);
    assert_rejected!(
        queue.publish("blobs", "blob", huge.clone()).await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    assert_rejected!(
        queue
            .publish_with_priority("blobs", "blob", huge.clone(), 5)
            .await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    assert_rejected!(
        queue
            .publish_message(Message::new("blobs", "blob", huge.clone()))
            .await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    // The stream does not exist, but the size is checked first: no database call was made.
    assert_rejected!(
        queue.publish("no_such_stream", "blob", huge).await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    assert_eq!(common::snapshot(&queue).await, before);
}

#[tokio::test]
async fn message_too_large_reports_the_serialized_byte_length() {
    let (queue, _db) = common::queue("hostile_serialized_length").await;
    queue.create_stream("s").await.unwrap();
    let before = common::snapshot(&queue).await;
    // Payloads whose serialized length differs from their character count: two-byte and
    // four-byte characters, quotes and backslashes (escaped to two bytes), control characters
    // (escaped to six), and object structure.
    let over = [
        json!("é".repeat(MAX / 2)),
        json!("\u{1F600}".repeat(MAX / 4)),
        json!("\"".repeat(MAX / 2)),
        json!("\\".repeat(MAX / 2)),
        json!("\u{1}".repeat(MAX / 6 + 1)),
        json!({"key": "x".repeat(MAX - 9)}),
        json!(vec![0; MAX / 2]),
    ];
    for payload in over {
        let expected = serialized_len(&payload);
        assert!(expected > MAX);
        assert_rejected!(
            queue.publish("s", "t", payload.clone()).await,
            MqError::MessageTooLarge(actual, MAX) if actual == expected,
            "payload of {expected} serialized bytes"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);

    // Exactly the limit, counted in serialized bytes, is accepted even where every character
    // takes two bytes once escaped; one more escaped character is two bytes too many.
    let exact = json!("\\".repeat((MAX - 2) / 2));
    assert_eq!(serialized_len(&exact), MAX);
    queue.publish("s", "t", exact.clone()).await.unwrap();
    assert_eq!(replay(&queue, "s").await.unwrap()[0].payload, exact);
    let over = json!("\\".repeat((MAX - 2) / 2 + 1));
    let before = common::snapshot(&queue).await;
    assert_rejected!(
        queue.publish("s", "t", over).await,
        MqError::MessageTooLarge(actual, MAX) if actual == MAX + 2
    );
    assert_eq!(common::snapshot(&queue).await, before);
}

#[tokio::test]
async fn an_oversize_message_rejects_its_whole_batch_and_nothing_is_written() {
    let (queue, _db) = common::queue("hostile_oversize_batch").await;
    queue.create_stream("s1").await.unwrap();
    queue.create_stream("s2").await.unwrap();
    let before = common::snapshot(&queue).await;
    let batch = |oversize: Value| {
        vec![
            Message::new("s1", "a", json!({"i": 0})),
            Message::new("s2", "b", payload_of(MAX)),
            Message::new("s1", "c", json!({"i": 2})),
            Message::new("s2", "d", oversize),
            Message::new("s1", "e", json!({"i": 4})),
        ]
    };
    assert_rejected!(
        queue.publish_batch(batch(payload_of(MAX + 1))).await,
        MqError::MessageTooLarge(actual, MAX) if actual == MAX + 1
    );
    assert_rejected!(
        queue.publish_batch(batch(payload_of(TEN_MIB))).await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    // The oversize message's stream does not exist: still the size error, found first.
    let mut to_nowhere = batch(json!({}));
    to_nowhere[3] = Message::new("nowhere", "d", payload_of(MAX + 1));
    assert_rejected!(
        queue.publish_batch(to_nowhere).await,
        MqError::MessageTooLarge(actual, MAX) if actual == MAX + 1
    );
    assert_eq!(common::snapshot(&queue).await, before);

    // The same batch without the oversize message is stored whole, using no offsets the
    // rejected batches might have taken.
    let ids = queue.publish_batch(batch(json!({"i": 3}))).await.unwrap();
    assert_eq!(ids.len(), 5);
    let s1 = replay(&queue, "s1").await.unwrap();
    let s2 = replay(&queue, "s2").await.unwrap();
    assert_eq!(s1.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(topics_of(&s2), ["b", "d"]);
    assert_eq!(s2[0].payload, payload_of(MAX));
    assert_eq!(s2.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn an_oversize_payload_in_a_host_transaction_is_rejected_and_the_transaction_stays_usable() {
    let (queue, db) = common::queue("hostile_oversize_publish_in").await;
    queue.create_stream("orders").await.unwrap();
    let before = common::snapshot(&queue).await;
    let host = common::connect(&db).await;
    let txn = begin(&host).await;
    assert_rejected!(
        queue
            .publish_in(&txn, Message::new("orders", "o", payload_of(MAX + 1)))
            .await,
        MqError::MessageTooLarge(actual, MAX) if actual == MAX + 1
    );
    assert_rejected!(
        queue
            .publish_in(&txn, Message::new("orders", "o", payload_of(TEN_MIB)))
            .await,
        MqError::MessageTooLarge(TEN_MIB, MAX)
    );
    assert_rejected!(
        queue
            .publish_batch_in(
                &txn,
                vec![
                    Message::new("orders", "o", json!(1)),
                    Message::new("orders", "o", payload_of(MAX + 1)),
                ],
            )
            .await,
        MqError::MessageTooLarge(actual, MAX) if actual == MAX + 1
    );
    let id = queue
        .publish_in(&txn, Message::new("orders", "o", payload_of(MAX)))
        .await
        .unwrap();
    txn.commit().await.unwrap();

    let stored = replay(&queue, "orders").await.unwrap();
    assert_eq!(stored.len(), 1, "only the accepted publish was written");
    assert_eq!((stored[0].id, stored[0].offset), (id, 1));
    assert_eq!(stored[0].payload, payload_of(MAX));
    let mut expected = before;
    expected[1] += 1; // one message
    expected[5] += 1; // the stream's head moved by one
    assert_eq!(common::snapshot(&queue).await, expected);
}

// ---------------------------------------------------------------------------------------------
// Deep nesting

#[tokio::test]
async fn payloads_nested_beyond_the_depth_limit_are_rejected_and_nothing_is_written() {
    let (queue, db) = common::queue("hostile_nesting").await;
    queue.create_stream("s").await.unwrap();
    let before = common::snapshot(&queue).await;
    // Just over the limit, just over serde_json's own parse limit (128), and far beyond it.
    for depth in [MAX_PAYLOAD_DEPTH + 1, 129, 1_000] {
        for deep in [nested_arrays(depth), nested_objects(depth)] {
            assert_rejected!(
                queue.publish("s", "t", deep.clone()).await,
                MqError::InvalidPayload(_),
                "single publish, depth {depth}"
            );
            assert_rejected!(
                queue
                    .publish_batch(vec![
                        Message::new("s", "t", json!({"fine": true})),
                        Message::new("s", "t", json!({"wrapped": deep.clone()})),
                        Message::new("s", "t", json!([])),
                    ])
                    .await,
                MqError::InvalidPayload(_),
                "batch, depth {depth}"
            );
            assert_rejected!(
                queue
                    .publish_in(queue.connection(), Message::new("s", "t", deep))
                    .await,
                MqError::InvalidPayload(_),
                "publish_in, depth {depth}"
            );
        }
    }
    assert_eq!(common::snapshot(&queue).await, before);

    // Objects nested exactly to the limit are stored and read back, in a batch and in a host
    // transaction.
    let deepest = nested_objects(MAX_PAYLOAD_DEPTH);
    queue
        .publish_batch(vec![
            Message::new("s", "t", json!(0)),
            Message::new("s", "t", deepest.clone()),
        ])
        .await
        .unwrap();
    let host = common::connect(&db).await;
    let txn = begin(&host).await;
    queue
        .publish_in(&txn, Message::new("s", "t", deepest.clone()))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let stored = replay(&queue, "s").await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[1].payload, deepest);
    assert_eq!(stored[2].payload, deepest);
}

// ---------------------------------------------------------------------------------------------
// Empty, overlong and meta-character names, topics and patterns

#[tokio::test]
async fn invalid_stream_names_are_rejected_by_every_call_that_takes_one() {
    let (queue, _db, _member) = populated_queue("hostile_stream_names").await;
    let before = common::snapshot(&queue).await;
    for name in invalid_names() {
        let shown = name.chars().take(40).collect::<String>();
        assert_rejected!(
            queue.create_stream(&name).await,
            MqError::InvalidName { name: ref n, .. } if *n == name,
            "create_stream({shown:?})"
        );
        for (call, result) in stream_calls(&queue, &name).await {
            assert_rejected!(
                result,
                MqError::InvalidName { name: ref n, .. } if *n == name,
                "{call}({shown:?})"
            );
        }
    }
    assert_eq!(common::snapshot(&queue).await, before);
}

#[tokio::test]
async fn a_stream_name_of_255_characters_works_with_every_call() {
    let (queue, _db) = common::queue("hostile_stream_name_255").await;
    let name = format!("{}:-._", "N".repeat(251));
    assert_eq!(name.len(), 255);
    queue.create_stream(&name).await.unwrap();
    let id = queue.publish(&name, "t", json!({})).await.unwrap();
    let mut sub = queue
        .subscribe_with_options(now(&name).group(&name).consumer_id(&name))
        .await
        .unwrap();
    let got = sub.poll().await.unwrap();
    assert_eq!((got[0].id, got[0].stream.as_str()), (id, name.as_str()));
    let stats = queue.group_stats(&name, &name).await.unwrap();
    assert_eq!(stats.in_flight, 1);
    assert!(queue.dead_letters(&name, &name).await.unwrap().is_empty());
    assert_eq!(queue.requeue_dead_letters(&name, &name).await.unwrap(), 0);
    let members = queue.consumers(&name).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!((&members[0].consumer_id, &members[0].group), (&name, &name));
    assert_eq!(replay(&queue, &name).await.unwrap()[0].id, id);
    sub.ack(id).await.unwrap();
}

#[tokio::test]
async fn an_underscore_or_a_different_case_in_a_stream_name_is_not_a_wildcard() {
    let (queue, _db) = common::queue("hostile_stream_name_literal").await;
    queue.create_stream("abc").await.unwrap();
    queue.create_stream("known").await.unwrap();
    let before = common::snapshot(&queue).await;
    // `_` is a valid name character, and a LIKE wildcard: it must find only itself.
    for name in ["a_c", "ABC", "Abc", "ab", "abc.", "_bc"] {
        for (call, result) in stream_calls(&queue, name).await {
            assert_rejected!(
                result,
                MqError::UnknownStream(ref s) if s == name,
                "{call}({name:?})"
            );
        }
    }
    assert_eq!(common::snapshot(&queue).await, before);
    queue.create_stream("a_c").await.unwrap();
    queue
        .publish("a_c", "t", json!("underscore"))
        .await
        .unwrap();
    queue.publish("abc", "t", json!("plain")).await.unwrap();
    assert_eq!(
        replay(&queue, "a_c").await.unwrap()[0].payload,
        json!("underscore")
    );
    assert_eq!(
        replay(&queue, "abc").await.unwrap()[0].payload,
        json!("plain")
    );
}

#[tokio::test]
async fn invalid_group_names_and_consumer_ids_are_rejected() {
    let (queue, _db, _member) = populated_queue("hostile_group_names").await;
    let before = common::snapshot(&queue).await;
    for name in invalid_names() {
        let shown = name.chars().take(40).collect::<String>();
        for (call, result) in group_calls(&queue, "known", &name).await {
            assert_rejected!(
                result,
                MqError::InvalidName { name: ref n, .. } if *n == name,
                "{call}(known, {shown:?})"
            );
        }
        assert_rejected!(
            queue
                .subscribe_with_options(now("known").group(name.clone()))
                .await,
            MqError::InvalidName { name: ref n, .. } if *n == name,
            "group({shown:?})"
        );
        assert_rejected!(
            queue
                .subscribe_with_options(now("known").consumer_id(name.clone()))
                .await,
            MqError::InvalidName { name: ref n, .. } if *n == name,
            "consumer_id({shown:?})"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
    // 255 characters are accepted for both.
    let longest = "g".repeat(255);
    let mut sub = queue
        .subscribe_with_options(now("known").group(&longest).consumer_id(&longest))
        .await
        .unwrap();
    assert_eq!(sub.consumer_id(), longest);
    assert_eq!(
        sub.poll().await.unwrap().len(),
        1,
        "a new group gets the message"
    );
    assert_eq!(
        queue
            .group_stats("known", &longest)
            .await
            .unwrap()
            .in_flight,
        1
    );
}

#[tokio::test]
async fn empty_and_overlong_topics_are_rejected_by_every_publish_call() {
    let (queue, db) = common::queue("hostile_topic_lengths").await;
    queue.create_stream("s").await.unwrap();
    let before = common::snapshot(&queue).await;
    let host = common::connect(&db).await;
    for topic in [
        String::new(),
        "t".repeat(256),
        "é".repeat(256),
        "t".repeat(10_000),
    ] {
        let shown = topic.chars().take(20).collect::<String>();
        let bad = || Message::new("s", topic.clone(), json!({}));
        assert_rejected!(
            queue.publish_message(bad()).await,
            MqError::InvalidTopic { topic: ref t, .. } if *t == topic,
            "publish {shown:?}"
        );
        assert_rejected!(
            queue
                .publish_batch(vec![Message::new("s", "ok", json!({})), bad()])
                .await,
            MqError::InvalidTopic { topic: ref t, .. } if *t == topic,
            "publish_batch {shown:?}"
        );
        let txn = begin(&host).await;
        assert_rejected!(
            queue.publish_in(&txn, bad()).await,
            MqError::InvalidTopic { topic: ref t, .. } if *t == topic,
            "publish_in {shown:?}"
        );
        txn.commit().await.unwrap();
    }
    assert_eq!(common::snapshot(&queue).await, before);

    // The limit is 255 characters, not bytes: 255 two-byte and four-byte characters fit.
    let longest = ["t".repeat(255), "é".repeat(255), "\u{1F600}".repeat(255)];
    let batch = longest
        .iter()
        .map(|topic| Message::new("s", topic.clone(), json!({})))
        .collect();
    queue.publish_batch(batch).await.unwrap();
    assert_eq!(topics_of(&replay(&queue, "s").await.unwrap()), longest);
}

#[tokio::test]
async fn empty_and_overlong_patterns_are_rejected_and_255_characters_are_accepted() {
    let (queue, _db, _member) = populated_queue("hostile_pattern_lengths").await;
    let before = common::snapshot(&queue).await;
    for pattern in [
        String::new(),
        "p".repeat(256),
        "*".repeat(256),
        "p".repeat(10_000),
    ] {
        let shown = pattern.chars().take(20).collect::<String>();
        assert_rejected!(
            queue.subscribe("known", vec![pattern.clone()]).await,
            MqError::InvalidPattern { pattern: ref p, .. } if *p == pattern,
            "subscribe {shown:?}"
        );
        // One bad pattern among good ones fails the whole subscription.
        assert_rejected!(
            queue
                .subscribe_with_options(now("known").group("fresh").topics(vec![
                    "ok.*".into(),
                    pattern.clone(),
                    "*".into(),
                ]))
                .await,
            MqError::InvalidPattern { pattern: ref p, .. } if *p == pattern,
            "subscribe_with_options {shown:?}"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);

    let topic = "é".repeat(255);
    queue.publish("known", &topic, json!({})).await.unwrap();
    for (i, pattern) in [
        topic.clone(),
        format!("{}*", "é".repeat(254)),
        "*".repeat(255),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sub = queue
            .subscribe_with_options(now("known").group(format!("g{i}")).topics(vec![pattern]))
            .await
            .unwrap();
        let got = topics_of(&sub.poll().await.unwrap());
        assert!(got.contains(&topic), "pattern {i}: {got:?}");
    }
}

#[tokio::test]
async fn topics_and_patterns_with_whitespace_or_control_characters_are_rejected() {
    let (queue, _db, _member) = populated_queue("hostile_topic_controls").await;
    let before = common::snapshot(&queue).await;
    let bad = [
        "a\u{0}b",
        "\u{0}",
        "a\rb",
        "a\u{b}b",
        "a\u{c}b",
        "a\u{1b}[31mred",
        "a\u{7f}",
        "a\u{85}b",
        "a\u{9f}b",
        "a\u{00A0}b",
        "a\u{1680}b",
        "a\u{2003}b",
        "a\u{2028}b",
        "a\u{2029}b",
        "a\u{3000}b",
        "trailing ",
        " leading",
    ];
    for text in bad {
        assert_rejected!(
            queue.publish("known", text, json!({})).await,
            MqError::InvalidTopic { topic: ref t, .. } if t == text,
            "topic {text:?}"
        );
        let star = format!("{text}*");
        assert_rejected!(
            queue.subscribe("known", vec![star.clone()]).await,
            MqError::InvalidPattern { pattern: ref p, .. } if *p == star,
            "pattern {star:?}"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
}

/// Topics that look like SQL, LIKE and GLOB syntax, escapes or odd Unicode, all valid.
const LITERAL_TOPICS: &[&str] = &[
    "abc",
    "aXc",
    "ABC",
    "ac",
    "a_c",
    "a%c",
    "a%",
    "a\\c",
    "a\\%",
    "a?c",
    "[ab]c",
    "100%",
    "_",
    "%",
    "\\",
    "'",
    "\"",
    ";",
    "o'rder;--",
    "\\x00",
    "\\u0000",
    "%00",
    "\u{FFFD}",
    "\u{202E}cba",
    "zero\u{200B}width",
    "$1",
    "?1",
];

#[tokio::test]
async fn topics_that_look_like_escapes_or_sql_are_stored_and_replayed_literally() {
    let (queue, db) = common::queue("hostile_literal_topics").await;
    queue.create_stream("s").await.unwrap();
    for topic in LITERAL_TOPICS {
        queue
            .publish("s", topic, json!({"topic": topic}))
            .await
            .unwrap();
    }
    let batch = LITERAL_TOPICS
        .iter()
        .map(|topic| Message::new("s", *topic, json!({"topic": topic})))
        .collect();
    queue.publish_batch(batch).await.unwrap();
    let host = common::connect(&db).await;
    let txn = begin(&host).await;
    for topic in LITERAL_TOPICS {
        queue
            .publish_in(&txn, Message::new("s", *topic, json!({"topic": topic})))
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();

    let stored = replay(&queue, "s").await.unwrap();
    let expected: Vec<&str> = LITERAL_TOPICS.repeat(3);
    assert_eq!(topics_of(&stored), expected);
    for message in &stored {
        assert_eq!(message.payload["topic"], json!(message.topic));
    }
}

#[tokio::test]
async fn sql_wildcards_in_patterns_match_only_themselves_when_delivering() {
    let (queue, _db) = common::queue("hostile_literal_patterns").await;
    queue.create_stream("s").await.unwrap();
    let batch = LITERAL_TOPICS
        .iter()
        .map(|topic| Message::new("s", *topic, json!({})))
        .collect();
    queue.publish_batch(batch).await.unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("a_c", &["a_c"]),
        ("a%", &["a%"]),
        ("a%c", &["a%c"]),
        ("a\\c", &["a\\c"]),
        ("a\\%", &["a\\%"]),
        ("a?c", &["a?c"]),
        ("[ab]c", &["[ab]c"]),
        ("abc", &["abc"]),
        ("_", &["_"]),
        ("%", &["%"]),
        ("\\", &["\\"]),
        ("\\x00", &["\\x00"]),
        ("\\u0000", &["\\u0000"]),
        ("%00", &["%00"]),
        ("\u{FFFD}", &["\u{FFFD}"]),
        ("\u{202E}*", &["\u{202E}cba"]),
        ("a_*", &["a_c"]),
        ("a%*", &["a%c", "a%"]),
        ("a\\*", &["a\\c", "a\\%"]),
        ("*%", &["a%", "a\\%", "100%", "%"]),
        ("*_*", &["a_c", "_"]),
        ("*\\*", &["a\\c", "a\\%", "\\", "\\x00", "\\u0000"]),
        ("o'rder;*", &["o'rder;--"]),
        ("nothing_matches%", &[]),
    ];
    for (i, (pattern, expected)) in cases.iter().enumerate() {
        // The reference matcher agrees with the expectation, so the database is held to both.
        let reference: Vec<&str> = LITERAL_TOPICS
            .iter()
            .copied()
            .filter(|topic| dabgent_mq::topic::matches(pattern, topic))
            .collect();
        assert_eq!(
            reference, *expected,
            "reference matcher, pattern {pattern:?}"
        );
        let mut sub = queue
            .subscribe_with_options(
                now("s")
                    .group(format!("g{i}"))
                    .topics(vec![(*pattern).to_owned()]),
            )
            .await
            .unwrap();
        let got = sub.poll().await.unwrap();
        assert_eq!(
            topics_of(&got),
            *expected,
            "delivered for pattern {pattern:?}"
        );
    }
}

#[tokio::test]
async fn patterns_made_only_of_stars_deliver_every_message() {
    let (queue, _db) = common::queue("hostile_star_patterns").await;
    queue.create_stream("s").await.unwrap();
    let batch = LITERAL_TOPICS
        .iter()
        .map(|topic| Message::new("s", *topic, json!({})))
        .collect();
    let ids = queue.publish_batch(batch).await.unwrap();
    let pattern_sets: [&[&str]; 5] = [
        &["*"],
        &["**"],
        &["***"],
        &["no.such.topic", "**"],
        &["a_c", "*", "%"],
    ];
    for (i, patterns) in pattern_sets.into_iter().enumerate() {
        let mut sub = queue
            .subscribe_with_options(
                now("s")
                    .group(format!("g{i}"))
                    .topics(patterns.iter().map(|p| (*p).to_owned()).collect()),
            )
            .await
            .unwrap();
        let got = sub.poll().await.unwrap();
        assert_eq!(
            got.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids,
            "patterns {patterns:?}"
        );
        assert_eq!(topics_of(&got), LITERAL_TOPICS, "patterns {patterns:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Unknown streams and groups

#[tokio::test]
async fn every_call_on_an_unknown_stream_fails_naming_it_and_writes_nothing() {
    let (queue, _db, _member) = populated_queue("hostile_unknown_stream").await;
    let before = common::snapshot(&queue).await;
    for (call, result) in stream_calls(&queue, "ghost").await {
        let err = assert_rejected!(
            result,
            MqError::UnknownStream(ref s) if s == "ghost",
            "{call}"
        );
        assert!(err.to_string().contains("\"ghost\""), "{call}: {err}");
    }
    assert_eq!(common::snapshot(&queue).await, before);
}

#[tokio::test]
async fn unknown_groups_fail_naming_stream_and_group_and_write_nothing() {
    let (queue, _db, _member) = populated_queue("hostile_unknown_group").await;
    queue.create_stream("other").await.unwrap();
    // `billing` exists, but on another stream: it is not a group of `known`.
    let _billing = queue
        .subscribe_with_options(now("other").group("billing"))
        .await
        .unwrap();
    let before = common::snapshot(&queue).await;
    for group in ["billing", "nope", "DEFAULT", "defaul_", "default.", "d"] {
        for (call, result) in group_calls(&queue, "known", group).await {
            let err = assert_rejected!(
                result,
                MqError::UnknownGroup { ref stream, group: ref g } if stream == "known" && g == group,
                "{call}(known, {group:?})"
            );
            assert!(err.to_string().contains(&format!("{group:?}")), "{err}");
        }
    }
    assert_eq!(common::snapshot(&queue).await, before);
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements of messages not held

#[tokio::test]
async fn acks_and_nacks_of_ids_never_received_are_not_leased_and_change_nothing() {
    let (queue, _db) = common::queue("hostile_stray_ids").await;
    queue.create_stream("s").await.unwrap();
    queue.create_stream("elsewhere").await.unwrap();
    let published = queue.publish("s", "t", json!(1)).await.unwrap();
    let held = queue.publish("s", "t", json!(2)).await.unwrap();
    let foreign = queue.publish("elsewhere", "t", json!(3)).await.unwrap();
    let mut sub = queue
        .subscribe_with_options(now("s").batch_size(1))
        .await
        .unwrap();
    assert_eq!(sub.poll().await.unwrap()[0].id, published);
    let mut other = queue
        .subscribe_with_options(now("elsewhere"))
        .await
        .unwrap();
    assert_eq!(other.poll().await.unwrap()[0].id, foreign);
    let before = common::snapshot(&queue).await;
    // `held` exists and is ready, but was never delivered to `sub`; `foreign` is leased, but
    // by a member of another stream.
    for id in [
        0,
        -1,
        -published,
        i64::MIN,
        i64::MAX,
        held,
        foreign,
        987_654_321,
    ] {
        assert_rejected!(sub.ack(id).await, MqError::NotLeased(i) if i == id, "ack({id})");
        assert_rejected!(sub.nack(id).await, MqError::NotLeased(i) if i == id, "nack({id})");
        assert_rejected!(
            sub.ack_batch(&[published, id]).await,
            MqError::NotLeased(i) if i == id,
            "ack_batch([{published}, {id}])"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
    // The rejected batches acknowledged nothing: the message held is still held.
    assert_eq!(sub.leased(), [published]);
    sub.ack(published).await.unwrap();
    other.ack(foreign).await.unwrap();
}

#[tokio::test]
async fn a_message_leased_to_another_member_cannot_be_settled_by_this_one() {
    let (queue, _db) = common::queue("hostile_foreign_lease").await;
    queue.create_stream("s").await.unwrap();
    let id = queue.publish("s", "t", json!({})).await.unwrap();
    let mut holder = queue.subscribe_with_options(now("s")).await.unwrap();
    let mut peer = queue.subscribe_with_options(now("s")).await.unwrap();
    let mut outsider = queue
        .subscribe_with_options(now("s").group("audit"))
        .await
        .unwrap();
    assert_eq!(holder.poll().await.unwrap()[0].id, id);
    assert!(
        peer.poll().await.unwrap().is_empty(),
        "leased to the holder"
    );
    let before = common::snapshot(&queue).await;
    for (who, member) in [("peer", &peer), ("outsider", &outsider)] {
        assert_rejected!(member.ack(id).await, MqError::NotLeased(i) if i == id, "{who} ack");
        assert_rejected!(member.nack(id).await, MqError::NotLeased(i) if i == id, "{who} nack");
        assert_rejected!(
            member.ack_batch(&[id]).await,
            MqError::NotLeased(i) if i == id,
            "{who} ack_batch"
        );
        member.heartbeat().await.unwrap();
    }
    assert_eq!(common::snapshot(&queue).await, before);
    assert_eq!(
        queue.group_stats("s", "default").await.unwrap().in_flight,
        1,
        "still leased to the holder"
    );
    holder.ack(id).await.unwrap();
    // The outsider's group never lost its copy.
    assert_eq!(outsider.poll().await.unwrap()[0].id, id);
}

#[tokio::test]
async fn settling_a_message_twice_is_not_leased_and_changes_nothing() {
    let (queue, _db) = common::queue("hostile_settle_twice").await;
    let ids = stream_of(&queue, 4).await;
    let mut sub = queue
        .subscribe_with_options(now("s").retry_backoff(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(sub.poll().await.unwrap().len(), 4);
    sub.ack(ids[0]).await.unwrap();
    sub.nack(ids[1]).await.unwrap();
    sub.ack_batch(&[ids[2]]).await.unwrap();
    let before = common::snapshot(&queue).await;
    for id in &ids[..3] {
        let id = *id;
        assert_rejected!(sub.ack(id).await, MqError::NotLeased(i) if i == id, "ack {id}");
        assert_rejected!(sub.nack(id).await, MqError::NotLeased(i) if i == id, "nack {id}");
        assert_rejected!(
            sub.ack_batch(&[ids[3], id]).await,
            MqError::NotLeased(i) if i == id,
            "ack_batch [{}, {id}]",
            ids[3]
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
    let stats = queue.group_stats("s", "default").await.unwrap();
    assert_eq!((stats.in_flight, stats.delayed), (1, 1), "{stats:?}");

    // An empty batch is a no-op; an id twice in one batch is acknowledged once.
    sub.ack_batch(&[]).await.unwrap();
    assert_eq!(common::snapshot(&queue).await, before);
    sub.ack_batch(&[ids[3], ids[3]]).await.unwrap();
    assert_eq!(
        queue.group_stats("s", "default").await.unwrap().in_flight,
        0
    );
    assert_rejected!(sub.ack(ids[3]).await, MqError::NotLeased(i) if i == ids[3]);
}

#[tokio::test]
async fn a_lease_released_by_cleanup_is_lost_and_late_acks_change_nothing() {
    let (queue, _db) = common::queue("hostile_cleanup_lease").await;
    let ids = stream_of(&queue, 2).await;
    let mut sub = queue.subscribe_with_options(now("s")).await.unwrap();
    assert_eq!(sub.poll().await.unwrap().len(), 2);
    // An absurd silence limit removes nobody; then silence of more than 0 s removes the member.
    assert_eq!(queue.cleanup_expired_consumers(u64::MAX).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queue.cleanup_expired_consumers(0).await.unwrap(), 1);
    let before = common::snapshot(&queue).await;
    assert_rejected!(sub.ack(ids[0]).await, MqError::LeaseLost(i) if i == ids[0]);
    assert_rejected!(sub.nack(ids[1]).await, MqError::LeaseLost(i) if i == ids[1]);
    assert_eq!(common::snapshot(&queue).await, before);
    // Once reported lost, the leases are forgotten.
    assert_rejected!(sub.ack(ids[0]).await, MqError::NotLeased(i) if i == ids[0]);
    assert!(sub.leased().is_empty());
    let mut next = queue.subscribe_with_options(now("s")).await.unwrap();
    let again = next.poll().await.unwrap();
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(again.iter().all(|m| m.attempt == 2), "{again:?}");
}

// ---------------------------------------------------------------------------------------------
// Extreme numbers

#[tokio::test]
async fn extreme_offsets_priorities_delays_and_batch_sizes_are_handled_without_database_errors() {
    let (queue, _db) = common::queue("hostile_extreme_numbers").await;
    queue.create_stream("s").await.unwrap();
    let low = queue
        .publish_with_priority("s", "t", json!("low"), i32::MIN)
        .await
        .unwrap();
    let high = queue
        .publish_with_priority("s", "t", json!("high"), i32::MAX)
        .await
        .unwrap();

    // Delays longer than 100 years are refused before the database: beyond a point the
    // delivery time overflows (PostgreSQL) or is stored as a float that no later read can
    // decode (SQLite).
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    let before = common::snapshot(&queue).await;
    for delay in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
        Duration::from_millis(i64::MAX.unsigned_abs()),
        Duration::from_millis(i64::MAX.unsigned_abs() / 2),
        century + Duration::from_millis(1),
    ] {
        assert_rejected!(
            queue
                .publish_message(Message::new("s", "t", json!({})).with_delay(delay))
                .await,
            MqError::InvalidConfig(_),
            "delay {delay:?}"
        );
        assert_rejected!(
            queue
                .publish_in(
                    queue.connection(),
                    Message::new("s", "t", json!({})).with_delay(delay),
                )
                .await,
            MqError::InvalidConfig(_),
            "publish_in, delay {delay:?}"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
    let far = queue
        .publish_message(Message::new("s", "t", json!("far")).with_delay(century))
        .await
        .unwrap();
    let stored = replay(&queue, "s").await.unwrap();
    let stored = stored.iter().find(|m| m.id == far).unwrap();
    assert_eq!(
        (stored.deliver_at - stored.created_at).to_std().unwrap(),
        century
    );

    for from in [i64::MIN, -1, 0] {
        let mut sub = queue
            .subscribe_with_options(
                now("s")
                    .group(format!("from{}", from.unsigned_abs()))
                    .from_offset(from),
            )
            .await
            .unwrap();
        let got: Vec<i64> = sub.poll().await.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(got, [high, low], "from_offset({from})");
    }
    // Dropping the last subscriber releases its two leases in the background; a release that
    // lands between the statistics' clock reading and their count makes those two look
    // delayed for that instant. Wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queue.group_stats("s", "from0").await.unwrap().in_flight > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "leases were not released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(queue.group_stats("s", "from0").await.unwrap().delayed, 1);
    let mut beyond = queue
        .subscribe_with_options(now("s").group("beyond").from_offset(i64::MAX))
        .await
        .unwrap();
    assert!(beyond.poll().await.unwrap().is_empty());
    queue.publish("s", "t", json!("later")).await.unwrap();
    assert!(beyond.poll().await.unwrap().is_empty());
    assert_eq!(queue.group_stats("s", "beyond").await.unwrap().lag, 0);

    for (from, batch, expected) in [
        (i64::MIN, u64::MAX, 4),
        (i64::MAX, 1, 0),
        (2, u64::MAX, 3),
        (1, 1, 4),
    ] {
        let replayed = tokio::time::timeout(
            HANG,
            queue
                .stream("s")
                .from_offset(from)
                .batch_size(batch)
                .build()
                .try_collect::<Vec<Message>>(),
        )
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("replay from {from} in pages of {batch}: {e:?}"));
        assert_eq!(replayed.len(), expected, "from {from}, pages of {batch}");
    }
}

// ---------------------------------------------------------------------------------------------
// Handles that outlive the queue

#[tokio::test]
async fn a_subscriber_outliving_every_queue_handle_still_polls_and_settles() {
    let (queue, db) = common::queue("hostile_subscriber_outlives").await;
    let ids = stream_of(&queue, 3).await;
    let mut sub = queue
        .subscribe_with_options(now("s").retry_backoff(Duration::from_secs(60)))
        .await
        .unwrap();
    drop(queue);
    tokio::time::timeout(HANG, async {
        let got = sub.poll().await.unwrap();
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        sub.ack(ids[0]).await.unwrap();
        sub.nack(ids[1]).await.unwrap();
        sub.heartbeat().await.unwrap();
        assert_eq!(sub.leased(), [ids[2]]);
        assert!(sub.poll().await.unwrap().is_empty());
    })
    .await
    .expect("a subscriber without its queue hung");
    drop(sub);

    // A new queue on the same database sees the effects, and the dropped subscriber's lease
    // released.
    let queue = MessageQueue::with_options(db.db_type, &db.url, common::options())
        .await
        .unwrap();
    let mut next = queue.subscribe_with_options(now("s")).await.unwrap();
    let got = tokio::time::timeout(HANG, async {
        loop {
            let got = next.poll().await.unwrap();
            if !got.is_empty() {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the released lease never came back");
    let got: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert_eq!(got, [ids[2]], "acked and nacked messages are not ready");
}

#[tokio::test]
async fn a_subscriber_stream_outliving_its_queue_keeps_delivering() {
    let (queue, _db) = common::queue("hostile_stream_outlives").await;
    let ids = stream_of(&queue, 2).await;
    let mut stream = queue.subscribe("s", vec![]).await.unwrap().into_stream();
    drop(queue);
    for id in ids {
        let message = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("a stream without its queue hung")
            .expect("streams do not end")
            .unwrap();
        assert_eq!(message.id, id);
    }
    tokio::time::timeout(HANG, stream.close())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_replay_outliving_its_queue_reads_to_the_end() {
    let (queue, _db) = common::queue("hostile_replay_outlives").await;
    let ids = stream_of(&queue, 5).await;
    let built = queue.stream("s").batch_size(2).build();
    let builder = queue.stream("s").from_offset(4);
    let unknown = queue.stream("ghost").build();
    drop(queue);
    let all = tokio::time::timeout(HANG, built.try_collect::<Vec<Message>>())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    let tail = tokio::time::timeout(HANG, builder.build().try_collect::<Vec<Message>>())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tail.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..]);
    let err = tokio::time::timeout(HANG, unknown.try_collect::<Vec<Message>>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, MqError::UnknownStream(ref s) if s == "ghost"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_clone_of_the_queue_works_after_the_original_is_dropped() {
    let (queue, _db) = common::queue("hostile_clone_outlives").await;
    let clone = queue.clone();
    drop(queue);
    tokio::time::timeout(HANG, async {
        clone.create_stream("s").await.unwrap();
        let id = clone.publish("s", "t", json!({})).await.unwrap();
        let mut sub = clone.subscribe_with_options(now("s")).await.unwrap();
        assert_eq!(sub.poll().await.unwrap()[0].id, id);
        sub.ack(id).await.unwrap();
        assert_eq!(clone.group_stats("s", "default").await.unwrap().lag, 0);
        assert_eq!(clone.consumers("s").await.unwrap().len(), 1);
        assert!(clone.dead_letters("s", "default").await.unwrap().is_empty());
        assert_eq!(clone.cleanup_expired_consumers(3600).await.unwrap(), 0);
        assert_rejected!(
            clone.publish("ghost", "t", json!({})).await,
            MqError::UnknownStream(_)
        );
    })
    .await
    .expect("a clone of a dropped queue hung");
}

#[tokio::test]
async fn calls_after_the_host_closes_its_pool_fail_with_errors_instead_of_hanging() {
    let db = common::fresh_db("hostile_closed_pool").await;
    let host = common::connect(&db).await;
    let queue = MessageQueue::from_connection(host.clone()).await.unwrap();
    queue.create_stream("s").await.unwrap();
    let id = queue.publish("s", "t", json!({})).await.unwrap();
    let mut sub = queue.subscribe_with_options(now("s")).await.unwrap();
    assert_eq!(sub.poll().await.unwrap()[0].id, id);
    let stream = queue.subscribe("s", vec![]).await.unwrap();
    host.close_by_ref().await.unwrap();

    tokio::time::timeout(HANG, async {
        assert_rejected!(
            queue.publish("s", "t", json!({})).await,
            MqError::Database(_)
        );
        assert_rejected!(queue.create_stream("t").await, MqError::Database(_));
        assert_rejected!(queue.subscribe("s", vec![]).await, MqError::Database(_));
        assert_rejected!(
            queue.group_stats("s", "default").await,
            MqError::Database(_)
        );
        assert_rejected!(replay(&queue, "s").await, MqError::Database(_));
        assert_rejected!(sub.poll().await, MqError::Database(_));
        assert_rejected!(sub.ack(id).await, MqError::Database(_));
        assert_rejected!(sub.heartbeat().await, MqError::Database(_));
        // A stream reports the failure as an item instead of ending or hanging.
        let mut stream = stream.into_stream();
        let item = stream.next().await.expect("streams do not end");
        assert_rejected!(item, MqError::Database(_));
    })
    .await
    .expect("a call on a closed pool hung");
}

#[tokio::test]
async fn a_queue_and_subscriber_dropped_outside_any_runtime_do_not_panic() {
    let (queue, _db) = common::queue("hostile_drop_outside").await;
    queue.create_stream("s").await.unwrap();
    queue.publish("s", "t", json!({})).await.unwrap();
    let mut sub = queue.subscribe_with_options(now("s")).await.unwrap();
    assert_eq!(sub.poll().await.unwrap().len(), 1);
    let replay = queue.stream("s").build();
    let dropped = std::thread::spawn(move || {
        drop(sub);
        drop(replay);
        drop(queue);
    })
    .join();
    assert!(dropped.is_ok(), "dropping outside a runtime panicked");
}

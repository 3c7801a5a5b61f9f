//! Publishing: offsets, atomicity, validation, and the outbox.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dabgent_mq::sea_orm::{
    ConnectionTrait, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use dabgent_mq::{Message, MessageQueue, MqError, QueueOptions};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::common;

async fn replay_all(queue: &MessageQueue, stream: &str) -> Vec<Message> {
    queue
        .stream(stream)
        .build()
        .try_collect()
        .await
        .expect("replay")
}

/// Offsets visible in the stream right now, read in one statement.
async fn visible_offsets(queue: &MessageQueue, stream: &str) -> Vec<i64> {
    let conn = queue.connection();
    let backend = conn.get_database_backend();
    let sql = "SELECT m.stream_offset FROM mq_messages m JOIN mq_streams s ON s.id = m.stream_id \
               WHERE s.name = $1 ORDER BY m.stream_offset";
    let sql = match backend {
        dabgent_mq::sea_orm::DbBackend::Postgres => sql.to_owned(),
        _ => sql.replace("$1", "?"),
    };
    conn.query_all_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [stream.into()],
    ))
    .await
    .expect("read offsets")
    .iter()
    .map(|row| row.try_get_by_index::<i64>(0).expect("offset"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_are_gapless_and_commit_ordered_with_8_concurrent_publishers() {
    let (queue, _db) = common::queue("offsets_concurrent").await;
    queue.create_stream("orders").await.unwrap();
    const PUBLISHERS: usize = 8;
    const EACH: usize = 40;

    // A reader that, while publishers run, checks every snapshot it sees: visible offsets
    // must always be exactly 1..=N. A hole would mean an offset became visible before a
    // smaller one, the "sequence committed out of order" bug.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let queue = queue.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut snapshots = 0usize;
            let mut last_len = 0usize;
            while !done.load(Ordering::Acquire) {
                let offsets = visible_offsets(&queue, "orders").await;
                let expected: Vec<i64> = (1..=offsets.len() as i64).collect();
                assert_eq!(offsets, expected, "a reader saw a hole in the offsets");
                assert!(offsets.len() >= last_len, "visible messages went backwards");
                last_len = offsets.len();
                snapshots += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            snapshots
        })
    };

    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                ids.push(
                    queue
                        .publish("orders", "order.created", json!({"p": p, "i": i}))
                        .await
                        .unwrap(),
                );
            }
            ids
        }));
    }
    let mut ids = BTreeSet::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    done.store(true, Ordering::Release);
    let snapshots = reader.await.unwrap();
    assert!(snapshots > 0);

    let total = PUBLISHERS * EACH;
    assert_eq!(ids.len(), total, "every publish got its own id");
    let messages = replay_all(&queue, "orders").await;
    let offsets: Vec<i64> = messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (1..=total as i64).collect::<Vec<_>>());
    // Each publisher's own messages keep their order.
    for p in 0..PUBLISHERS {
        let mine: Vec<u64> = messages
            .iter()
            .filter(|m| m.payload["p"] == json!(p))
            .map(|m| m.payload["i"].as_u64().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn first_message_gets_offset_one_and_ids_increase() {
    let (queue, _db) = common::queue("first_offset").await;
    queue.create_stream("a").await.unwrap();
    queue.create_stream("b").await.unwrap();
    let a1 = queue.publish("a", "t", json!(1)).await.unwrap();
    let b1 = queue.publish("b", "t", json!(2)).await.unwrap();
    let a2 = queue.publish("a", "t", json!(3)).await.unwrap();
    assert!(a1 < b1 && b1 < a2);
    let a: Vec<i64> = replay_all(&queue, "a")
        .await
        .iter()
        .map(|m| m.offset)
        .collect();
    let b: Vec<i64> = replay_all(&queue, "b")
        .await
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(a, [1, 2], "offsets are per stream");
    assert_eq!(b, [1]);
}

#[tokio::test]
async fn create_stream_is_idempotent() {
    let (queue, _db) = common::queue("create_idempotent").await;
    queue.create_stream("orders").await.unwrap();
    queue.publish("orders", "t", json!(1)).await.unwrap();
    queue.create_stream("orders").await.unwrap();
    assert_eq!(common::count(queue.connection(), "mq_streams").await, 1);
    let id = queue.publish("orders", "t", json!(2)).await.unwrap();
    let last = replay_all(&queue, "orders").await.pop().unwrap();
    assert_eq!((last.id, last.offset), (id, 2), "re-creating kept the head");
}

#[tokio::test]
async fn batch_with_one_invalid_message_stores_nothing() {
    let (queue, _db) = common::queue("batch_atomic").await;
    queue.create_stream("events").await.unwrap();
    let before = common::snapshot(&queue).await;

    let mut batch: Vec<Message> = (0..10)
        .map(|i| Message::new("events", "user.login", json!({"i": i})))
        .collect();
    batch[6] = Message::new("events", "bad topic", json!({}));
    let err = queue.publish_batch(batch).await.unwrap_err();
    assert!(matches!(err, MqError::InvalidTopic { .. }), "{err:?}");
    assert_eq!(common::snapshot(&queue).await, before);

    // An unknown stream is only found inside the transaction: the messages already inserted
    // for other streams must be rolled back with it.
    let mut batch: Vec<Message> = (0..10)
        .map(|i| Message::new("events", "user.login", json!({"i": i})))
        .collect();
    batch[9] = Message::new("nope", "user.login", json!({}));
    let err = queue.publish_batch(batch).await.unwrap_err();
    assert!(
        matches!(err, MqError::UnknownStream(ref s) if s == "nope"),
        "{err:?}"
    );
    assert_eq!(common::snapshot(&queue).await, before);

    let ids = queue
        .publish_batch(vec![Message::new("events", "user.login", json!({}))])
        .await
        .unwrap();
    assert_eq!(replay_all(&queue, "events").await[0].id, ids[0]);
    assert_eq!(
        replay_all(&queue, "events").await[0].offset,
        1,
        "no offset was used up"
    );
}

#[tokio::test]
async fn batch_spanning_streams_returns_ids_in_input_order() {
    let (queue, _db) = common::queue("batch_order").await;
    for s in ["s1", "s2", "s3"] {
        queue.create_stream(s).await.unwrap();
    }
    let streams = ["s3", "s1", "s2", "s1", "s3", "s3", "s2"];
    let batch: Vec<Message> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| Message::new(*s, "t", json!({"i": i})))
        .collect();
    let ids = queue.publish_batch(batch).await.unwrap();
    assert_eq!(ids.len(), streams.len());
    for s in ["s1", "s2", "s3"] {
        let msgs = replay_all(&queue, s).await;
        let offsets: Vec<i64> = msgs.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, (1..=msgs.len() as i64).collect::<Vec<_>>());
        for m in msgs {
            let i = usize::try_from(m.payload["i"].as_u64().unwrap()).unwrap();
            assert_eq!(ids[i], m.id, "id of input {i}");
            assert_eq!(streams[i], s);
        }
    }
    assert!(queue.publish_batch(vec![]).await.unwrap().is_empty());
}

#[tokio::test]
async fn batch_larger_than_the_bind_parameter_limit_is_stored_whole() {
    let (queue, _db) = common::queue("batch_chunked").await;
    queue.create_stream("big").await.unwrap();
    // 7 parameters per row: 12,000 rows would need 84,000 in one statement, more than
    // SQLite (32,766) or PostgreSQL (65,535) accept.
    let batch: Vec<Message> = (0..12_000)
        .map(|i| Message::new("big", "t", json!({"i": i})))
        .collect();
    let ids = queue.publish_batch(batch).await.unwrap();
    assert_eq!(ids.len(), 12_000);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 12_000);
    let msgs = replay_all(&queue, "big").await;
    assert_eq!(msgs.len(), 12_000);
    for (n, m) in msgs.iter().enumerate() {
        assert_eq!(m.offset, n as i64 + 1);
        assert_eq!(m.payload["i"], json!(n));
        assert_eq!(m.id, ids[n]);
    }
}

#[tokio::test]
async fn payload_of_exactly_the_limit_is_accepted_and_one_byte_more_is_rejected() {
    let (queue, _db) = common::queue("payload_limit").await;
    queue.create_stream("blobs").await.unwrap();
    // A JSON string serializes with its two quotes.
    let exact = Value::String("x".repeat(1_048_576 - 2));
    let id = queue.publish("blobs", "blob", exact.clone()).await.unwrap();
    let stored = replay_all(&queue, "blobs").await.pop().unwrap();
    assert_eq!((stored.id, &stored.payload), (id, &exact));

    let before = common::snapshot(&queue).await;
    let over = Value::String("x".repeat(1_048_576 - 1));
    let err = queue.publish("blobs", "blob", over).await.unwrap_err();
    assert!(
        matches!(err, MqError::MessageTooLarge(1_048_577, 1_048_576)),
        "{err:?}"
    );
    assert_eq!(common::snapshot(&queue).await, before);
}

/// On PostgreSQL, large payloads are compressed with LZ4 where the server has it (a server
/// built without LZ4 rejects it as a value of `default_toast_compression`), and with the
/// default method otherwise; either way they come back intact.
#[tokio::test]
async fn large_payloads_are_stored_with_lz4_on_postgres_servers_that_have_it() {
    if !common::is_postgres() {
        return;
    }
    let (queue, _db) = common::queue("payload_lz4").await;
    queue.create_stream("blobs").await.unwrap();
    let big = json!({"blob": "x".repeat(100_000)});
    let id = queue.publish("blobs", "blob", big.clone()).await.unwrap();
    let conn = queue.connection();
    let version = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT current_setting('server_version_num')::int AS v",
        ))
        .await
        .unwrap()
        .unwrap();
    if version.try_get::<i32>("", "v").unwrap() < 140_000 {
        // No column compression before PostgreSQL 14; the migration leaves the column alone.
        return;
    }
    let has_lz4 = conn
        .execute_unprepared("SET default_toast_compression = 'lz4'")
        .await
        .is_ok();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            "SELECT pg_column_compression(payload) AS method FROM mq_messages WHERE id = $1",
            [id.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let method: String = row.try_get("", "method").unwrap();
    assert_eq!(method, if has_lz4 { "lz4" } else { "pglz" });
    let stored = replay_all(&queue, "blobs").await.pop().unwrap();
    assert_eq!(stored.payload, big);
}

#[tokio::test]
async fn payload_limit_is_configurable() {
    let (queue, _db) = common::queue_with(
        "payload_limit_custom",
        common::options().max_payload_bytes(10),
    )
    .await;
    queue.create_stream("s").await.unwrap();
    queue.publish("s", "t", json!("12345678")).await.unwrap();
    let err = queue
        .publish("s", "t", json!("123456789"))
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::MessageTooLarge(11, 10)), "{err:?}");
    let err = queue
        .publish_batch(vec![
            Message::new("s", "t", json!(1)),
            Message::new("s", "t", json!("123456789")),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::MessageTooLarge(11, 10)), "{err:?}");
    assert_eq!(replay_all(&queue, "s").await.len(), 1);
}

#[tokio::test]
async fn publishing_to_an_unknown_stream_fails_naming_it() {
    let (queue, _db) = common::queue("unknown_stream").await;
    let before = common::snapshot(&queue).await;
    let err = queue.publish("missing", "t", json!({})).await.unwrap_err();
    assert!(
        matches!(err, MqError::UnknownStream(ref s) if s == "missing"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"missing\""), "{err}");
    assert_eq!(common::snapshot(&queue).await, before);
}

#[tokio::test]
async fn invalid_topics_are_rejected_and_nothing_is_written() {
    let (queue, _db) = common::queue("invalid_topics").await;
    queue.create_stream("s").await.unwrap();
    let before = common::snapshot(&queue).await;
    let long = "x".repeat(256);
    for topic in [
        "",
        " ",
        "a b",
        "tab\there",
        "new\nline",
        "order.*",
        "*",
        &long,
        "nul\0",
    ] {
        let err = queue.publish("s", topic, json!({})).await.unwrap_err();
        assert!(
            matches!(err, MqError::InvalidTopic { .. }),
            "{topic:?}: {err:?}"
        );
    }
    assert_eq!(common::snapshot(&queue).await, before);
    let longest = "y".repeat(255);
    queue.publish("s", &longest, json!({})).await.unwrap();
    assert_eq!(replay_all(&queue, "s").await[0].topic, longest);
}

#[tokio::test]
async fn invalid_stream_names_are_rejected() {
    let (queue, _db) = common::queue("invalid_names").await;
    let long = "s".repeat(256);
    for name in ["", "a b", "o'rders", "a;b", "x\"y", "ünïcode", "a/b", &long] {
        let err = queue.create_stream(name).await.unwrap_err();
        assert!(
            matches!(err, MqError::InvalidName { .. }),
            "{name:?}: {err:?}"
        );
        let err = queue.publish(name, "t", json!({})).await.unwrap_err();
        assert!(
            matches!(err, MqError::InvalidName { .. }),
            "{name:?}: {err:?}"
        );
    }
    assert_eq!(common::count(queue.connection(), "mq_streams").await, 0);
    queue.create_stream(&"s".repeat(255)).await.unwrap();
    queue.create_stream("A-z_0.9:x").await.unwrap();
}

#[tokio::test]
async fn quotes_semicolons_and_sql_keywords_are_stored_literally() {
    let (queue, _db) = common::queue("sql_literals").await;
    let stream = "DROP.TABLE:mq_messages--";
    queue.create_stream(stream).await.unwrap();
    let topics = [
        "o'rder;DROP_TABLE_mq_messages;--",
        "\"quoted\".topic",
        "select.from.where",
        "100%_done\\",
        "$1?:name@p",
    ];
    let payload = json!({
        "text": "'); DELETE FROM mq_streams; --",
        "quote\"key": "back\\slash \u{1F600} ünïcode",
        "like": "%_*",
        "nested": [{"sql": "SELECT 1; SELECT 2"}],
    });
    for topic in topics {
        queue.publish(stream, topic, payload.clone()).await.unwrap();
    }
    let msgs = replay_all(&queue, stream).await;
    assert_eq!(msgs.len(), topics.len());
    for (m, topic) in msgs.iter().zip(topics) {
        assert_eq!(m.stream, stream);
        assert_eq!(m.topic, topic);
        assert_eq!(m.payload, payload);
    }
    assert_eq!(common::count(queue.connection(), "mq_streams").await, 1);
}

#[tokio::test]
async fn nul_characters_in_payloads_are_rejected_on_every_database() {
    let (queue, _db) = common::queue("nul_payload").await;
    queue.create_stream("s").await.unwrap();
    let before = common::snapshot(&queue).await;
    for payload in [
        json!("a\u{0}b"),
        json!({"k\u{0}": 1}),
        json!([[{"x": "\u{0}"}]]),
    ] {
        let err = queue.publish("s", "t", payload).await.unwrap_err();
        assert!(matches!(err, MqError::InvalidPayload(_)), "{err:?}");
    }
    assert_eq!(common::snapshot(&queue).await, before);
    // The escaped text `\u0000` (a backslash, not a NUL) is an ordinary string.
    queue.publish("s", "t", json!("\\u0000")).await.unwrap();
    assert_eq!(replay_all(&queue, "s").await[0].payload, json!("\\u0000"));
}

#[tokio::test]
async fn deeply_nested_payloads_are_stored_up_to_the_depth_limit() {
    let (queue, _db) = common::queue("nested_payload").await;
    queue.create_stream("s").await.unwrap();
    let mut deep = json!({"leaf": true});
    for _ in 1..dabgent_mq::MAX_PAYLOAD_DEPTH {
        deep = json!([deep]);
    }
    queue.publish("s", "t", deep.clone()).await.unwrap();
    assert_eq!(replay_all(&queue, "s").await[0].payload, deep);
    let too_deep = json!([deep]);
    let err = queue.publish("s", "t", too_deep).await.unwrap_err();
    assert!(matches!(err, MqError::InvalidPayload(_)), "{err:?}");
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct OrderCreated {
    order_id: String,
    amount: f64,
    tags: Vec<String>,
}

#[tokio::test]
async fn typed_payloads_priority_and_delay_are_stored() {
    let (queue, _db) = common::queue("typed_priority_delay").await;
    queue.create_stream("orders").await.unwrap();
    let order = OrderCreated {
        order_id: "12345".into(),
        amount: 99.99,
        tags: vec!["new".into()],
    };
    let msg = Message::typed("orders", "order.created", &order)
        .unwrap()
        .with_priority(7)
        .with_delay(Duration::from_secs(30));
    queue.publish_message(msg).await.unwrap();
    queue
        .publish_with_priority("orders", "order.paid", json!({}), -3)
        .await
        .unwrap();
    let msgs = replay_all(&queue, "orders").await;
    assert_eq!(msgs[0].payload_as::<OrderCreated>().unwrap(), order);
    assert_eq!(msgs[0].priority, 7);
    assert_eq!(
        (msgs[0].deliver_at - msgs[0].created_at).num_milliseconds(),
        30_000
    );
    assert_eq!(msgs[1].priority, -3);
    assert_eq!(msgs[1].deliver_at, msgs[1].created_at);
    let age = chrono::Utc::now() - msgs[0].created_at;
    assert!(age.num_seconds().abs() < 60, "created_at is now-ish: {age}");
}

#[tokio::test]
async fn publish_in_a_rolled_back_transaction_is_invisible() {
    let (queue, db) = common::queue("outbox_rollback").await;
    queue.create_stream("orders").await.unwrap();
    let host = common::connect(&db).await;
    let txn = begin(&host).await;
    let id = queue
        .publish_in(
            &txn,
            Message::new("orders", "order.created", json!({"id": 7})),
        )
        .await
        .unwrap();
    assert!(id > 0);
    txn.rollback().await.unwrap();
    assert!(replay_all(&queue, "orders").await.is_empty());
    // The rolled-back offset is reused: no gap.
    queue
        .publish("orders", "order.created", json!({"id": 8}))
        .await
        .unwrap();
    assert_eq!(replay_all(&queue, "orders").await[0].offset, 1);
}

#[tokio::test]
async fn publish_in_a_committed_transaction_is_visible_with_the_host_writes() {
    let (queue, db) = common::queue("outbox_commit").await;
    queue.create_stream("orders").await.unwrap();
    let host = common::connect(&db).await;
    host.execute_unprepared("CREATE TABLE orders (id BIGINT PRIMARY KEY, total TEXT NOT NULL)")
        .await
        .unwrap();
    let txn = begin(&host).await;
    txn.execute_unprepared("INSERT INTO orders (id, total) VALUES (7, '99.99')")
        .await
        .unwrap();
    let ids = queue
        .publish_batch_in(
            &txn,
            vec![
                Message::new("orders", "order.created", json!({"id": 7})),
                Message::new("orders", "order.totalled", json!({"id": 7})),
            ],
        )
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let msgs = replay_all(&queue, "orders").await;
    assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(common::count(&host, "orders").await, 1);
}

#[tokio::test]
async fn failed_publish_in_leaves_the_host_transaction_usable() {
    let (queue, db) = common::queue("outbox_failure").await;
    queue.create_stream("orders").await.unwrap();
    let host = common::connect(&db).await;
    let txn = begin(&host).await;
    queue
        .publish_in(&txn, Message::new("orders", "a", json!(1)))
        .await
        .unwrap();
    let err = queue
        .publish_in(&txn, Message::new("no_such_stream", "a", json!(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, MqError::UnknownStream(_)), "{err:?}");
    queue
        .publish_in(&txn, Message::new("orders", "b", json!(3)))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let topics: Vec<String> = replay_all(&queue, "orders")
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(topics, ["a", "b"]);
}

#[tokio::test]
async fn publish_in_works_on_a_plain_connection() {
    let (queue, _db) = common::queue("outbox_plain_conn").await;
    queue.create_stream("orders").await.unwrap();
    let id = queue
        .publish_in(queue.connection(), Message::new("orders", "a", json!(1)))
        .await
        .unwrap();
    assert_eq!(replay_all(&queue, "orders").await[0].id, id);
}

#[tokio::test]
async fn a_second_queue_on_the_same_database_sees_the_same_streams() {
    let (queue, db) = common::queue("two_queues").await;
    let other = MessageQueue::with_options(db.db_type, &db.url, QueueOptions::new().pool_size(2))
        .await
        .unwrap();
    queue.create_stream("shared").await.unwrap();
    other.publish("shared", "t", json!(1)).await.unwrap();
    queue.publish("shared", "t", json!(2)).await.unwrap();
    let offsets: Vec<i64> = replay_all(&other, "shared")
        .await
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(offsets, [1, 2]);
    let first = queue
        .stream("shared")
        .build()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, json!(1));
}

/// A host transaction that will write: `BEGIN IMMEDIATE` on SQLite, as documented for
/// `publish_in`.
async fn begin(
    host: &dabgent_mq::sea_orm::DatabaseConnection,
) -> dabgent_mq::sea_orm::DatabaseTransaction {
    host.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_each_get_their_own_result() {
    let (queue, _db) = common::queue("group_commit_errors").await;
    queue.create_stream("good").await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..20 {
                // Every fourth task publishes to a stream that does not exist, in the middle
                // of everyone else's publishes.
                let stream = if t % 4 == 3 && i % 5 == 2 {
                    "missing"
                } else {
                    "good"
                };
                results.push((
                    stream,
                    queue.publish(stream, "t", json!({"t": t, "i": i})).await,
                ));
            }
            results
        }));
    }
    let mut ok_ids = BTreeSet::new();
    let mut failures = 0;
    for task in tasks {
        for (stream, result) in task.await.unwrap() {
            match (stream, result) {
                ("good", Ok(id)) => assert!(ok_ids.insert(id), "id {id} handed out twice"),
                ("missing", Err(MqError::UnknownStream(name))) => {
                    assert_eq!(name, "missing");
                    failures += 1;
                }
                (stream, other) => panic!("{stream}: unexpected {other:?}"),
            }
        }
    }
    assert_eq!(failures, 4 * 4);
    let stored = replay_all(&queue, "good").await;
    assert_eq!(stored.len(), ok_ids.len());
    assert_eq!(
        stored.iter().map(|m| m.id).collect::<BTreeSet<_>>(),
        ok_ids,
        "exactly the successful publishes are stored"
    );
    let offsets: Vec<i64> = stored.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (1..=stored.len() as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_publishes_do_not_strand_the_others() {
    let (queue, _db) = common::queue("cancelled_publishes").await;
    queue.create_stream("s").await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                // Every other publish is started and abandoned at once, whether it was about
                // to write itself or queued behind another writer.
                let abandoned = queue.publish("s", "abandoned", json!({"t": t, "i": i}));
                let _ = futures::FutureExt::now_or_never(abandoned);
                ids.push(
                    queue
                        .publish("s", "kept", json!({"t": t, "i": i}))
                        .await
                        .unwrap(),
                );
            }
            ids
        }));
    }
    let mut kept = BTreeSet::new();
    for task in tasks {
        let ids = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a publish was stranded")
            .unwrap();
        kept.extend(ids);
    }
    assert_eq!(kept.len(), 200);
    let stored = replay_all(&queue, "s").await;
    let stored_kept: BTreeSet<i64> = stored
        .iter()
        .filter(|m| m.topic == "kept")
        .map(|m| m.id)
        .collect();
    assert_eq!(stored_kept, kept);
    let offsets: Vec<i64> = stored.iter().map(|m| m.offset).collect();
    assert_eq!(
        offsets,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "no gaps"
    );
}

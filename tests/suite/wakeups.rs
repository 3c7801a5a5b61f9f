//! Wake-ups across queues and processes on PostgreSQL (LISTEN/NOTIFY), and the backstop that
//! bounds the wait when a notification is lost.

use std::time::{Duration, Instant};

use dabgent_mq::sea_orm::{ConnectionTrait, DbBackend, Statement};
use dabgent_mq::{MessageQueue, QueueOptions, SubscribeOptions, Subscriber};
use serde_json::json;

use crate::common;

/// Publishes from `publisher` while `sub` waits, and returns how long after the publish
/// returned the waiting poll returned with the message.
async fn wake_latency(
    sub: Subscriber,
    publisher: &MessageQueue,
    round: usize,
) -> (Subscriber, Duration) {
    let mut sub = sub;
    let waiter = tokio::spawn(async move {
        let batch = sub.poll().await.unwrap();
        (sub, batch, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = publisher
        .publish("s", "t", json!({"round": round}))
        .await
        .unwrap();
    let published = Instant::now();
    let (sub, batch, woke) = waiter.await.unwrap();
    assert_eq!(batch.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
    sub.ack(id).await.unwrap();
    (sub, woke.saturating_duration_since(published))
}

#[tokio::test]
async fn a_waiting_poll_wakes_within_250_ms_of_a_publish_from_another_queue() {
    if !common::is_postgres() {
        eprintln!(
            "SQLite has no cross-process notifications: other queues are found by the backstop poll"
        );
        return;
    }
    let (subscriber_queue, db) = common::queue_with(
        "wake_other_queue",
        common::options().backstop_poll_interval(Duration::from_secs(30)),
    )
    .await;
    let publisher =
        MessageQueue::with_options(db.db_type, &db.url, QueueOptions::new().pool_size(2))
            .await
            .unwrap();
    publisher.create_stream("s").await.unwrap();
    let mut sub = subscriber_queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    let mut latencies = Vec::new();
    for round in 0..5 {
        let (back, latency) = wake_latency(sub, &publisher, round).await;
        sub = back;
        latencies.push(latency);
    }
    latencies.sort();
    eprintln!("cross-queue wake-up latencies: {latencies:?}");
    assert!(latencies[4] < Duration::from_millis(250), "{latencies:?}");
}

#[tokio::test]
async fn a_lost_notification_delays_delivery_by_no_more_than_the_backstop() {
    if !common::is_postgres() {
        eprintln!("SQLite has no notifications to lose");
        return;
    }
    let backstop = Duration::from_millis(600);
    let db = common::fresh_db("lost_notification").await;
    let app = format!("dabgent_mq_lost_{}", std::process::id());
    let url = format!("{}&application_name={app}", db.url);
    let queue = MessageQueue::with_options(
        db.db_type,
        &url,
        QueueOptions::new()
            .pool_size(4)
            .backstop_poll_interval(backstop),
    )
    .await
    .unwrap();
    let publisher =
        MessageQueue::with_options(db.db_type, &db.url, QueueOptions::new().pool_size(2))
            .await
            .unwrap();
    publisher.create_stream("s").await.unwrap();
    let mut sub = queue
        .subscribe_with_options(SubscribeOptions::new("s").poll_timeout(Duration::from_secs(20)))
        .await
        .unwrap();

    // 1. A notification that never comes: a message appended by plain SQL, without NOTIFY.
    //    Only the backstop can find it.
    for round in 0..3 {
        let waiter = tokio::spawn(async move {
            let batch = sub.poll().await.unwrap();
            (sub, batch, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = append_without_notify(&publisher, "s").await;
        let appended = Instant::now();
        let (back, batch, woke) = waiter.await.unwrap();
        sub = back;
        assert_eq!(batch.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
        sub.ack(id).await.unwrap();
        let latency = woke.saturating_duration_since(appended);
        eprintln!("round {round}: found {latency:?} after a silent append (backstop {backstop:?})");
        assert!(
            latency < backstop + Duration::from_millis(250),
            "{latency:?}"
        );
    }

    // 2. The listener's connection killed, and a publish at once: whether or not that
    //    notification is lost, delivery takes no longer than the backstop, and afterwards the
    //    reconnected listener wakes polls again well before it.
    for round in 0..3 {
        let waiter = tokio::spawn(async move {
            let batch = sub.poll().await.unwrap();
            (sub, batch, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let killed = publisher
            .connection()
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                [app.clone().into()],
            ))
            .await
            .unwrap();
        assert_eq!(
            killed.len(),
            1,
            "round {round}: one listener connection to kill"
        );
        let id = publisher
            .publish("s", "t", json!({"round": round}))
            .await
            .unwrap();
        let published = Instant::now();
        let (back, batch, woke) = waiter.await.unwrap();
        sub = back;
        assert_eq!(batch.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
        sub.ack(id).await.unwrap();
        let latency = woke.saturating_duration_since(published);
        eprintln!("round {round}: delivered {latency:?} after the listener was killed");
        assert!(
            latency < backstop + Duration::from_millis(250),
            "{latency:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (back, latency) = wake_latency(sub, &publisher, round).await;
        sub = back;
        assert!(
            latency < Duration::from_millis(250),
            "listener did not recover: {latency:?}"
        );
    }
}

/// Appends a message the way a publisher would, but without `NOTIFY`: a lost notification.
async fn append_without_notify(queue: &MessageQueue, stream: &str) -> i64 {
    let conn = queue.connection();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH s AS (UPDATE mq_streams SET last_offset = last_offset + 1 WHERE name = $1 \
                        RETURNING id, last_offset) \
             INSERT INTO mq_messages (stream_id, stream_offset, topic, payload, priority, \
                                      created_at, deliver_at) \
             SELECT id, last_offset, 'silent', '{}'::jsonb, 0, \
                    (EXTRACT(EPOCH FROM now()) * 1000)::bigint, \
                    (EXTRACT(EPOCH FROM now()) * 1000)::bigint FROM s \
             RETURNING id",
            [stream.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

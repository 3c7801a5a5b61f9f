//! PostgreSQL restarted while publishers and subscribers run: calls fail or retry, none hangs,
//! subscribers resume by themselves, and every publish that returned `Ok` is delivered.
//!
//! Restarting the server disturbs every other test using it, so this test runs only when
//! `DABGENT_MQ_RESTART_COMMAND` holds the shell command that restarts the server of
//! `DATABASE_URL`; `.ci/run` sets it and runs this test alone, after everything else.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dabgent_mq::{MqError, SubscribeOptions};
use futures::StreamExt;
use serde_json::json;

use crate::common;

const SWITCH: &str = "DABGENT_MQ_RESTART_COMMAND";

/// What every task records, and the flags that steer them.
struct Log {
    published: Mutex<Vec<i64>>,
    received: Mutex<HashSet<i64>>,
    /// Consumers run while this is set.
    consuming: AtomicBool,
    /// Ids above this were published after the restart; none until it is over.
    resume_after: AtomicI64,
    /// Deliveries per subscriber (2 pollers, then the stream) of messages published after the
    /// restart, to show each one resumed (a batch claimed before the restart does not count).
    resumed: [AtomicUsize; 3],
    /// Failed calls, by kind, to show the restart was felt.
    publish_errors: AtomicUsize,
    poll_errors: AtomicUsize,
    ack_errors: AtomicUsize,
    /// The longest call, in milliseconds.
    longest_ms: AtomicU64,
}

impl Log {
    fn new() -> Self {
        Log {
            published: Mutex::default(),
            received: Mutex::default(),
            consuming: AtomicBool::new(true),
            resume_after: AtomicI64::new(i64::MAX),
            resumed: Default::default(),
            publish_errors: AtomicUsize::new(0),
            poll_errors: AtomicUsize::new(0),
            ack_errors: AtomicUsize::new(0),
            longest_ms: AtomicU64::new(0),
        }
    }

    fn delivered(&self, subscriber: usize, id: i64) {
        self.received.lock().unwrap().insert(id);
        if id > self.resume_after.load(Ordering::Relaxed) {
            self.resumed[subscriber].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn timed(&self, started: Instant) {
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.longest_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// Whether the error is one a server going away may cause.
fn is_outage(err: &MqError) -> bool {
    matches!(err, MqError::Database(_) | MqError::Connection { .. })
}

async fn server_started_at(queue: &dabgent_mq::MessageQueue) -> String {
    use dabgent_mq::sea_orm::{ConnectionTrait, Statement};
    let conn = queue.connection();
    conn.query_one_raw(Statement::from_string(
        conn.get_database_backend(),
        "SELECT CAST(pg_postmaster_start_time() AS TEXT)".to_owned(),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<String>(0)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_nothing_and_hangs_nothing() {
    let Ok(command) = std::env::var(SWITCH) else {
        eprintln!("skipped: set {SWITCH} to the command that restarts the PostgreSQL server");
        return;
    };
    assert!(
        common::is_postgres(),
        "{SWITCH} is set, but DATABASE_URL is not a PostgreSQL URL"
    );
    let connect_timeout = Duration::from_secs(2);
    let acquire_timeout = Duration::from_secs(5);
    // The longest any call may take: waiting for a connection, opening one, and the
    // statement itself on a server that just came back.
    let limit = acquire_timeout + connect_timeout + Duration::from_secs(5);
    let options = common::options()
        .connect_timeout(connect_timeout)
        .acquire_timeout(acquire_timeout)
        .backstop_poll_interval(Duration::from_millis(500));
    let (queue, _db) = common::queue_with("restart_under_load", options).await;
    queue.create_stream("jobs").await.unwrap();

    let log = Arc::new(Log::new());
    let publishing = Arc::new(AtomicBool::new(true));

    let mut publishers = Vec::new();
    for p in 0..2 {
        let (queue, log, publishing) = (queue.clone(), log.clone(), publishing.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while publishing.load(Ordering::Relaxed) {
                n += 1;
                let call = queue.publish("jobs", "job.run", json!({ "p": p, "n": n }));
                match tokio::time::timeout(limit, call)
                    .await
                    .expect("publish hung")
                {
                    Ok(id) => log.published.lock().unwrap().push(id),
                    Err(err) => {
                        assert!(
                            is_outage(&err),
                            "a restart gives database errors, not {err:?}"
                        );
                        log.publish_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let subscribe = |name: &str| {
        SubscribeOptions::new("jobs")
            .group("workers")
            .consumer_id(name)
            .batch_size(20)
            .visibility_timeout(Duration::from_secs(3))
            .poll_timeout(Duration::from_millis(300))
            .max_attempts(1000)
    };
    let mut consumers = Vec::new();
    for slot in 0..2 {
        let mut sub = queue
            .subscribe_with_options(subscribe(&format!("poller-{slot}")))
            .await
            .unwrap();
        let log = log.clone();
        consumers.push(tokio::spawn(async move {
            while log.consuming.load(Ordering::Relaxed) {
                let started = Instant::now();
                let polled = tokio::time::timeout(limit, sub.poll())
                    .await
                    .expect("poll hung");
                log.timed(started);
                let batch = match polled {
                    Ok(batch) => batch,
                    Err(err) => {
                        assert!(
                            is_outage(&err),
                            "a restart gives database errors, not {err:?}"
                        );
                        log.poll_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for message in batch {
                    log.delivered(slot, message.id);
                    let started = Instant::now();
                    let ack = tokio::time::timeout(limit, sub.ack(message.id))
                        .await
                        .expect("ack hung");
                    log.timed(started);
                    if let Err(err) = ack {
                        // Not acknowledged: the lease expires and the message comes again
                        // (or it ran out during the outage and went to another member).
                        assert!(
                            is_outage(&err) || matches!(err, MqError::LeaseLost(_)),
                            "unexpected ack error {err:?}"
                        );
                        log.ack_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    {
        let mut stream = queue
            .subscribe_with_options(subscribe("streamer"))
            .await
            .unwrap()
            .into_stream();
        let log = log.clone();
        consumers.push(tokio::spawn(async move {
            while log.consuming.load(Ordering::Relaxed) {
                // The stream retries transient errors itself; it only waits for messages.
                let Ok(next) =
                    tokio::time::timeout(Duration::from_millis(500), stream.next()).await
                else {
                    continue;
                };
                let message = match next.expect("the stream never ends") {
                    Ok(message) => message,
                    Err(err) => {
                        // Reported, and the stream goes on.
                        eprintln!("restart: the stream reported {err}");
                        log.poll_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                log.delivered(2, message.id);
            }
            // Acknowledges the last message; a lease lost meanwhile just means it comes again.
            if let Err(err) = stream.close().await {
                eprintln!("restart: closing the stream: {err}");
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = log.published.lock().unwrap().len();
    let first_start = server_started_at(&queue).await;
    let started = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "`{command}` failed: {status}");
    let restart_took = started.elapsed();
    let last_before = log.published.lock().unwrap().iter().copied().max();
    log.resume_after
        .store(last_before.unwrap_or(0), Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    publishing.store(false, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let published: Vec<i64> = log.published.lock().unwrap().clone();
    let after = published.len() - before;

    // Drain: every acknowledged publish must arrive, however many times the restart made a
    // lease run out.
    let drain_started = Instant::now();
    loop {
        let missing = {
            let received = log.received.lock().unwrap();
            published.iter().filter(|id| !received.contains(id)).count()
        };
        let stats = queue.group_stats("jobs", "workers").await;
        let idle = stats
            .as_ref()
            .is_ok_and(|s| s.ready == 0 && s.in_flight == 0 && s.lag == 0);
        if missing == 0 && idle {
            break;
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(60),
            "{missing} acknowledged publishes were never delivered; group: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.consuming.store(false, Ordering::Relaxed);
    for consumer in consumers {
        tokio::time::timeout(limit, consumer)
            .await
            .expect("a consumer hung on the way out")
            .unwrap();
    }

    let resumed: Vec<usize> = log
        .resumed
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "restart: took {restart_took:?}; {} publishes returned Ok ({after} after the restart \
         began), 0 lost; failed calls: {} publish, {} poll, {} ack; longest call {} ms (limit {} ms); deliveries after the \
         restart per subscriber (2 pollers, 1 stream): {resumed:?}",
        published.len(),
        log.publish_errors.load(Ordering::Relaxed),
        log.poll_errors.load(Ordering::Relaxed),
        log.ack_errors.load(Ordering::Relaxed),
        log.longest_ms.load(Ordering::Relaxed),
        limit.as_millis(),
    );
    assert!(after > 0, "publishing resumed after the restart");
    assert_ne!(
        server_started_at(&queue).await,
        first_start,
        "`{command}` did not restart the server of DATABASE_URL"
    );
    assert!(
        resumed.iter().all(|n| *n > 0),
        "every subscriber resumed without being recreated: {resumed:?}"
    );
    let stats = queue.group_stats("jobs", "workers").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.dead), (0, 0, 0));
}

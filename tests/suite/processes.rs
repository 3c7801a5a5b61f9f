//! Consumer processes of one group: every message delivered exactly once without crashes, and
//! nothing lost while consumers are killed with SIGKILL over and over.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dabgent_mq::sea_orm::{ConnectionTrait, Statement};
use dabgent_mq::{Message, MessageQueue};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::common::{self, TestDb};

const WORKER: &str = env!("CARGO_BIN_EXE_dabgent-mq-test-worker");

/// Messages each test publishes.
const TOTAL: usize = 20_000;

/// A scratch folder for the workers' id files, fresh for each test.
fn scratch_dir(db: &TestDb) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("processes_{}", db.name.replace(['/', '.'], "_")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a worker process of group `workers` on stream `jobs`; `extra` adds flags.
fn spawn_worker(db: &TestDb, tasks: usize, out: &Path, extra: &[&str]) -> Child {
    let db_flag = if common::is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    Command::new(WORKER)
        .args(["--db", db_flag, "--url", &db.url])
        .args(["--stream", "jobs", "--group", "workers"])
        .args([
            "--tasks",
            &tasks.to_string(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_success(child: &mut Child, limit: Duration) {
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .expect("a worker hung")
        .unwrap();
    assert!(status.success(), "worker failed: {status}");
}

/// How often each id occurs in the given files (one id per line).
fn count_ids(files: &[PathBuf]) -> HashMap<i64, usize> {
    let mut seen = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            *seen.entry(line.parse().unwrap()).or_default() += 1;
        }
    }
    seen
}

async fn publish_jobs(queue: &MessageQueue, from: usize, count: usize) -> Vec<i64> {
    let batch = (from..from + count)
        .map(|n| Message::new("jobs", "job.run", json!({ "n": n })))
        .collect();
    queue.publish_batch(batch).await.unwrap()
}

async fn assert_group_drained(queue: &MessageQueue) {
    let stats = queue.group_stats("jobs", "workers").await.unwrap();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.dead, stats.lag),
        (0, 0, 0, 0),
        "the group still holds work: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_processes_of_one_group_deliver_every_message_exactly_once() {
    // 4 processes x 4 tasks on PostgreSQL; SQLite has one writer at a time, so 2 x 2.
    let (processes, tasks) = if common::is_postgres() {
        (4, 4)
    } else {
        (2, 2)
    };
    let (queue, db) = common::queue("processes_exactly_once").await;
    queue.create_stream("jobs").await.unwrap();
    let mut ids = Vec::with_capacity(TOTAL);
    for chunk in 0..TOTAL / 1000 {
        ids.extend(publish_jobs(&queue, chunk * 1000, 1000).await);
    }

    let dir = scratch_dir(&db);
    let files: Vec<PathBuf> = (0..processes)
        .map(|p| dir.join(format!("worker-{p}.ids")))
        .collect();
    let received_files: Vec<PathBuf> = (0..processes)
        .map(|p| dir.join(format!("worker-{p}.received")))
        .collect();
    let mut children: Vec<Child> = files
        .iter()
        .zip(&received_files)
        .map(|(out, received)| {
            let received = received.to_str().unwrap();
            let flags = ["--idle-ms", "2000", "--batch", "10", "--received", received];
            spawn_worker(&db, tasks, out, &flags)
        })
        .collect();
    for child in &mut children {
        wait_success(child, Duration::from_secs(240)).await;
    }

    // Received, not only acknowledged: a message leased to two members at once would show
    // here even though the fenced ack of one of them failed.
    let received = count_ids(&received_files);
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    let seen = count_ids(&files);
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {duplicates:?}"
    );
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(seen.len(), TOTAL, "only published ids were delivered");
    let per_process: Vec<usize> = files
        .iter()
        .map(|f| count_ids(std::slice::from_ref(f)).len())
        .collect();
    eprintln!(
        "exactly once: {processes} processes x {tasks} tasks, {TOTAL} published, {} delivered \
         once each, per process {per_process:?}",
        seen.len()
    );
    assert!(
        per_process.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_process:?}"
    );
    assert_group_drained(&queue).await;
}

/// One consumer process slot of the crash loop: the running child and the files of every
/// process that ran in the slot.
struct Slot {
    child: Child,
    pid: u32,
    acked: PathBuf,
    received: PathBuf,
    lost: PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_killed_with_sigkill_every_second_or_two_lose_nothing() {
    const KILL_WINDOW: Duration = Duration::from_secs(30);
    const VISIBILITY_MS: &str = "4000";
    let (processes, tasks) = if common::is_postgres() {
        (4, 2)
    } else {
        (2, 2)
    };
    let (queue, db) = common::queue("processes_crash_loop").await;
    queue.create_stream("jobs").await.unwrap();
    let dir = scratch_dir(&db);

    // Publishing runs across the whole kill window, so consumers are always mid-batch.
    let publisher = tokio::spawn({
        let queue = queue.clone();
        async move {
            let batches = TOTAL / 100;
            let pace = KILL_WINDOW / u32::try_from(batches).unwrap();
            let mut ids = Vec::with_capacity(TOTAL);
            let start = Instant::now();
            for b in 0..batches {
                ids.extend(publish_jobs(&queue, b * 100, 100).await);
                tokio::time::sleep_until((start + pace * u32::try_from(b + 1).unwrap()).into())
                    .await;
            }
            ids
        }
    });

    // Each worker exits once idle for longer than a lease, so a killed member's leases have
    // expired and been taken over before the last one leaves.
    let flags = [
        "--idle-ms",
        "7000",
        "--batch",
        "10",
        "--visibility-ms",
        VISIBILITY_MS,
        "--max-attempts",
        "1000",
    ];
    let mut generation = 0;
    let start_slot = |generation: &mut usize| {
        *generation += 1;
        let acked = dir.join(format!("worker-{generation}.ids"));
        let received = dir.join(format!("worker-{generation}.received"));
        let lost = dir.join(format!("worker-{generation}.lost"));
        let mut extra = vec!["--received", received.to_str().unwrap()];
        extra.extend(["--lost", lost.to_str().unwrap()]);
        extra.extend(flags);
        let child = spawn_worker(&db, tasks, &acked, &extra);
        let pid = child.id().unwrap();
        Slot {
            child,
            pid,
            acked,
            received,
            lost,
        }
    };
    let mut slots: Vec<Slot> = (0..processes)
        .map(|_| start_slot(&mut generation))
        .collect();
    let mut finished: Vec<Slot> = Vec::new();

    let mut rng = u64::from(std::process::id()) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut kills = 0;
    // Messages whose lease a kill cut: the only ones that may be delivered twice (besides a
    // lease a live worker lost, which its refused ack records).
    let mut cut: HashSet<i64> = HashSet::new();
    let conn = queue.connection();
    while started.elapsed() < KILL_WINDOW {
        tokio::time::sleep(Duration::from_millis(1000 + next() % 1000)).await;
        let victim = usize::try_from(next() % processes as u64).unwrap();
        let slot = &mut slots[victim];
        slot.child.start_kill().unwrap();
        let status = slot.child.wait().await.unwrap();
        if status.code().is_some() {
            // It had already finished on its own (idle); nothing was cut.
            assert!(status.success(), "worker {} failed: {status}", slot.pid);
        } else {
            kills += 1;
        }
        // The dead process's leases stay in the database until they expire, and what it
        // received without acknowledging it was cut too.
        let held = conn
            .query_all_raw(Statement::from_string(
                conn.get_database_backend(),
                format!(
                    "SELECT message_id FROM mq_deliveries WHERE state = 1 \
                     AND consumer_id LIKE 'worker-{}-%'",
                    slot.pid
                ),
            ))
            .await
            .unwrap();
        cut.extend(
            held.iter()
                .map(|row| row.try_get_by_index::<i64>(0).unwrap()),
        );
        let acked_by_victim = count_ids(std::slice::from_ref(&slot.acked));
        cut.extend(
            count_ids(std::slice::from_ref(&slot.received))
                .into_keys()
                .filter(|id| !acked_by_victim.contains_key(id)),
        );
        let replacement = start_slot(&mut generation);
        finished.push(std::mem::replace(slot, replacement));
    }
    let ids = publisher.await.unwrap();
    assert_eq!(ids.len(), TOTAL);
    for slot in &mut slots {
        wait_success(&mut slot.child, Duration::from_secs(180)).await;
    }
    finished.extend(slots);
    assert_group_drained(&queue).await;

    let acked = count_ids(&finished.iter().map(|s| s.acked.clone()).collect::<Vec<_>>());
    let received = count_ids(
        &finished
            .iter()
            .map(|s| s.received.clone())
            .collect::<Vec<_>>(),
    );
    let acked_twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        acked_twice.is_empty(),
        "fenced acks succeeded twice: {acked_twice:?}"
    );
    // An id acknowledged by a process killed before it could write the line is acked in the
    // database (the drained group proves it) but missing from the files: it must at least
    // have been received.
    let mut unrecorded = 0;
    let mut lost = Vec::new();
    for id in &ids {
        if !acked.contains_key(id) {
            if received.contains_key(id) {
                unrecorded += 1;
            } else {
                lost.push(*id);
            }
        }
    }
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let lease_lost = count_ids(&finished.iter().map(|s| s.lost.clone()).collect::<Vec<_>>());
    let unexplained: Vec<_> = received
        .iter()
        .filter(|(id, n)| **n > 1 && !cut.contains(id) && !lease_lost.contains_key(id))
        .collect();
    eprintln!(
        "crash loop: {TOTAL} published, {} lost, {duplicates} duplicate deliveries \
         (bound: {} messages whose lease a kill cut, {} leases lost by live workers), \
         {kills} kills, {unrecorded} acked by a process killed before it recorded the ack",
        lost.len(),
        cut.len(),
        lease_lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(kills >= 10, "the loop killed {kills} processes");
    assert!(
        unexplained.is_empty(),
        "delivered again without a cut or lost lease: {unexplained:?}"
    );
    assert!(
        unrecorded <= kills * tasks,
        "{unrecorded} unrecorded acks from {kills} kills"
    );
}

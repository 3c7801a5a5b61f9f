//! Several consumer processes on one group: every message delivered exactly once, counted.

use std::collections::HashMap;
use std::time::Duration;

use dabgent_mq::Message;
use serde_json::json;

use crate::common;

const WORKER: &str = env!("CARGO_BIN_EXE_dabgent-mq-test-worker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_processes_of_one_group_deliver_every_message_exactly_once() {
    // 4 processes x 4 tasks on PostgreSQL; SQLite has one writer at a time, so 2 x 2.
    let (processes, tasks, total) = if common::is_postgres() {
        (4, 4, 5_000)
    } else {
        (2, 2, 2_000)
    };
    let (queue, db) = common::queue("processes_exactly_once").await;
    queue.create_stream("jobs").await.unwrap();
    let mut ids = Vec::with_capacity(total);
    for chunk in 0..total / 500 {
        let batch = (0..500)
            .map(|i| Message::new("jobs", "job.run", json!({"n": chunk * 500 + i})))
            .collect();
        ids.extend(queue.publish_batch(batch).await.unwrap());
    }

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("processes_{}", db.name.replace(['/', '.'], "_")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_flag = if common::is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut children = Vec::new();
    for p in 0..processes {
        let out = dir.join(format!("worker-{p}.ids"));
        children.push(
            tokio::process::Command::new(WORKER)
                .args([
                    "--db", db_flag, "--url", &db.url, "--stream", "jobs", "--group", "workers",
                ])
                .args([
                    "--tasks",
                    &tasks.to_string(),
                    "--out",
                    out.to_str().unwrap(),
                ])
                .args(["--idle-ms", "2000", "--batch", "10"])
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    for child in &mut children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("a worker hung")
            .unwrap();
        assert!(status.success(), "worker failed: {status}");
    }

    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut per_process = Vec::new();
    for p in 0..processes {
        let text = std::fs::read_to_string(dir.join(format!("worker-{p}.ids"))).unwrap_or_default();
        let mut n = 0;
        for line in text.lines() {
            *seen.entry(line.parse().unwrap()).or_default() += 1;
            n += 1;
        }
        per_process.push(n);
    }
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
    assert_eq!(seen.len(), total, "only published ids were delivered");
    eprintln!("deliveries per process: {per_process:?}");
    assert!(
        per_process.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {per_process:?}"
    );
    let stats = queue.group_stats("jobs", "workers").await.unwrap();
    assert_eq!((stats.ready, stats.in_flight, stats.lag), (0, 0, 0));
}

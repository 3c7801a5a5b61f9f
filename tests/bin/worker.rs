//! A consumer process for the multi-process tests (not part of the library's API).
//!
//! ```text
//! dabgent-mq-test-worker --db postgres --url URL --stream S --group G --tasks 4 \
//!     --out FILE [--received FILE] [--lost FILE] [--idle-ms 1500] [--batch 10] \
//!     [--visibility-ms 30000] [--max-attempts 5]
//! ```
//!
//! Runs `--tasks` subscribers of one group, with consumer ids `worker-<pid>-<task>`. Each
//! appends the id of every message to `--received` (if given) when it arrives and to `--out`
//! right after its `ack` returned, so a parent can count deliveries exactly, even across
//! SIGKILL; an ack refused because the lease was lost appends the id to `--lost`. Exits when no task has received anything for `--idle-ms`.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dabgent_mq::{DatabaseType, MessageQueue, MqError, QueueOptions, SubscribeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let get = |name: &str| -> Result<String, Box<dyn Error>> {
        args.get(name)
            .cloned()
            .ok_or_else(|| format!("missing --{name}").into())
    };
    let db_type = match get("db")?.as_str() {
        "postgres" => DatabaseType::Postgres,
        "sqlite" => DatabaseType::Sqlite,
        other => return Err(format!("unknown --db {other}").into()),
    };
    let tasks: usize = get("tasks")?.parse()?;
    let idle = Duration::from_millis(args.get("idle-ms").map_or(Ok(1500), |v| v.parse())?);
    let batch: u32 = args.get("batch").map_or(Ok(10), |v| v.parse())?;
    let visibility = Duration::from_millis(
        args.get("visibility-ms")
            .map_or(Ok(30_000), |v| v.parse())?,
    );
    let max_attempts: i32 = args.get("max-attempts").map_or(Ok(5), |v| v.parse())?;
    let stream = get("stream")?;
    let group = get("group")?;
    let out = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(get("out")?)?,
    ));
    let open = |name: &str| -> Result<Option<Arc<Mutex<std::fs::File>>>, std::io::Error> {
        args.get(name)
            .map(|path| {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Ok(Arc::new(Mutex::new(file)))
            })
            .transpose()
    };
    let received = open("received")?;
    let lost = open("lost")?;
    let pool = u32::try_from(tasks + 2)?;
    let queue =
        MessageQueue::with_options(db_type, &get("url")?, QueueOptions::new().pool_size(pool))
            .await?;

    let mut handles = Vec::new();
    for task in 0..tasks {
        let queue = queue.clone();
        let (stream, group, out) = (stream.clone(), group.clone(), out.clone());
        let (received, lost) = (received.clone(), lost.clone());
        handles.push(tokio::spawn(async move {
            let options = SubscribeOptions::new(stream)
                .group(group)
                .consumer_id(format!("worker-{}-{task}", std::process::id()))
                .batch_size(batch)
                .visibility_timeout(visibility)
                .poll_timeout(Duration::from_millis(250))
                .max_attempts(max_attempts);
            let mut sub = queue.subscribe_with_options(options).await?;
            let mut last_seen = Instant::now();
            loop {
                let messages = match sub.poll().await {
                    Ok(messages) => messages,
                    Err(err) if err.is_retryable() => {
                        eprintln!("worker: poll failed, retrying: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                if messages.is_empty() {
                    if last_seen.elapsed() >= idle {
                        return Ok(());
                    }
                    continue;
                }
                last_seen = Instant::now();
                if let Some(received) = &received {
                    let ids: String = messages.iter().map(|m| format!("{}\n", m.id)).collect();
                    append(received, &ids)?;
                }
                for message in messages {
                    match sub.ack(message.id).await {
                        Ok(()) => append(&out, &format!("{}\n", message.id))?,
                        Err(err) => {
                            eprintln!("worker: ack of {} failed: {err}", message.id);
                            if let (MqError::LeaseLost(id), Some(lost)) = (&err, &lost) {
                                append(lost, &format!("{id}\n"))?;
                            }
                        }
                    }
                }
            }
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// Appends `lines` with one `write` call, so a SIGKILL leaves whole lines behind.
fn append(file: &Mutex<std::fs::File>, lines: &str) -> dabgent_mq::Result<()> {
    let mut file = file
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    file.write_all(lines.as_bytes())
        .map_err(|e| dabgent_mq::MqError::InvalidConfig(e.to_string()))
}

fn parse_args() -> Result<HashMap<String, String>, Box<dyn Error>> {
    let mut args = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        args.insert(name.to_owned(), value);
    }
    Ok(args)
}

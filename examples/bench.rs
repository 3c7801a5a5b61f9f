//! Benchmark: the library against the same work in plain SQL, on SQLite and PostgreSQL.
//!
//! ```text
//! cargo run --release --example bench -- [--db sqlite|postgres|both] [--url URL] [--quick]
//!                                        [--rounds N] [--only SCENARIO[,SCENARIO...]] [--soak SECONDS]
//! ```
//!
//! Every scenario runs once through the library and once as plain SQL through
//! `sea_orm::sqlx` on an equivalent table (the baseline), interleaved (library, baseline,
//! library, baseline, ...) for several rounds on fresh tables, because this machine's disk
//! latency swings from minute to minute: only figures measured side by side compare. It prints
//! one machine-readable line per scenario,
//!
//! ```text
//! BENCH <db> <scenario> lib=<median> raw=<median> ratio=<r>
//! ```
//!
//! where a higher ratio is always better (lib/raw for throughput, raw/lib for latency and
//! cost), then a readable table with min-max ranges. `--quick` shrinks every scenario so that a
//! database takes well under two minutes; CI runs it to prove the benchmark still works.
//! `--soak SECONDS` (PostgreSQL) runs steady publish + consume and reports throughput and dead
//! tuples per minute instead.
//!
//! Without `--url`, PostgreSQL is `postgres://postgres@127.0.0.1:5432/postgres`; every run works
//! in a fresh schema that it drops at the end. SQLite runs in a fresh file in a temp folder.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dabgent_mq::sea_orm::sqlx::{
    self, AssertSqlSafe, Executor, PgPool, QueryBuilder, Row, SqlitePool,
    postgres::{PgListener, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use dabgent_mq::{DatabaseType, Message, MessageQueue, QueueOptions, SubscribeOptions};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POOL_SIZE: u32 = 20;

#[tokio::main]
async fn main() -> BoxResult<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child-replay") {
        return child_replay(&argv[2..]).await;
    }
    let args = Args::parse()?;
    if let Some(seconds) = args.soak {
        return soak(&args, seconds).await;
    }
    let mut all = Vec::new();
    for kind in &args.dbs {
        let env = Env::create(*kind, &args).await?;
        let results = run_all(&env, &args).await;
        env.drop_all().await;
        all.push((*kind, results?));
    }
    print_table(&all, &args);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Arguments and sizes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }
}

struct Args {
    dbs: Vec<Kind>,
    url: Option<String>,
    quick: bool,
    rounds: usize,
    soak: Option<u64>,
    /// Run only the scenarios whose name contains this.
    only: Option<String>,
}

impl Args {
    fn parse() -> BoxResult<Args> {
        let mut args = Args {
            dbs: vec![Kind::Sqlite, Kind::Postgres],
            url: None,
            quick: false,
            rounds: 5,
            soak: None,
            only: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => args.quick = true,
                "--db" => {
                    args.dbs = match it.next().as_deref() {
                        Some("sqlite") => vec![Kind::Sqlite],
                        Some("postgres") => vec![Kind::Postgres],
                        Some("both") => vec![Kind::Sqlite, Kind::Postgres],
                        other => {
                            return Err(format!("--db sqlite|postgres|both, not {other:?}").into());
                        }
                    }
                }
                "--url" => args.url = Some(it.next().ok_or("--url needs a value")?),
                "--rounds" => args.rounds = it.next().ok_or("--rounds needs a value")?.parse()?,
                "--soak" => args.soak = Some(it.next().ok_or("--soak needs seconds")?.parse()?),
                "--only" => args.only = Some(it.next().ok_or("--only needs a scenario name")?),
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        if args.rounds == 0 {
            return Err("--rounds must be at least 1".into());
        }
        Ok(args)
    }

    /// `full` normally, `quick` with `--quick`.
    fn size(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

// ---------------------------------------------------------------------------------------------
// Environment: a fresh schema (PostgreSQL) or file (SQLite), the library's queue and a raw pool
// ---------------------------------------------------------------------------------------------

enum Raw {
    Pg(PgPool),
    Lite(SqlitePool),
}

struct Env {
    kind: Kind,
    /// URL of the fresh database, for `MessageQueue`.
    url: String,
    raw: Raw,
    /// PostgreSQL: the fresh schema and an admin pool to drop it.
    schema: Option<(String, PgPool)>,
    /// SQLite: the temp folder.
    dir: Option<std::path::PathBuf>,
}

impl Env {
    async fn create(kind: Kind, args: &Args) -> BoxResult<Env> {
        match kind {
            Kind::Postgres => {
                let base = args
                    .url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PG_URL.to_owned());
                let admin = PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&base)
                    .await?;
                let schema = format!("dabgent_mq_bench_{}", std::process::id());
                admin
                    .execute(AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                    )))
                    .await?;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                let raw = PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .connect(&url)
                    .await?;
                let env = Env {
                    kind,
                    url,
                    raw: Raw::Pg(raw),
                    schema: Some((schema, admin)),
                    dir: None,
                };
                env.create_raw_tables().await?;
                Ok(env)
            }
            Kind::Sqlite => {
                let dir =
                    std::env::temp_dir().join(format!("dabgent_mq_bench_{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("bench.db");
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10));
                let raw = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await?;
                let env = Env {
                    kind,
                    url: format!("sqlite://{}", path.display()),
                    raw: Raw::Lite(raw),
                    schema: None,
                    dir: Some(dir),
                };
                env.create_raw_tables().await?;
                Ok(env)
            }
        }
    }

    fn db_type(&self) -> DatabaseType {
        match self.kind {
            Kind::Sqlite => DatabaseType::Sqlite,
            Kind::Postgres => DatabaseType::Postgres,
        }
    }

    /// A library queue on this environment's database, with the same pool size as the raw side.
    async fn queue(&self) -> BoxResult<MessageQueue> {
        let pool = match self.kind {
            Kind::Sqlite => 8,
            Kind::Postgres => POOL_SIZE,
        };
        Ok(MessageQueue::with_options(
            self.db_type(),
            &self.url,
            QueueOptions::new().pool_size(pool),
        )
        .await?)
    }

    /// The baseline's tables: the same columns and indexes as the library's log, and a plain
    /// job-queue table for the claim + delete baseline.
    async fn create_raw_tables(&self) -> BoxResult<()> {
        match &self.raw {
            Raw::Pg(pool) => {
                pool.execute(
                    "CREATE TABLE raw_messages (id BIGSERIAL PRIMARY KEY, stream_id BIGINT NOT NULL, \
                     stream_offset BIGINT NOT NULL, topic VARCHAR(255) NOT NULL, payload JSONB NOT NULL, \
                     priority INT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL, deliver_at BIGINT NOT NULL); \
                     CREATE UNIQUE INDEX ON raw_messages (stream_id, stream_offset); \
                     CREATE TABLE raw_queue (id BIGSERIAL PRIMARY KEY, topic VARCHAR(255) NOT NULL, \
                     payload JSONB NOT NULL, priority INT NOT NULL DEFAULT 0, state SMALLINT NOT NULL DEFAULT 0); \
                     CREATE INDEX ON raw_queue (priority DESC, id) WHERE state = 0;",
                )
                .await?;
            }
            Raw::Lite(pool) => {
                pool.execute(
                    "CREATE TABLE raw_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, stream_id INTEGER NOT NULL, \
                     stream_offset INTEGER NOT NULL, topic VARCHAR(255) NOT NULL, payload TEXT NOT NULL, \
                     priority INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, deliver_at INTEGER NOT NULL); \
                     CREATE UNIQUE INDEX raw_messages_offset ON raw_messages (stream_id, stream_offset); \
                     CREATE TABLE raw_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, topic VARCHAR(255) NOT NULL, \
                     payload TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, state INTEGER NOT NULL DEFAULT 0); \
                     CREATE INDEX raw_queue_ready ON raw_queue (priority DESC, id) WHERE state = 0;",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn truncate_raw(&self) -> BoxResult<()> {
        match &self.raw {
            Raw::Pg(pool) => {
                pool.execute("TRUNCATE raw_messages, raw_queue").await?;
            }
            Raw::Lite(pool) => {
                pool.execute("DELETE FROM raw_messages; DELETE FROM raw_queue")
                    .await?;
            }
        }
        Ok(())
    }

    async fn drop_all(self) {
        match self.raw {
            Raw::Pg(pool) => pool.close().await,
            Raw::Lite(pool) => pool.close().await,
        }
        if let Some((schema, admin)) = self.schema {
            let _ = admin
                .execute(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .await;
            admin.close().await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A JSON payload of about 200 bytes.
fn payload(n: usize) -> Value {
    json!({
        "order_id": format!("ord-{n:010}"),
        "customer": "customer-4711",
        "amount": 99.99,
        "currency": "EUR",
        "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}],
        "note": "x".repeat(40),
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

struct Measured {
    scenario: &'static str,
    unit: &'static str,
    better: Better,
    lib: Vec<f64>,
    raw: Vec<f64>,
    /// An absolute target, checked on the library's median, where the scenario has one.
    note: String,
}

impl Measured {
    fn new(scenario: &'static str, unit: &'static str, better: Better) -> Self {
        Measured {
            scenario,
            unit,
            better,
            lib: Vec::new(),
            raw: Vec::new(),
            note: String::new(),
        }
    }

    fn ratio(&self) -> f64 {
        let (lib, raw) = (median(&self.lib), median(&self.raw));
        match self.better {
            Better::Higher => lib / raw,
            Better::Lower => raw / lib,
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a rounded index into a short vector"
)]
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let at = ((v.len() - 1) as f64 * p).round() as usize;
    v[at.min(v.len() - 1)]
}

async fn run_all(env: &Env, args: &Args) -> BoxResult<Vec<Measured>> {
    let db = env.kind.name();
    eprintln!(
        "== {db}: {} rounds{}",
        args.rounds,
        if args.quick { ", quick" } else { "" }
    );
    // `--only` takes names or parts of names, separated by commas.
    let wants = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|part| name.contains(part)))
    };
    let mut all = Vec::new();
    if wants("publish_batch_1000") {
        all.push(publish_batch(env, args).await?);
    }
    if wants("publish_single_1task") {
        all.push(publish_single(env, args, 1).await?);
    }
    if wants("publish_single_8tasks") {
        all.push(publish_single(env, args, 8).await?);
    }
    if wants("e2e_batch100_4subs") {
        all.push(end_to_end(env, args, 100).await?);
    }
    if wants("e2e_batch1_4subs") {
        all.push(end_to_end(env, args, 1).await?);
    }
    if wants("latency_publish_to_receive") {
        all.extend(latency(env, args).await?);
    }
    if wants("claim_cost_1m_vs_1k_backlog") || wants("replay_1m_peak_rss_mb") {
        all.push(claim_cost(env, args).await?);
        // Replays the log the claim-cost scenario filled, before the next scenario empties it.
        all.push(replay_rss(env, args).await?);
    }
    if wants("payload_1mib") {
        all.push(payload_1mib(env, args).await?);
    }
    for m in &all {
        println!(
            "BENCH {db} {} lib={:.3} raw={:.3} ratio={:.3}",
            m.scenario,
            median(&m.lib),
            median(&m.raw),
            m.ratio()
        );
    }
    Ok(all)
}

/// Runs `lib` and `raw` alternately for every round, each on fresh tables.
async fn interleave<L, R, FL, FR>(
    env: &Env,
    args: &Args,
    m: &mut Measured,
    mut lib: L,
    mut raw: R,
) -> BoxResult<()>
where
    L: FnMut(MessageQueue, usize) -> FL,
    R: FnMut(usize) -> FR,
    FL: std::future::Future<Output = BoxResult<f64>>,
    FR: std::future::Future<Output = BoxResult<f64>>,
{
    for round in 0..args.rounds {
        let queue = fresh_queue(env).await?;
        m.lib.push(lib(queue, round).await?);
        env.truncate_raw().await?;
        m.raw.push(raw(round).await?);
        eprintln!(
            "   {} round {round}: lib {:.1} raw {:.1} {}",
            m.scenario, m.lib[round], m.raw[round], m.unit
        );
    }
    Ok(())
}

/// A queue on emptied library tables (the schema stays; rows from earlier rounds go).
async fn fresh_queue(env: &Env) -> BoxResult<MessageQueue> {
    let queue = env.queue().await?;
    let conn = queue.connection();
    use dabgent_mq::sea_orm::ConnectionTrait;
    match env.kind {
        Kind::Postgres => {
            conn.execute_unprepared(
                "TRUNCATE mq_consumers, mq_deliveries, mq_consumer_groups, mq_messages, mq_streams",
            )
            .await?;
        }
        Kind::Sqlite => {
            conn.execute_unprepared(
                "DELETE FROM mq_consumers; DELETE FROM mq_deliveries; DELETE FROM mq_consumer_groups; \
                 DELETE FROM mq_messages; DELETE FROM mq_streams;",
            )
            .await?;
        }
    }
    Ok(queue)
}

// ---------------------------------------------------------------------------------------------
// Raw statements
// ---------------------------------------------------------------------------------------------

/// One multi-row INSERT of `rows` messages into `raw_messages`, offsets from `next_offset`.
async fn raw_insert_batch(raw: &Raw, next_offset: &AtomicI64, rows: usize) -> BoxResult<()> {
    let first = next_offset.fetch_add(rows as i64, Ordering::Relaxed);
    let now = now_ms();
    let payloads: Vec<String> = (0..rows).map(|i| payload(i).to_string()).collect();
    match raw {
        Raw::Pg(pool) => {
            let mut qb: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(
                "INSERT INTO raw_messages (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) ",
            );
            qb.push_values(payloads.iter().enumerate(), |mut b, (i, p)| {
                b.push_bind(1i64)
                    .push_bind(first + i as i64)
                    .push_bind("order.created")
                    .push_bind(p.as_str())
                    .push_unseparated("::jsonb")
                    .push_bind(0i32)
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.build().execute(pool).await?;
        }
        Raw::Lite(pool) => {
            let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
                "INSERT INTO raw_messages (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) ",
            );
            qb.push_values(payloads.iter().enumerate(), |mut b, (i, p)| {
                b.push_bind(1i64)
                    .push_bind(first + i as i64)
                    .push_bind("order.created")
                    .push_bind(p.as_str())
                    .push_bind(0i32)
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.build().execute(pool).await?;
        }
    }
    Ok(())
}

/// One single-row INSERT (autocommit) of a message with the given payload text.
async fn raw_insert_one(raw: &Raw, offset: i64, payload: &str) -> BoxResult<()> {
    let now = now_ms();
    match raw {
        Raw::Pg(pool) => {
            sqlx::query(
                "INSERT INTO raw_messages (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) \
                 VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
            )
            .bind(1i64)
            .bind(offset)
            .bind("order.created")
            .bind(payload)
            .bind(0i32)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?;
        }
        Raw::Lite(pool) => {
            sqlx::query(
                "INSERT INTO raw_messages (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(1i64)
            .bind(offset)
            .bind("order.created")
            .bind(payload)
            .bind(0i32)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Fills `raw_queue` with `n` jobs.
async fn raw_fill_queue(raw: &Raw, n: usize) -> BoxResult<()> {
    for chunk_start in (0..n).step_by(1000) {
        let rows = (n - chunk_start).min(1000);
        let payloads: Vec<String> = (0..rows)
            .map(|i| payload(chunk_start + i).to_string())
            .collect();
        match raw {
            Raw::Pg(pool) => {
                let mut qb: QueryBuilder<sqlx::Postgres> =
                    QueryBuilder::new("INSERT INTO raw_queue (topic, payload, priority) ");
                qb.push_values(payloads.iter(), |mut b, p| {
                    b.push_bind("order.created")
                        .push_bind(p.as_str())
                        .push_unseparated("::jsonb")
                        .push_bind(0i32);
                });
                qb.build().execute(pool).await?;
            }
            Raw::Lite(pool) => {
                let mut qb: QueryBuilder<sqlx::Sqlite> =
                    QueryBuilder::new("INSERT INTO raw_queue (topic, payload, priority) ");
                qb.push_values(payloads.iter(), |mut b, p| {
                    b.push_bind("order.created")
                        .push_bind(p.as_str())
                        .push_bind(0i32);
                });
                qb.build().execute(pool).await?;
            }
        }
    }
    Ok(())
}

/// The baseline claim + delete: returns how many jobs it took (0 when empty).
async fn raw_claim_delete(raw: &Raw, batch: i64) -> BoxResult<usize> {
    match raw {
        Raw::Pg(pool) => {
            let rows = sqlx::query(
                "WITH c AS (SELECT id FROM raw_queue WHERE state = 0 ORDER BY priority DESC, id \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE raw_queue q SET state = 1 FROM c WHERE q.id = c.id RETURNING q.id, q.payload",
            )
            .bind(batch)
            .fetch_all(pool)
            .await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
            if !ids.is_empty() {
                sqlx::query("DELETE FROM raw_queue WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(pool)
                    .await?;
            }
            Ok(ids.len())
        }
        Raw::Lite(pool) => {
            let rows = sqlx::query(
                "UPDATE raw_queue SET state = 1 WHERE id IN (SELECT id FROM raw_queue WHERE state = 0 \
                 ORDER BY priority DESC, id LIMIT ?) RETURNING id, payload",
            )
            .bind(batch)
            .fetch_all(pool)
            .await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
            if !ids.is_empty() {
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM raw_queue WHERE id IN ({list})"
                )))
                .execute(pool)
                .await?;
            }
            Ok(ids.len())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

async fn publish_batch(env: &Env, args: &Args) -> BoxResult<Measured> {
    let batches = args.size(30, 5);
    let mut m = Measured::new("publish_batch_1000", "msg/s", Better::Higher);
    interleave(
        env,
        args,
        &mut m,
        |queue, _| async move {
            queue.create_stream("bench").await?;
            let started = Instant::now();
            for b in 0..batches {
                let msgs = (0..1000)
                    .map(|i| Message::new("bench", "order.created", payload(b * 1000 + i)));
                queue.publish_batch(msgs.collect()).await?;
            }
            Ok((batches * 1000) as f64 / started.elapsed().as_secs_f64())
        },
        |_| async move {
            let next = AtomicI64::new(1);
            let started = Instant::now();
            for _ in 0..batches {
                raw_insert_batch(&env.raw, &next, 1000).await?;
            }
            Ok((batches * 1000) as f64 / started.elapsed().as_secs_f64())
        },
    )
    .await?;
    Ok(m)
}

async fn publish_single(env: &Env, args: &Args, tasks: usize) -> BoxResult<Measured> {
    let total = if tasks == 1 {
        args.size(2000, 300)
    } else {
        args.size(6000, 1200)
    };
    let per_task = total / tasks;
    let name = if tasks == 1 {
        "publish_single_1task"
    } else {
        "publish_single_8tasks"
    };
    let mut m = Measured::new(name, "msg/s", Better::Higher);
    interleave(
        env,
        args,
        &mut m,
        |queue, _| async move {
            queue.create_stream("bench").await?;
            let started = Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let queue = queue.clone();
                handles.push(tokio::spawn(async move {
                    for i in 0..per_task {
                        queue
                            .publish("bench", "order.created", payload(t * per_task + i))
                            .await?;
                    }
                    Ok::<_, dabgent_mq::MqError>(())
                }));
            }
            for h in handles {
                h.await??;
            }
            Ok((per_task * tasks) as f64 / started.elapsed().as_secs_f64())
        },
        |_| async move {
            let next = Arc::new(AtomicI64::new(1));
            let started = Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let raw = match &env.raw {
                    Raw::Pg(p) => Raw::Pg(p.clone()),
                    Raw::Lite(p) => Raw::Lite(p.clone()),
                };
                let next = next.clone();
                handles.push(tokio::spawn(async move {
                    for i in 0..per_task {
                        let text = payload(t * per_task + i).to_string();
                        let offset = next.fetch_add(1, Ordering::Relaxed);
                        raw_insert_one(&raw, offset, &text).await?;
                    }
                    Ok::<_, Box<dyn Error + Send + Sync>>(())
                }));
            }
            for h in handles {
                h.await??;
            }
            Ok((per_task * tasks) as f64 / started.elapsed().as_secs_f64())
        },
    )
    .await?;
    Ok(m)
}

/// End to end: publish `total` messages in batches of 1,000, then 4 subscribers of one group
/// poll + ack until all are consumed; timed from the first publish to the last ack. The
/// baseline does the same with multi-row INSERTs into a job table and claim + delete with 4
/// workers. (The library fills a group's delivery rows lazily, at its first claim, so timing
/// only the consumption would charge it for work the baseline does before the clock starts.)
async fn end_to_end(env: &Env, args: &Args, batch: u32) -> BoxResult<Measured> {
    let total = if batch == 1 {
        args.size(3000, 400)
    } else {
        args.size(40_000, 4000)
    };
    let name = if batch == 1 {
        "e2e_batch1_4subs"
    } else {
        "e2e_batch100_4subs"
    };
    let mut m = Measured::new(name, "msg/s", Better::Higher);
    interleave(
        env,
        args,
        &mut m,
        |queue, _| async move {
            queue.create_stream("bench").await?;
            let started = Instant::now();
            for start in (0..total).step_by(1000) {
                let n = (total - start).min(1000);
                let msgs =
                    (0..n).map(|i| Message::new("bench", "order.created", payload(start + i)));
                queue.publish_batch(msgs.collect()).await?;
            }
            let mut subs = Vec::new();
            for i in 0..4 {
                subs.push(
                    queue
                        .subscribe_with_options(
                            SubscribeOptions::new("bench")
                                .consumer_id(format!("bench-{i}"))
                                .batch_size(batch)
                                .poll_timeout(Duration::ZERO),
                        )
                        .await?,
                );
            }
            let consumed = Arc::new(AtomicUsize::new(0));
            let mut handles = Vec::new();
            for mut sub in subs {
                let consumed = consumed.clone();
                handles.push(tokio::spawn(async move {
                    loop {
                        let msgs = sub.poll().await?;
                        if msgs.is_empty() {
                            if consumed.load(Ordering::Relaxed) >= total {
                                return Ok::<_, dabgent_mq::MqError>(());
                            }
                            continue;
                        }
                        let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
                        if ids.len() == 1 {
                            sub.ack(ids[0]).await?;
                        } else {
                            sub.ack_batch(&ids).await?;
                        }
                        consumed.fetch_add(ids.len(), Ordering::Relaxed);
                    }
                }));
            }
            for h in handles {
                h.await??;
            }
            Ok(total as f64 / started.elapsed().as_secs_f64())
        },
        |_| async move {
            let started = Instant::now();
            raw_fill_queue(&env.raw, total).await?;
            let consumed = Arc::new(AtomicUsize::new(0));
            let mut handles = Vec::new();
            for _ in 0..4 {
                let raw = match &env.raw {
                    Raw::Pg(p) => Raw::Pg(p.clone()),
                    Raw::Lite(p) => Raw::Lite(p.clone()),
                };
                let consumed = consumed.clone();
                handles.push(tokio::spawn(async move {
                    loop {
                        let n = raw_claim_delete(&raw, i64::from(batch)).await?;
                        if n == 0 {
                            if consumed.load(Ordering::Relaxed) >= total {
                                return Ok::<_, Box<dyn Error + Send + Sync>>(());
                            }
                            continue;
                        }
                        consumed.fetch_add(n, Ordering::Relaxed);
                    }
                }));
            }
            for h in handles {
                h.await??;
            }
            Ok(total as f64 / started.elapsed().as_secs_f64())
        },
    )
    .await?;
    Ok(m)
}

/// Publish -> receive latency on an idle queue, p50 and p99, in milliseconds. The library: a
/// subscriber waiting in `poll` and a `publish`. The baseline: on PostgreSQL a bare INSERT +
/// NOTIFY received by a LISTEN connection; on SQLite an INSERT, an in-process wake-up and the
/// SELECT of the new row.
async fn latency(env: &Env, args: &Args) -> BoxResult<Vec<Measured>> {
    let samples = args.size(200, 40);
    let mut p50 = Measured::new("latency_publish_to_receive_p50", "ms", Better::Lower);
    let mut p99 = Measured::new("latency_publish_to_receive_p99", "ms", Better::Lower);
    for round in 0..args.rounds {
        let queue = fresh_queue(env).await?;
        let lib = lib_latencies(&queue, samples).await?;
        env.truncate_raw().await?;
        let raw = raw_latencies(env, samples).await?;
        p50.lib.push(percentile(&lib, 0.5));
        p50.raw.push(percentile(&raw, 0.5));
        p99.lib.push(percentile(&lib, 0.99));
        p99.raw.push(percentile(&raw, 0.99));
        eprintln!(
            "   latency round {round}: lib p50 {:.3} p99 {:.3}, raw p50 {:.3} p99 {:.3} ms",
            p50.lib[round], p99.lib[round], p50.raw[round], p99.raw[round]
        );
    }
    if env.kind == Kind::Sqlite {
        let lib = median(&p50.lib);
        p50.note = format!(
            "target p50 <= 2 ms: {}",
            if lib <= 2.0 { "met" } else { "MISSED" }
        );
    } else {
        for m in [&mut p50, &mut p99] {
            let ratio = m.ratio();
            m.note = format!(
                "target ratio >= 0.333: {}",
                if ratio >= 1.0 / 3.0 { "met" } else { "MISSED" }
            );
        }
    }
    Ok(vec![p50, p99])
}

async fn lib_latencies(queue: &MessageQueue, samples: usize) -> BoxResult<Vec<f64>> {
    queue.create_stream("latency").await?;
    let mut sub = queue
        .subscribe_with_options(
            SubscribeOptions::new("latency").poll_timeout(Duration::from_secs(10)),
        )
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let waiter = tokio::spawn(async move {
        let mut got = 0;
        while got < samples {
            let msgs = sub.poll().await?;
            let at = Instant::now();
            for m in &msgs {
                sub.ack(m.id).await?;
                let _ = tx.send(at);
                got += 1;
            }
        }
        Ok::<_, dabgent_mq::MqError>(())
    });
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let started = Instant::now();
        queue.publish("latency", "ping", json!({"i": i})).await?;
        let received = rx.recv().await.ok_or("subscriber stopped")?;
        out.push(received.saturating_duration_since(started).as_secs_f64() * 1000.0);
    }
    waiter.await??;
    Ok(out)
}

async fn raw_latencies(env: &Env, samples: usize) -> BoxResult<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    match &env.raw {
        Raw::Pg(pool) => {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen("bench_raw").await?;
            for i in 0..samples {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let started = Instant::now();
                sqlx::query(
                    "WITH i AS (INSERT INTO raw_queue (topic, payload) VALUES ('ping', $1::jsonb) RETURNING id) \
                     SELECT pg_notify('bench_raw', id::text) FROM i",
                )
                .bind(json!({"i": i}).to_string())
                .execute(pool)
                .await?;
                listener.recv().await?;
                out.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Raw::Lite(pool) => {
            let notify = Arc::new(Notify::new());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let waiter = {
                let (pool, notify) = (pool.clone(), notify.clone());
                tokio::spawn(async move {
                    let mut last = 0i64;
                    for _ in 0..samples {
                        loop {
                            let notified = notify.notified();
                            let row = sqlx::query("SELECT id, payload FROM raw_queue WHERE id > ? ORDER BY id LIMIT 1")
                                .bind(last)
                                .fetch_optional(&pool)
                                .await?;
                            if let Some(row) = row {
                                last = row.get::<i64, _>(0);
                                let _ = tx.send(Instant::now());
                                break;
                            }
                            notified.await;
                        }
                    }
                    Ok::<_, Box<dyn Error + Send + Sync>>(())
                })
            };
            for i in 0..samples {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let started = Instant::now();
                sqlx::query("INSERT INTO raw_queue (topic, payload) VALUES ('ping', ?)")
                    .bind(json!({"i": i}).to_string())
                    .execute(pool)
                    .await?;
                notify.notify_waiters();
                let received = rx.recv().await.ok_or("waiter stopped")?;
                out.push(received.saturating_duration_since(started).as_secs_f64() * 1000.0);
            }
            waiter.await??;
        }
    }
    Ok(out)
}

/// Per-claim time with a large ready backlog against a small one, both through the library:
/// the claim must not get slower as the backlog grows. `lib` is the large backlog's ms per
/// claim, `raw` the small one's.
async fn claim_cost(env: &Env, args: &Args) -> BoxResult<Measured> {
    let big = args.size(1_000_000, 100_000);
    let small = 1000;
    let claims = args.size(200, 100);
    let name = "claim_cost_1m_vs_1k_backlog";
    let mut m = Measured::new(name, "ms/claim", Better::Lower);
    let queue = fresh_queue(env).await?;
    queue.create_stream("big").await?;
    queue.create_stream("small").await?;
    let started = Instant::now();
    for start in (0..big).step_by(1000) {
        let msgs = (0..1000).map(|i| Message::new("big", "order.created", payload(start + i)));
        queue.publish_batch(msgs.collect()).await?;
    }
    eprintln!("   {name}: published {big} in {:.1?}", started.elapsed());
    let options = |stream: &str| {
        SubscribeOptions::new(stream)
            .batch_size(1)
            .poll_timeout(Duration::ZERO)
            .visibility_timeout(Duration::from_secs(600))
    };
    let mut big_sub = queue.subscribe_with_options(options("big")).await?;
    let started = Instant::now();
    big_sub.poll().await?; // materializes the backlog's delivery rows
    eprintln!(
        "   {name}: materialized {big} delivery rows in {:.1?}",
        started.elapsed()
    );
    let mut small_sub = queue.subscribe_with_options(options("small")).await?;
    for round in 0..args.rounds {
        // Top the small backlog up to `small` ready messages.
        let msgs = (0..claims).map(|i| Message::new("small", "order.created", payload(i)));
        queue.publish_batch(msgs.collect()).await?;
        if round == 0 {
            let msgs =
                (0..small - claims).map(|i| Message::new("small", "order.created", payload(i)));
            queue.publish_batch(msgs.collect()).await?;
        }
        small_sub.poll().await.map(|v| v.len())?; // materialize outside the timing
        m.lib.push(time_claims(&mut big_sub, claims).await?);
        m.raw.push(time_claims(&mut small_sub, claims).await?);
        eprintln!(
            "   {name} round {round}: {big} ready {:.3} ms, {small} ready {:.3} ms per claim",
            m.lib[round], m.raw[round]
        );
    }
    let ratio = m.ratio();
    m.note = format!(
        "target ratio >= 0.667: {}",
        if ratio >= 1.0 / 1.5 { "met" } else { "MISSED" }
    );
    Ok(m)
}

async fn time_claims(sub: &mut dabgent_mq::Subscriber, claims: usize) -> BoxResult<f64> {
    let started = Instant::now();
    for _ in 0..claims {
        for msg in sub.poll().await? {
            sub.ack(msg.id).await?;
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / claims as f64)
}

/// 1 MiB payloads: the library publishes and consumes them, the baseline only INSERTs them.
async fn payload_1mib(env: &Env, args: &Args) -> BoxResult<Measured> {
    let count = args.size(30, 6);
    let blob = Value::String("x".repeat(1_048_576 - 64));
    let text = json!({"blob": blob}).to_string();
    let bytes = text.len() as f64;
    let mut m = Measured::new("payload_1mib", "MB/s", Better::Higher);
    let body: Value = serde_json::from_str(&text)?;
    let body = &body;
    let text = &text;
    interleave(
        env,
        args,
        &mut m,
        |queue, _| async move {
            queue.create_stream("blobs").await?;
            let mut sub = queue
                .subscribe_with_options(
                    SubscribeOptions::new("blobs")
                        .batch_size(1)
                        .poll_timeout(Duration::from_secs(5)),
                )
                .await?;
            let started = Instant::now();
            for _ in 0..count {
                queue.publish("blobs", "blob", body.clone()).await?;
                for msg in sub.poll().await? {
                    sub.ack(msg.id).await?;
                }
            }
            Ok(count as f64 * bytes / 1e6 / started.elapsed().as_secs_f64())
        },
        |_| async move {
            let started = Instant::now();
            for i in 0..count {
                raw_insert_one(&env.raw, i as i64 + 1, text).await?;
            }
            Ok(count as f64 * bytes / 1e6 / started.elapsed().as_secs_f64())
        },
    )
    .await?;
    Ok(m)
}

fn proc_status_kb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak RSS growth while replaying the whole log, in MB: the library's replay against a plain
/// sqlx row stream over the same rows. Each replay runs in a child process of its own (this
/// program, started with `--child-replay`), so that memory the benchmark used before cannot
/// hide or inflate the growth. The target is absolute: growth < 50 MB.
async fn replay_rss(env: &Env, args: &Args) -> BoxResult<Measured> {
    let total = args.size(1_000_000, 100_000);
    let mut m = Measured::new("replay_1m_peak_rss_mb", "MB", Better::Lower);
    // The claim-cost scenario left `total` messages in the stream "big"; replay them.
    let exe = std::env::current_exe()?;
    let child = |side: &'static str| {
        let exe = exe.clone();
        let url = env.url.clone();
        let kind = env.kind.name();
        async move {
            let out = tokio::process::Command::new(exe)
                .args(["--child-replay", kind, &url, side, &total.to_string()])
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                return Err(format!(
                    "replay child failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let growth = text
                .lines()
                .find_map(|l| l.strip_prefix("RSS_GROWTH_MB "))
                .ok_or("replay child printed no result")?
                .trim()
                .parse::<f64>()?;
            Ok::<f64, Box<dyn Error + Send + Sync>>(growth)
        }
    };
    for round in 0..args.rounds.min(3) {
        m.lib.push(child("lib").await?);
        m.raw.push(child("raw").await?);
        eprintln!(
            "   replay round {round}: lib +{:.1} MB, raw +{:.1} MB",
            m.lib[round], m.raw[round]
        );
    }
    let lib = median(&m.lib);
    m.note = format!(
        "target growth < 50 MB: {}",
        if lib < 50.0 { "met" } else { "MISSED" }
    );
    Ok(m)
}

/// The child side of [`replay_rss`]: connects, reads the first page (so that connection and
/// statement caches exist), then replays everything and prints the growth of peak RSS.
async fn child_replay(argv: &[String]) -> BoxResult<()> {
    let [kind, url, side, total] = argv else {
        return Err("--child-replay <sqlite|postgres> <url> <lib|raw> <total>".into());
    };
    let total: usize = total.parse()?;
    let db_type = if kind == "postgres" {
        DatabaseType::Postgres
    } else {
        DatabaseType::Sqlite
    };
    let queue = MessageQueue::with_options(
        db_type,
        url,
        QueueOptions::new().pool_size(2).run_migrations(false),
    )
    .await?;
    let sql = "SELECT m.id, m.stream_offset, m.topic, m.payload, m.priority, m.created_at \
               FROM mq_messages m JOIN mq_streams s ON s.id = m.stream_id \
               WHERE s.name = 'big' ORDER BY m.stream_offset";
    let pg = (db_type == DatabaseType::Postgres)
        .then(|| queue.connection().get_postgres_connection_pool().clone());
    let lite = (db_type == DatabaseType::Sqlite)
        .then(|| queue.connection().get_sqlite_connection_pool().clone());
    // Warm up: the first page, then measure from here.
    let mut warm = queue.stream("big").batch_size(1000).build();
    warm.next().await.ok_or("empty stream")??;
    drop(warm);
    let before = proc_status_kb("VmRSS:").ok_or("no VmRSS")?;
    std::fs::write("/proc/self/clear_refs", "5")?;
    let mut n = 0usize;
    if side == "lib" {
        let mut replay = queue.stream("big").from_offset(1).batch_size(1000).build();
        while let Some(msg) = replay.next().await {
            std::hint::black_box(msg?);
            n += 1;
        }
    } else if let Some(pool) = pg {
        let mut rows = sqlx::query(sql).fetch(&pool);
        while let Some(row) = rows.next().await {
            std::hint::black_box(row?);
            n += 1;
        }
    } else if let Some(pool) = lite {
        let mut rows = sqlx::query(sql).fetch(&pool);
        while let Some(row) = rows.next().await {
            std::hint::black_box(row?);
            n += 1;
        }
    }
    if n < total {
        return Err(format!("replayed {n} of {total}").into());
    }
    let peak = proc_status_kb("VmHWM:").ok_or("no VmHWM")?;
    println!("RSS_GROWTH_MB {:.3}", ((peak - before) / 1024.0).max(0.0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn target(db: Kind, scenario: &str) -> &'static str {
    match (db, scenario) {
        (_, "publish_batch_1000") => ">= 0.85",
        (_, "publish_single_1task") => ">= 0.70",
        (_, "publish_single_8tasks") => ">= 1.00",
        (_, "e2e_batch100_4subs") => ">= 0.70",
        (_, "e2e_batch1_4subs") => ">= 0.80",
        // "Within 3x of a bare INSERT + NOTIFY", read as holding for both percentiles.
        (Kind::Postgres, "latency_publish_to_receive_p50" | "latency_publish_to_receive_p99") => {
            ">= 0.333"
        }
        (Kind::Sqlite, "latency_publish_to_receive_p50") => "p50 <= 2 ms",
        (_, "claim_cost_1m_vs_1k_backlog") => ">= 0.667",
        (_, "payload_1mib") => ">= 0.60",
        (_, "replay_1m_peak_rss_mb") => "< 50 MB",
        _ => "-",
    }
}

/// The least ratio a throughput scenario must reach; the scenarios with other kinds of
/// target check them where they are measured.
fn min_ratio(scenario: &str) -> Option<f64> {
    match scenario {
        "publish_batch_1000" => Some(0.85),
        "publish_single_1task" => Some(0.70),
        "publish_single_8tasks" => Some(1.00),
        "e2e_batch100_4subs" => Some(0.70),
        "e2e_batch1_4subs" => Some(0.80),
        "payload_1mib" => Some(0.60),
        _ => None,
    }
}

fn print_table(all: &[(Kind, Vec<Measured>)], args: &Args) {
    println!();
    println!(
        "dabgent_mq benchmark, {} rounds{}, {} cores",
        args.rounds,
        if args.quick { " (quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<9} {:<32} {:>24} {:>24} {:>7} {:>12}  unit",
        "db", "scenario", "library (min-max)", "plain SQL (min-max)", "ratio", "target"
    );
    let (mut targets, mut met) = (0, 0);
    for (db, results) in all {
        for m in results {
            let (lmin, lmax) = range(&m.lib);
            let (rmin, rmax) = range(&m.raw);
            let ratio = m.ratio();
            let note = match min_ratio(m.scenario) {
                Some(min) if m.note.is_empty() => format!(
                    "target ratio >= {min:.2}: {}",
                    if ratio >= min { "met" } else { "MISSED" }
                ),
                _ => m.note.clone(),
            };
            if !note.is_empty() {
                targets += 1;
                if note.ends_with(": met") {
                    met += 1;
                }
            }
            println!(
                "{:<9} {:<32} {:>24} {:>24} {:>7.3} {:>12}  {} {}",
                db.name(),
                m.scenario,
                format!("{:.2} ({:.2}-{:.2})", median(&m.lib), lmin, lmax),
                format!("{:.2} ({:.2}-{:.2})", median(&m.raw), rmin, rmax),
                ratio,
                target(*db, m.scenario),
                m.unit,
                note
            );
        }
    }
    println!("targets met: {met} of {targets}");
}

// ---------------------------------------------------------------------------------------------
// Soak
// ---------------------------------------------------------------------------------------------

/// Messages per second the soak publishes.
const SOAK_RATE: usize = 5000;

/// Steady publish + consume on PostgreSQL for `seconds`, reporting throughput and dead tuples
/// per minute; the last minute must reach 0.8 of the first.
async fn soak(args: &Args, seconds: u64) -> BoxResult<()> {
    let env = Env::create(Kind::Postgres, args).await?;
    let result = soak_in(&env, seconds).await;
    env.drop_all().await;
    result
}

async fn soak_in(env: &Env, seconds: u64) -> BoxResult<()> {
    let queue = env.queue().await?;
    queue.create_stream("soak").await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumed = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    // Publishers are paced: a queue fed faster than it is drained grows without bound, and
    // on two cores unpaced publishers would also starve the consumers of CPU. Two
    // publishers of batches of 100, each at half the rate.
    let per_publisher = Duration::from_secs_f64(200.0 / SOAK_RATE as f64);
    for p in 0..2 {
        let (queue, stop) = (queue.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut tick = tokio::time::interval(per_publisher);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let msgs = (0..100).map(|i| {
                    Message::new("soak", "order.created", payload(p * 1_000_000_000 + n + i))
                });
                queue.publish_batch(msgs.collect()).await?;
                n += 100;
            }
            Ok::<_, dabgent_mq::MqError>(())
        }));
    }
    for c in 0..4 {
        let (queue, stop, consumed) = (queue.clone(), stop.clone(), consumed.clone());
        handles.push(tokio::spawn(async move {
            let mut sub = queue
                .subscribe_with_options(
                    SubscribeOptions::new("soak")
                        .consumer_id(format!("soak-{c}"))
                        .batch_size(100)
                        .poll_timeout(Duration::from_millis(200)),
                )
                .await?;
            while !stop.load(Ordering::Relaxed) {
                let msgs = sub.poll().await?;
                if msgs.is_empty() {
                    continue;
                }
                let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
                sub.ack_batch(&ids).await?;
                consumed.fetch_add(ids.len(), Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let Raw::Pg(pool) = &env.raw else {
        return Err("soak runs on PostgreSQL".into());
    };
    let minutes = seconds.div_ceil(60).max(1);
    let mut per_minute = Vec::new();
    let mut last = 0usize;
    println!(
        "publishing {SOAK_RATE} msg/s; minute  consumed/s  dead tuples (deliveries, messages, groups, streams)"
    );
    for minute in 1..=minutes {
        let span = Duration::from_secs(seconds.min(60 * minute) - 60 * (minute - 1));
        tokio::time::sleep(span).await;
        let now = consumed.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / span.as_secs_f64();
        last = now;
        per_minute.push(rate);
        let rows = sqlx::query(
            "SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE schemaname = current_schema() \
             AND relname IN ('mq_deliveries', 'mq_messages', 'mq_consumer_groups', 'mq_streams')",
        )
        .fetch_all(pool)
        .await?;
        let dead: HashMap<String, i64> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect();
        println!(
            "{minute:>6}  {rate:>10.0}  {} {} {} {}",
            dead.get("mq_deliveries").unwrap_or(&0),
            dead.get("mq_messages").unwrap_or(&0),
            dead.get("mq_consumer_groups").unwrap_or(&0),
            dead.get("mq_streams").unwrap_or(&0)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await??;
    }
    let first = per_minute.first().copied().unwrap_or(0.0);
    let lastm = per_minute.last().copied().unwrap_or(0.0);
    let ratio = lastm / first;
    println!(
        "BENCH postgres soak_last_vs_first_minute lib={lastm:.0} raw={first:.0} ratio={ratio:.3}"
    );
    println!(
        "target: last minute >= 0.8 of the first: {}",
        if ratio >= 0.8 { "met" } else { "MISSED" }
    );
    Ok(())
}

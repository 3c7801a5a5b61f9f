//! Statements only PostgreSQL runs.
//!
//! Concurrency: publishers serialize per stream on the stream row's lock (taken by the
//! `UPDATE` in `backend::insert_messages` and held to commit); notifications are sent with
//! `pg_notify`, which PostgreSQL delivers only when the transaction commits.
//! Same function names, in the same order, as `sqlite.rs`.

use entity::delivery;
use sea_orm::sea_query::{Condition, Expr, ExprTrait};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement};

use super::NewMessage;
use super::delivery::{ClaimRequest, Claimed, sort_claimed};
use crate::error::MqError;

/// Epoch milliseconds by the server's clock. `statement_timestamp()` is fixed for one
/// statement, so every row of a multi-row insert gets the same time, and unlike `now()` it
/// does not stand still for the length of a transaction.
pub(crate) const NOW_MS: &str = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::bigint";

/// The head of the stream of the `mq_streams` row in scope, kept in the row by every publish
/// (which locks the row to assign offsets).
pub(crate) const HEAD: &str = "mq_streams.last_offset";

/// Channel of the wake-up notifications. The payload names the streams that received
/// messages.
pub(crate) const NOTIFY_CHANNEL: &str = "dabgent_mq";

/// Arbitrary constant key of the advisory lock that serializes concurrent `up` migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6461_6267_6d71; // "dabgmq"

/// Takes the migration lock for the rest of the transaction: a second process starting at the
/// same time waits here, then finds the migrations applied.
pub(crate) async fn lock_migrations<C: ConnectionTrait>(conn: &C) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK_KEY.into()],
    ))
    .await
    .map(drop)
}

/// Queues one notification for the transaction (delivered at commit, dropped on rollback).
pub(crate) async fn notify<C: ConnectionTrait>(conn: &C, payload: &str) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [NOTIFY_CHANNEL.into(), payload.into()],
    ))
    .await
    .map(drop)
}

/// The SQL form of a topic pattern, for `topic LIKE $n ESCAPE E'\\'`: the escape character and
/// LIKE's own wildcards (`\`, `%`, `_`) are escaped, then `*` becomes `%`.
pub(crate) fn pattern_to_sql(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '\\' | '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            '*' => out.push('%'),
            _ => out.push(c),
        }
    }
    out
}

/// Tests `topic` against the SQL form of a pattern, in the database, with the same operator the
/// claim uses.
pub(crate) async fn topic_matches<C: ConnectionTrait>(
    conn: &C,
    topic: &str,
    pattern: &str,
) -> Result<bool, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            r"SELECT ($1::text LIKE $2::text ESCAPE E'\\') AS m",
            [topic.into(), pattern_to_sql(pattern).into()],
        ))
        .await?;
    row.map_or(Ok(false), |row| row.try_get_by_index::<bool>(0))
}

/// Catches a group up with the head of its stream in one statement: advances its position
/// and inserts the delivery rows of every message it moved over. Returns whether it moved
/// the group (the log has every offset up to the head, so a move inserts at least one row).
///
/// Concurrency: the position is read and moved under the one row lock that the `UPDATE`
/// takes. A second catch-up of the group waits for that lock, then re-evaluates its `WHERE`
/// and `SET` on the row the first one left (PostgreSQL's EvalPlanQual), so it moves the
/// position only from where the first left it, and `RETURNING` hands the insert exactly the
/// range this statement moved over (`materialized_from` keeps the position it started from;
/// PostgreSQL 15 cannot return a column's old value otherwise). The statement waits for no
/// other lock while it holds this one. (An earlier form locked the row in a CTE with `FOR NO
/// KEY UPDATE` and then updated it through the version in the statement's snapshot; under
/// contention concurrent catch-ups deadlocked, and PostgreSQL failed one after a second.)
/// Delivery rows are inserted nowhere else, and always together with the move of the
/// position, so the insert cannot meet an existing row and needs no `ON CONFLICT` clause
/// (whose speculative insertion made a large catch-up about 1.6 times slower). The head and
/// the messages are read in the statement's snapshot, in which every offset up to the head is
/// visible, because a publisher moves the head in the same transaction as its messages.
///
/// Its commit does not wait for the disk (`synchronous_commit` off for this transaction
/// only): a catch-up can always be done again from the log, so a crash that loses it loses
/// nothing, and the claim that follows commits durably, which flushes the WAL past it.
pub(crate) async fn catch_up<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    stream_id: i64,
) -> Result<bool, MqError> {
    let sql = "WITH h AS ( \
            SELECT last_offset AS head FROM mq_streams WHERE id = $2 \
         ), relaxed AS ( \
            SELECT set_config('synchronous_commit', 'off', true) \
         ), u AS ( \
            UPDATE mq_consumer_groups c \
            SET materialized_from = c.materialized_offset, materialized_offset = h.head \
            FROM h, relaxed WHERE c.id = $1 AND c.materialized_offset < h.head \
            RETURNING c.materialized_from AS position, c.materialized_offset AS head \
         ) \
         INSERT INTO mq_deliveries \
            (group_id, message_id, stream_offset, priority, topic, state, attempts, \
             available_at) \
         SELECT $1, m.id, m.stream_offset, m.priority, m.topic, 0, 0, m.deliver_at \
         FROM u, mq_messages m \
         WHERE m.stream_id = $2 AND m.stream_offset > u.position \
           AND m.stream_offset <= u.head";
    let inserted = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [group_id.into(), stream_id.into()],
        ))
        .await?
        .rows_affected();
    Ok(inserted > 0)
}

/// Returns the group's expired leases to the ready set, or to the dead letters once they have
/// used `max_attempts`; returns how many.
///
/// Concurrency: the expired rows are picked and locked with `FOR UPDATE SKIP LOCKED`, so a
/// reaper never waits for a row: not for another member reaping at the same moment, nor for
/// an ack, lease extension or release that holds one (that row is left to it, or to the next
/// reap if it is still expired then). As a plain `UPDATE`, two statements that lock the same
/// rows in different orders (a reaper and a batch ack, or two reapers with different plans)
/// could deadlock, and PostgreSQL then fails one of them. The `UPDATE` reaches the rows by
/// `ctid`, which cannot change while the statement holds their locks, and re-checks that each
/// is still leased (see `claim` for a row changed between the snapshot and the lock).
pub(crate) async fn reap_expired<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    max_attempts: i32,
) -> Result<u64, MqError> {
    let sql = format!(
        "WITH e AS MATERIALIZED ( \
            SELECT ctid AS row_id FROM mq_deliveries \
            WHERE group_id = $1 AND state = 1 AND lease_expires_at <= {NOW_MS} \
            FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE mq_deliveries d \
         SET state = CASE WHEN d.attempts >= $2 THEN 2 ELSE 0 END, \
             lease_expires_at = NULL, consumer_id = NULL, available_at = {NOW_MS} \
         FROM e WHERE d.ctid = e.row_id AND d.state::integer = 1"
    );
    let result = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [group_id.into(), max_attempts.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Leases up to `req.limit` ready rows of the group and returns them with their messages, in
/// claim order, in one statement. With `caught_up_only`, it leases nothing unless the group
/// has materialized its stream's head (see `delivery::claim`). A picked row that has already
/// used `max_attempts` (released by a cleanup or a dropped subscriber rather than failed by
/// expiry or nack) becomes a dead letter instead of being delivered again; the second value
/// counts those (they come back without a message: the join does not detoast their payloads).
/// With `caught_up_only`, it picks only if the group is caught up with the head of its
/// stream; the third value says that it was not (then nothing was picked).
///
/// Concurrency: the `MATERIALIZED` CTE picks and locks candidate rows with `FOR UPDATE SKIP
/// LOCKED`, so concurrent claimers never wait for or share a row, and the CTE runs exactly
/// once (the `WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` form can claim more than
/// n rows, PostgreSQL bug #15715). The `UPDATE` reaches the picked rows by their physical
/// address (`ctid`), which cannot change while the statement holds their locks. A row that
/// another transaction changed and committed between this statement's snapshot and its lock
/// is locked in its newer version, which the snapshot does not see, so the `UPDATE` skips it:
/// it stays ready for the next claim. The `UPDATE` re-checks that each row is still ready
/// before leasing it and increments its lease token, which fences every later ack and
/// extension.
pub(crate) async fn claim<C: ConnectionTrait>(
    conn: &C,
    req: &ClaimRequest<'_>,
    caught_up_only: bool,
) -> Result<(Vec<Claimed>, usize, bool), MqError> {
    let mut values: Vec<sea_orm::Value> = vec![
        req.group_id.into(),
        req.from_offset.into(),
        req.visibility_ms.into(),
        req.consumer_id.into(),
        req.max_attempts.into(),
    ];
    let filter = topic_filter(req.sql_patterns, &mut values);
    // Three details keep the cost of a claim independent of the backlog and of the table's
    // statistics. The limit is written into the statement, not bound: with a bound LIMIT, the
    // generic plan of the prepared statement guesses thousands of rows and joins them to the
    // delivery table by hash. The `UPDATE` joins the picked rows by `ctid`, a TID lookup per
    // row: joined by key, a plan made while the table had no statistics (a new table, or one
    // autovacuum has not analyzed yet, and prepared statements keep that plan) scans the
    // group's whole primary key on every claim. And the re-check in the UPDATE is written
    // `state::integer = 0`, which the planner cannot match to the partial ready index.
    let limit = req.limit;
    // Uncorrelated, so it is planned as a one-time filter, evaluated once where it appears
    // (in the pick and in the marker), both times in the statement's snapshot: the snapshot in
    // which the rows are picked. So either rows are picked or, when the group is behind, one
    // marker row (state -1) says so and the caller need not read the position again.
    const CAUGHT_UP: &str = "EXISTS (SELECT 1 FROM mq_consumer_groups g JOIN mq_streams s \
               ON s.id = g.stream_id \
               WHERE g.id = $1 AND g.materialized_offset >= s.last_offset)";
    let (guard, marker) = if caught_up_only {
        (
            format!(" AND {CAUGHT_UP}"),
            format!(
                " UNION ALL SELECT (-1)::smallint, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
                    NULL, NULL, NULL WHERE NOT {CAUGHT_UP}"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let sql = format!(
        "WITH c AS MATERIALIZED ( \
            SELECT ctid AS row_id FROM mq_deliveries \
            WHERE group_id = $1 AND state = 0 AND available_at <= {NOW_MS} \
              AND stream_offset >= $2{filter}{guard} \
            ORDER BY priority DESC, stream_offset \
            LIMIT {limit} \
            FOR UPDATE SKIP LOCKED \
         ), u AS ( \
            UPDATE mq_deliveries d \
            SET state = CASE WHEN d.attempts >= $5 THEN 2 ELSE 1 END, \
                attempts = CASE WHEN d.attempts >= $5 THEN d.attempts ELSE d.attempts + 1 END, \
                lease_token = COALESCE(d.lease_token, 0) + 1, \
                lease_expires_at = CASE WHEN d.attempts >= $5 THEN NULL \
                                        ELSE {NOW_MS} + $3 END, \
                consumer_id = CASE WHEN d.attempts >= $5 THEN NULL ELSE $4 END \
            FROM c WHERE d.ctid = c.row_id AND d.state::integer = 0 \
            RETURNING d.message_id, d.state, d.attempts, d.lease_token \
         ) \
         SELECT u.state, m.id, m.stream_id, m.stream_offset, m.topic, m.payload, m.priority, \
                m.created_at, m.deliver_at, u.attempts, u.lease_token \
         FROM u LEFT JOIN mq_messages m ON m.id = u.message_id AND u.state = 1{marker}"
    );
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut buried = 0;
    let mut behind = false;
    for row in &rows {
        match row.try_get::<i16>("", "state")? {
            1 => {}
            -1 => {
                behind = true;
                continue;
            }
            _ => {
                buried += 1;
                continue;
            }
        }
        claimed.push(Claimed {
            message: entity::message::Model::from_query_result(row, "")?,
            attempts: row.try_get("", "attempts")?,
            lease_token: row.try_get("", "lease_token")?,
        });
    }
    // Sorted here rather than by the statement: the server has less to do, and that is the
    // side a group's members share.
    sort_claimed(&mut claimed);
    Ok((claimed, buried, behind))
}

/// The token shared by all of `leases`, if they share one.
fn common_token(leases: &[(i64, i64)]) -> Option<i64> {
    let (_, first) = *leases.first()?;
    leases.iter().all(|&(_, t)| t == first).then_some(first)
}

/// ` AND (topic LIKE $6 ESCAPE E'\\' OR ...)` for the patterns, binding them after `values`;
/// empty when every topic is wanted. The escape is written as an `E''` literal so that it
/// means one backslash whatever the server's `standard_conforming_strings`.
fn topic_filter(patterns: Option<&[String]>, values: &mut Vec<sea_orm::Value>) -> String {
    let Some(patterns) = patterns else {
        return String::new();
    };
    let mut filter = String::from(" AND (");
    for (i, pattern) in patterns.iter().enumerate() {
        if i > 0 {
            filter.push_str(" OR ");
        }
        values.push(pattern.as_str().into());
        filter.push_str(&format!(r"topic LIKE ${} ESCAPE E'\\'", values.len()));
    }
    filter.push(')');
    filter
}

/// A connection listening on [`NOTIFY_CHANNEL`], opened with the connect options of `pool`
/// (same server, credentials and search path) but outside it, so that it never takes one of
/// the pool's connections for itself.
pub(crate) async fn listen(
    pool: &sea_orm::sqlx::PgPool,
) -> Result<sea_orm::sqlx::postgres::PgListener, sea_orm::sqlx::Error> {
    let options = (*pool.connect_options()).clone();
    let own = sea_orm::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&own).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Appends one message in a single statement: `append_messages` with scalar parameters
/// instead of arrays. For a large payload the array costs the server a copy of it in each
/// direction (`text[]` in, `unnest` out): 10.5 ms against 9.4 ms for a plain INSERT of a
/// 1 MiB payload, measured. Same concurrency as `append_messages`. Returns the id, or `None` if
/// the stream does not exist (then nothing was written).
pub(crate) async fn append_one<C: ConnectionTrait>(
    conn: &C,
    message: &NewMessage,
    payload: String,
) -> Result<Option<i64>, MqError> {
    let sql = format!(
        "WITH s AS ( \
            UPDATE mq_streams SET last_offset = last_offset + 1 WHERE name = $1 \
            RETURNING id, last_offset, {NOW_MS} AS now \
         ), i AS ( \
            INSERT INTO mq_messages \
                (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) \
            SELECT s.id, s.last_offset, $2, $3::jsonb, $4, s.now, s.now + $5 FROM s \
            RETURNING id \
         ), n AS ( \
            SELECT pg_notify('{NOTIFY_CHANNEL}', $1) FROM s \
         ) \
         SELECT i.id, (SELECT count(*) FROM n) AS notified FROM i"
    );
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [
                message.stream.as_str().into(),
                message.topic.as_str().into(),
                payload.into(),
                message.priority.into(),
                message.delay_ms.into(),
            ],
        ))
        .await?;
    row.map(|row| row.try_get_by_index::<i64>(0))
        .transpose()
        .map_err(MqError::from)
}

/// Appends messages (two or more; one goes to `append_one`) to one stream in a single
/// statement, so that outside a transaction a
/// publish costs one round trip: the `UPDATE` reserves the offsets under the stream row's
/// lock (held to commit, which for this autocommit statement is its own end), the `INSERT`
/// writes the rows from arrays (one bind parameter per column, whatever the batch size), and
/// the notification is sent only if rows were written. Returns the ids in input order, or
/// `None` if the stream does not exist (then nothing was written). The ids come back as one
/// array in one row rather than a row per message, which the server sends and the driver
/// decodes one by one (batch publish of 1,000, lib alone, three interleaved pairs: 95-105k ->
/// 105-110k messages/s).
pub(crate) async fn append_messages<C: ConnectionTrait>(
    conn: &C,
    stream: &str,
    messages: &[NewMessage],
) -> Result<Option<Vec<i64>>, MqError> {
    let count = i64::try_from(messages.len()).unwrap_or(i64::MAX);
    let topics: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
    let payloads: Vec<String> = messages.iter().map(|m| m.payload.clone()).collect();
    let priorities: Vec<i32> = messages.iter().map(|m| m.priority).collect();
    let delays: Vec<i64> = messages.iter().map(|m| m.delay_ms).collect();
    let sql = format!(
        "WITH s AS ( \
            UPDATE mq_streams SET last_offset = last_offset + $2 WHERE name = $1 \
            RETURNING id, last_offset - $2 AS base, {NOW_MS} AS now \
         ), i AS ( \
            INSERT INTO mq_messages \
                (stream_id, stream_offset, topic, payload, priority, created_at, deliver_at) \
            SELECT s.id, s.base + v.ord, v.topic, v.payload::jsonb, v.priority, s.now, \
                   s.now + v.delay \
            FROM s, unnest($3::text[], $4::text[], $5::int4[], $6::int8[]) \
                 WITH ORDINALITY AS v(topic, payload, priority, delay, ord) \
            RETURNING id, stream_offset \
         ), n AS ( \
            SELECT pg_notify('{NOTIFY_CHANNEL}', $1) FROM s \
         ) \
         SELECT array_agg(i.id ORDER BY i.stream_offset) AS ids, \
                (SELECT count(*) FROM n) AS notified \
         FROM i"
    );
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [
                stream.into(),
                count.into(),
                topics.into(),
                payloads.into(),
                priorities.into(),
                delays.into(),
            ],
        ))
        .await?;
    // No rows were written (unknown stream): the aggregate over nothing is NULL.
    let ids = match row {
        Some(row) => row.try_get_by_index::<Option<Vec<i64>>>(0)?,
        None => None,
    };
    Ok(ids)
}

/// The rows still held under these exact leases, as the condition of the portable lease
/// statements (`delivery::extend_leases`, `delivery::release_leases`): `delivery::held_leases`
/// with its list of ids replaced by one array that reaches `= ANY` through a subquery. As in
/// `ack`, no plan made for the parameter values can then scan the group's whole primary key
/// instead (measured on a 40,000-row group without statistics: 5.0 ms per extension of 100
/// leases with the list of ids).
pub(crate) fn held_leases(leases: &[(i64, i64)]) -> Condition {
    let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
    Condition::all()
        .add(Expr::cust_with_values(
            "message_id = ANY(ARRAY(SELECT unnest($1::int8[])))",
            [sea_orm::Value::from(ids)],
        ))
        .add(
            Expr::tuple([
                Expr::col(delivery::Column::MessageId),
                Expr::col(delivery::Column::LeaseToken),
            ])
            .in_tuples(leases.iter().copied()),
        )
}

/// Deletes (acknowledges) the given leases and returns the message ids whose lease was still
/// held. One lease is deleted by its full primary key, which every plan finds with one index
/// lookup. Many travel as two arrays, so the statement has three bind parameters whatever the
/// batch size: with one parameter per id, PostgreSQL spends longer binding and planning an
/// ack of 100 messages than running it. The rows are found through the primary key with
/// `= ANY`, each row's token is compared with the token at its id's position, and the
/// `state::integer` check keeps the planner off the partial indexes (see `claim`). Joining the
/// arrays with `unnest` instead lets the planner hash-join the whole group.
///
/// The ids reach `= ANY` through a subquery, not as the parameter itself. PostgreSQL plans
/// the first five runs of a prepared statement on each connection for their parameter values;
/// seeing 100 ids on a table without statistics yet (a new deployment, until autovacuum
/// analyzes it), it scanned the whole group instead (5.0 ms instead of 0.3 ms per ack of 100
/// in a 40,000-row group). A subquery's result is unknown when planning, and the planner
/// assumes it is short (about ten rows), so it prefers looking the ids up in the primary key;
/// the test `settling_a_batch_costs_the_same_behind_a_large_backlog` checks that it does.
/// Rows are matched by their conditions, never by `ctid`. When the ack has to wait for a row
/// lock, PostgreSQL evaluates the whole `WHERE` clause again on the row's new version: a lease
/// extended meanwhile (same token) is still acknowledged, and a row released and claimed again
/// (new token) is skipped.
///
/// When every lease of the batch carries the same token, as on every first delivery, the token
/// is one scalar: `array_position` searches the id array once per row, a third of the cost of
/// acknowledging 100 messages.
pub(crate) async fn ack<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    leases: &[(i64, i64)],
) -> Result<Vec<i64>, MqError> {
    let statement = if let [(id, token)] = leases {
        Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM mq_deliveries \
             WHERE group_id = $1 AND message_id = $2 AND lease_token = $3 \
               AND state::integer = 1 \
             RETURNING message_id",
            [group_id.into(), (*id).into(), (*token).into()],
        )
    } else if let Some(token) = common_token(leases) {
        let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
        Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM mq_deliveries d \
             WHERE d.group_id = $1 AND d.message_id = ANY(ARRAY(SELECT unnest($2::int8[]))) \
               AND d.lease_token = $3 AND d.state::integer = 1 \
             RETURNING d.message_id",
            [group_id.into(), ids.into(), token.into()],
        )
    } else {
        let ids: Vec<i64> = leases.iter().map(|l| l.0).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.1).collect();
        Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM mq_deliveries d \
             WHERE d.group_id = $1 AND d.message_id = ANY(ARRAY(SELECT unnest($2::int8[]))) \
               AND d.lease_token = ($3::int8[])[array_position($2::int8[], d.message_id)] \
               AND d.state::integer = 1 \
             RETURNING d.message_id",
            [group_id.into(), ids.into(), tokens.into()],
        )
    };
    let rows = conn.query_all_raw(statement).await?;
    rows.iter()
        .map(|row| row.try_get_by_index::<i64>(0).map_err(MqError::from))
        .collect()
}

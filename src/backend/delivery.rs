//! Consumer groups, delivery state, leases and the member registry: the portable statements.
//!
//! Delivery rows are filled lazily: publishing writes only the log, and a claimer that finds
//! its group behind the head of the stream first inserts the missing delivery rows and moves
//! the group's position past them, atomically ("materializing": one statement on each
//! database, see `postgres::catch_up` and `sqlite::claim`), so a publish stays one row per
//! message and priorities are exact among everything published before the claim.
//!
//! States of a delivery row: 0 ready, 1 leased, 2 dead letter. Acknowledged rows are deleted;
//! the log keeps the message for replay. Every change to a leased row is fenced by its lease
//! token, which each claim increments, so a stale holder cannot ack, nack or extend a lease
//! that has since been given to someone else.

use entity::{consumer, consumer_group, delivery, message};
use sea_orm::sea_query::{Alias, Condition, Expr, ExprTrait, OnConflict, Query, UpdateStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, TransactionTrait,
};
use serde_json::Value;

use super::combine::Piece;
use super::{WriteGate, begin_write, now_ms, postgres, sqlite};
use crate::error::{MqError, Result};

/// Ready for delivery (once `available_at` has passed).
pub(crate) const READY: i16 = 0;
/// Held under a lease.
pub(crate) const LEASED: i16 = 1;
/// Failed `max_attempts` times; kept until requeued.
pub(crate) const DEAD: i16 = 2;

/// Most ids (or id pairs) bound in one statement: far below SQLite's 32,766 and PostgreSQL's
/// 65,535 bind parameters.
const ID_CHUNK: usize = 1000;

/// What a claim asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimRequest<'a> {
    pub(crate) group_id: i64,
    pub(crate) stream_id: i64,
    pub(crate) consumer_id: &'a str,
    /// Topic patterns in their SQL form; `None` means every topic.
    pub(crate) sql_patterns: Option<&'a [String]>,
    pub(crate) from_offset: i64,
    pub(crate) limit: u32,
    pub(crate) visibility_ms: i64,
    pub(crate) max_attempts: i32,
    /// Whether to return expired leases to the ready set first (done at intervals, not on
    /// every claim).
    pub(crate) reap: bool,
    /// Whether to catch the group up before the first pick, because it is probably behind:
    /// the member's previous claim came back short (so it has been waiting for messages), or
    /// found the group behind (as it does each time under continuous publishing).
    pub(crate) catch_up_first: bool,
}

/// A claimed message with its lease.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) message: message::Model,
    pub(crate) attempts: i32,
    pub(crate) lease_token: i64,
}

/// Creates the group unless it exists and returns its id. A new group starts at
/// `start_offset` (messages below it are never delivered to it).
pub(crate) async fn ensure_group<C: ConnectionTrait>(
    conn: &C,
    stream_id: i64,
    name: &str,
    start_offset: i64,
) -> Result<i64> {
    let backend = conn.get_database_backend();
    let insert = Query::insert()
        .into_table(consumer_group::Entity)
        .columns([
            consumer_group::Column::StreamId,
            consumer_group::Column::Name,
            consumer_group::Column::MaterializedOffset,
            consumer_group::Column::CreatedAt,
        ])
        .values([
            stream_id.into(),
            name.into(),
            (Ord::max(start_offset, 1) - 1).into(),
            now_ms(backend),
        ])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::columns([
                consumer_group::Column::StreamId,
                consumer_group::Column::Name,
            ])
            .do_nothing()
            .to_owned(),
        )
        .to_owned();
    conn.execute(&insert).await?;
    let group = find_group(conn, stream_id, name)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("consumer group {name}")))?;
    Ok(group.id)
}

/// The group `name` of a stream, if it exists.
pub(crate) async fn find_group<C: ConnectionTrait>(
    conn: &C,
    stream_id: i64,
    name: &str,
) -> Result<Option<consumer_group::Model>> {
    Ok(consumer_group::Entity::find()
        .filter(consumer_group::Column::StreamId.eq(stream_id))
        .filter(consumer_group::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// Registers a member, or refreshes its patterns and heartbeat if it is already registered.
pub(crate) async fn register_consumer<C: ConnectionTrait>(
    conn: &C,
    stream_id: i64,
    group_id: i64,
    consumer_id: &str,
    patterns: &[String],
) -> Result<()> {
    let backend = conn.get_database_backend();
    let patterns = Value::from(patterns.to_vec());
    let insert = Query::insert()
        .into_table(consumer::Entity)
        .columns([
            consumer::Column::StreamId,
            consumer::Column::GroupId,
            consumer::Column::ConsumerId,
            consumer::Column::Patterns,
            consumer::Column::LastHeartbeatAt,
            consumer::Column::AckedOffset,
            consumer::Column::CreatedAt,
        ])
        .values([
            stream_id.into(),
            group_id.into(),
            consumer_id.into(),
            Expr::val(patterns),
            now_ms(backend),
            0i64.into(),
            now_ms(backend),
        ])
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::columns([consumer::Column::GroupId, consumer::Column::ConsumerId])
                .update_columns([
                    consumer::Column::Patterns,
                    consumer::Column::LastHeartbeatAt,
                ])
                .to_owned(),
        )
        .to_owned();
    conn.execute(&insert).await?;
    Ok(())
}

/// Marks a member alive and records the highest offset it has acknowledged. Returns whether
/// the member is still registered (a cleanup may have removed it).
pub(crate) async fn touch_consumer<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    consumer_id: &str,
    acked_offset: i64,
) -> Result<bool> {
    let backend = conn.get_database_backend();
    let update = Query::update()
        .table(consumer::Entity)
        .value(consumer::Column::LastHeartbeatAt, now_ms(backend))
        .value(
            consumer::Column::AckedOffset,
            Expr::case(
                Expr::col(consumer::Column::AckedOffset).lt(acked_offset),
                acked_offset,
            )
            .finally(Expr::col(consumer::Column::AckedOffset)),
        )
        .and_where(Expr::col(consumer::Column::GroupId).eq(group_id))
        .and_where(Expr::col(consumer::Column::ConsumerId).eq(consumer_id))
        .to_owned();
    Ok(conn.execute(&update).await?.rows_affected() > 0)
}

/// Claims up to `req.limit` ready messages for a member: returns expired leases to the ready
/// set (at intervals), catches the group up with the head of its stream when it is behind, and
/// leases the best ready rows (priority, then offset). Results are in claim order.
///
/// Priorities are exact among everything published before the claim (before its catch-up,
/// when it starts with one), because rows are only picked from a group that is caught up. On
/// SQLite, every claim catches up and picks in one round trip (see `sqlite::claim`). On
/// PostgreSQL, where a catch-up is a statement of its own that locks the group row, the first
/// statement checks that the group is caught up and picks nothing otherwise, so the common
/// case, a caught-up group with enough ready rows, costs one statement. When the check fails,
/// the statement says so, and the claim catches the group up and picks again without the
/// check (the group was just caught up, and under continuous publishing the check could fail
/// every time). A member whose group is probably behind (it has been waiting for messages, or
/// its previous claim found the group behind) catches up first instead, which costs two
/// statements where the check would cost three. Also returns whether the group was found
/// behind.
pub(crate) async fn claim(
    gate: &WriteGate,
    db: &DatabaseConnection,
    req: &ClaimRequest<'_>,
) -> Result<(Vec<Claimed>, bool)> {
    if req.reap {
        let turn = gate.enter().await;
        reap_expired(turn.conn(db), req.group_id, req.max_attempts).await?;
    }
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let mut caught_up_only = postgres;
    // Whether the group was found behind the head of its stream: a hint for the member's next
    // claim (see `ClaimRequest::catch_up_first`).
    let mut behind = false;
    if postgres && req.catch_up_first {
        // Straight to the catch-up, which does nothing for a caught-up group: the claim below
        // runs after it and, without the caught-up check, sees the rows, whoever caught the
        // group up.
        behind = postgres::catch_up(db, req.group_id, req.stream_id).await?;
        caught_up_only = false;
    }
    let mut claimed = Vec::new();
    let mut limit = req.limit;
    let mut rounds = 0;
    loop {
        let request = ClaimRequest { limit, ..*req };
        let round = if postgres {
            postgres::claim(db, &request, caught_up_only).await
        } else {
            sqlite::claim(gate, db, &request)
                .await
                .map(|(l, b)| (l, b, false))
        };
        let (leased, buried, found_behind) = match round {
            Ok(round) => round,
            Err(err) => return settle_failed_round(claimed, err).map(|c| (c, behind)),
        };
        limit = limit.saturating_sub(u32::try_from(leased.len()).unwrap_or(u32::MAX));
        claimed.extend(leased);
        rounds += 1;
        if limit == 0 {
            break;
        }
        // A picked row that had already used its attempts was buried as a dead letter rather
        // than leased; it must not cost a place in the batch (a claim whose best rows were
        // all such rows would return nothing while other messages are ready). Each such
        // round buries at least one row, so this ends.
        if buried > 0 {
            continue;
        }
        // The check failed: the group was behind when the claim looked, so it picked nothing.
        // Catch up, and claim again without the check, even if the catch-up finds that
        // another member has just done it (the claim must not come back empty-handed then).
        // A claim that passed the check and came back short is done: what was published after
        // it looked is for the next claim (a poll that found nothing waits, and such a publish
        // wakes it: the poll registered for wake-ups before it claimed).
        if found_behind {
            behind = true;
            if let Err(err) = postgres::catch_up(db, req.group_id, req.stream_id).await {
                return settle_failed_round(claimed, err).map(|c| (c, behind));
            }
            caught_up_only = false;
            continue;
        }
        break;
    }
    if rounds > 1 {
        sort_claimed(&mut claimed);
    }
    Ok((claimed, behind))
}

/// A later round of a claim failed: the leases of the earlier rounds are committed, so hand
/// them out rather than strand them until they expire; with none, the error is the result.
fn settle_failed_round(claimed: Vec<Claimed>, err: MqError) -> Result<Vec<Claimed>> {
    if claimed.is_empty() {
        return Err(err);
    }
    tracing::warn!(error = %err, "dabgent_mq: a further claim round failed");
    let mut claimed = claimed;
    sort_claimed(&mut claimed);
    Ok(claimed)
}

/// The start of an `UPDATE` that ends leases: the rows forget their holder and become ready
/// at `available_at`, or dead letters when `max_attempts` is given and they have used it.
fn end_leases(max_attempts: Option<i32>, available_at: Expr) -> UpdateStatement {
    let state: Expr = match max_attempts {
        Some(max) => Expr::case(Expr::col(delivery::Column::Attempts).gte(max), DEAD)
            .finally(READY)
            .into(),
        None => READY.into(),
    };
    Query::update()
        .table(delivery::Entity)
        .value(delivery::Column::State, state)
        .value(delivery::Column::LeaseExpiresAt, Expr::null())
        .value(delivery::Column::ConsumerId, Expr::null())
        .value(delivery::Column::AvailableAt, available_at)
        .to_owned()
}

/// Returns the group's expired leases to the ready set (or to the dead letters once they have
/// used `max_attempts`). The attempt was counted when the lease was taken.
///
/// Concurrency: PostgreSQL skips rows that others hold (`postgres::reap_expired`). On SQLite,
/// a plain `UPDATE ... WHERE state = leased AND lease_expires_at <= now` under the single
/// write lock, so reapers take turns and a later one finds the rows no longer leased.
async fn reap_expired<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    max_attempts: i32,
) -> Result<u64> {
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        return postgres::reap_expired(conn, group_id, max_attempts).await;
    }
    let update = end_leases(Some(max_attempts), now_ms(backend))
        .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
        .and_where(Expr::col(delivery::Column::State).eq(LEASED))
        .and_where(Expr::col(delivery::Column::LeaseExpiresAt).lte(now_ms(backend)))
        .to_owned();
    Ok(conn.execute(&update).await?.rows_affected())
}

/// Deletes (acknowledges) the given leases; returns the message ids whose lease was still
/// held. Fenced: a row whose token changed (re-claimed by someone else) is left alone. On
/// SQLite, one piece for the writer (see `combine`), so the acks of several members can share
/// a commit.
pub(crate) async fn ack(
    gate: &WriteGate,
    db: &DatabaseConnection,
    group_id: i64,
    leases: &[(i64, i64)],
) -> Result<Vec<i64>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    if backend == DbBackend::Postgres {
        return postgres::ack(db, group_id, leases).await;
    }
    let tag = Piece::next_tag();
    let mut sql = String::new();
    let mut values = Vec::new();
    for chunk in leases.chunks(ID_CHUNK) {
        let delete = Query::delete()
            .from_table(delivery::Entity)
            .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
            .and_where(leased_by_key())
            .cond_where(held_leases(chunk))
            .returning(Query::returning().exprs([
                Expr::col(delivery::Column::MessageId),
                Expr::cust_with_values(format!("? AS {}", sqlite::TAG_COLUMN), [tag]),
            ]))
            .to_owned();
        let statement = backend.build(&delete);
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str(&statement.sql);
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    let rows = gate.run(db, Piece { sql, values, tag }).await?;
    rows.iter()
        .map(|row| Ok(row.try_get_by_index::<i64>(0)?))
        .collect()
}

/// `state = leased`, written so that no planner matches it to the partial leased index: the
/// statements using it find their rows by primary key, and on stale statistics PostgreSQL
/// would otherwise walk every lease of the group instead. (The reaper wants that index and
/// says `state = 1` plainly.)
fn leased_by_key() -> Expr {
    Expr::col(delivery::Column::State)
        .cast_as("integer")
        .eq(i32::from(LEASED))
}

/// The rows still held under these exact leases: `(message_id, lease_token) IN (...)`. The
/// plain `message_id IN (...)` beside it is what lets both databases find the rows through the
/// primary key; neither uses an index for a list of row values on its own, and a scan of the
/// group's rows per ack made acknowledging quadratic in the backlog. When every lease has the
/// same token (a batch on its first delivery, the common case), the token is compared as a
/// scalar instead: SQLite builds a temporary table for a list of row values on every run,
/// which made a batch ack of 100 about half again as expensive (`sqlite3` shell, 300 acks of
/// 100: 168 against 110 ms).
fn held_leases(leases: &[(i64, i64)]) -> Condition {
    let ids = Expr::col(delivery::Column::MessageId).is_in(leases.iter().map(|l| l.0));
    match leases.split_first() {
        Some((&(_, token), rest)) if rest.iter().all(|l| l.1 == token) => Condition::all()
            .add(ids)
            .add(Expr::col(delivery::Column::LeaseToken).eq(token)),
        _ => Condition::all().add(ids).add(
            Expr::tuple([
                Expr::col(delivery::Column::MessageId),
                Expr::col(delivery::Column::LeaseToken),
            ])
            .in_tuples(leases.iter().copied()),
        ),
    }
}

/// `held_leases` in the dialect's form: PostgreSQL's keeps every plan on the primary key
/// (see `postgres::held_leases`).
fn held_leases_in(backend: DbBackend, leases: &[(i64, i64)]) -> Condition {
    match backend {
        DbBackend::Postgres => postgres::held_leases(leases),
        _ => held_leases(leases),
    }
}

/// Releases a lease: the message becomes ready again after `backoff_ms`, or a dead letter
/// if it has used `max_attempts`. Returns whether the lease was still held.
pub(crate) async fn nack<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    lease: (i64, i64),
    max_attempts: i32,
    backoff_ms: i64,
) -> Result<bool> {
    let backend = conn.get_database_backend();
    let update = end_leases(Some(max_attempts), now_ms(backend).add(backoff_ms))
        .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
        .and_where(Expr::col(delivery::Column::MessageId).eq(lease.0))
        .and_where(leased_by_key())
        .and_where(Expr::col(delivery::Column::LeaseToken).eq(lease.1))
        .to_owned();
    Ok(conn.execute(&update).await?.rows_affected() == 1)
}

/// Extends the given leases to `visibility_ms` from now; returns the message ids whose lease
/// was still held (fenced by token, as `ack`).
pub(crate) async fn extend_leases<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    leases: &[(i64, i64)],
    visibility_ms: i64,
) -> Result<Vec<i64>> {
    let backend = conn.get_database_backend();
    let mut kept = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(ID_CHUNK) {
        let update = Query::update()
            .table(delivery::Entity)
            .value(
                delivery::Column::LeaseExpiresAt,
                now_ms(backend).add(visibility_ms),
            )
            .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
            .and_where(leased_by_key())
            .cond_where(held_leases_in(backend, chunk))
            .returning_col(delivery::Column::MessageId)
            .to_owned();
        for row in conn.query_all(&update).await? {
            kept.push(row.try_get_by_index::<i64>(0)?);
        }
    }
    Ok(kept)
}

/// Gives up the given leases at once (a subscriber that is going away): the messages become
/// ready again without waiting for the leases to expire.
pub(crate) async fn release_leases<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    leases: &[(i64, i64)],
) -> Result<u64> {
    let backend = conn.get_database_backend();
    let mut released = 0;
    for chunk in leases.chunks(ID_CHUNK) {
        let update = end_leases(None, now_ms(backend))
            .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
            .and_where(leased_by_key())
            .cond_where(held_leases_in(backend, chunk))
            .to_owned();
        released += conn.execute(&update).await?.rows_affected();
    }
    Ok(released)
}

/// Removes the members of any stream whose last heartbeat is older than `max_silence_ms` and
/// makes the messages they held ready again at once. Returns how many members were removed.
pub(crate) async fn cleanup_expired_consumers<C>(conn: &C, max_silence_ms: i64) -> Result<u64>
where
    C: ConnectionTrait + TransactionTrait,
{
    let backend = conn.get_database_backend();
    let txn = begin_write(conn).await?;
    let result = async {
        let delete = Query::delete()
            .from_table(consumer::Entity)
            .and_where(
                Expr::col(consumer::Column::LastHeartbeatAt)
                    .lt(now_ms(backend).sub(max_silence_ms)),
            )
            .returning(
                Query::returning()
                    .columns([consumer::Column::GroupId, consumer::Column::ConsumerId]),
            )
            .to_owned();
        let removed = txn.query_all(&delete).await?;
        for row in &removed {
            let group_id: i64 = row.try_get_by_index(0)?;
            let consumer_id: String = row.try_get_by_index(1)?;
            let release = end_leases(None, now_ms(backend))
                .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
                .and_where(Expr::col(delivery::Column::State).eq(LEASED))
                .and_where(Expr::col(delivery::Column::ConsumerId).eq(consumer_id))
                .to_owned();
            txn.execute(&release).await?;
        }
        Ok(u64::try_from(removed.len()).unwrap_or(u64::MAX))
    }
    .await;
    super::finish(txn, result).await
}

/// The dead letters of a group, in offset order, with their attempt counts.
pub(crate) async fn dead_letters<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
) -> Result<Vec<(message::Model, i32)>> {
    let rows = delivery::Entity::find()
        .filter(delivery::Column::GroupId.eq(group_id))
        .filter(delivery::Column::State.eq(DEAD))
        .order_by_asc(delivery::Column::StreamOffset)
        .all(conn)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|d| d.message_id).collect();
    let mut messages = find_messages(conn, &ids).await?;
    messages.sort_by_key(|m| m.stream_offset);
    let attempts: std::collections::HashMap<i64, i32> =
        rows.iter().map(|d| (d.message_id, d.attempts)).collect();
    Ok(messages
        .into_iter()
        .map(|m| {
            let n = attempts.get(&m.id).copied().unwrap_or_default();
            (m, n)
        })
        .collect())
}

/// The messages with these ids, in no particular order.
async fn find_messages<C: ConnectionTrait>(conn: &C, ids: &[i64]) -> Result<Vec<message::Model>> {
    let mut messages = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ID_CHUNK) {
        messages.extend(
            message::Entity::find()
                .filter(message::Column::Id.is_in(chunk.iter().copied()))
                .all(conn)
                .await?,
        );
    }
    Ok(messages)
}

/// Makes every dead letter of a group ready again with a fresh attempt count; returns how
/// many. Lease tokens keep counting, so a holder from before cannot act on the new claims.
pub(crate) async fn requeue_dead_letters<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
) -> Result<u64> {
    let backend = conn.get_database_backend();
    let update = Query::update()
        .table(delivery::Entity)
        .value(delivery::Column::State, READY)
        .value(delivery::Column::Attempts, 0)
        .value(delivery::Column::AvailableAt, now_ms(backend))
        .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
        .and_where(Expr::col(delivery::Column::State).eq(DEAD))
        .to_owned();
    Ok(conn.execute(&update).await?.rows_affected())
}

/// Counts of a group's delivery states, by the database's clock.
#[derive(Debug, Default)]
pub(crate) struct StateCounts {
    pub(crate) ready: i64,
    pub(crate) in_flight: i64,
    pub(crate) delayed: i64,
    pub(crate) dead: i64,
    pub(crate) oldest_ready_at: Option<i64>,
    pub(crate) now: i64,
    /// Messages above the group's materialized offset: published, not yet materialized.
    pub(crate) unmaterialized_ready: i64,
    pub(crate) unmaterialized_delayed: i64,
    pub(crate) unmaterialized_oldest: Option<i64>,
}

/// Reads the state counts of a group without changing anything.
pub(crate) async fn state_counts<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    stream_id: i64,
    materialized_offset: i64,
) -> Result<StateCounts> {
    let backend = conn.get_database_backend();
    let now_alias = Alias::new("now_ms");
    let now_row = conn
        .query_one(
            &Query::select()
                .expr_as(now_ms(backend), now_alias)
                .to_owned(),
        )
        .await?;
    let now: i64 = match now_row {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    let count_where = |state: i16, extra: Option<Expr>| {
        let mut select = Query::select();
        select
            .expr(Expr::col(delivery::Column::MessageId).count())
            .expr(Expr::col(delivery::Column::AvailableAt).min())
            .from(delivery::Entity)
            .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
            .and_where(Expr::col(delivery::Column::State).eq(state));
        if let Some(extra) = extra {
            select.and_where(extra);
        }
        select.to_owned()
    };
    let mut counts = StateCounts {
        now,
        ..StateCounts::default()
    };
    let read = |row: Option<sea_orm::QueryResult>| -> Result<(i64, Option<i64>)> {
        match row {
            Some(row) => Ok((
                row.try_get_by_index(0)?,
                row.try_get_by_index::<Option<i64>>(1)?,
            )),
            None => Ok((0, None)),
        }
    };
    let ready = read(
        conn.query_one(&count_where(
            READY,
            Some(Expr::col(delivery::Column::AvailableAt).lte(now)),
        ))
        .await?,
    )?;
    counts.ready = ready.0;
    counts.oldest_ready_at = ready.1;
    counts.delayed = read(
        conn.query_one(&count_where(
            READY,
            Some(Expr::col(delivery::Column::AvailableAt).gt(now)),
        ))
        .await?,
    )?
    .0;
    counts.in_flight = read(conn.query_one(&count_where(LEASED, None)).await?)?.0;
    counts.dead = read(conn.query_one(&count_where(DEAD, None)).await?)?.0;

    let pending = |due: bool| {
        let mut select = Query::select();
        select
            .expr(Expr::col(message::Column::Id).count())
            .expr(Expr::col(message::Column::DeliverAt).min())
            .from(message::Entity)
            .and_where(Expr::col(message::Column::StreamId).eq(stream_id))
            .and_where(Expr::col(message::Column::StreamOffset).gt(materialized_offset));
        if due {
            select.and_where(Expr::col(message::Column::DeliverAt).lte(now));
        } else {
            select.and_where(Expr::col(message::Column::DeliverAt).gt(now));
        }
        select.to_owned()
    };
    let due = read(conn.query_one(&pending(true)).await?)?;
    counts.unmaterialized_ready = due.0;
    counts.unmaterialized_oldest = due.1;
    counts.unmaterialized_delayed = read(conn.query_one(&pending(false)).await?)?.0;
    Ok(counts)
}

/// The registered members of a stream, with their group names, by consumer id.
pub(crate) async fn list_consumers<C: ConnectionTrait>(
    conn: &C,
    stream_id: i64,
) -> Result<Vec<(consumer::Model, String)>> {
    let members = consumer::Entity::find()
        .filter(consumer::Column::StreamId.eq(stream_id))
        .order_by_asc(consumer::Column::ConsumerId)
        .all(conn)
        .await?;
    let groups: std::collections::HashMap<i64, String> = consumer_group::Entity::find()
        .filter(consumer_group::Column::StreamId.eq(stream_id))
        .all(conn)
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    Ok(members
        .into_iter()
        .map(|m| {
            let group = groups.get(&m.group_id).cloned().unwrap_or_default();
            (m, group)
        })
        .collect())
}

/// Puts claimed messages in claim order: higher priority first, then lower offset.
pub(crate) fn sort_claimed(claimed: &mut [Claimed]) {
    claimed.sort_by(|a, b| {
        b.message
            .priority
            .cmp(&a.message.priority)
            .then(a.message.stream_offset.cmp(&b.message.stream_offset))
    });
}

/// Removes a member's registration (it is going away); its leases are released separately.
pub(crate) async fn remove_consumer<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    consumer_id: &str,
) -> Result<()> {
    consumer::Entity::delete_many()
        .filter(consumer::Column::GroupId.eq(group_id))
        .filter(consumer::Column::ConsumerId.eq(consumer_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Milliseconds until the group's next delayed or backed-off message becomes ready, if any,
/// by the database's clock. Lets a waiting poll wake exactly then instead of at its backstop.
pub(crate) async fn next_ready_in<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
) -> Result<Option<i64>> {
    let later = Expr::col(delivery::Column::AvailableAt).gt(now_ms(conn.get_database_backend()));
    earliest_in(
        conn,
        group_id,
        READY,
        delivery::Column::AvailableAt,
        Some(later),
    )
    .await
}

/// Milliseconds until the group's next lease expires (negative if one already has), if any
/// message is leased. Lets a waiting poll pick up an expired lease promptly.
pub(crate) async fn next_expiry_in<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
) -> Result<Option<i64>> {
    earliest_in(
        conn,
        group_id,
        LEASED,
        delivery::Column::LeaseExpiresAt,
        None,
    )
    .await
}

/// `MIN(column) - now` over the group's rows in `state` (and `extra`), by the database clock.
async fn earliest_in<C: ConnectionTrait>(
    conn: &C,
    group_id: i64,
    state: i16,
    column: delivery::Column,
    extra: Option<Expr>,
) -> Result<Option<i64>> {
    let backend = conn.get_database_backend();
    let mut select = Query::select();
    select
        .expr(Expr::col(column).min().sub(now_ms(backend)))
        .from(delivery::Entity)
        .and_where(Expr::col(delivery::Column::GroupId).eq(group_id))
        .and_where(Expr::col(delivery::Column::State).eq(state));
    if let Some(extra) = extra {
        select.and_where(extra);
    }
    match conn.query_one(&select).await? {
        Some(row) => Ok(row.try_get_by_index::<Option<i64>>(0)?),
        None => Ok(None),
    }
}

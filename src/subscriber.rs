//! [`Subscriber`]: a member of a consumer group, and its [`SubscriberStream`].

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use sea_orm::DatabaseConnection;
use tracing::Instrument;

use crate::backend::WriteGate;
use crate::backend::delivery::{self, ClaimRequest};
use crate::error::{MqError, Result};
use crate::message::Message;
use crate::queue::MessageQueue;
use crate::replay::from_row;

/// Longest retry backoff of a nacked message.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// How often a polling member refreshes its heartbeat in the registry.
const TOUCH_INTERVAL: Duration = Duration::from_secs(1);

/// How often a claim first returns the group's expired leases to the ready set. An expired
/// lease is therefore redelivered at most this much later than it expires.
const REAP_INTERVAL: Duration = Duration::from_millis(200);

/// Longest interval between the heartbeats of a subscriber stream.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A member of a consumer group: claims messages with [`poll`](Subscriber::poll), settles
/// them with [`ack`](Subscriber::ack) or [`nack`](Subscriber::nack).
///
/// Each message returned by `poll` is leased to this member for the visibility timeout. Ack it
/// when it has been processed; a lease that runs out makes the message available to the group
/// again (the attempt counts), and after `max_attempts` attempts it becomes a dead letter.
/// [`heartbeat`](Subscriber::heartbeat) extends the leases held and marks the member alive.
///
/// Dropping a subscriber releases the leases it still holds, so their messages are delivered
/// again at once, and removes its registration.
#[derive(Debug)]
pub struct Subscriber {
    queue: MessageQueue,
    member: Arc<Member>,
    sql_patterns: Option<Vec<String>>,
    batch_size: u32,
    from_offset: i64,
    poll_timeout: Duration,
    max_attempts: i32,
    retry_backoff: Duration,
    last_touch: Instant,
    /// When this member last reaped expired leases (`None`: never).
    last_reap: Option<Instant>,
    /// Whether the previous claim filled the batch (then the group is probably caught up).
    last_claim_full: bool,
    /// Whether the previous claim found the group behind its stream's head (PostgreSQL; then
    /// the next claim catches up first).
    group_was_behind: bool,
}

/// What a subscriber shares with its stream's heartbeat task and its drop guard.
#[derive(Debug)]
struct Member {
    db: DatabaseConnection,
    gate: WriteGate,
    stream: String,
    stream_id: i64,
    group_id: i64,
    consumer_id: String,
    patterns: Vec<String>,
    visibility_ms: i64,
    leases: Mutex<HashMap<i64, Lease>>,
    acked_offset: AtomicI64,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    token: i64,
    offset: i64,
    attempt: i32,
}

/// The resolved parts of a subscription, handed over by `MessageQueue`.
pub(crate) struct Membership {
    pub(crate) stream: String,
    pub(crate) stream_id: i64,
    pub(crate) group_id: i64,
    pub(crate) consumer_id: String,
    pub(crate) patterns: Vec<String>,
}

impl Subscriber {
    pub(crate) fn new(
        queue: MessageQueue,
        membership: Membership,
        options: &crate::options::SubscribeOptions,
    ) -> Self {
        let backend = queue.connection().get_database_backend();
        let sql_patterns = if membership.patterns.is_empty()
            || membership
                .patterns
                .iter()
                .any(|p| p.chars().all(|c| c == '*'))
        {
            None
        } else {
            Some(
                membership
                    .patterns
                    .iter()
                    .map(|p| crate::backend::pattern_to_sql(backend, p))
                    .collect(),
            )
        };
        let member = Member {
            db: queue.connection().clone(),
            gate: queue.write_gate().clone(),
            stream: membership.stream,
            stream_id: membership.stream_id,
            group_id: membership.group_id,
            consumer_id: membership.consumer_id,
            patterns: membership.patterns,
            visibility_ms: millis(options.visibility_timeout),
            leases: Mutex::new(HashMap::new()),
            acked_offset: AtomicI64::new(0),
        };
        Subscriber {
            queue,
            member: Arc::new(member),
            sql_patterns,
            batch_size: options.batch_size,
            from_offset: options.from_offset.unwrap_or(1),
            poll_timeout: options.poll_timeout,
            max_attempts: options.max_attempts,
            retry_backoff: options.retry_backoff,
            last_touch: Instant::now(),
            last_reap: None,
            last_claim_full: false,
            group_was_behind: false,
        }
    }

    /// This member's name.
    pub fn consumer_id(&self) -> &str {
        &self.member.consumer_id
    }

    /// The stream this member consumes.
    pub fn stream(&self) -> &str {
        &self.member.stream
    }

    /// Ids of the messages this member currently holds leases on.
    pub fn leased(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.member.leases().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Claims up to `batch_size` ready messages (higher priority first, then lower offset),
    /// waiting up to the poll timeout for one to become ready. Returns an empty `Vec` when the
    /// timeout passes with nothing to deliver.
    ///
    /// A waiting poll wakes as soon as a message is published through the same
    /// `MessageQueue`, or on PostgreSQL through any process; otherwise it looks again at the
    /// backstop interval of [`QueueOptions`](crate::QueueOptions).
    ///
    /// # Errors
    ///
    /// [`MqError::Database`] if the database fails; the poll can simply be retried.
    ///
    /// # Cancellation
    ///
    /// Dropping a poll while it waits loses nothing. Dropping it while a claim is in flight
    /// may leave that claim's messages leased to this member without it knowing: they are
    /// delivered again when their visibility timeout passes.
    pub async fn poll(&mut self) -> Result<Vec<Message>> {
        let wake = self.queue.notifier().channel(&self.member.stream);
        let backstop = self.queue.options().backstop_poll_interval;
        // `None`: a timeout too long to represent, i.e. wait for as long as it takes.
        let deadline = Instant::now().checked_add(self.poll_timeout);
        loop {
            // Registered before looking, so a publish that lands between the look and the
            // wait still wakes this poll.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let batch = self.claim_once().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            let mut wait = backstop;
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Ok(batch);
                }
                wait = wait.min(deadline - now);
            }
            // A delayed or backed-off message due before the backstop: wake for it on time.
            if let Some(due_ms) =
                delivery::next_ready_in(&self.member.db, self.member.group_id).await?
            {
                let due = Duration::from_millis(u64::try_from(due_ms).unwrap_or(0));
                wait = wait.min(due + Duration::from_millis(1));
            }
            // So is a lease that expires (or has expired and waits for the next reap).
            if let Some(expiry_ms) =
                delivery::next_expiry_in(&self.member.db, self.member.group_id).await?
            {
                let due = Duration::from_millis(u64::try_from(expiry_ms).unwrap_or(0));
                wait = wait.min(due.max(REAP_INTERVAL / 4));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn claim_once(&mut self) -> Result<Vec<Message>> {
        let touch_due = self.last_touch.elapsed() >= TOUCH_INTERVAL;
        let reap = self
            .last_reap
            .is_none_or(|at| at.elapsed() >= REAP_INTERVAL);
        if reap {
            self.last_reap = Some(Instant::now());
        }
        let member = &self.member;
        let request = ClaimRequest {
            group_id: member.group_id,
            stream_id: member.stream_id,
            consumer_id: &member.consumer_id,
            sql_patterns: self.sql_patterns.as_deref(),
            from_offset: self.from_offset,
            limit: self.batch_size,
            visibility_ms: member.visibility_ms,
            max_attempts: self.max_attempts,
            reap,
            catch_up_first: !self.last_claim_full || self.group_was_behind,
        };
        let span =
            tracing::debug_span!("claim", stream = %member.stream, consumer = %member.consumer_id);
        let claim = delivery::claim(&member.gate, &member.db, &request).instrument(span);
        // The heartbeat runs beside the claim, not before it: its commit waits for the disk,
        // and a woken member should not wait for that before it claims. On SQLite the two
        // still take turns at the single writer. A failed heartbeat must not lose what the
        // claim leased: it is logged and tried again at the next poll. (A member silent for
        // longer than a cleanup's limit may now claim before its heartbeat lands; a cleanup
        // in between releases those leases, and the member's acks are then refused, as for
        // any lease it lost.)
        let claimed = if touch_due {
            let (touched, claimed) = tokio::join!(member.touch(), claim);
            match touched {
                Ok(()) => self.last_touch = Instant::now(),
                Err(err) => tracing::warn!(error = %err, "dabgent_mq: heartbeat failed; retrying"),
            }
            claimed?
        } else {
            claim.await?
        };
        let (claimed, behind) = claimed;
        self.group_was_behind = behind;
        self.last_claim_full = claimed.len() >= usize::try_from(self.batch_size).unwrap_or(0);
        let mut leases = member.leases();
        Ok(claimed
            .into_iter()
            .map(|c| {
                leases.insert(
                    c.message.id,
                    Lease {
                        token: c.lease_token,
                        offset: c.message.stream_offset,
                        attempt: c.attempts,
                    },
                );
                let mut message = from_row(c.message, &member.stream);
                message.attempt = c.attempts;
                message
            })
            .collect())
    }

    /// Acknowledges a message: it is finished for this group and never delivered to it again.
    ///
    /// # Errors
    ///
    /// [`MqError::NotLeased`] if this member does not hold the message (never received, or
    /// already settled); [`MqError::LeaseLost`] if its lease expired and the message was
    /// claimed again, or released by a cleanup, in which case nothing changes.
    pub async fn ack(&self, id: i64) -> Result<()> {
        self.member.ack(id).await
    }

    /// Acknowledges many messages in one round trip.
    ///
    /// # Errors
    ///
    /// [`MqError::NotLeased`] if any id is not held by this member (nothing is acknowledged
    /// then); [`MqError::LeaseLost`] naming the first message whose lease was lost, after
    /// acknowledging all the others.
    pub async fn ack_batch(&self, ids: &[i64]) -> Result<()> {
        let leases: Vec<(i64, Lease)> = ids
            .iter()
            .map(|&id| self.member.lease(id).map(|lease| (id, lease)))
            .collect::<Result<_>>()?;
        let pairs: Vec<(i64, i64)> = leases.iter().map(|(id, l)| (*id, l.token)).collect();
        let acked = {
            delivery::ack(
                &self.member.gate,
                &self.member.db,
                self.member.group_id,
                &pairs,
            )
            .await?
        };
        {
            let mut held = self.member.leases();
            for id in ids {
                held.remove(id);
            }
        }
        let acked: std::collections::HashSet<i64> = acked.into_iter().collect();
        let mut lost = None;
        for (id, lease) in &leases {
            if acked.contains(id) {
                self.member
                    .acked_offset
                    .fetch_max(lease.offset, Ordering::Relaxed);
            } else if lost.is_none() {
                lost = Some(*id);
            }
        }
        match lost {
            Some(id) => Err(MqError::LeaseLost(id)),
            None => Ok(()),
        }
    }

    /// Gives a message back: it is delivered again after a backoff that doubles with every
    /// attempt (see [`SubscribeOptions::retry_backoff`](crate::SubscribeOptions::retry_backoff)),
    /// or becomes a dead letter if it has used `max_attempts`.
    ///
    /// # Errors
    ///
    /// As [`ack`](Subscriber::ack).
    pub async fn nack(&self, id: i64) -> Result<()> {
        let lease = self.member.lease(id)?;
        let backoff = retry_backoff(self.retry_backoff, lease.attempt, id);
        let turn = self.member.gate.enter().await;
        let held = delivery::nack(
            turn.conn(&self.member.db),
            self.member.group_id,
            (id, lease.token),
            self.max_attempts,
            millis(backoff),
        )
        .await?;
        drop(turn);
        self.member.leases().remove(&id);
        if held {
            Ok(())
        } else {
            Err(MqError::LeaseLost(id))
        }
    }

    /// Marks this member alive and extends every lease it holds by the visibility timeout.
    /// Leases found lost (expired and claimed again) are forgotten.
    ///
    /// # Errors
    ///
    /// [`MqError::Database`] if the database fails.
    pub async fn heartbeat(&self) -> Result<()> {
        self.member.heartbeat().await
    }

    /// Turns the subscriber into an endless [`Stream`] of messages.
    ///
    /// Each message is acknowledged when the next one is asked for, so a crash while
    /// processing leads to redelivery, never to loss. While the caller processes, a background
    /// task heartbeats, keeping the leases of the current and the buffered messages alive.
    /// Transient database errors are retried with exponential backoff and logged; they never
    /// end the stream. Other errors are yielded as `Err` items and the stream goes on.
    pub fn into_stream(self) -> SubscriberStream {
        let member = self.member.clone();
        // Often enough to keep the leases (a third of the visibility timeout) and to look alive
        // to `cleanup_expired_consumers` with any sensible silence limit.
        let interval =
            Duration::from_millis(u64::try_from(member.visibility_ms / 3).unwrap_or(1).max(1))
                .min(HEARTBEAT_EVERY);
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(err) = member.heartbeat().await {
                    tracing::warn!(error = %err, "dabgent_mq: heartbeat failed; retrying");
                }
            }
        });
        let unacked = Arc::new(Mutex::new(None::<i64>));
        let last_yielded = unacked.clone();
        let closing_member = self.member.clone();
        let inner = async_stream::stream! {
            let mut subscriber = self;
            let mut buffer: VecDeque<Message> = VecDeque::new();
            let mut backoff = Backoff::default();
            loop {
                let pending = *unacked.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(id) = pending {
                    match subscriber.ack(id).await {
                        Ok(()) => backoff.reset(),
                        Err(err @ (MqError::LeaseLost(_) | MqError::NotLeased(_))) => {
                            tracing::warn!(error = %err, "dabgent_mq: ack after processing failed");
                        }
                        Err(err) if err.is_retryable() => {
                            tracing::warn!(error = %err, "dabgent_mq: ack failed; retrying");
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        }
                        Err(err) => {
                            *unacked.lock().unwrap_or_else(PoisonError::into_inner) = None;
                            yield Err(err);
                            continue;
                        }
                    }
                    *unacked.lock().unwrap_or_else(PoisonError::into_inner) = None;
                }
                if let Some(message) = buffer.pop_front() {
                    *unacked.lock().unwrap_or_else(PoisonError::into_inner) = Some(message.id);
                    yield Ok(message);
                    continue;
                }
                match subscriber.poll().await {
                    Ok(batch) => {
                        backoff.reset();
                        buffer.extend(batch);
                    }
                    Err(err) if err.is_retryable() => {
                        tracing::warn!(error = %err, "dabgent_mq: poll failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(err) => {
                        yield Err(err);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        };
        SubscriberStream {
            inner: Box::pin(inner),
            heartbeat,
            member: closing_member,
            last_yielded,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let member = self.member.clone();
        let leases: Vec<(i64, i64)> = member
            .leases()
            .iter()
            .map(|(id, l)| (*id, l.token))
            .collect();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Best effort: if this does not run, the leases simply expire and the registration
        // is removed by `cleanup_expired_consumers`.
        runtime.spawn(async move {
            let turn = member.gate.enter().await;
            let db = turn.conn(&member.db);
            if let Err(err) = delivery::release_leases(db, member.group_id, &leases).await {
                tracing::debug!(error = %err, "dabgent_mq: releasing leases on drop failed");
            }
            if let Err(err) =
                delivery::remove_consumer(db, member.group_id, &member.consumer_id).await
            {
                tracing::debug!(error = %err, "dabgent_mq: removing a consumer on drop failed");
            }
        });
    }
}

impl Member {
    async fn ack(&self, id: i64) -> Result<()> {
        let span = tracing::debug_span!("ack", message = id);
        async {
            let lease = self.lease(id)?;
            let acked =
                { delivery::ack(&self.gate, &self.db, self.group_id, &[(id, lease.token)]).await? };
            self.leases().remove(&id);
            if acked.is_empty() {
                return Err(MqError::LeaseLost(id));
            }
            self.acked_offset.fetch_max(lease.offset, Ordering::Relaxed);
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<i64, Lease>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease(&self, id: i64) -> Result<Lease> {
        self.leases()
            .get(&id)
            .copied()
            .ok_or(MqError::NotLeased(id))
    }

    /// Refreshes the registry entry, registering again if a cleanup removed it.
    async fn touch(&self) -> Result<()> {
        let acked = self.acked_offset.load(Ordering::Relaxed);
        let turn = self.gate.enter().await;
        let db = turn.conn(&self.db);
        if !delivery::touch_consumer(db, self.group_id, &self.consumer_id, acked).await? {
            delivery::register_consumer(
                db,
                self.stream_id,
                self.group_id,
                &self.consumer_id,
                &self.patterns,
            )
            .await?;
            delivery::touch_consumer(db, self.group_id, &self.consumer_id, acked).await?;
        }
        Ok(())
    }

    async fn heartbeat(&self) -> Result<()> {
        self.touch().await?;
        let held: Vec<(i64, i64)> = self.leases().iter().map(|(id, l)| (*id, l.token)).collect();
        if held.is_empty() {
            return Ok(());
        }
        let kept = {
            let turn = self.gate.enter().await;
            delivery::extend_leases(
                turn.conn(&self.db),
                self.group_id,
                &held,
                self.visibility_ms,
            )
            .await?
        };
        let kept: std::collections::HashSet<i64> = kept.into_iter().collect();
        let mut leases = self.leases();
        for (id, token) in held {
            if !kept.contains(&id) && leases.get(&id).is_some_and(|l| l.token == token) {
                leases.remove(&id);
            }
        }
        Ok(())
    }
}

/// The endless stream of a subscriber's messages; see [`Subscriber::into_stream`].
///
/// `Unpin`, so `stream.next().await` works directly. Dropping it stops the heartbeat and
/// releases the leases still held, so their messages are delivered again.
#[must_use = "streams do nothing unless polled"]
pub struct SubscriberStream {
    inner: Pin<Box<dyn Stream<Item = Result<Message>> + Send>>,
    heartbeat: tokio::task::JoinHandle<()>,
    member: Arc<Member>,
    /// The message yielded last, until it is acknowledged.
    last_yielded: Arc<Mutex<Option<i64>>>,
}

impl SubscriberStream {
    /// Stops consuming after the message yielded last was processed: acknowledges it, and
    /// releases the messages fetched but not yet yielded, so they go to the rest of the group
    /// at once. (Dropping the stream instead treats the last message as unprocessed: it is
    /// delivered again.)
    ///
    /// # Errors
    ///
    /// As [`Subscriber::ack`]; the stream is stopped either way.
    pub async fn close(self) -> Result<()> {
        let pending = self
            .last_yielded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match pending {
            Some(id) => self.member.ack(id).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for SubscriberStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberStream").finish_non_exhaustive()
    }
}

impl Stream for SubscriberStream {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for SubscriberStream {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Exponential backoff for retrying transient errors inside a stream: 50 ms doubling to 10 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(50)
            .saturating_mul(1 << self.failures.min(8))
            .min(Duration::from_secs(10));
        self.failures = self.failures.saturating_add(1);
        delay
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `base * 2^(attempt - 1)`, capped, with ±20 % jitter so that a burst of failures does not
/// come back as a burst.
fn retry_backoff(base: Duration, attempt: i32, id: i64) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(0);
    let delay = base
        .saturating_mul(1u32 << exponent.min(20))
        .min(MAX_RETRY_BACKOFF);
    let random =
        std::collections::hash_map::RandomState::new().hash_one((id, attempt, Instant::now()));
    let jitter = 0.8 + 0.4 * f64::from(u32::try_from(random % 10_000).unwrap_or(0)) / 10_000.0;
    delay.mul_f64(jitter)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        for attempt in 1..=5 {
            let expected = 2f64.powi(attempt - 1);
            let got = retry_backoff(base, attempt, 42).as_secs_f64();
            assert!(
                got >= expected * 0.8 - 1e-9 && got <= expected * 1.2 + 1e-9,
                "{attempt}: {got}"
            );
        }
        assert!(retry_backoff(base, 40, 1) <= MAX_RETRY_BACKOFF.mul_f64(1.2));
    }

    #[test]
    fn stream_backoff_grows_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }
}

//! A model-based property test of delivery (DESIGN 2.4 and 2.5).
//!
//! Random sequences of publishes, polls, acks, nacks, lease expiries, cleanups, heartbeats and
//! requeues run on one stream, one consumer group and 2-3 members, and after every step the
//! database and the subscribers must agree with an in-memory model of what each message is:
//! ready, leased (to whom, under which lease token, expired or not), acknowledged or a dead
//! letter, and how many attempts it has used.
//!
//! Time travel is allowed here: a lease expiry is a direct `UPDATE` that moves the member's
//! leases a day into the past, and a member goes silent by moving its heartbeat an hour back,
//! so that no step has to wait out a visibility timeout or a silence limit. The only real
//! waiting is for the reaper (see [`Harness::poll`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dabgent_mq::sea_orm::{ConnectionTrait, Statement};
use dabgent_mq::topic::matches;
use dabgent_mq::{Message, MessageQueue, MqError, SubscribeOptions, Subscriber};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::common;

const GROUP: &str = "default";
const TOPICS: [&str; 2] = ["job.a", "job.b"];
/// Topic patterns of members 0, 1 and 2. Member 0 takes every topic; it drains at the end.
const PATTERNS: [&[&str]; 3] = [&[], &["job.a"], &["*.b"]];
/// Long enough that no lease expires by itself during a case: only time travel expires one.
const VISIBILITY: Duration = Duration::from_secs(600);
/// `REAP_INTERVAL` of `src/subscriber.rs` (200 ms), plus a margin.
const REAP_WAIT: Duration = Duration::from_millis(200 + 20);
/// An id that no message has.
const UNKNOWN_ID: i64 = -7;

/// How one case is set up: the members and their options.
#[derive(Debug, Clone)]
struct Setup {
    members: usize,
    batch_sizes: Vec<u32>,
    poll_timeouts: Vec<Duration>,
    max_attempts: i32,
}

/// One step. Members are taken modulo the number of members, or, for an operation on leases
/// held, modulo the members that hold some (see [`Harness::member`]).
#[derive(Debug, Clone)]
enum Op {
    /// One message per entry of `topics` (indexes into [`TOPICS`]), all with `priority`;
    /// several go through `publish_batch`.
    Publish {
        priority: i32,
        topics: Vec<usize>,
    },
    Poll(usize),
    /// `held`: one of the ids in the member's `leased()` (if any), else any other id.
    Ack {
        member: usize,
        held: bool,
        pick: Index,
    },
    /// Some of the ids the member holds, plus, with `stranger`, one it does not.
    AckBatch {
        member: usize,
        picks: Vec<Index>,
        stranger: Option<Index>,
    },
    Nack {
        member: usize,
        held: bool,
        pick: Index,
    },
    /// The member's leases run out (time travel), as if it had stalled.
    ExpireLeases(usize),
    Heartbeat(usize),
    /// The members flagged go silent (time travel); then `cleanup_expired_consumers`.
    Cleanup(Vec<bool>),
    RequeueDeadLetters,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        2usize..=3,
        prop::collection::vec(1u32..=5, 3),
        prop::collection::vec(prop::sample::select(vec![0u64, 1, 5, 20]), 3),
        1i32..=3,
    )
        .prop_map(|(members, batch_sizes, timeouts, max_attempts)| Setup {
            members,
            batch_sizes,
            poll_timeouts: timeouts.into_iter().map(Duration::from_millis).collect(),
            max_attempts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let member = 0usize..3;
    prop_oneof![
        3 => (
            prop::sample::select(vec![-1, 0, 0, 5]),
            prop::collection::vec(0usize..TOPICS.len(), 1..=4),
        )
            .prop_map(|(priority, topics)| Op::Publish { priority, topics }),
        5 => member.clone().prop_map(Op::Poll),
        3 => (member.clone(), prop::bool::weighted(0.75), any::<Index>())
            .prop_map(|(member, held, pick)| Op::Ack { member, held, pick }),
        1 => (
            member.clone(),
            prop::collection::vec(any::<Index>(), 0..4),
            prop::option::weighted(0.25, any::<Index>()),
        )
            .prop_map(|(member, picks, stranger)| Op::AckBatch { member, picks, stranger }),
        3 => (member.clone(), prop::bool::weighted(0.85), any::<Index>())
            .prop_map(|(member, held, pick)| Op::Nack { member, held, pick }),
        1 => member.clone().prop_map(Op::ExpireLeases),
        1 => member.prop_map(Op::Heartbeat),
        1 => prop::collection::vec(any::<bool>(), 3).prop_map(Op::Cleanup),
        1 => Just(Op::RequeueDeadLetters),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Leased { member: usize, expired: bool },
    Acked,
    Dead,
}

#[derive(Debug, Clone)]
struct Msg {
    id: i64,
    offset: i64,
    topic: usize,
    priority: i32,
    state: State,
    /// Claims that counted as attempts (the `attempt` of its latest delivery).
    attempts: i32,
    /// The lease token of its latest claim (0: never claimed).
    token: i64,
}

/// Whether a member is in the registry. A member removed by a cleanup registers again at its
/// next heartbeat, or at a poll once a second has passed since it last touched the registry
/// (`TOUCH_INTERVAL`): that poll makes its state `Maybe` until observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registered {
    Yes,
    No,
    Maybe,
}

/// What an ack, nack or batch ack must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NotLeased(i64),
    LeaseLost(i64),
}

impl Outcome {
    fn of(result: &dabgent_mq::Result<()>) -> Option<Outcome> {
        match result {
            Ok(()) => Some(Outcome::Ok),
            Err(MqError::NotLeased(id)) => Some(Outcome::NotLeased(*id)),
            Err(MqError::LeaseLost(id)) => Some(Outcome::LeaseLost(*id)),
            Err(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Model {
    members: usize,
    batch_sizes: Vec<u32>,
    max_attempts: i32,
    /// Every published message, in offset order.
    msgs: Vec<Msg>,
    by_id: HashMap<i64, usize>,
    /// What each member's `leased()` holds: message id -> the token of its claim. An entry is
    /// stale when that claim is no longer the message's current lease.
    local: Vec<BTreeMap<i64, i64>>,
    registered: Vec<Registered>,
}

impl Model {
    fn new(setup: &Setup) -> Self {
        Model {
            members: setup.members,
            batch_sizes: setup.batch_sizes.clone(),
            max_attempts: setup.max_attempts,
            msgs: Vec::new(),
            by_id: HashMap::new(),
            local: vec![BTreeMap::new(); setup.members],
            registered: vec![Registered::Yes; setup.members],
        }
    }

    fn msg(&self, id: i64) -> Option<&Msg> {
        self.by_id.get(&id).map(|&i| &self.msgs[i])
    }

    fn msg_mut(&mut self, id: i64) -> &mut Msg {
        let i = self.by_id[&id];
        &mut self.msgs[i]
    }

    fn count(&self, f: impl Fn(State) -> bool) -> u64 {
        self.msgs.iter().filter(|m| f(m.state)).count() as u64
    }

    fn any_expired(&self) -> bool {
        self.msgs
            .iter()
            .any(|m| matches!(m.state, State::Leased { expired: true, .. }))
    }

    fn wants(member: usize, topic: usize) -> bool {
        let patterns = PATTERNS[member];
        patterns.is_empty() || patterns.iter().any(|p| matches(p, TOPICS[topic]))
    }

    /// Whether `member`'s entry for `id` is the message's current lease.
    fn holds(&self, member: usize, id: i64) -> bool {
        match (self.local[member].get(&id), self.msg(id)) {
            (Some(&token), Some(msg)) => {
                msg.token == token
                    && matches!(msg.state, State::Leased { member: m, .. } if m == member)
            }
            _ => false,
        }
    }

    /// The reaper: expired leases become ready again, or dead letters once they have used
    /// `max_attempts` (the attempt was counted when the lease was taken).
    fn reap(&mut self) {
        let max = self.max_attempts;
        for msg in &mut self.msgs {
            if matches!(msg.state, State::Leased { expired: true, .. }) {
                msg.state = if msg.attempts >= max {
                    State::Dead
                } else {
                    State::Ready
                };
            }
        }
    }

    /// A claim: the member's best `batch_size` ready messages (higher priority first, then
    /// lower offset) get a new lease token and count an attempt. One that has already used
    /// `max_attempts` (released by a cleanup) becomes a dead letter instead of being
    /// delivered, and does not take a place in the batch: the claim goes on with the next
    /// ready messages. Returns the delivered ids in claim order.
    fn claim(&mut self, member: usize) -> Vec<i64> {
        let batch = self.batch_sizes[member] as usize;
        let mut delivered = Vec::new();
        loop {
            let mut picked: Vec<usize> = (0..self.msgs.len())
                .filter(|&i| {
                    self.msgs[i].state == State::Ready && Self::wants(member, self.msgs[i].topic)
                })
                .collect();
            picked.sort_by_key(|&i| (Reverse(self.msgs[i].priority), self.msgs[i].offset));
            picked.truncate(batch - delivered.len());
            let mut died = false;
            for i in picked {
                let msg = &mut self.msgs[i];
                msg.token += 1;
                if msg.attempts >= self.max_attempts {
                    msg.state = State::Dead;
                    died = true;
                } else {
                    msg.attempts += 1;
                    msg.state = State::Leased {
                        member,
                        expired: false,
                    };
                    self.local[member].insert(msg.id, msg.token);
                    delivered.push(msg.id);
                }
            }
            if !died || delivered.len() == batch {
                return delivered;
            }
        }
    }

    fn ack(&mut self, member: usize, id: i64) -> Outcome {
        if !self.local[member].contains_key(&id) {
            return Outcome::NotLeased(id);
        }
        let held = self.holds(member, id);
        self.local[member].remove(&id);
        if held {
            self.msg_mut(id).state = State::Acked;
            Outcome::Ok
        } else {
            Outcome::LeaseLost(id)
        }
    }

    fn ack_batch(&mut self, member: usize, ids: &[i64]) -> Outcome {
        if let Some(&id) = ids.iter().find(|id| !self.local[member].contains_key(id)) {
            return Outcome::NotLeased(id);
        }
        let mut outcome = Outcome::Ok;
        for &id in ids {
            if let Outcome::LeaseLost(id) = self.ack(member, id)
                && outcome == Outcome::Ok
            {
                outcome = Outcome::LeaseLost(id);
            }
        }
        outcome
    }

    /// With a zero retry backoff a nacked message is ready again at once.
    fn nack(&mut self, member: usize, id: i64) -> Outcome {
        if !self.local[member].contains_key(&id) {
            return Outcome::NotLeased(id);
        }
        let held = self.holds(member, id);
        self.local[member].remove(&id);
        if !held {
            return Outcome::LeaseLost(id);
        }
        let max = self.max_attempts;
        let msg = self.msg_mut(id);
        msg.state = if msg.attempts >= max {
            State::Dead
        } else {
            State::Ready
        };
        Outcome::Ok
    }

    fn expire(&mut self, member: usize) -> u64 {
        let mut n = 0;
        for msg in &mut self.msgs {
            if let State::Leased { member: m, expired } = &mut msg.state
                && *m == member
            {
                *expired = true;
                n += 1;
            }
        }
        n
    }

    /// `heartbeat()`: registers the member again if it was removed, extends the leases it
    /// still holds (an expired one that nobody reaped yet included) and forgets lost ones.
    fn heartbeat(&mut self, member: usize) {
        self.registered[member] = Registered::Yes;
        let ids: Vec<i64> = self.local[member].keys().copied().collect();
        for id in ids {
            if self.holds(member, id) {
                self.msg_mut(id).state = State::Leased {
                    member,
                    expired: false,
                };
            } else {
                self.local[member].remove(&id);
            }
        }
    }

    /// The member was removed by a cleanup: its leases are released at once, whatever their
    /// attempts (a message that has used them all dies at its next claim).
    fn remove(&mut self, member: usize) {
        self.registered[member] = Registered::No;
        for msg in &mut self.msgs {
            if matches!(msg.state, State::Leased { member: m, .. } if m == member) {
                msg.state = State::Ready;
            }
        }
    }

    fn requeue(&mut self) -> u64 {
        let mut n = 0;
        for msg in &mut self.msgs {
            if msg.state == State::Dead {
                msg.state = State::Ready;
                msg.attempts = 0;
                n += 1;
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test, stepped beside the model

/// A delivery row of the group, as stored.
#[derive(Debug)]
struct Row {
    offset: i64,
    priority: i32,
    state: i32,
    attempts: i32,
    token: Option<i64>,
    consumer: Option<String>,
    expires_at: Option<i64>,
}

struct Harness<'a> {
    queue: &'a MessageQueue,
    stream: String,
    group_id: i64,
    subs: Vec<Subscriber>,
    model: Model,
    /// When each member's last poll returned.
    last_poll: Vec<Option<Instant>>,
    /// Attempt number of each message's previous delivery (reset by a requeue).
    last_attempt: HashMap<i64, i32>,
    /// The steps so far, for failure messages.
    trace: Vec<String>,
}

/// Turns an unexpected error into a test failure naming what failed.
trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, TestCaseError>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, TestCaseError> {
        self.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
    }
}

fn name(member: usize) -> String {
    format!("m{member}")
}

fn wall_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit in i64")
}

fn pick<T: Copy>(items: &[T], index: &Index) -> Option<T> {
    (!items.is_empty()).then(|| items[index.index(items.len())])
}

impl Harness<'_> {
    fn step(&self) -> String {
        format!(
            "step {} ({})",
            self.trace.len(),
            self.trace.last().map_or("", String::as_str)
        )
    }

    async fn exec(&self, sql: String) -> Result<u64, TestCaseError> {
        let conn = self.queue.connection();
        Ok(conn
            .execute_unprepared(&sql)
            .await
            .or_fail(&sql)?
            .rows_affected())
    }

    async fn rows(&self) -> Result<HashMap<i64, Row>, TestCaseError> {
        let conn = self.queue.connection();
        let sql = format!(
            "SELECT message_id, stream_offset, priority, CAST(state AS INTEGER), attempts, \
                    lease_token, consumer_id, lease_expires_at \
             FROM mq_deliveries WHERE group_id = {}",
            self.group_id
        );
        let rows = conn
            .query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
            .await
            .or_fail("reading delivery rows")?;
        let mut out = HashMap::new();
        for row in rows {
            let read = || -> Result<(i64, Row), dabgent_mq::sea_orm::DbErr> {
                Ok((
                    row.try_get_by_index(0)?,
                    Row {
                        offset: row.try_get_by_index(1)?,
                        priority: row.try_get_by_index(2)?,
                        state: row.try_get_by_index(3)?,
                        attempts: row.try_get_by_index(4)?,
                        token: row.try_get_by_index(5)?,
                        consumer: row.try_get_by_index(6)?,
                        expires_at: row.try_get_by_index(7)?,
                    },
                ))
            };
            let (id, row) = read().or_fail("decoding a delivery row")?;
            out.insert(id, row);
        }
        Ok(out)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let n = self.model.members;
        match op {
            Op::Publish { priority, topics } => self.publish(*priority, topics).await,
            Op::Poll(m) => self.poll(m % n).await.map(drop),
            Op::Ack { member, held, pick } => {
                let m = self.member(*member, *held);
                let id = self.choose(m, *held, pick);
                self.ack(m, id).await
            }
            Op::AckBatch {
                member,
                picks,
                stranger,
            } => {
                let m = self.member(*member, true);
                let held: Vec<i64> = self.model.local[m].keys().copied().collect();
                let mut ids: Vec<i64> = picks.iter().filter_map(|p| pick(&held, p)).collect();
                ids.sort_unstable();
                ids.dedup();
                if let Some(stranger) = stranger {
                    ids.push(self.choose(m, false, stranger));
                }
                self.ack_batch(m, &ids).await
            }
            Op::Nack { member, held, pick } => {
                let m = self.member(*member, *held);
                let id = self.choose(m, *held, pick);
                self.trace.push(format!("nack m{m} {id}"));
                let expected = self.model.nack(m, id);
                let got = self.subs[m].nack(id).await;
                self.expect_outcome(&got, expected)
            }
            Op::ExpireLeases(m) => self.expire(self.member(*m, true)).await,
            Op::Heartbeat(m) => {
                let m = m % n;
                self.trace.push(format!("heartbeat m{m}"));
                self.subs[m].heartbeat().await.or_fail("heartbeat")?;
                self.model.heartbeat(m);
                Ok(())
            }
            Op::Cleanup(silent) => {
                let silent: Vec<usize> = (0..n).filter(|&m| silent[m]).collect();
                self.cleanup(&silent).await
            }
            Op::RequeueDeadLetters => {
                self.trace.push("requeue dead letters".into());
                let requeued = self
                    .queue
                    .requeue_dead_letters(&self.stream, GROUP)
                    .await
                    .or_fail("requeue_dead_letters")?;
                // A requeued message starts counting its attempts afresh (DESIGN 2.5).
                for msg in &self.model.msgs {
                    if msg.state == State::Dead {
                        self.last_attempt.remove(&msg.id);
                    }
                }
                let expected = self.model.requeue();
                prop_assert_eq!(requeued, expected, "{}: requeued count", self.step());
                Ok(())
            }
        }
    }

    /// The member an operation acts on; when it wants one that holds leases (in its
    /// `leased()`), one of those if any.
    fn member(&self, raw: usize, holding: bool) -> usize {
        let holders: Vec<usize> = (0..self.model.members)
            .filter(|&m| !self.model.local[m].is_empty())
            .collect();
        match holders.len() {
            0 => raw % self.model.members,
            _ if !holding => raw % self.model.members,
            len => holders[raw % len],
        }
    }

    /// An id the member holds in its `leased()` (when `held` and it has any), or one it does
    /// not: another published message (leased elsewhere, ready, acked or dead) or no message.
    fn choose(&self, member: usize, held: bool, index: &Index) -> i64 {
        let local = &self.model.local[member];
        let mine: Vec<i64> = local.keys().copied().collect();
        if held && let Some(id) = pick(&mine, index) {
            return id;
        }
        let mut others: Vec<i64> = self
            .model
            .msgs
            .iter()
            .map(|m| m.id)
            .filter(|id| !local.contains_key(id))
            .collect();
        others.push(UNKNOWN_ID);
        pick(&others, index).unwrap_or(UNKNOWN_ID)
    }

    async fn publish(&mut self, priority: i32, topics: &[usize]) -> Result<(), TestCaseError> {
        self.trace
            .push(format!("publish {} at priority {priority}", topics.len()));
        let first = i64::try_from(self.model.msgs.len()).expect("few messages") + 1;
        let ids = if let [topic] = topics {
            let payload = json!({ "offset": first });
            vec![
                self.queue
                    .publish_with_priority(&self.stream, TOPICS[*topic], payload, priority)
                    .await
                    .or_fail("publish_with_priority")?,
            ]
        } else {
            let messages: Vec<Message> = topics
                .iter()
                .zip(first..)
                .map(|(&t, offset)| {
                    Message::new(&self.stream, TOPICS[t], json!({ "offset": offset }))
                        .with_priority(priority)
                })
                .collect();
            self.queue
                .publish_batch(messages)
                .await
                .or_fail("publish_batch")?
        };
        prop_assert_eq!(ids.len(), topics.len(), "{}: ids returned", self.step());
        for ((&id, &topic), offset) in ids.iter().zip(topics).zip(first..) {
            prop_assert!(
                !self.model.by_id.contains_key(&id),
                "{}: id {} given twice",
                self.step(),
                id
            );
            self.model.by_id.insert(id, self.model.msgs.len());
            self.model.msgs.push(Msg {
                id,
                offset,
                topic,
                priority,
                state: State::Ready,
                attempts: 0,
                token: 0,
            });
        }
        Ok(())
    }

    /// Polls as `member` and checks what comes back against the model.
    ///
    /// Expired leases return to the ready set only when a claim reaps, and a subscriber reaps
    /// at its first claim and then at most every `REAP_INTERVAL` (200 ms; the documented
    /// "ready again within about 200 ms"). So when the model has expired leases, the poll
    /// first waits until `REAP_WAIT` has passed since this member's previous poll returned:
    /// its first claim then reaps for certain, as a real consumer's would after that long,
    /// and the model reaps before claiming. Without expired leases a reap changes nothing, and
    /// leases never expire by themselves here (`VISIBILITY`), so the model stays exact.
    ///
    /// A poll that finds nothing claims again until its timeout passes; those claims change
    /// nothing either, since nothing becomes ready by itself here (no delays, and a nacked
    /// message is ready at once with a zero retry backoff).
    async fn poll(&mut self, member: usize) -> Result<Vec<i64>, TestCaseError> {
        self.trace.push(format!("poll m{member}"));
        if self.model.any_expired()
            && let Some(last) = self.last_poll[member]
        {
            let due = last + REAP_WAIT;
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let got = self.subs[member].poll().await.or_fail("poll")?;
        self.last_poll[member] = Some(Instant::now());
        if self.model.registered[member] == Registered::No {
            self.model.registered[member] = Registered::Maybe;
        }
        let ids: Vec<i64> = got.iter().map(|m| m.id).collect();

        self.model.reap();
        let expected = self.model.claim(member);
        if ids != expected {
            return Err(TestCaseError::fail(format!(
                "{}: poll returned {ids:?}, the model expected {expected:?}; batch size {}, \
                 max attempts {}, messages (id, offset, priority, state, attempts): {:?}",
                self.step(),
                self.model.batch_sizes[member],
                self.model.max_attempts,
                self.model
                    .msgs
                    .iter()
                    .map(|m| (m.id, m.offset, m.priority, m.state, m.attempts))
                    .collect::<Vec<_>>()
            )));
        }
        for message in &got {
            let expected = self.model.msg(message.id).expect("delivered ids are known");
            prop_assert_eq!(&message.stream, &self.stream);
            prop_assert_eq!(message.offset, expected.offset, "{}: offset", self.step());
            prop_assert_eq!(&message.topic, TOPICS[expected.topic]);
            prop_assert_eq!(message.priority, expected.priority);
            prop_assert_eq!(&message.payload, &json!({ "offset": expected.offset }));
            prop_assert_eq!(
                message.attempt,
                expected.attempts,
                "{}: attempt of {}",
                self.step(),
                message.id
            );
            // Attempts never go down: each delivery of a message counts one more.
            let previous = self.last_attempt.insert(message.id, message.attempt);
            prop_assert!(
                previous.is_none_or(|p| message.attempt > p),
                "{}: message {} delivered at attempt {} after attempt {:?}",
                self.step(),
                message.id,
                message.attempt,
                previous
            );
        }
        Ok(ids)
    }

    async fn ack(&mut self, member: usize, id: i64) -> Result<(), TestCaseError> {
        self.trace.push(format!("ack m{member} {id}"));
        let expected = self.model.ack(member, id);
        let got = self.subs[member].ack(id).await;
        self.expect_outcome(&got, expected)
    }

    async fn ack_batch(&mut self, member: usize, ids: &[i64]) -> Result<(), TestCaseError> {
        self.trace.push(format!("ack_batch m{member} {ids:?}"));
        let expected = self.model.ack_batch(member, ids);
        let got = self.subs[member].ack_batch(ids).await;
        self.expect_outcome(&got, expected)
    }

    fn expect_outcome(
        &self,
        got: &dabgent_mq::Result<()>,
        expected: Outcome,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            Outcome::of(got),
            Some(expected),
            "{}: returned {:?}",
            self.step(),
            got
        );
        Ok(())
    }

    async fn expire(&mut self, member: usize) -> Result<(), TestCaseError> {
        self.trace.push(format!("expire leases of m{member}"));
        let moved = self
            .exec(format!(
                "UPDATE mq_deliveries SET lease_expires_at = lease_expires_at - 86400000 \
                 WHERE group_id = {} AND consumer_id = '{}' AND state = 1",
                self.group_id,
                name(member)
            ))
            .await?;
        let expected = self.model.expire(member);
        prop_assert_eq!(moved, expected, "{}: leases moved", self.step());
        Ok(())
    }

    /// The `silent` members stop heartbeating (their last heartbeat moves an hour back), then
    /// a cleanup removes the registered ones and releases their leases at once. With every
    /// member silent the cleanup runs with a silence limit of 0 s; otherwise with 60 s,
    /// because 0 s would also remove the others: a member touches the registry at most once
    /// a second, so by 0 s everyone is silent.
    async fn cleanup(&mut self, silent: &[usize]) -> Result<(), TestCaseError> {
        self.trace.push(format!("cleanup, silent: {silent:?}"));
        let registered: BTreeSet<String> = self
            .queue
            .consumers(&self.stream)
            .await
            .or_fail("consumers")?
            .into_iter()
            .map(|c| c.consumer_id)
            .collect();
        for m in 0..self.model.members {
            let is = registered.contains(&name(m));
            match self.model.registered[m] {
                Registered::Yes => prop_assert!(is, "{}: m{} not registered", self.step(), m),
                Registered::No => prop_assert!(!is, "{}: m{} registered", self.step(), m),
                Registered::Maybe => {}
            }
            self.model.registered[m] = if is { Registered::Yes } else { Registered::No };
        }
        if !silent.is_empty() {
            let names: Vec<String> = silent.iter().map(|&m| format!("'{}'", name(m))).collect();
            self.exec(format!(
                "UPDATE mq_consumers SET last_heartbeat_at = last_heartbeat_at - 3600000 \
                 WHERE group_id = {} AND consumer_id IN ({})",
                self.group_id,
                names.join(", ")
            ))
            .await?;
        }
        let limit = if silent.len() == self.model.members {
            0
        } else {
            60
        };
        let removed = self
            .queue
            .cleanup_expired_consumers(limit)
            .await
            .or_fail("cleanup_expired_consumers")?;
        let mut expected = 0;
        for &m in silent {
            if self.model.registered[m] == Registered::Yes {
                self.model.remove(m);
                expected += 1;
            }
        }
        prop_assert_eq!(removed, expected, "{}: members removed", self.step());
        Ok(())
    }

    /// Compares everything observable with the model.
    async fn check(&self) -> Result<(), TestCaseError> {
        let step = self.step();
        let model = &self.model;

        // What each member believes it holds.
        for (m, sub) in self.subs.iter().enumerate() {
            let local: Vec<i64> = model.local[m].keys().copied().collect();
            prop_assert_eq!(sub.leased(), local, "{}: leased() of m{}", &step, m);
        }

        // Every published message is exactly one of ready, leased, acked (its delivery row
        // deleted) or dead, with the attempts and lease token of the model; a message not yet
        // materialized (no claim since it was published) is ready.
        let rows = self.rows().await?;
        let now = wall_ms();
        for msg in &model.msgs {
            let Some(row) = rows.get(&msg.id) else {
                prop_assert!(
                    msg.state == State::Acked || (msg.state == State::Ready && msg.token == 0),
                    "{}: message {} has no delivery row but is {:?} in the model",
                    &step,
                    msg.id,
                    msg
                );
                continue;
            };
            let (state, consumer) = match msg.state {
                State::Ready => (0, None),
                State::Leased { member, .. } => (1, Some(name(member))),
                State::Dead => (2, None),
                State::Acked => {
                    return Err(TestCaseError::fail(format!(
                        "{step}: acked message {} still has its delivery row {row:?}",
                        msg.id
                    )));
                }
            };
            let what = format!("{step}: message {} (model {msg:?}, row {row:?})", msg.id);
            prop_assert_eq!(row.state, state, "{}", &what);
            prop_assert_eq!(&row.consumer, &consumer, "{}", &what);
            prop_assert_eq!(row.attempts, msg.attempts, "{}", &what);
            prop_assert_eq!(row.token.unwrap_or(0), msg.token, "{}", &what);
            prop_assert_eq!((row.offset, row.priority), (msg.offset, msg.priority));
            if let State::Leased { member, expired } = msg.state {
                let expires_at = row.expires_at.unwrap_or(i64::MIN);
                prop_assert_eq!(expires_at < now, expired, "{}: expiry", &what);
                // No message is held by two members. The row names one holder and token
                // (both equal to the model's, above), the holder lists the message in its
                // `leased()` under that token, and any other member that lists it (checked
                // equal to the model too) has a stale entry from an earlier claim, which its
                // ack, nack or heartbeat cannot use.
                prop_assert!(model.holds(member, msg.id), "{}", &what);
                for other in (0..model.members).filter(|&o| o != member) {
                    prop_assert!(!model.holds(other, msg.id), "{}: also m{}", &what, other);
                }
            }
        }
        prop_assert!(
            rows.keys().all(|id| model.by_id.contains_key(id)),
            "{}: delivery rows of unknown messages",
            &step
        );

        let stats = self
            .queue
            .group_stats(&self.stream, GROUP)
            .await
            .or_fail("group_stats")?;
        let ready = model.count(|s| s == State::Ready);
        let in_flight = model.count(|s| matches!(s, State::Leased { .. }));
        let dead = model.count(|s| s == State::Dead);
        prop_assert_eq!(
            (stats.ready, stats.in_flight, stats.delayed, stats.dead),
            (ready, in_flight, 0, dead),
            "{}: group_stats {:?}",
            &step,
            stats
        );
        prop_assert_eq!(stats.lag, ready + in_flight + dead);
        prop_assert_eq!(stats.oldest_ready_age.is_some(), ready > 0);

        let dead_letters: Vec<(i64, i32)> = self
            .queue
            .dead_letters(&self.stream, GROUP)
            .await
            .or_fail("dead_letters")?
            .iter()
            .map(|m| (m.id, m.attempt))
            .collect();
        let expected: Vec<(i64, i32)> = model
            .msgs
            .iter()
            .filter(|m| m.state == State::Dead)
            .map(|m| (m.id, m.attempts))
            .collect();
        prop_assert_eq!(dead_letters, expected, "{}: dead letters", &step);
        Ok(())
    }

    /// Acks everything: first what each member holds (stale entries fail with `LeaseLost`),
    /// then member 0 (every topic) polls and acks until the model has nothing ready.
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        for m in 0..self.model.members {
            let held: Vec<i64> = self.model.local[m].keys().copied().collect();
            for id in held {
                self.ack(m, id).await?;
                self.check().await?;
            }
        }
        let mut rounds = 0;
        while self.model.count(|s| s == State::Ready) > 0 {
            rounds += 1;
            prop_assert!(rounds < 500, "drain does not end");
            let ids = self.poll(0).await?;
            self.check().await?;
            if !ids.is_empty() {
                self.ack_batch(0, &ids).await?;
                self.check().await?;
            }
        }
        let stats = self
            .queue
            .group_stats(&self.stream, GROUP)
            .await
            .or_fail("group_stats")?;
        prop_assert_eq!(
            (stats.ready, stats.in_flight, stats.delayed),
            (0, 0, 0),
            "after draining: {:?}",
            stats
        );
        Ok(())
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// Runs one case on a stream of its own, in the test's database.
async fn run_case(queue: &MessageQueue, setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    // The previous case's subscribers deregister as they drop, in the background; a cleanup
    // with a silence limit of 0 s would count any left.
    let conn = queue.connection();
    let waited = Instant::now();
    while common::count(conn, "mq_consumers").await > 0 {
        prop_assert!(
            waited.elapsed() < Duration::from_secs(10),
            "dropped subscribers did not deregister"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let stream = format!("model_{}", CASE.fetch_add(1, Ordering::Relaxed));
    queue
        .create_stream(&stream)
        .await
        .or_fail("create_stream")?;
    let mut subs = Vec::new();
    for (m, patterns) in PATTERNS.iter().enumerate().take(setup.members) {
        let options = SubscribeOptions::new(&stream)
            .group(GROUP)
            .consumer_id(name(m))
            .topics(patterns.iter().map(ToString::to_string).collect())
            .batch_size(setup.batch_sizes[m])
            .poll_timeout(setup.poll_timeouts[m])
            .visibility_timeout(VISIBILITY)
            .max_attempts(setup.max_attempts)
            .retry_backoff(Duration::ZERO);
        subs.push(
            queue
                .subscribe_with_options(options)
                .await
                .or_fail("subscribe")?,
        );
    }
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT g.id FROM mq_consumer_groups g JOIN mq_streams s ON s.id = g.stream_id \
                 WHERE s.name = '{stream}' AND g.name = '{GROUP}'"
            ),
        ))
        .await
        .or_fail("finding the group")?
        .expect("the group exists");
    let group_id: i64 = row.try_get_by_index(0).or_fail("group id")?;

    let mut harness = Harness {
        queue,
        stream,
        group_id,
        subs,
        model: Model::new(setup),
        last_poll: vec![None; setup.members],
        last_attempt: HashMap::new(),
        trace: Vec::new(),
    };
    for op in ops {
        harness.apply(op).await?;
        harness.check().await?;
    }
    harness.drain().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operation_sequences_agree_with_the_delivery_model() {
    let (queue, _db) = common::queue("model").await;
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (setup(), prop::collection::vec(op(), 1..=30));
    let handle = tokio::runtime::Handle::current();
    runner
        .run(&strategy, |(setup, ops)| {
            tokio::task::block_in_place(|| handle.block_on(run_case(&queue, &setup, &ops)))
        })
        .unwrap();
}

/// The case the model test found: a cleanup releases messages that have used their attempts;
/// the next claim buries them as dead letters, and must still deliver what is ready behind
/// them instead of coming back empty (a waiting poll then slept on them).
#[tokio::test]
async fn a_claim_skips_released_messages_that_used_their_attempts() {
    let (queue, _db) = common::queue("model_buried").await;
    queue.create_stream("jobs").await.unwrap();
    let ids = queue
        .publish_batch(
            (1..=3)
                .map(|i| Message::new("jobs", "job.a", json!({ "offset": i })))
                .collect(),
        )
        .await
        .unwrap();
    let options = |id: &str| {
        SubscribeOptions::new("jobs")
            .consumer_id(id)
            .batch_size(2)
            .max_attempts(1)
            .poll_timeout(Duration::ZERO)
    };
    let mut crashed = queue
        .subscribe_with_options(options("crashed"))
        .await
        .unwrap();
    let mut alive = queue
        .subscribe_with_options(options("alive"))
        .await
        .unwrap();
    let first: Vec<i64> = crashed.poll().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(first, ids[..2]);
    queue
        .connection()
        .execute_unprepared(
            "UPDATE mq_consumers SET last_heartbeat_at = last_heartbeat_at - 3600000 \
             WHERE consumer_id = 'crashed'",
        )
        .await
        .unwrap();
    assert_eq!(queue.cleanup_expired_consumers(60).await.unwrap(), 1);

    let next: Vec<i64> = alive.poll().await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(
        next,
        ids[2..],
        "the poll must look past the buried messages"
    );
    let dead: Vec<(i64, i32)> = queue
        .dead_letters("jobs", GROUP)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.id, m.attempt))
        .collect();
    assert_eq!(dead, vec![(ids[0], 1), (ids[1], 1)]);
    assert!(matches!(
        crashed.ack(ids[0]).await,
        Err(MqError::LeaseLost(id)) if id == ids[0]
    ));
}

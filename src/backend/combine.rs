//! Group commit for subscribers' claims and acknowledgements on a SQLite file. Crate-private.
//!
//! All of a queue's writes to a SQLite file go through one connection, one at a time (see
//! [`WriteGate`]). Each write costs a round trip to the driver's worker thread and a commit,
//! and on a small machine the round trip alone costs more than claiming or acknowledging one
//! message. So the claims and acks that arrive while another write is in flight are queued,
//! and one task sends everything queued as one script (`sqlite::run_combined`): a single call and
//! a single commit for all of them. Each piece of the script tags its `RETURNING` rows with a
//! number of its own, so every caller gets back exactly its own rows.
//!
//! The pieces run one after another under SQLite's write lock, as they would in transactions
//! of their own, and are only committed together: what each piece sees and does is the same.
//! If the script fails, it is rolled back and every piece runs again on its own, so each
//! caller gets its own result and one caller's failure never fails the others. A write with
//! nothing in flight runs at once, alone, in its caller's task.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::{DatabaseConnection, DbErr, QueryResult, Value};
use tokio::sync::oneshot;

use super::{Gate, WriteGate, sqlite};

/// Most pieces one script takes; the rest wait for the next one.
const MAX_PIECES: usize = 64;

/// Tags are unique within the process, so a piece can be built before it is known which
/// script it will go into.
static NEXT_TAG: AtomicI64 = AtomicI64::new(1);

/// Statements that run as one write, whose `RETURNING` rows all end with the column
/// [`sqlite::TAG_COLUMN`] holding the piece's tag.
pub(crate) struct Piece {
    pub(crate) sql: String,
    /// The values of the statements' anonymous parameters (`?`), in order.
    pub(crate) values: Vec<Value>,
    pub(crate) tag: i64,
}

impl Piece {
    /// A tag for a new piece.
    pub(crate) fn next_tag() -> i64 {
        NEXT_TAG.fetch_add(1, Ordering::Relaxed)
    }
}

type Reply = oneshot::Sender<Result<Vec<QueryResult>, DbErr>>;

/// The pieces waiting for the writing task.
#[derive(Default)]
pub(super) struct Combiner {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<(Piece, Reply)>,
    /// Whether a piece is being written; whoever writes takes what is pending until nothing is.
    writing: bool,
}

impl fmt::Debug for Combiner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Combiner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WriteGate {
    /// Runs `piece` as one of this process's writes and returns its rows: combined with the
    /// pieces that other tasks submit meanwhile on a gate with its own writer, else alone, in
    /// a turn, on `pool`.
    ///
    /// Cancellation: a caller that stops waiting does not stop its piece, which may still be
    /// written (its rows are then lost with the caller), and never strands the pieces of
    /// others: queued pieces are written by a task of their own.
    pub(crate) async fn run(
        &self,
        pool: &DatabaseConnection,
        piece: Piece,
    ) -> Result<Vec<QueryResult>, DbErr> {
        match &self.0 {
            Some(gate) if gate.writer.is_some() => submit(gate, piece).await,
            // No connection of its own (PostgreSQL, an in-memory database, or the caller's
            // pool): a script's transaction could not be trusted to stay on one connection.
            _ => {
                let turn = self.enter().await;
                sqlite::run_piece(turn.conn(pool), piece).await
            }
        }
    }
}

async fn submit(gate: &Arc<Gate>, piece: Piece) -> Result<Vec<QueryResult>, DbErr> {
    let inline = !std::mem::replace(&mut gate.combiner.state().writing, true);
    if inline {
        let handover = Handover(gate);
        let result = async {
            let writer = gate.writer.as_ref().ok_or_else(no_writer)?;
            let _turn = gate.turn().await;
            sqlite::run_piece(writer, piece).await
        }
        .await;
        drop(handover);
        return result;
    }
    let (reply, answer) = oneshot::channel();
    let start_writer = {
        let mut state = gate.combiner.state();
        state.pending.push_back((piece, reply));
        !std::mem::replace(&mut state.writing, true)
    };
    if start_writer {
        tokio::spawn(write_pending(gate.clone()));
    }
    answer
        .await
        .map_err(|_| DbErr::Custom("the writing task stopped before the write finished".into()))?
}

fn no_writer() -> DbErr {
    DbErr::Custom("the write gate has no connection of its own".into())
}

/// Ends an inline write: starts a writing task for whatever was queued meanwhile, or marks
/// the combiner idle. Runs on drop, so a cancelled caller hands over too.
struct Handover<'a>(&'a Arc<Gate>);

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let gate = self.0;
        let mut state = gate.combiner.state();
        if state.pending.is_empty() {
            state.writing = false;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_pending(gate.clone()));
        } else {
            // No runtime to hand over to (it is shutting down): the waiters see their replies
            // dropped and report an error.
            state.pending.clear();
            state.writing = false;
        }
    }
}

async fn write_pending(gate: Arc<Gate>) {
    let Some(writer) = gate.writer.clone() else {
        let mut state = gate.combiner.state();
        state.pending.clear();
        state.writing = false;
        return;
    };
    loop {
        // The callers answered by the previous script come back at once (a subscriber acks
        // what it was just given, or polls again); let them queue before taking the batch.
        tokio::task::yield_now().await;
        let turn = gate.turn().await;
        let batch: Vec<(Piece, Reply)> = {
            let mut state = gate.combiner.state();
            if state.pending.is_empty() {
                state.writing = false;
                return;
            }
            let n = state.pending.len().min(MAX_PIECES);
            state.pending.drain(..n).collect()
        };
        write_combined(&writer, batch).await;
        drop(turn);
    }
}

async fn write_combined(writer: &DatabaseConnection, batch: Vec<(Piece, Reply)>) {
    if batch.len() == 1 {
        for (piece, reply) in batch {
            let _ = reply.send(sqlite::run_piece(writer, piece).await);
        }
        return;
    }
    let pieces: Vec<&Piece> = batch.iter().map(|(piece, _)| piece).collect();
    match sqlite::run_combined(writer, &pieces).await {
        Ok(rows) => {
            let mut replies: Vec<(i64, Reply, Vec<QueryResult>)> = batch
                .into_iter()
                .map(|(piece, reply)| (piece.tag, reply, Vec::new()))
                .collect();
            for (tag, row) in rows {
                if let Some(entry) = replies.iter_mut().find(|entry| entry.0 == tag) {
                    entry.2.push(row);
                }
            }
            for (_, reply, rows) in replies {
                let _ = reply.send(Ok(rows));
            }
        }
        Err(err) => {
            // Rolled back: nothing of the script was written. Each piece on its own, so that
            // every caller gets its own result (and its own error, if it was the cause).
            tracing::debug!(error = %err, pieces = batch.len(), "dabgent_mq: a combined write failed; writing its pieces one by one");
            for (piece, reply) in batch {
                let _ = reply.send(sqlite::run_piece(writer, piece).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, DatabaseConnection, QueryResult};

    use super::{Piece, WriteGate};
    use crate::backend::{connect, connect_writer, sqlite};
    use crate::options::QueueOptions;
    use crate::queue::DatabaseType;

    /// A fresh SQLite file with a table `t (v)`, its pool, and a gate with its own writer.
    async fn scratch() -> (PathBuf, DatabaseConnection, WriteGate) {
        let path = std::env::temp_dir().join(format!(
            "dabgent_mq_combine_{}_{}.db",
            std::process::id(),
            Piece::next_tag()
        ));
        let url = format!("sqlite://{}", path.display());
        let options = QueueOptions::new();
        let pool = connect(DatabaseType::Sqlite, &url, &options).await.unwrap();
        let writer = connect_writer(DatabaseType::Sqlite, &url, &options)
            .await
            .unwrap();
        pool.execute_unprepared("CREATE TABLE t (v INTEGER NOT NULL)")
            .await
            .unwrap();
        let gate = WriteGate::new(DatabaseType::Sqlite, writer);
        (path, pool, gate)
    }

    fn remove(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    fn insert(value: Option<i64>) -> Piece {
        let tag = Piece::next_tag();
        Piece {
            sql: format!(
                "INSERT INTO t (v) VALUES (?) RETURNING v, ? AS {}",
                sqlite::TAG_COLUMN
            ),
            values: vec![value.into(), tag.into()],
            tag,
        }
    }

    fn values(rows: &[QueryResult]) -> Vec<i64> {
        rows.iter()
            .map(|row| row.try_get_by_index::<i64>(0).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_piece_fails_alone_and_every_other_piece_is_written_once() {
        let (path, pool, gate) = scratch().await;

        // While a turn is held, the first piece waits inline and the rest queue; they are then
        // written as one script, in which the piece inserting NULL fails.
        let turn = gate.enter().await;
        let mut tasks = Vec::new();
        for value in [Some(1), Some(2), None, Some(3), Some(4)] {
            let (gate, pool) = (gate.clone(), pool.clone());
            tasks.push(tokio::spawn(
                async move { gate.run(&pool, insert(value)).await },
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued = gate
            .0
            .as_ref()
            .map_or(0, |g| g.combiner.state().pending.len());
        assert_eq!(queued, 4, "the pieces after the first were queued");
        drop(turn);

        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert_eq!(values(results[0].as_ref().unwrap()), [1]);
        assert_eq!(values(results[1].as_ref().unwrap()), [2]);
        assert!(results[2].is_err(), "the NULL insert fails");
        assert_eq!(values(results[3].as_ref().unwrap()), [3]);
        assert_eq!(values(results[4].as_ref().unwrap()), [4]);
        let rows = pool
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT v FROM t ORDER BY v",
            ))
            .await
            .unwrap();
        assert_eq!(
            values(&rows),
            [1, 2, 3, 4],
            "each piece written exactly once"
        );
        drop((pool, gate));
        remove(&path);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn combined_pieces_each_get_their_own_rows() {
        let (path, pool, gate) = scratch().await;
        let mut tasks = Vec::new();
        for value in 0..200 {
            let (gate, pool) = (gate.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                (value, gate.run(&pool, insert(Some(value))).await)
            }));
        }
        for task in tasks {
            let (value, rows) = task.await.unwrap();
            assert_eq!(values(&rows.unwrap()), [value]);
        }
        drop((pool, gate));
        remove(&path);
    }
}

//! Group commit for publishes. Crate-private.
//!
//! Concurrent `publish` calls on one `MessageQueue` are queued; one task at a time writes
//! everything queued in a single transaction, and whatever arrives while that transaction
//! commits goes into the next one. Each caller still gets its own ids and its own error: if a
//! combined write fails, every request in it is written again on its own, so one caller's bad
//! request (an unknown stream, say) never fails the others. A commit costs the same for one
//! message as for many, so under concurrency this multiplies throughput instead of queuing
//! writers on the stream row's lock (or on SQLite's single write lock).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use sea_orm::DbErr;
use tokio::sync::oneshot;

use crate::backend::NewMessage;
use crate::error::{MqError, Result};
use crate::queue::MessageQueue;

/// Most messages one combined transaction takes; the rest wait for the next one.
const MAX_COMBINED_MESSAGES: usize = 5000;

/// The queue of publishes waiting for the writing task.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Request>,
    /// Whether a writing task is running; it takes whatever is pending until nothing is.
    writing: bool,
}

#[derive(Debug)]
struct Request {
    messages: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<i64>>>,
}

impl Publisher {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes validated messages and returns their ids: at once, in the caller's task, when no
/// other write is in flight; otherwise queued for the write that follows the current one.
///
/// The queued writes run in a task of their own, so a caller that stops waiting (its future
/// dropped) cannot strand the requests queued behind it; its own messages may still be
/// published. A caller writing inline hands the queue over to such a task when it finishes,
/// or when it is dropped mid-write.
pub(crate) async fn submit(queue: &MessageQueue, messages: Vec<NewMessage>) -> Result<Vec<i64>> {
    let inline = !std::mem::replace(&mut queue.publisher().state().writing, true);
    if inline {
        let handover = Handover(queue);
        let result = queue.write_batch(messages).await;
        drop(handover);
        result
    } else {
        let (reply, answer) = oneshot::channel();
        let start_writer = {
            let mut state = queue.publisher().state();
            state.pending.push_back(Request { messages, reply });
            !std::mem::replace(&mut state.writing, true)
        };
        if start_writer {
            tokio::spawn(write_pending(queue.clone()));
        }
        answer.await.map_err(|_| {
            MqError::Database(DbErr::Custom(
                "the publishing task stopped before the write finished".into(),
            ))
        })?
    }
}

/// Ends an inline write: starts a writing task for whatever was queued meanwhile, or marks
/// the publisher idle. Runs on drop, so a cancelled caller hands over too.
struct Handover<'a>(&'a MessageQueue);

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let queue = self.0;
        let mut state = queue.publisher().state();
        if state.pending.is_empty() {
            state.writing = false;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write_pending(queue.clone()));
        } else {
            // No runtime to hand over to (it is shutting down): the waiters will see their
            // replies dropped and report an error.
            state.pending.clear();
            state.writing = false;
        }
    }
}

async fn write_pending(queue: MessageQueue) {
    loop {
        // The callers answered by the previous write publish again at once; let them queue
        // before taking the batch. Otherwise, with n concurrent publishers, the batches
        // alternate between the callers that had queued during a write and those answered by
        // it, and each commit carries about half of them.
        tokio::task::yield_now().await;
        let batch = {
            let mut state = queue.publisher().state();
            if state.pending.is_empty() {
                state.writing = false;
                return;
            }
            let mut batch = Vec::new();
            let mut count = 0;
            while let Some(request) = state.pending.front() {
                if !batch.is_empty() && count + request.messages.len() > MAX_COMBINED_MESSAGES {
                    break;
                }
                count += request.messages.len();
                batch.extend(state.pending.pop_front());
            }
            batch
        };
        write_combined(&queue, batch).await;
    }
}

async fn write_combined(queue: &MessageQueue, batch: Vec<Request>) {
    if batch.len() == 1 {
        for request in batch {
            let result = queue.write_batch(request.messages).await;
            let _ = request.reply.send(result);
        }
        return;
    }
    let sizes: Vec<usize> = batch.iter().map(|r| r.messages.len()).collect();
    let mut replies = Vec::with_capacity(batch.len());
    let mut all = Vec::with_capacity(sizes.iter().sum());
    for request in batch {
        all.extend(request.messages);
        replies.push(request.reply);
    }
    match queue.write_all(&all).await {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(ids.by_ref().take(size).collect()));
            }
        }
        Err(_) => {
            // Someone's request failed the whole transaction (nothing was written): write
            // each on its own, so that every caller gets its own result.
            let mut messages = all.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let mine: Vec<NewMessage> = messages.by_ref().take(size).collect();
                let result = queue.write_batch(mine).await;
                let _ = reply.send(result);
            }
        }
    }
}

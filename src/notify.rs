//! Wake-ups for waiting subscribers. Crate-private.
//!
//! Every waiting `poll` waits on its stream's [`Notify`]. Publishes through the same
//! `MessageQueue` wake it right after their commit; on PostgreSQL one listener connection per
//! queue turns `NOTIFY`s from any process into the same wake-ups. Notifications are hints: a
//! waiter also re-checks on a backstop interval, and the listener wakes everyone after each
//! reconnect, because notifications sent while it was disconnected are lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sea_orm::sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::backend::postgres;

/// Per-stream wake-up channels.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    streams: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Notifier {
    /// The wake-up channel of a stream.
    pub(crate) fn channel(&self, stream: &str) -> Arc<Notify> {
        let mut streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        streams
            .entry(stream.to_owned())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Wakes the waiters of the named streams.
    pub(crate) fn wake<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in names {
            if let Some(notify) = streams.get(name) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter, to re-check after notifications may have been lost.
    pub(crate) fn wake_all(&self) {
        let streams = self
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for notify in streams.values() {
            notify.notify_waiters();
        }
    }

    /// Wakes the waiters named by a `NOTIFY` payload: stream names separated by commas, or
    /// `*` for all.
    fn wake_payload(&self, payload: &str) {
        if payload == "*" {
            self.wake_all();
        } else {
            self.wake(payload.split(','));
        }
    }
}

/// The background task holding a queue's LISTEN connection; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    task: JoinHandle<()>,
    listening: watch::Receiver<bool>,
}

impl Listener {
    /// Starts listening on `pool` for the queue's notifications.
    pub(crate) fn start(pool: PgPool, notifier: Weak<Notifier>) -> Self {
        let (tx, listening) = watch::channel(false);
        let task = tokio::spawn(listen_forever(pool, notifier, tx));
        Listener { task, listening }
    }

    /// Waits (at most `limit`) until the listener is connected, so that a subscriber created
    /// now hears of the next publish from another process.
    pub(crate) async fn wait_listening(&self, limit: Duration) {
        let mut listening = self.listening.clone();
        let _ = tokio::time::timeout(limit, listening.wait_for(|up| *up)).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen_forever(pool: PgPool, notifier: Weak<Notifier>, listening: watch::Sender<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match postgres::listen(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                if pool.is_closed() || notifier.strong_count() == 0 {
                    return;
                }
                tracing::warn!(error = %err, retry_in = ?backoff, "dabgent_mq: LISTEN failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        listening.send_replace(true);
        // Whatever was published while the listener was away was not heard: re-check.
        match notifier.upgrade() {
            Some(notifier) => notifier.wake_all(),
            None => return,
        }
        loop {
            let received = listener.try_recv().await;
            let Some(notifier) = notifier.upgrade() else {
                return;
            };
            match received {
                Ok(Some(notification)) => notifier.wake_payload(notification.payload()),
                // The connection was lost and has been re-established.
                Ok(None) => notifier.wake_all(),
                Err(err) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %err, "dabgent_mq: listener connection lost; reconnecting");
                    listening.send_replace(false);
                    notifier.wake_all();
                    break;
                }
            }
        }
    }
}

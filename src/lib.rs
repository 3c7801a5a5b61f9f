#![doc = include_str!("lib.md")]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod backend;
mod error;
mod group;
mod message;
mod notify;
mod options;
mod payload;
mod publisher;
mod queue;
mod replay;
mod subscriber;
pub mod topic;

pub use error::{MqError, Result};
pub use group::{Consumer, GroupStats};
pub use message::Message;
pub use options::{DEFAULT_GROUP, DEFAULT_MAX_PAYLOAD_BYTES, QueueOptions, SubscribeOptions};
pub use queue::{DatabaseType, MAX_PAYLOAD_DEPTH, MessageQueue};
pub use replay::{DEFAULT_REPLAY_BATCH_SIZE, Replay, ReplayBuilder};
pub use subscriber::{Subscriber, SubscriberStream};

/// The SeaORM version this crate is built on, re-exported so that hosts use the same types.
pub use sea_orm;

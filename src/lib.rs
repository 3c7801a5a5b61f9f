#![doc = include_str!("lib.md")]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod backend;
mod error;
mod message;
mod options;
mod queue;
mod replay;
pub mod topic;

pub use error::{MqError, Result};
pub use message::Message;
pub use options::{DEFAULT_MAX_PAYLOAD_BYTES, QueueOptions};
pub use queue::{DatabaseType, MAX_PAYLOAD_DEPTH, MessageQueue};
pub use replay::{DEFAULT_REPLAY_BATCH_SIZE, Replay, ReplayBuilder};

/// The SeaORM version this crate is built on, re-exported so that hosts use the same types.
pub use sea_orm;

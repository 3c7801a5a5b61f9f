//! The test suite, on SQLite by default and on PostgreSQL when `DATABASE_URL` is set:
//!
//! ```text
//! cargo test
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo test
//! ```
//!
//! Each test gets its own migrated database (a SQLite file, or a Postgres schema), so the
//! tests run in parallel.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod common;
mod connect;
mod consume;
mod hostile;
mod migrations;
mod model;
mod processes;
mod publish;
mod replay;
mod restart;
mod topics;
mod wakeups;

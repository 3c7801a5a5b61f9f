//! SeaORM 2 entities of dabgent_mq's tables.
//!
//! The schema itself is owned by the `migration` crate; these entities only describe it, so
//! that the library (and a host application that wants to inspect the queue) can query the
//! tables with SeaORM. Times are integer epoch milliseconds.

pub mod consumer;
pub mod consumer_group;
pub mod delivery;
pub mod message;
pub mod prelude;
pub mod stream;

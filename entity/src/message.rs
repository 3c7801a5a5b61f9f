//! `mq_messages`: the immutable log of every stream.

use sea_orm::entity::prelude::*;

/// One message of a stream's log.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mq_messages")]
pub struct Model {
    /// Globally unique message id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The stream this message belongs to.
    pub stream_id: i64,
    /// Position in the stream: 1, 2, 3, ... without gaps.
    pub stream_offset: i64,
    /// Routing topic.
    pub topic: String,
    /// JSON payload (`jsonb` on PostgreSQL, text on SQLite).
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// Higher is delivered first.
    pub priority: i32,
    /// Publishing time, epoch milliseconds (database clock).
    pub created_at: i64,
    /// Not delivered before this time, epoch milliseconds.
    pub deliver_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}

//! `mq_consumers`: the registry of consumer group members.

use sea_orm::entity::prelude::*;

/// A registered member of a consumer group.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mq_consumers")]
pub struct Model {
    /// Surrogate key.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The stream consumed.
    pub stream_id: i64,
    /// The group joined.
    pub group_id: i64,
    /// Member name, unique per group.
    pub consumer_id: String,
    /// JSON array of topic patterns.
    #[sea_orm(column_type = "JsonBinary")]
    pub patterns: Json,
    /// Last sign of life, epoch milliseconds.
    pub last_heartbeat_at: i64,
    /// Highest offset this member has acknowledged.
    pub acked_offset: i64,
    /// Registration time, epoch milliseconds.
    pub created_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}

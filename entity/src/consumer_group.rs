//! `mq_consumer_groups`: named groups that share the work of one stream.

use sea_orm::entity::prelude::*;

/// A consumer group of a stream.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mq_consumer_groups")]
pub struct Model {
    /// Surrogate key.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The stream the group consumes.
    pub stream_id: i64,
    /// Group name, unique per stream.
    pub name: String,
    /// Every offset up to this one has its delivery row (or lies below the group's start).
    pub materialized_offset: i64,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}

//! `mq_streams`: one row per named, append-only log.

use sea_orm::entity::prelude::*;

/// A stream and the head of its log.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mq_streams")]
pub struct Model {
    /// Surrogate key.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Unique stream name.
    #[sea_orm(unique)]
    pub name: String,
    /// Offset of the newest message on PostgreSQL, where publishing locks this row and
    /// increments it. Not maintained on SQLite (0), which reads the head from the log.
    pub last_offset: i64,
    /// Per-stream settings (JSON object).
    #[sea_orm(column_type = "JsonBinary")]
    pub config: Json,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
}

impl ActiveModelBehavior for ActiveModel {}

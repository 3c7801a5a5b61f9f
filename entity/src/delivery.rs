//! `mq_deliveries`: the delivery state of one message for one consumer group.

use sea_orm::entity::prelude::*;

/// Delivery state of a message within a group. Acknowledged rows are deleted.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mq_deliveries")]
pub struct Model {
    /// The consumer group.
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_id: i64,
    /// The message.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: i64,
    /// Copy of the message's offset, for the claim order.
    pub stream_offset: i64,
    /// Copy of the message's priority, for the claim order.
    pub priority: i32,
    /// Copy of the message's topic, for topic filters.
    pub topic: String,
    /// 0 ready, 1 leased, 2 dead letter.
    pub state: i16,
    /// Number of claims so far.
    pub attempts: i32,
    /// Not claimable before this time, epoch milliseconds.
    pub available_at: i64,
    /// Fences acks and lease extensions: a new claim gets a new token.
    pub lease_token: Option<i64>,
    /// End of the current lease, epoch milliseconds.
    pub lease_expires_at: Option<i64>,
    /// Member holding the lease.
    pub consumer_id: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}

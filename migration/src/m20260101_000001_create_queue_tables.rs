//! The queue's five tables: streams, the message log, consumer groups, their per-message
//! delivery state, and the member registry.
//!
//! Times are integer epoch milliseconds (`BIGINT`) on both databases, so that SQLite compares
//! them as numbers, never as text in two formats.
//!
//! The two hot tables, `mq_messages` and `mq_deliveries`, have no foreign keys: every row the
//! library writes there refers to a stream, group or message it has just read or locked, and
//! nothing deletes streams, groups or messages. A foreign key would cost a lookup per inserted
//! row (on PostgreSQL a trigger and a row lock on the referenced row, for each of the
//! thousands of delivery rows a catch-up inserts) and would protect against nothing the
//! library can do. The low-volume tables keep theirs.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum MqStreams {
    Table,
    Id,
    Name,
    LastOffset,
    Config,
    CreatedAt,
}

#[derive(DeriveIden)]
enum MqMessages {
    Table,
    Id,
    StreamId,
    StreamOffset,
    Topic,
    Payload,
    Priority,
    CreatedAt,
    DeliverAt,
}

#[derive(DeriveIden)]
enum MqConsumerGroups {
    Table,
    Id,
    StreamId,
    Name,
    MaterializedOffset,
    CreatedAt,
}

#[derive(DeriveIden)]
enum MqDeliveries {
    Table,
    GroupId,
    MessageId,
    StreamOffset,
    Priority,
    Topic,
    State,
    Attempts,
    AvailableAt,
    LeaseToken,
    LeaseExpiresAt,
    ConsumerId,
}

#[derive(DeriveIden)]
enum MqConsumers {
    Table,
    Id,
    StreamId,
    GroupId,
    ConsumerId,
    Patterns,
    LastHeartbeatAt,
    AckedOffset,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MqStreams::Table)
                    .col(big_pk_auto(MqStreams::Id))
                    .col(string_len_uniq(MqStreams::Name, 255))
                    // The head of the log: each publishing transaction locks this row and
                    // increments it, which is what makes offsets gapless and commit-ordered.
                    .col(big_integer(MqStreams::LastOffset).default(0))
                    .col(json_binary(MqStreams::Config))
                    .col(big_integer(MqStreams::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MqMessages::Table)
                    .col(big_pk_auto(MqMessages::Id))
                    .col(big_integer(MqMessages::StreamId))
                    .col(big_integer(MqMessages::StreamOffset))
                    .col(string_len(MqMessages::Topic, 255))
                    .col(integer(MqMessages::Priority).default(0))
                    .col(big_integer(MqMessages::CreatedAt))
                    .col(big_integer(MqMessages::DeliverAt))
                    // Last, because SQLite reads a row's columns in order: every column after
                    // a large payload would cost a walk through its overflow pages.
                    .col(json_binary(MqMessages::Payload))
                    .to_owned(),
            )
            .await?;
        // Serves replay (range scans by offset) and guarantees one message per offset.
        manager
            .create_index(
                Index::create()
                    .name("ux_mq_messages_stream_offset")
                    .table(MqMessages::Table)
                    .col(MqMessages::StreamId)
                    .col(MqMessages::StreamOffset)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MqConsumerGroups::Table)
                    .col(big_pk_auto(MqConsumerGroups::Id))
                    .col(big_integer(MqConsumerGroups::StreamId))
                    .col(string_len(MqConsumerGroups::Name, 255))
                    // Offsets up to here have delivery rows (or lie below the group's start).
                    .col(big_integer(MqConsumerGroups::MaterializedOffset).default(0))
                    .col(big_integer(MqConsumerGroups::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mq_consumer_groups_stream")
                            .from(MqConsumerGroups::Table, MqConsumerGroups::StreamId)
                            .to(MqStreams::Table, MqStreams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_mq_consumer_groups_stream_name")
                    .table(MqConsumerGroups::Table)
                    .col(MqConsumerGroups::StreamId)
                    .col(MqConsumerGroups::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MqDeliveries::Table)
                    .col(big_integer(MqDeliveries::GroupId))
                    .col(big_integer(MqDeliveries::MessageId))
                    .col(big_integer(MqDeliveries::StreamOffset))
                    .col(integer(MqDeliveries::Priority))
                    .col(string_len(MqDeliveries::Topic, 255))
                    // 0 ready, 1 leased, 2 dead.
                    .col(small_integer(MqDeliveries::State).default(0))
                    .col(integer(MqDeliveries::Attempts).default(0))
                    .col(big_integer(MqDeliveries::AvailableAt))
                    .col(big_integer_null(MqDeliveries::LeaseToken))
                    .col(big_integer_null(MqDeliveries::LeaseExpiresAt))
                    .col(string_len_null(MqDeliveries::ConsumerId, 255))
                    .primary_key(
                        Index::create()
                            .col(MqDeliveries::GroupId)
                            .col(MqDeliveries::MessageId),
                    )
                    .to_owned(),
            )
            .await?;
        // The claim order: ready rows of a group by priority (higher first), then offset. Being
        // partial, the index holds only ready rows, so its size follows the backlog, not the
        // history, and claim cost does not grow with what was already delivered.
        manager
            .create_index(
                Index::create()
                    .name("ix_mq_deliveries_ready")
                    .table(MqDeliveries::Table)
                    .col(MqDeliveries::GroupId)
                    .col((MqDeliveries::Priority, IndexOrder::Desc))
                    .col(MqDeliveries::StreamOffset)
                    .and_where(Expr::col(MqDeliveries::State).eq(0))
                    .to_owned(),
            )
            .await?;
        // Finds expired leases without scanning the ready rows.
        manager
            .create_index(
                Index::create()
                    .name("ix_mq_deliveries_leased")
                    .table(MqDeliveries::Table)
                    .col(MqDeliveries::GroupId)
                    .col(MqDeliveries::LeaseExpiresAt)
                    .and_where(Expr::col(MqDeliveries::State).eq(1))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MqConsumers::Table)
                    .col(big_pk_auto(MqConsumers::Id))
                    .col(big_integer(MqConsumers::StreamId))
                    .col(big_integer(MqConsumers::GroupId))
                    .col(string_len(MqConsumers::ConsumerId, 255))
                    // JSON array of topic patterns.
                    .col(json_binary(MqConsumers::Patterns))
                    .col(big_integer(MqConsumers::LastHeartbeatAt))
                    .col(big_integer(MqConsumers::AckedOffset).default(0))
                    .col(big_integer(MqConsumers::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mq_consumers_stream")
                            .from(MqConsumers::Table, MqConsumers::StreamId)
                            .to(MqStreams::Table, MqStreams::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mq_consumers_group")
                            .from(MqConsumers::Table, MqConsumers::GroupId)
                            .to(MqConsumerGroups::Table, MqConsumerGroups::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_mq_consumers_group_consumer")
                    .table(MqConsumers::Table)
                    .col(MqConsumers::GroupId)
                    .col(MqConsumers::ConsumerId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_mq_consumers_stream_heartbeat")
                    .table(MqConsumers::Table)
                    .col(MqConsumers::StreamId)
                    .col(MqConsumers::LastHeartbeatAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            MqConsumers::Table.into_iden(),
            MqDeliveries::Table.into_iden(),
            MqConsumerGroups::Table.into_iden(),
            MqMessages::Table.into_iden(),
            MqStreams::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

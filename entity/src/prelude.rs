//! The entities under short names.

pub use crate::consumer::Entity as Consumer;
pub use crate::consumer_group::Entity as ConsumerGroup;
pub use crate::delivery::Entity as Delivery;
pub use crate::message::Entity as Message;
pub use crate::stream::Entity as Stream;

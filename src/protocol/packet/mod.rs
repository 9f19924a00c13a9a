//! One file per control packet type. Each type knows how to read its
//! variable header and payload from a `Bytes` body and write itself into a
//! `BytesMut`; the fixed header is handled in `wire`.

mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod pubresp;
mod suback;
mod subscribe;
mod unsuback;
mod unsubscribe;

pub use auth::{Auth, AuthProperties};
pub use connack::{ConnAck, ConnAckProperties};
pub use connect::{Connect, ConnectProperties, LastWill, WillProperties};
pub use disconnect::{Disconnect, DisconnectProperties};
pub use publish::{LazyPublishProperties, Publish, PublishProperties};
pub use pubresp::{PubResponse, PubResponseProperties};
pub use suback::{SubAck, SubAckProperties};
pub use subscribe::{
    RetainHandling, Subscribe, SubscribeProperties, SubscriptionOptions, TopicSubscription,
};
pub use unsuback::{UnsubAck, UnsubAckProperties};
pub use unsubscribe::{Unsubscribe, UnsubscribeProperties};

/// The reason codes each packet may carry, for the test strategies.
#[cfg(test)]
pub(crate) use {
    auth::AUTH_REASONS,
    connack::{CONNACK_REASONS, RETURN_CODES},
    disconnect::DISCONNECT_REASONS,
    pubresp::{PUBACK_PUBREC_REASONS, PUBREL_PUBCOMP_REASONS},
    suback::{SUBACK_REASONS, V3_SUBACK_REASONS},
    unsuback::UNSUBACK_REASONS,
};

use bytestring::ByteString;

/// v5 User Property pairs, in the order received (order is significant and
/// must be forwarded unchanged, spec 3.3.2.3.7).
pub type UserProperties = Vec<(ByteString, ByteString)>;

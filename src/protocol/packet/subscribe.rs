use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::QoS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Never empty on a decoded packet (spec: protocol violation).
    pub filters: Vec<TopicSubscription>,
    pub properties: SubscribeProperties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSubscription {
    pub filter: ByteString,
    pub options: SubscriptionOptions,
}

/// The subscription options byte. At level 3/4 only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    OnSubscribe = 0,
    /// Send them only if the subscription did not already exist.
    OnNewSubscribe = 1,
    DoNotSend = 2,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1..=268,435,455 when present.
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

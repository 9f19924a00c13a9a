use bytestring::ByteString;

use super::UserProperties;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// Never empty on a decoded packet.
    pub filters: Vec<ByteString>,
    pub properties: UnsubscribeProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

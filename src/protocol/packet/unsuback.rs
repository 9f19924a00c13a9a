use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::ReasonCode;

/// At level 3/4 UNSUBACK carries only the packet id; `reasons` is then
/// empty on read and ignored on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: UnsubAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::ReasonCode;

/// One reason code per filter, in the SUBSCRIBE's order. At level 3/4 the
/// granted QoS codes are written as-is and any error as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: SubAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

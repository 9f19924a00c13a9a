use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::ReasonCode;

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id and, in v5, a reason code
/// and properties. The shortened v5 forms (reason omitted when Success and no
/// properties) are accepted on read and produced on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: PubResponseProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResponseProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

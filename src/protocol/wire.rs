//! Fixed header, variable byte integers, strings and properties: the
//! primitives every packet file builds on.

use bytes::BytesMut;

use super::{DecodeError, EncodeError, FixedHeader, Packet, ProtocolVersion};

pub(super) fn check(
    _buf: &[u8],
    _max_packet_size: usize,
) -> Result<Option<FixedHeader>, DecodeError> {
    todo!("codec")
}

pub(super) fn read(
    _buf: &mut BytesMut,
    _version: ProtocolVersion,
    _max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    todo!("codec")
}

pub(super) fn write(
    _packet: &Packet,
    _version: ProtocolVersion,
    _buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    todo!("codec")
}

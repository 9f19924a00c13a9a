//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that
//! relays TCP connections puts one header in front of the client's bytes,
//! naming the client's address, which the broker would otherwise never
//! see (its socket's peer is the balancer).
//!
//! [`parse`] is sans-IO, on top of the `ppp` crate: bytes in, one of
//! [`Parsed`] out. [`read_header`] is the socket side, used by the
//! connection task before anything else on a listener that expects the
//! header. A listener either always expects it or never: accepting a
//! connection without it would let any client that can reach the port name
//! whatever address it likes, so a missing or malformed header closes the
//! connection.
//!
//! Bounded memory: a v1 header is at most 107 bytes (`ppp` says invalid
//! past that), a v2 header at most 16 + 65,535; a client that sends less and
//! waits is cut off by the caller's [`HEADER_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;
use ppp::{HeaderResult, PartialResult, v1, v2};

use super::connection::read_more;
use super::socket::READ_CHUNK;

/// How long a connection on a PROXY listener gets to send its header. The
/// balancer sends it with its first segment, so this only ever cuts off
/// something that is not the balancer.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the bytes at the start of a connection amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid prefix of a header: read more.
    Incomplete,
    /// A complete header of `len` bytes; what follows it is the client's.
    /// `client` is `None` where the header names no TCP client: a v2 LOCAL
    /// command (the balancer's own health check), v1 `UNKNOWN`, or a v2
    /// address family other than IPv4 and IPv6. The socket's address
    /// stands then.
    Header {
        client: Option<SocketAddr>,
        len: usize,
    },
    /// Not a PROXY header, and no more bytes would make it one.
    Invalid(String),
}

/// Why no header was read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy protocol header: {0}")]
    Invalid(String),
    #[error("closed before the proxy protocol header")]
    Closed,
}

/// Decides on the PROXY header at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Parsed {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() || v1_cut_after_a_space(&result, bytes) {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Header {
            client: match header.addresses {
                v1::Addresses::Tcp4(ip) => {
                    Some(SocketAddr::from((ip.source_address, ip.source_port)))
                }
                v1::Addresses::Tcp6(ip) => {
                    Some(SocketAddr::from((ip.source_address, ip.source_port)))
                }
                v1::Addresses::Unknown => None,
            },
            len: header.header.len(),
        },
        HeaderResult::V2(Ok(header)) => Parsed::Header {
            client: match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => {
                    Some(SocketAddr::from((ip.source_address, ip.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => {
                    Some(SocketAddr::from((ip.source_address, ip.source_port)))
                }
                _ => None,
            },
            len: header.len(),
        },
        HeaderResult::V1(Err(error)) => Parsed::Invalid(format!("v1: {error}")),
        HeaderResult::V2(Err(error)) => Parsed::Invalid(format!("v2: {error}")),
    }
}

/// `ppp` reads a v1 line cut just after the space before the destination
/// port as an empty, so invalid, port. A line still missing its end and
/// ending in a space is a valid prefix wherever it was cut (every other cut
/// `ppp` already calls incomplete), so that error is not final.
fn v1_cut_after_a_space(result: &HeaderResult, bytes: &[u8]) -> bool {
    matches!(result, HeaderResult::V1(Err(_)))
        && bytes.starts_with(b"PROXY ")
        && bytes.ends_with(b" ")
        && !bytes.contains(&b'\r')
}

/// Reads the PROXY header at the start of `stream`. Returns the client's
/// address (`None`: keep the socket's) and whatever followed the header
/// in the same reads, which is the start of the client's MQTT.
pub async fn read_header(
    stream: &mut TcpStream,
) -> Result<(Option<SocketAddr>, BytesMut), ProxyError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match parse(&buf) {
            Parsed::Header { client, len } => {
                buf.advance(len);
                return Ok((client, buf));
            }
            Parsed::Invalid(why) => return Err(ProxyError::Invalid(why)),
            Parsed::Incomplete => {}
        }
        let (result, returned) = read_more(stream, buf).await;
        buf = returned;
        match result {
            Ok(0) | Err(_) => return Err(ProxyError::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1883\r\n";

    /// A v2 PROXY header for a TCP over IPv4 connection from 192.0.2.7:51234
    /// to 198.51.100.1:1883, with one TLV (a NOOP) after the addresses.
    fn v2_tcp4() -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.push(0x21); // version 2, PROXY
        header.push(0x11); // IPv4, stream
        header.extend_from_slice(&(12u16 + 4).to_be_bytes());
        header.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        header.extend_from_slice(&51234u16.to_be_bytes());
        header.extend_from_slice(&1883u16.to_be_bytes());
        header.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // NOOP, length 1
        header
    }

    fn client() -> Option<SocketAddr> {
        Some("192.0.2.7:51234".parse().expect("literal"))
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        assert_eq!(
            parse(V1_TCP4),
            Parsed::Header {
                client: client(),
                len: V1_TCP4.len()
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 1883\r\n";
        assert_eq!(
            parse(v6),
            Parsed::Header {
                client: Some("[2001:db8::7]:51234".parse().expect("literal")),
                len: v6.len()
            }
        );
    }

    #[test]
    fn v1_unknown_keeps_the_socket_address() {
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown),
            Parsed::Header {
                client: None,
                len: unknown.len()
            }
        );
    }

    #[test]
    fn v2_proxy_with_tlvs() {
        let header = v2_tcp4();
        assert_eq!(
            parse(&header),
            Parsed::Header {
                client: client(),
                len: header.len()
            }
        );
    }

    #[test]
    fn v2_ipv6() {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let source: std::net::Ipv6Addr = "2001:db8::7".parse().expect("literal");
        let destination: std::net::Ipv6Addr = "2001:db8::1".parse().expect("literal");
        header.extend_from_slice(&source.octets());
        header.extend_from_slice(&destination.octets());
        header.extend_from_slice(&[0xc8, 0x22, 0x07, 0x5b]);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                client: Some("[2001:db8::7]:51234".parse().expect("literal")),
                len: header.len()
            }
        );
    }

    #[test]
    fn v2_local_keeps_the_socket_address() {
        // What HAProxy sends on its own health-check connections.
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                client: None,
                len: 16
            }
        );
    }

    #[test]
    fn bytes_after_the_header_are_not_consumed() {
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";
        for header in [V1_TCP4.to_vec(), v2_tcp4()] {
            let mut bytes = header.clone();
            bytes.extend_from_slice(connect);
            assert_eq!(
                parse(&bytes),
                Parsed::Header {
                    client: client(),
                    len: header.len()
                }
            );
        }
    }

    #[test]
    fn every_split_of_a_header_is_incomplete() {
        let v1_tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 1883\r\n".to_vec();
        for header in [V1_TCP4.to_vec(), v1_tcp6, v2_tcp4()] {
            for end in 0..header.len() {
                assert_eq!(
                    parse(&header[..end]),
                    Parsed::Incomplete,
                    "first {end} bytes of {header:?}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_invalid_at_once() {
        let cases: &[&[u8]] = &[
            // An MQTT client that did not go through the balancer.
            b"\x10",
            b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd",
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            // Version 3 in the v2 framing.
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        ];
        for bytes in cases {
            assert!(
                matches!(parse(bytes), Parsed::Invalid(_)),
                "{bytes:?} gave {:?}",
                parse(bytes)
            );
        }
    }

    #[test]
    fn a_v1_header_without_end_is_invalid_past_107_bytes() {
        let mut bytes = b"PROXY UNKNOWN ".to_vec();
        bytes.resize(107, b'x');
        assert!(matches!(parse(&bytes), Parsed::Invalid(_)));
    }
}

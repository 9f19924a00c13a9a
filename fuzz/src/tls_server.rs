//! The TLS layer in front of client connections (`ringmq::shard::tls`):
//! whatever arrives, in whatever pieces, is answered or refused, and never
//! panics, including what is sent and closed after a refusal.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rcgen::{CertificateParams, KeyPair};
use ringmq::shard::tls::TlsLayer;
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::UnbufferedServerConnection;

/// The first byte is the size of the pieces the rest is fed in (a record
/// may arrive in any number of reads), 1 to 256 bytes.
pub fn split_tls_input(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&cut, wire) = data.split_first()?;
    Some((usize::from(cut) + 1, wire))
}

pub fn tls_server(wire: &[u8], cut: usize) {
    let session = UnbufferedServerConnection::new(config()).expect("server session");
    let mut layer = TlsLayer::new(session);
    let mut plain = BytesMut::new();
    for piece in wire.chunks(cut) {
        if layer.handle_wire(piece, &mut plain).is_err() {
            break;
        }
        layer.take_output();
    }
    layer.send(b"\xd0\x00");
    layer.close();
    layer.take_output();
}

/// One self-signed certificate for the whole run: making one per input
/// would spend the run on key generation.
fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            let cert = params.self_signed(&key).expect("certificate");
            let config = ServerConfig::builder_with_provider(ringmq::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
                )
                .expect("server config");
            Arc::new(config)
        })
        .clone()
}

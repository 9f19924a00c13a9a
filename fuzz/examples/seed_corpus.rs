//! Writes the seed corpus: valid packets of every type, encoded with our
//! codec, a few hand-written byte strings, and topic lines.
//!
//! Run from the repository root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`
//! It only adds or overwrites `seed-*` files; inputs libFuzzer found and
//! that were kept (crashes, regressions) live beside them untouched.

use std::fs;
use std::path::Path;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::cluster::frame::{
    ClusterMsg, PROTOCOL_VERSION, WireMessage, encode as cluster_encode, message_to_wire,
};
use ringmq::cluster::ownership::wire::{RaftAnswer, RaftRequest, encode_answer, encode_request};
use ringmq::cluster::ownership::{Answer, Command, ForwardReply, Grant};
use ringmq::message::Message;
use ringmq::protocol::{
    Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, LastWill, Packet, ProtocolVersion, PubResponse, PubResponseProperties,
    Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, SubAckProperties,
    Subscribe, SubscribeProperties, SubscriptionOptions, TopicSubscription, UnsubAck,
    UnsubAckProperties, Unsubscribe, UnsubscribeProperties, UserProperties, WillProperties,
};

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let v4_dir = corpus.join("decode_v4");
    let v5_dir = corpus.join("decode_v5");
    let topic_dir = corpus.join("topic");
    let cluster_dir = corpus.join("cluster_frame");
    for dir in [&v4_dir, &v5_dir, &topic_dir, &cluster_dir] {
        fs::create_dir_all(dir).expect("create corpus directory");
    }

    for (name, packet) in packets_v4() {
        for (selector, version, suffix) in [
            (0u8, ProtocolVersion::V3_1_1, "311"),
            (1u8, ProtocolVersion::V3_1, "31"),
        ] {
            // CONNECT carries its own level: write each at its own only.
            // Other packets read the same at 3.1 and 3.1.1 but PUBLISH (DUP
            // on QoS 0), so only PUBLISH is seeded at both.
            let wanted = match &packet {
                Packet::Connect(connect) => connect.protocol == version,
                Packet::Publish(_) => true,
                _ => version == ProtocolVersion::V3_1_1,
            };
            if !wanted {
                continue;
            }
            let mut bytes = vec![selector];
            bytes.extend_from_slice(&encode(&packet, version));
            write(&v4_dir, &format!("{name}-{suffix}"), &bytes);
        }
    }
    for (name, bytes) in HAND_WRITTEN_V4 {
        write(&v4_dir, name, bytes);
    }

    for (name, packet) in packets_v5() {
        write(&v5_dir, name, &encode(&packet, ProtocolVersion::V5));
    }
    for (name, bytes) in HAND_WRITTEN_V5 {
        write(&v5_dir, name, bytes);
    }

    cluster_seeds(&cluster_dir);

    for (name, text) in TOPICS {
        // Even first byte: the text is taken as it is (see `topic_lines`).
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(text.as_bytes());
        write(&topic_dir, name, &bytes);
    }
}

/// The cluster seeds: one file per `ClusterMsg` variant, all of them in
/// one stream, a frame cut short and an oversized length prefix. The first
/// byte is the chunk size selector (see `split_cluster_input`).
fn cluster_seeds(dir: &Path) {
    let now = Instant::now();
    let message = Message {
        topic: "sensors/1/temperature".into(),
        payload: Bytes::from_static(b"21.5"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: user(),
            content_type: Some("application/json".into()),
            ..Default::default()
        }
        .into(),
        publisher: "sensor-1".into(),
        expires_at: Some(now + Duration::from_secs(60)),
        received_at: now,
    };
    let wire = message_to_wire(&message, now);
    let msgs = [
        (
            "hello",
            ClusterMsg::Hello {
                node_id: "node-a".into(),
                incarnation: 1,
                advertise: "10.0.0.1:7000".into(),
                version: PROTOCOL_VERSION,
            },
        ),
        (
            "routes",
            ClusterMsg::Routes {
                version: 3,
                filters: vec!["sensors/+/temperature".into(), "alerts/#".into()],
            },
        ),
        (
            "route-delta",
            ClusterMsg::RouteDelta {
                version: 4,
                add: vec!["a/b".into()],
                remove: vec!["alerts/#".into()],
            },
        ),
        ("routes-ack", ClusterMsg::RoutesAck { version: 4 }),
        ("routes-resync", ClusterMsg::RoutesResync),
        (
            "publish",
            ClusterMsg::Publish {
                stream: 1,
                first_seq: 10,
                messages: vec![
                    wire.clone(),
                    WireMessage {
                        topic: "a".into(),
                        ..WireMessage::default()
                    },
                ],
            },
        ),
        ("publish-ack", ClusterMsg::PublishAck { stream: 1, seq: 11 }),
        (
            "retain",
            ClusterMsg::Retain {
                hlc: 1 << 40,
                origin: "node-a".into(),
                message: wire,
            },
        ),
        (
            "gossip",
            ClusterMsg::Gossip {
                data: vec![1, 2, 3],
            },
        ),
        ("leave", ClusterMsg::Leave),
        (
            "raft-member",
            ClusterMsg::RaftMember {
                raft_id: 7,
                has_state: true,
            },
        ),
        (
            "raft-request",
            ClusterMsg::RaftRequest {
                id: 1,
                more: false,
                body: encode_request(&RaftRequest::Forward(Command::Claim {
                    client_id: "client-1".into(),
                    node: 7,
                }))
                .expect("seed request encodes"),
            },
        ),
        (
            "raft-reply",
            ClusterMsg::RaftReply {
                id: 1,
                body: encode_answer(&RaftAnswer::Forward(ForwardReply::Applied(
                    Answer::Claimed {
                        epoch: 3,
                        previous: Some(Grant { node: 2, epoch: 2 }),
                    },
                )))
                .expect("seed answer encodes"),
            },
        ),
    ];
    let mut all = BytesMut::new();
    for (name, msg) in &msgs {
        let mut frame = BytesMut::new();
        cluster_encode(msg, &mut frame).expect("seed frame encodes");
        all.extend_from_slice(&frame);
        let mut bytes = vec![255u8];
        bytes.extend_from_slice(&frame);
        write(dir, &format!("cluster-{name}"), &bytes);
    }
    let mut bytes = vec![6u8];
    bytes.extend_from_slice(&all);
    write(dir, "cluster-stream", &bytes);
    bytes.truncate(bytes.len() - 3);
    write(dir, "cluster-truncated", &bytes);
    write(dir, "cluster-oversized", b"\x00\xff\xff\xff\xff");
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet
        .write(version, &mut buf)
        .expect("seed packet encodes");
    buf.to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn connect(protocol: ProtocolVersion, will: bool) -> Packet {
    let v5 = protocol.is_v5();
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "sensor-1".into(),
        will: will.then(|| LastWill {
            topic: "sensors/1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(100),
                topic_alias_maximum: Some(10),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }
        } else {
            ConnectProperties::default()
        },
    }))
}

fn publish(qos: QoS, properties: PublishProperties) -> Packet {
    Packet::Publish(Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: qos == QoS::AtLeastOnce,
        topic: "sensors/1/temperature".into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: properties.into(),
        payload: Bytes::from_static(b"21.5"),
    })
}

fn subscribe(properties: SubscribeProperties, v5: bool) -> Packet {
    let options = |qos| SubscriptionOptions {
        qos,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 {
            RetainHandling::DoNotSend
        } else {
            RetainHandling::OnSubscribe
        },
    };
    Packet::Subscribe(Subscribe {
        packet_id: 3,
        filters: vec![
            TopicSubscription {
                filter: "sensors/+/temperature".into(),
                options: options(QoS::AtLeastOnce),
            },
            TopicSubscription {
                filter: "alerts/#".into(),
                options: options(QoS::ExactlyOnce),
            },
        ],
        properties,
    })
}

fn response(reason: ReasonCode) -> PubResponse {
    PubResponse {
        packet_id: 7,
        reason,
        properties: PubResponseProperties::default(),
    }
}

fn packets_v4() -> Vec<(&'static str, Packet)> {
    vec![
        ("connect-v3", connect(ProtocolVersion::V3_1, false)),
        ("connect-v3-will", connect(ProtocolVersion::V3_1, true)),
        ("connect-v4", connect(ProtocolVersion::V3_1_1, false)),
        ("connect-v4-will", connect(ProtocolVersion::V3_1_1, true)),
        (
            "connack",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: true,
                reason: ReasonCode::Success,
                properties: ConnAckProperties::default(),
            })),
        ),
        ("publish-qos0", publish(QoS::AtMostOnce, Default::default())),
        (
            "publish-qos1",
            publish(QoS::AtLeastOnce, Default::default()),
        ),
        (
            "publish-qos2",
            publish(QoS::ExactlyOnce, Default::default()),
        ),
        ("puback", Packet::PubAck(response(ReasonCode::Success))),
        ("pubrec", Packet::PubRec(response(ReasonCode::Success))),
        ("pubrel", Packet::PubRel(response(ReasonCode::Success))),
        ("pubcomp", Packet::PubComp(response(ReasonCode::Success))),
        ("subscribe", subscribe(Default::default(), false)),
        (
            "suback",
            Packet::SubAck(Box::new(SubAck {
                packet_id: 3,
                reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
                properties: SubAckProperties::default(),
            })),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                filters: vec!["sensors/+/temperature".into(), "alerts/#".into()],
                properties: UnsubscribeProperties::default(),
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(Box::new(UnsubAck {
                packet_id: 4,
                reasons: Vec::new(),
                properties: UnsubAckProperties::default(),
            })),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(Box::new(Disconnect {
                reason: ReasonCode::Success,
                properties: DisconnectProperties::default(),
            })),
        ),
    ]
}

fn user() -> UserProperties {
    vec![("origin".into(), "fuzz".into())]
}

fn packets_v5() -> Vec<(&'static str, Packet)> {
    let all_publish_properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(1),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: user(),
        subscription_identifiers: vec![1, 300],
        content_type: Some("application/json".into()),
    };
    vec![
        ("connect-v5", connect(ProtocolVersion::V5, false)),
        ("connect-v5-will", connect(ProtocolVersion::V5, true)),
        (
            "connack",
            Packet::ConnAck(Box::new(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: ConnAckProperties {
                    receive_maximum: Some(20),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_maximum: Some(10),
                    shared_subscription_available: Some(true),
                    server_keep_alive: Some(30),
                    ..Default::default()
                },
            })),
        ),
        ("publish-qos0", publish(QoS::AtMostOnce, Default::default())),
        (
            "publish-qos1",
            publish(QoS::AtLeastOnce, Default::default()),
        ),
        (
            "publish-qos2",
            publish(QoS::ExactlyOnce, Default::default()),
        ),
        (
            "publish-qos0-props",
            publish(QoS::AtMostOnce, all_publish_properties.clone()),
        ),
        (
            "publish-qos1-props",
            publish(QoS::AtLeastOnce, all_publish_properties.clone()),
        ),
        (
            "publish-qos2-props",
            publish(QoS::ExactlyOnce, all_publish_properties),
        ),
        ("puback", Packet::PubAck(response(ReasonCode::Success))),
        (
            "puback-reason",
            Packet::PubAck(PubResponse {
                properties: PubResponseProperties {
                    reason_string: Some("no one listening".into()),
                    user_properties: user(),
                },
                ..response(ReasonCode::NoMatchingSubscribers)
            }),
        ),
        (
            "pubrec",
            Packet::PubRec(response(ReasonCode::QuotaExceeded)),
        ),
        (
            "pubrel",
            Packet::PubRel(response(ReasonCode::PacketIdentifierNotFound)),
        ),
        ("pubcomp", Packet::PubComp(response(ReasonCode::Success))),
        (
            "subscribe",
            subscribe(
                SubscribeProperties {
                    subscription_identifier: Some(42),
                    user_properties: user(),
                },
                true,
            ),
        ),
        (
            "suback",
            Packet::SubAck(Box::new(SubAck {
                packet_id: 3,
                reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid],
                properties: SubAckProperties {
                    reason_string: Some("partly".into()),
                    user_properties: Vec::new(),
                },
            })),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                filters: vec!["alerts/#".into()],
                properties: UnsubscribeProperties {
                    user_properties: user(),
                },
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(Box::new(UnsubAck {
                packet_id: 4,
                reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
                properties: UnsubAckProperties::default(),
            })),
        ),
        ("pingreq", Packet::PingReq),
        (
            "disconnect",
            Packet::Disconnect(Box::new(Disconnect {
                reason: ReasonCode::DisconnectWithWillMessage,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("bye".into()),
                    ..Default::default()
                },
            })),
        ),
        (
            "auth",
            Packet::Auth(Box::new(Auth {
                reason: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"client-first")),
                    ..Default::default()
                },
            })),
        ),
    ]
}

/// Short forms and streams the encoder never produces. The first byte picks
/// the level (even: 3.1.1, odd: 3.1).
const HAND_WRITTEN_V4: &[(&str, &[u8])] = &[
    // Two packets in one read: PINGREQ then a QoS 0 PUBLISH "a" / "x".
    ("stream-ping-publish", b"\x00\xc0\x00\x30\x04\x00\x01ax"),
    // A PUBLISH split before its body arrives.
    ("partial-publish", b"\x00\x30\x0a\x00\x03abc"),
    // A remaining length in two bytes (128).
    ("long-remaining-length", b"\x00\x30\x80\x01\x00\x01a"),
    // MQTT 3.1 allows DUP on QoS 0.
    ("v3-dup-qos0", b"\x01\x38\x03\x00\x01a"),
];

/// v5 short forms the spec allows and the encoder may not produce.
const HAND_WRITTEN_V5: &[(&str, &[u8])] = &[
    // PUBACK with a reason code but no property length.
    ("puback-reason-only", b"\x40\x03\x00\x07\x10"),
    // DISCONNECT and AUTH with a reason code only.
    ("disconnect-reason-only", b"\xe0\x01\x8e"),
    ("auth-reason-only", b"\xf0\x01\x18"),
    // A subscription identifier as a non-minimal varint (1 in 2 bytes).
    (
        "publish-varint-not-minimal",
        b"\x30\x08\x00\x01a\x03\x0b\x81\x00x",
    ),
    // Two PUBLISHes in one read.
    (
        "stream-two-publishes",
        b"\x30\x05\x00\x01a\x00x\x32\x07\x00\x01b\x00\x01\x00y",
    ),
];

const TOPICS: &[(&str, &str)] = &[
    (
        "spec-examples",
        "sport/tennis/player1/#\nsport/tennis/player1\nsport/tennis/player1/ranking\n\
         sport/#\nsport\nsport/tennis/+\nsport/+\nsport/\n+/+\n/+\n/finance\n+\n#",
    ),
    (
        "sys",
        "$SYS/#\n$SYS/monitor/Clients\n+/monitor/Clients\n$SYS/monitor/+\n#\n$\n$/a",
    ),
    ("empty-levels", "a//b\n/\n//\na/+/b\na/+/+\n+//+\n/#\n//#"),
    ("invalid", "a/#/b\na#\na+/b\n#/a\n++\n\na/b#"),
    (
        "unicode",
        "caf\u{e9}/+\ncaf\u{e9}/cr\u{e8}me\n\u{1f600}/#\n\u{1f600}",
    ),
];

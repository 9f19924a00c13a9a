//! Proptest strategies for every packet, in the shape each protocol version
//! can carry: what a version cannot express (v5 properties at level 4, a
//! session-present flag at level 3) is left at its default, so every packet
//! generated for a version must survive a write and a read unchanged.

use bytes::Bytes;
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

use super::packet::{
    AUTH_REASONS, CONNACK_REASONS, DISCONNECT_REASONS, PUBACK_PUBREC_REASONS,
    PUBREL_PUBCOMP_REASONS, RETURN_CODES, SUBACK_REASONS, UNSUBACK_REASONS, V3_SUBACK_REASONS,
};
use super::wire::MAX_VARINT;
use super::*;

pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ])
}

/// Any packet `version` can carry.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let mut packets = vec![
        connect(version)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        connack(version)
            .prop_map(|c| Packet::ConnAck(Box::new(c)))
            .boxed(),
        publish(version).prop_map(Packet::Publish).boxed(),
        pub_response(v5, PUBACK_PUBREC_REASONS)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(v5, PUBACK_PUBREC_REASONS)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(v5, PUBREL_PUBCOMP_REASONS)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(v5, PUBREL_PUBCOMP_REASONS)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(v5).prop_map(Packet::Subscribe).boxed(),
        suback(v5).prop_map(|s| Packet::SubAck(Box::new(s))).boxed(),
        unsubscribe(v5).prop_map(Packet::Unsubscribe).boxed(),
        unsuback(v5)
            .prop_map(|u| Packet::UnsubAck(Box::new(u)))
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v5)
            .prop_map(|d| Packet::Disconnect(Box::new(d)))
            .boxed(),
    ];
    if v5 {
        packets.push(auth().prop_map(|a| Packet::Auth(Box::new(a))).boxed());
    }
    Union::new(packets).boxed()
}

/// Short strings, any characters but U+0000, which the codec rejects.
pub fn string() -> impl Strategy<Value = ByteString> {
    vec(any::<char>().prop_filter("no U+0000", |c| *c != '\0'), 0..6)
        .prop_map(|chars| ByteString::from(chars.into_iter().collect::<String>()))
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn reason(valid: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    select(valid)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3)
}

/// `properties` in v5, the empty default before it.
fn v5_or_default<T, S>(v5: bool, properties: S) -> BoxedStrategy<T>
where
    T: Default + Clone + std::fmt::Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    if v5 {
        properties.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let v5 = version.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        of(will(v5)),
        of(string()),
        of(bytes()),
        v5_or_default(v5, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before v5 a password needs a user name.
                let password = password.filter(|_| v5 || username.is_some());
                Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(1..=u32::MAX),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        user_properties(),
        of(string()),
        of(bytes()),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, user, method, data)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: user,
                // Authentication data needs a method (spec 3.1.2.11.10).
                authentication_data: data.filter(|_| method.is_some()),
                authentication_method: method,
            },
        )
}

fn will(v5: bool) -> impl Strategy<Value = LastWill> {
    (
        string(),
        bytes(),
        qos(),
        any::<bool>(),
        v5_or_default(v5, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(0..=1u8),
        of(any::<u32>()),
        of(string()),
        of(string()),
        of(bytes()),
        user_properties(),
    )
        .prop_map(|(delay, pfi, mei, ct, rt, cd, user)| WillProperties {
            will_delay_interval: delay,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
        })
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let v5 = version.is_v5();
    let reasons = if v5 { CONNACK_REASONS } else { &RETURN_CODES };
    (
        any::<bool>(),
        reason(reasons),
        v5_or_default(v5, connack_properties()),
    )
        .prop_map(move |(session_present, reason, properties)| ConnAck {
            // MQTT 3.1 has no session-present flag.
            session_present: session_present && version != ProtocolVersion::V3_1,
            reason,
            properties,
        })
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let limits = (
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        of(any::<bool>()),
        of(1..=u32::MAX),
        of(string()),
        of(any::<u16>()),
        of(string()),
        user_properties(),
    );
    let features = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<u16>()),
        of(string()),
        of(string()),
        of(string()),
        of(bytes()),
    );
    (limits, features).prop_map(
        |((sei, rm, mq, ra, mps, aci, tam, rs, user), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
            ConnAckProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_qos: mq,
                retain_available: ra,
                maximum_packet_size: mps,
                assigned_client_identifier: aci,
                topic_alias_maximum: tam,
                reason_string: rs,
                user_properties: user,
                wildcard_subscription_available: wsa,
                subscription_identifiers_available: sia,
                shared_subscription_available: ssa,
                server_keep_alive: ska,
                response_information: ri,
                server_reference: sr,
                authentication_method: am,
                authentication_data: ad,
            }
        },
    )
}

pub fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(),
        packet_id(),
        v5_or_default(version.is_v5(), publish_properties()),
        bytes(),
    )
        .prop_map(
            |(qos, dup, retain, topic, packet_id, properties, payload)| {
                let at_most_once = qos == QoS::AtMostOnce;
                Publish {
                    // DUP on QoS 0 is malformed from 3.1.1 on.
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { packet_id },
                    properties: properties.into(),
                    payload,
                }
            },
        )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        of(0..=1u8),
        of(any::<u32>()),
        of(any::<u16>()),
        of(string()),
        of(bytes()),
        user_properties(),
        vec(1..=MAX_VARINT as u32, 0..3),
        of(string()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, user, ids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: user,
            subscription_identifiers: ids,
            content_type: ct,
        })
}

fn pub_response(v5: bool, reasons: &'static [ReasonCode]) -> impl Strategy<Value = PubResponse> {
    let reason = if v5 {
        reason(reasons).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    let properties =
        (of(string()), user_properties()).prop_map(|(reason_string, user)| PubResponseProperties {
            reason_string,
            user_properties: user,
        });
    (packet_id(), reason, v5_or_default(v5, properties)).prop_map(
        |(packet_id, reason, properties)| PubResponse {
            packet_id,
            reason,
            properties,
        },
    )
}

fn subscribe(v5: bool) -> impl Strategy<Value = Subscribe> {
    let options = if v5 {
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![
                RetainHandling::OnSubscribe,
                RetainHandling::OnNewSubscribe,
                RetainHandling::DoNotSend,
            ]),
        )
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed()
    };
    let filter =
        (string(), options).prop_map(|(filter, options)| TopicSubscription { filter, options });
    let properties =
        (of(1..=MAX_VARINT as u32), user_properties()).prop_map(|(id, user)| SubscribeProperties {
            subscription_identifier: id,
            user_properties: user,
        });
    (
        packet_id(),
        vec(filter, 1..4),
        v5_or_default(v5, properties),
    )
        .prop_map(|(packet_id, filters, properties)| Subscribe {
            packet_id,
            filters,
            properties,
        })
}

fn suback(v5: bool) -> impl Strategy<Value = SubAck> {
    let reasons = if v5 {
        SUBACK_REASONS
    } else {
        V3_SUBACK_REASONS
    };
    let properties =
        (of(string()), user_properties()).prop_map(|(reason_string, user)| SubAckProperties {
            reason_string,
            user_properties: user,
        });
    (
        packet_id(),
        vec(reason(reasons), 0..4),
        v5_or_default(v5, properties),
    )
        .prop_map(|(packet_id, reasons, properties)| SubAck {
            packet_id,
            reasons,
            properties,
        })
}

fn unsubscribe(v5: bool) -> impl Strategy<Value = Unsubscribe> {
    let properties =
        user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (
        packet_id(),
        vec(string(), 1..4),
        v5_or_default(v5, properties),
    )
        .prop_map(|(packet_id, filters, properties)| Unsubscribe {
            packet_id,
            filters,
            properties,
        })
}

fn unsuback(v5: bool) -> impl Strategy<Value = UnsubAck> {
    let properties =
        (of(string()), user_properties()).prop_map(|(reason_string, user)| UnsubAckProperties {
            reason_string,
            user_properties: user,
        });
    let reasons = v5_or_default(v5, vec(reason(UNSUBACK_REASONS), 0..4));
    (packet_id(), reasons, v5_or_default(v5, properties)).prop_map(
        |(packet_id, reasons, properties)| UnsubAck {
            packet_id,
            reasons,
            properties,
        },
    )
}

fn disconnect(v5: bool) -> impl Strategy<Value = Disconnect> {
    let properties = (
        of(any::<u32>()),
        of(string()),
        user_properties(),
        of(string()),
    )
        .prop_map(|(sei, rs, user, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: user,
            server_reference: sr,
        });
    let reason = if v5 {
        reason(DISCONNECT_REASONS).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (reason, v5_or_default(v5, properties))
        .prop_map(|(reason, properties)| Disconnect { reason, properties })
}

fn auth() -> impl Strategy<Value = Auth> {
    let properties = (of(string()), of(bytes()), of(string()), user_properties()).prop_map(
        |(method, data, reason_string, user)| AuthProperties {
            authentication_method: method,
            authentication_data: data,
            reason_string,
            user_properties: user,
        },
    );
    (reason(AUTH_REASONS), properties).prop_map(|(reason, properties)| Auth { reason, properties })
}

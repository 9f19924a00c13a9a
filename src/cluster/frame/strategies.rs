//! Proptest strategies for the cluster wire types. Topics are valid topic
//! names, so every generated message also survives `wire_to_message`.

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

use super::{ClusterMsg, UserProperty, WireMessage};

/// Valid topic names: levels from a small alphabet, some empty.
pub fn topic() -> impl Strategy<Value = String> {
    vec("[a-c$é]{0,4}", 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic name is not empty", |t| !t.is_empty())
}

fn text() -> impl Strategy<Value = String> {
    // Short and long, to cover both of rkyv's string layouts (inline up to
    // 8 bytes, out of line beyond).
    prop_oneof!["[a-z0-9]{0,8}", "\\PC{9,40}"]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

pub fn wire_message() -> impl Strategy<Value = WireMessage> {
    (
        (topic(), bytes(), 0u8..=2, any::<bool>(), text()),
        (
            of(0u64..10_000_000),
            of(0u8..=1),
            of(text()),
            of(topic()),
            of(bytes()),
            vec(
                (text(), text()).prop_map(|(key, value)| UserProperty { key, value }),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (topic, payload, qos, retain, publisher),
                (
                    expiry_ms,
                    payload_format_indicator,
                    content_type,
                    response_topic,
                    correlation_data,
                    user_properties,
                ),
            )| WireMessage {
                topic,
                payload,
                qos,
                retain,
                publisher,
                expiry_ms,
                payload_format_indicator,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
        )
}

/// Every variant of [`ClusterMsg`].
pub fn cluster_msg() -> impl Strategy<Value = ClusterMsg> {
    prop_oneof![
        (text(), any::<u64>(), text(), any::<u32>()).prop_map(
            |(node_id, incarnation, advertise, version)| ClusterMsg::Hello {
                node_id,
                incarnation,
                advertise,
                version,
            }
        ),
        (any::<u64>(), vec(topic(), 0..5))
            .prop_map(|(version, filters)| ClusterMsg::Routes { version, filters }),
        (any::<u64>(), vec(topic(), 0..3), vec(topic(), 0..3)).prop_map(
            |(version, add, remove)| ClusterMsg::RouteDelta {
                version,
                add,
                remove
            }
        ),
        any::<u64>().prop_map(|version| ClusterMsg::RoutesAck { version }),
        Just(ClusterMsg::RoutesResync),
        (any::<u32>(), any::<u64>(), vec(wire_message(), 0..4)).prop_map(
            |(stream, first_seq, messages)| ClusterMsg::Publish {
                stream,
                first_seq,
                messages,
            }
        ),
        (any::<u32>(), any::<u64>())
            .prop_map(|(stream, seq)| ClusterMsg::PublishAck { stream, seq }),
        (any::<u64>(), text(), wire_message()).prop_map(|(hlc, origin, message)| {
            ClusterMsg::Retain {
                hlc,
                origin,
                message,
            }
        }),
        bytes().prop_map(|data| ClusterMsg::Gossip { data }),
        Just(ClusterMsg::Leave),
        (any::<u32>(), any::<u64>(), text(), wire_message()).prop_map(
            |(stream, seq, share, message)| ClusterMsg::SharedPublish {
                stream,
                seq,
                share,
                message,
            }
        ),
        (any::<u64>(), any::<bool>())
            .prop_map(|(raft_id, has_state)| ClusterMsg::RaftMember { raft_id, has_state }),
        (any::<u64>(), any::<bool>(), bytes())
            .prop_map(|(id, more, body)| ClusterMsg::RaftRequest { id, more, body }),
        (any::<u64>(), bytes()).prop_map(|(id, body)| ClusterMsg::RaftReply { id, body }),
    ]
}

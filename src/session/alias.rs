//! v5 topic aliases (spec 3.3.2.3.4), one table per direction. Both live
//! only as long as the network connection: a new CONNECT starts them empty.

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use super::Problem;
use crate::protocol::{Publish, ReasonCode};

/// Aliases the client binds on the PUBLISH packets it sends.
#[derive(Debug, Default)]
pub(super) struct IncomingAliases {
    /// The Topic Alias Maximum the broker advertised; 0 accepts none.
    max: u16,
    /// Allocated on the first binding: most clients never alias.
    topics: Option<Box<FxHashMap<u16, ByteString>>>,
}

impl IncomingAliases {
    pub fn new(max: u16) -> IncomingAliases {
        IncomingAliases { max, topics: None }
    }

    /// Replaces an aliased PUBLISH's topic by the real one, binding the
    /// alias when the packet names a topic, and takes the alias off: the
    /// routed message carries only the topic. The caller checks the topic
    /// name afterwards; an invalid one bound here does no harm, since that
    /// check failing ends the connection and the table with it.
    pub fn resolve(&mut self, publish: &mut Publish) -> Result<(), Problem> {
        let Some(alias) = publish
            .properties
            .get_mut()
            .and_then(|properties| properties.topic_alias.take())
        else {
            return Ok(());
        };
        if alias == 0 {
            return Err(Problem::new(
                ReasonCode::TopicAliasInvalid,
                "topic alias 0 is not allowed".into(),
            ));
        }
        if alias > self.max {
            return Err(Problem::new(
                ReasonCode::TopicAliasInvalid,
                format!("topic alias {alias} exceeds maximum {}", self.max),
            ));
        }
        if publish.topic.is_empty() {
            // Spec 3.3.2.3.4: an alias with no mapping on this connection
            // is a Protocol Error, not an invalid alias.
            let topic = self.topics.as_ref().and_then(|topics| topics.get(&alias));
            let topic = topic.ok_or_else(|| {
                Problem::new(
                    ReasonCode::ProtocolError,
                    format!("topic alias {alias} is not bound to a topic on this connection"),
                )
            })?;
            publish.topic = topic.clone();
        } else {
            self.topics
                .get_or_insert_default()
                .insert(alias, publish.topic.clone());
        }
        Ok(())
    }
}

/// Aliases the broker assigns on the PUBLISH packets it sends.
///
/// Policy: the first `max` distinct topics get aliases 1..=max for the rest
/// of the connection; later topics go out in full. A subscriber's traffic is
/// usually a small, stable set of topics seen early, which this serves with
/// no bookkeeping per packet. LRU replacement would help a client whose
/// topics drift, but every replacement re-sends a full topic and needs the
/// recency order maintained on the hot path; with a large topic set and a
/// small maximum it degrades to sending full topics plus the alias, which
/// is worse than not aliasing at all.
#[derive(Debug, Default)]
pub(super) struct OutgoingAliases {
    /// The client's Topic Alias Maximum, or 0 when aliases are off.
    max: u16,
    /// Alias of each topic, and whether the client has been told the
    /// binding (a PUBLISH naming the topic with the alias went out).
    /// Allocated on the first alias assigned: most clients accept none.
    aliases: Option<Box<FxHashMap<ByteString, (u16, bool)>>>,
}

impl OutgoingAliases {
    pub fn new(max: u16) -> OutgoingAliases {
        OutgoingAliases { max, aliases: None }
    }

    /// Puts an alias on `publish`, and leaves its topic out when the client
    /// already knows the binding.
    pub fn apply(&mut self, publish: &mut Publish) {
        if self.max == 0 {
            return;
        }
        let aliases = self.aliases.get_or_insert_default();
        let next = aliases.len() + 1;
        let (alias, announced) = match aliases.get_mut(&publish.topic) {
            Some(entry) => entry,
            None if next <= usize::from(self.max) => {
                // `next` is at most `max`, a u16.
                let alias = u16::try_from(next).unwrap_or(u16::MAX);
                aliases
                    .entry(publish.topic.clone())
                    .or_insert((alias, false))
            }
            None => return,
        };
        publish.properties.topic_alias = Some(*alias);
        if *announced {
            publish.topic = ByteString::new();
        } else {
            *announced = true;
        }
    }

    /// `publish`, as returned by [`OutgoingAliases::apply`], never reached
    /// the client: if it was the one to announce its alias, the next PUBLISH
    /// on that topic must announce it again.
    pub fn forget(&mut self, publish: &Publish) {
        if publish.properties.topic_alias.is_some()
            && let Some(aliases) = &mut self.aliases
            && let Some((_, announced)) = aliases.get_mut(&publish.topic)
        {
            *announced = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{PublishProperties, QoS};

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 0,
            properties: PublishProperties {
                topic_alias: alias,
                ..PublishProperties::default()
            }
            .into(),
            payload: Bytes::new(),
        }
    }

    fn resolved(aliases: &mut IncomingAliases, topic: &str, alias: u16) -> Result<String, Problem> {
        let mut publish = publish(topic, Some(alias));
        aliases.resolve(&mut publish)?;
        assert_eq!(publish.properties.topic_alias, None, "alias taken off");
        Ok(publish.topic.to_string())
    }

    #[test]
    fn incoming_alias_binds_rebinds_and_resolves() {
        let mut aliases = IncomingAliases::new(10);
        assert_eq!(resolved(&mut aliases, "a/b", 1), Ok("a/b".into()));
        assert_eq!(resolved(&mut aliases, "", 1), Ok("a/b".into()));
        assert_eq!(resolved(&mut aliases, "c", 1), Ok("c".into()));
        assert_eq!(resolved(&mut aliases, "", 1), Ok("c".into()));
        assert_eq!(resolved(&mut aliases, "max", 10), Ok("max".into()));
        let mut plain = publish("t", None);
        assert_eq!(aliases.resolve(&mut plain), Ok(()));
        assert_eq!(plain.topic, "t");
    }

    #[test]
    fn incoming_alias_out_of_range_is_invalid() {
        let mut aliases = IncomingAliases::new(10);
        let problem = resolved(&mut aliases, "t", 11).expect_err("above max");
        assert_eq!(problem.reason, ReasonCode::TopicAliasInvalid);
        assert_eq!(problem.detail, "topic alias 11 exceeds maximum 10");
        let problem = resolved(&mut aliases, "t", 0).expect_err("zero");
        assert_eq!(problem.reason, ReasonCode::TopicAliasInvalid);
        let mut none = IncomingAliases::new(0);
        let problem = resolved(&mut none, "t", 1).expect_err("disabled");
        assert_eq!(problem.reason, ReasonCode::TopicAliasInvalid);
    }

    #[test]
    fn incoming_unknown_alias_without_topic_is_a_protocol_error() {
        let mut aliases = IncomingAliases::new(10);
        let problem = resolved(&mut aliases, "", 3).expect_err("unbound");
        assert_eq!(problem.reason, ReasonCode::ProtocolError);
        assert_eq!(
            problem.detail,
            "topic alias 3 is not bound to a topic on this connection"
        );
    }

    fn sent(aliases: &mut OutgoingAliases, topic: &str) -> (String, Option<u16>) {
        let mut publish = publish(topic, None);
        aliases.apply(&mut publish);
        (publish.topic.to_string(), publish.properties.topic_alias)
    }

    #[test]
    fn outgoing_first_topics_get_aliases_later_ones_go_in_full() {
        let mut aliases = OutgoingAliases::new(2);
        assert_eq!(sent(&mut aliases, "a"), ("a".into(), Some(1)));
        assert_eq!(sent(&mut aliases, "a"), ("".into(), Some(1)));
        assert_eq!(sent(&mut aliases, "b"), ("b".into(), Some(2)));
        assert_eq!(sent(&mut aliases, "c"), ("c".into(), None));
        assert_eq!(sent(&mut aliases, "b"), ("".into(), Some(2)));
        assert_eq!(sent(&mut aliases, "c"), ("c".into(), None));
    }

    #[test]
    fn outgoing_aliases_off_when_max_is_zero() {
        let mut aliases = OutgoingAliases::new(0);
        assert_eq!(sent(&mut aliases, "a"), ("a".into(), None));
        assert_eq!(sent(&mut aliases, "a"), ("a".into(), None));
    }

    #[test]
    fn outgoing_forgotten_announcement_is_made_again() {
        let mut aliases = OutgoingAliases::new(2);
        let mut first = publish("a", None);
        aliases.apply(&mut first);
        aliases.forget(&first);
        assert_eq!(sent(&mut aliases, "a"), ("a".into(), Some(1)));
        // A discarded PUBLISH that only used the alias changes nothing.
        let mut second = publish("a", None);
        aliases.apply(&mut second);
        aliases.forget(&second);
        assert_eq!(sent(&mut aliases, "a"), ("".into(), Some(1)));
    }
}

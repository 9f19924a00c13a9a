//! The per-client session state machine (sans-IO, quinn-proto style).
//!
//! A [`Session`] lives on its client id's home shard and outlives
//! connections: it holds subscriptions (as the client asked for them),
//! QoS 1/2 state in both directions, the outbound queue and the will. It
//! never touches a socket or a clock: the shard feeds it packets, routed
//! messages and `now`, and drains what it wants done with [`Session::poll_action`]
//! (for the router) and [`Session::poll_transmit`] (for the socket).
//!
//! One file per concern: `connect` (CONNECT, DISCONNECT, resume),
//! `alias` (v5 topic aliases in both directions), `control` (answers to
//! the client, held behind [`Ticket`]s until the shard confirms them),
//! `incoming` (PUBLISH and PUBREL from the client), `subscribe`, `deliver`
//! (routed messages through the queue and the inflight window, and the
//! client's acks for them), `inflight` (packet ids and outgoing QoS 1/2
//! state), `queue` (a message waiting for this client), `shared` (messages
//! chosen for this session by a shared subscription group) and `will` (the
//! will and the session's end once the connection is gone).
//!
//! Where the spec leaves room, Mosquitto's behaviour is followed: expired
//! messages are dropped even from the inflight set when their resend comes,
//! and a client's ack for an unknown packet id is ignored rather than
//! treated as an error.

mod acl;
mod alias;
mod connect;
mod control;
mod deliver;
mod handover;
mod incoming;
mod inflight;
mod journal;
mod queue;
mod shared;
mod subscribe;
mod will;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::FxHashSet;

use crate::auth::acl_cache::SessionAcl;
use crate::message::Message;
use crate::protocol::topic::{MAX_TOPIC_LEN, MAX_TOPIC_LEVELS, TopicLimits};
use crate::protocol::{
    ConnAck, Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, Publish, QoS,
    ReasonCode, SubscriptionOptions,
};
use alias::{IncomingAliases, OutgoingAliases};
use control::Control;
pub use control::Ticket;
use inflight::Inflight;
use journal::Journal;
pub use journal::{Change, RestoredMessage, RestoredSession};
use queue::Outgoing;
use will::Will;

/// Limits from configuration that shape every session on a shard.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Outgoing QoS 1/2 messages in flight per client (capped further by the
    /// client's v5 Receive Maximum), and the Receive Maximum the broker
    /// advertises for incoming QoS 2.
    pub max_inflight: u16,
    /// Messages waiting to be sent per session, online or offline.
    pub max_queued_messages: usize,
    pub queue_full: QueueFullPolicy,
    /// A client asking for a longer keep-alive, or for none (0), is held to
    /// this; v5 clients are told with Server Keep Alive.
    pub max_keepalive: u16,
    /// Largest packet the broker accepts, advertised in v5 CONNACK.
    pub max_packet_size: u32,
    /// Topic Alias Maximum advertised to v5 clients: the aliases they may
    /// use on PUBLISH are 1 to this; 0 accepts none.
    pub topic_alias_maximum: u16,
    /// Assign topic aliases to the PUBLISH packets sent to v5 clients that
    /// accept them (their CONNECT Topic Alias Maximum).
    pub server_topic_aliases: bool,
    /// Topic names (PUBLISH, will) and filters (SUBSCRIBE) past these are
    /// refused like invalid ones.
    pub topics: TopicLimits,
    /// Distinct filters one session may hold; a SUBSCRIBE past it is
    /// refused per filter with Quota exceeded. `usize::MAX` for none.
    pub max_subscriptions: usize,
    /// The broker has a store: sessions that outlive their connection
    /// journal their changes for it.
    pub durable: bool,
}

/// What happens to a QoS 1/2 message that finds the queue full. QoS 0
/// messages past the limit are always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFullPolicy {
    Drop,
    /// Close the connection (v5 DISCONNECT 0x97 Quota exceeded).
    Disconnect,
}

/// How one routed message reaches this session: the subscription (or
/// subscriptions, merged) it matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Highest QoS granted among the matching subscriptions; the message
    /// goes out at min(message QoS, this).
    pub granted_qos: QoS,
    pub retain_as_published: bool,
    /// Sent from the retained store because of a SUBSCRIBE: RETAIN is 1.
    pub from_retained_store: bool,
    /// v5 Subscription Identifiers of all matching subscriptions.
    pub subscription_ids: Vec<u32>,
}

/// Why the session refuses what a client did: the reason code, and what
/// to say about it in a v5 Reason String.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    pub reason: ReasonCode,
    pub detail: String,
}

impl Problem {
    fn new(reason: ReasonCode, detail: String) -> Problem {
        Problem { reason, detail }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverOutcome {
    Queued,
    /// QoS 0 for an offline session: not kept, not an error.
    Skipped,
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Expired,
}

/// What the session asks of the shard, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionAction {
    /// Route to subscribers (and to the retained store if `retain`).
    Publish {
        message: Arc<Message>,
        /// For a client's QoS 1/2 PUBLISH: its PUBACK or PUBREC (and every
        /// answer after it) is held until the shard passes this to
        /// [`Session::confirm`], once the message is safe. `None` when no
        /// answer waits (QoS 0, a will).
        ticket: Option<Ticket>,
    },
    /// Add or replace this session's subscription in the trie, then deliver
    /// retained messages matching it if `send_retained`. A `filter`
    /// starting with `$share/` is a well-formed shared subscription
    /// (`send_retained` is then false): the session joins that group.
    ///
    /// Each filter has its own ticket and the SUBACK waits for all of
    /// them: every route is added (and, in a cluster, acknowledged by the
    /// peers) on its own, so the shard confirms each as it completes
    /// without counting what is left of the packet.
    Subscribe {
        filter: ByteString,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        send_retained: bool,
        ticket: Ticket,
    },
    Unsubscribe {
        filter: ByteString,
    },
    /// Close the network connection. Any DISCONNECT to send first is
    /// already queued for `poll_transmit`.
    Close,
    /// The session has ended (clean session closed, or expiry reached):
    /// remove it and all its subscriptions.
    Expired,
}

/// One client's MQTT session; see the module documentation.
pub struct Session {
    client_id: ByteString,
    protocol: ProtocolVersion,
    /// The shard's limits from the last CONNECT, so delivery and incoming
    /// flows need no config argument.
    limits: Limits,
    connected: bool,
    /// Close has been asked for on the current connection: nothing but the
    /// control packets already queued (ending with any DISCONNECT) goes out,
    /// and later packets from the client are ignored.
    closing: bool,
    /// Session Present in CONNACK: the shard makes a new `Session` for
    /// clean start and unknown clients, so an earlier connection on this
    /// object means the client's state is here.
    had_connection: bool,
    /// Negotiated keep-alive in seconds; 0 is none.
    keep_alive: u16,
    /// Seconds the session outlives its connection; `u32::MAX` is never
    /// (also 3.1.1 clean session 0).
    session_expiry: u32,
    /// A DISCONNECT may not turn a session that CONNECT asked to end with
    /// the connection into one that persists (spec 3.14.2.2.2).
    connected_with_zero_expiry: bool,
    /// v5 Request Problem Information: when false, no Reason String or
    /// User Property goes on packets other than PUBLISH, CONNACK and
    /// DISCONNECT (spec 3.1.2.11.7).
    problem_information: bool,
    incoming_aliases: IncomingAliases,
    outgoing_aliases: OutgoingAliases,
    /// Outgoing QoS 1/2 messages allowed in flight: the smaller of the
    /// client's Receive Maximum and ours.
    window: u16,
    /// The client's v5 Maximum Packet Size. Zero is a protocol error the
    /// decoder refuses, so none is the niche: 4 bytes, not 8.
    client_max_packet_size: Option<NonZeroU32>,
    /// Filters as the client subscribed them, for retain handling 1 and
    /// UNSUBACK reason codes.
    subscriptions: FxHashSet<ByteString>,
    /// Incoming QoS 2 packet ids routed and waiting for PUBREL: a repeated
    /// PUBLISH with one of them is not routed again (exactly once), across
    /// reconnects too. Allocated on the first QoS 2 PUBLISH.
    incoming_qos2: Option<Box<FxHashSet<u16>>>,
    /// Outgoing QoS 1/2 flows, and those owed again after a reconnect
    /// (sent after control packets, before queued messages).
    inflight: Inflight,
    /// Messages waiting to be sent, in the order they arrived, whatever
    /// their QoS: MQTT orders messages per topic, and one FIFO keeps a QoS 0
    /// message from overtaking a QoS 1 one that waits for window room.
    queue: VecDeque<Outgoing>,
    /// Acks and responses: they go out first, unless a ticket holds them.
    control: Control,
    /// A PINGRESP owed ahead of everything in `control`: answering an idle
    /// client's PINGREQ through `control` would give it a buffer again (see
    /// [`Session::handle_pingreq`]).
    pingresp_owed: bool,
    actions: VecDeque<SessionAction>,
    /// The will of the current connection, or of the last one while its
    /// delay runs. Boxed: most clients set none, and inline it would cost
    /// every session over 200 bytes.
    will: Option<Box<Will>>,
    expires_at: Option<Instant>,
    /// Present while the session is stored (see `journal`).
    journal: Option<Box<Journal>>,
    /// Taken every turn, and a turn drops at most what the session queued,
    /// which the queue limit keeps within a `u32` (saturating regardless).
    /// With the packet size above, a word less per session.
    dropped_expired: u32,
    /// When the message of the last new PUBLISH [`Session::poll_transmit`]
    /// returned was received, for the shard's publish latency.
    sent_received_at: Option<Instant>,
    /// The ACL rules of the last client connected, with an ACL configured
    /// (see `acl`). Boxed: most brokers have none.
    acl: Option<Box<SessionAcl>>,
}

/// The part of [`SessionConfig`] the flows consult after CONNECT, in the
/// narrowest types that hold its range: a copy of the whole config cost
/// every session 48 bytes, this 16.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Saturated: a queue of 2^32 messages would take hundreds of GiB
    /// before the difference showed.
    max_queued_messages: u32,
    /// Saturated like `max_queued_messages` (`usize::MAX`, none, stays
    /// out of reach).
    max_subscriptions: u32,
    /// Configuration keeps these within [`MAX_TOPIC_LEN`] and
    /// [`MAX_TOPIC_LEVELS`], which fit.
    max_topic_length: u16,
    max_topic_levels: u16,
    max_inflight: u16,
    queue_full: QueueFullPolicy,
}

impl Limits {
    fn new(config: &SessionConfig) -> Limits {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let narrow16 = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Limits {
            max_queued_messages: narrow(config.max_queued_messages),
            max_subscriptions: narrow(config.max_subscriptions),
            max_topic_length: narrow16(config.topics.max_length),
            max_topic_levels: narrow16(config.topics.max_levels),
            max_inflight: config.max_inflight,
            queue_full: config.queue_full,
        }
    }

    fn topics(&self) -> TopicLimits {
        TopicLimits {
            max_length: usize::from(self.max_topic_length),
            max_levels: usize::from(self.max_topic_levels),
        }
    }

    fn max_queued_messages(&self) -> usize {
        self.max_queued_messages as usize
    }

    fn max_subscriptions(&self) -> usize {
        self.max_subscriptions as usize
    }
}

/// What a session that never connected holds: nothing.
const NEVER_CONNECTED: Limits = Limits {
    max_queued_messages: 0,
    max_subscriptions: 0,
    max_topic_length: MAX_TOPIC_LEN as u16,
    max_topic_levels: MAX_TOPIC_LEVELS as u16,
    max_inflight: 1,
    queue_full: QueueFullPolicy::Drop,
};

impl Session {
    pub fn new(client_id: ByteString, _now: Instant) -> Session {
        Session {
            client_id,
            protocol: ProtocolVersion::V5,
            limits: NEVER_CONNECTED,
            connected: false,
            closing: false,
            had_connection: false,
            keep_alive: 0,
            session_expiry: 0,
            connected_with_zero_expiry: true,
            problem_information: true,
            incoming_aliases: IncomingAliases::default(),
            outgoing_aliases: OutgoingAliases::default(),
            window: 1,
            client_max_packet_size: None,
            subscriptions: FxHashSet::default(),
            incoming_qos2: None,
            inflight: Inflight::default(),
            queue: VecDeque::new(),
            control: Control::default(),
            pingresp_owed: false,
            actions: VecDeque::new(),
            will: None,
            expires_at: None,
            journal: None,
            dropped_expired: 0,
            sent_received_at: None,
            acl: None,
        }
    }

    pub fn client_id(&self) -> &ByteString {
        &self.client_id
    }

    /// Protocol level of the current (or last) connection.
    pub fn protocol(&self) -> ProtocolVersion {
        self.protocol
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Attaches a new connection. The shard has already validated the
    /// client id and, for clean start, replaced any old session with a new
    /// one; a takeover of a connected session calls
    /// [`Session::handle_connection_lost`] first. Returns the CONNACK to send
    /// first: session present is set if this session existed before;
    /// unacknowledged outgoing messages are queued again (PUBLISH with DUP,
    /// or PUBREL).
    pub fn handle_connect(
        &mut self,
        connect: &Connect,
        assigned_client_id: bool,
        config: &SessionConfig,
        _now: Instant,
    ) -> ConnAck {
        self.connect(connect, assigned_client_id, config)
    }

    /// The keep-alive deadline: no packet within this long closes the
    /// connection (1.5 times the negotiated keep-alive). `None` when 0.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive != 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The client's v5 Maximum Packet Size: the shard must not send a
    /// larger packet (spec 3.1.2.11.4), and discards it instead.
    pub fn client_max_packet_size(&self) -> Option<u32> {
        self.client_max_packet_size.map(NonZeroU32::get)
    }

    /// The shard did not send `publish` (from [`Session::poll_transmit`])
    /// because it is larger than [`Session::client_max_packet_size`]: the
    /// spec has it treated as delivered (3.1.2.11.4), so its inflight slot
    /// and packet id are freed; a topic alias it would have announced is
    /// announced again by the next PUBLISH on its topic.
    pub fn discard_publish(&mut self, publish: &Publish) {
        if publish.qos != QoS::AtMostOnce {
            let flight = self.inflight.remove(publish.packet_id);
            self.journal_flight_ended(flight);
        }
        self.outgoing_aliases.forget(publish);
    }

    /// A packet from the client after CONNECT. `Err` carries the reason to
    /// close the connection with; a v5 DISCONNECT with it is already queued.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<(), ReasonCode> {
        if !self.connected || self.closing {
            // Read after the connection was condemned: acting on it could
            // only queue packets that will never be sent.
            return Ok(());
        }
        let result = match packet {
            Packet::Publish(publish) => self.handle_publish(publish, now),
            Packet::PubRel(pubrel) => {
                self.handle_pubrel(pubrel.packet_id);
                Ok(())
            }
            Packet::PubAck(ack) => {
                let flight = self.inflight.puback(ack.packet_id);
                self.journal_flight_ended(flight);
                Ok(())
            }
            Packet::PubRec(pubrec) => {
                self.handle_pubrec(&pubrec);
                Ok(())
            }
            Packet::PubComp(pubcomp) => {
                let flight = self.inflight.pubcomp(pubcomp.packet_id);
                self.journal_flight_ended(flight);
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.handle_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.handle_pingreq();
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.handle_disconnect(&disconnect),
            // A CONNECT naming an authentication method is refused (none is
            // supported), so no connection is ever authenticating and AUTH
            // is always out of place (spec 4.12).
            other @ (Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => Err(Problem::new(
                ReasonCode::ProtocolError,
                format!(
                    "unexpected {} packet",
                    format!("{:?}", other.packet_type()).to_uppercase()
                ),
            )),
        };
        result.map_err(|problem| {
            let reason = problem.reason;
            self.close(Some(problem));
            reason
        })
    }

    /// A message routed to this session.
    pub fn handle_deliver(
        &mut self,
        message: &Arc<Message>,
        delivery: Delivery,
        now: Instant,
    ) -> DeliverOutcome {
        self.deliver(message, delivery, None, now)
    }

    /// The connection is gone (abnormal close, takeover, or after
    /// DISCONNECT). Schedules or emits the will and the session's end.
    pub fn handle_connection_lost(&mut self, now: Instant) {
        self.connection_lost(now);
    }

    /// The shard is ending this session before its time, after
    /// [`Session::handle_connection_lost`]: a clean start took it over. A
    /// will still waiting out its delay is published now, since a will goes
    /// out when the session ends if that is sooner (spec 3.1.2.5); then
    /// [`SessionAction::Expired`].
    pub fn handle_discard(&mut self, now: Instant) {
        self.end(now);
    }

    /// When [`Session::handle_timeout`] next has work (will delay, expiry).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let will_due = self.will.as_ref().and_then(|will| will.due());
        match (will_due, self.expires_at) {
            (Some(will), Some(expiry)) => Some(will.min(expiry)),
            (will, expiry) => will.or(expiry),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.timeout(now);
    }

    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    /// The next packet for the socket, control packets first, then queued
    /// messages while the inflight window allows. `None` when offline.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        self.transmit(now)
    }

    /// Answers (acks, PINGRESP, SUBACK...) waiting for room in the
    /// connection's output or held behind a ticket: grows when the client
    /// sends requests faster than it reads the answers, or than the shard
    /// confirms them. Every ticket holds at least the answer queued right
    /// after it, so this bounds [`Session::unconfirmed`] too.
    pub fn unanswered(&self) -> usize {
        self.control.len() + usize::from(self.pingresp_owed)
    }

    /// The shard has done what `ticket` waited for (routed the message,
    /// added the route): answers held only by it and earlier confirmed
    /// tickets are released to [`Session::poll_transmit`]. A ticket of an
    /// earlier connection, or one already confirmed, is ignored.
    pub fn confirm(&mut self, ticket: Ticket) {
        self.control.confirm(ticket);
    }

    /// What `ticket` held an answer for could not be kept (the store
    /// failed): a v5 client gets `reason` on its PUBACK or PUBREC, once the
    /// ticket is confirmed; a 3.1.1 client, which has no way to hear it,
    /// loses the connection and sends the message again on its next one.
    pub fn refuse(&mut self, ticket: Ticket, reason: ReasonCode) {
        // A v5 client takes a PUBREC of 0x80 or more as the end of the
        // flow, free to use the packet id again for another message
        // (spec 4.3.3): kept as awaiting PUBREL, that message would be
        // taken for a resend and dropped. A 3.1.1 client resends the same
        // message with the same id on its next connection, which the kept
        // id answers without routing it twice.
        self.refuse_answer(ticket, reason, self.protocol.is_v5());
    }

    /// Refuses the PUBLISH behind `ticket` before it was routed: its flow
    /// ends here whatever the protocol, so that a resend is routed.
    pub fn refuse_unrouted(&mut self, ticket: Ticket, reason: ReasonCode) {
        self.refuse_answer(ticket, reason, true);
    }

    fn refuse_answer(&mut self, ticket: Ticket, reason: ReasonCode, end_qos2_flow: bool) {
        if end_qos2_flow && let Some(packet_id) = self.control.held_pubrec(ticket) {
            self.end_incoming_qos2(packet_id);
        }
        if self.protocol.is_v5() {
            self.control.refuse(ticket, reason);
        } else if !self.closing {
            self.close(None);
        }
    }

    /// Tickets of the current connection whose answers are still held:
    /// not confirmed, or confirmed while an earlier one is not.
    pub fn unconfirmed(&self) -> usize {
        self.control.unconfirmed()
    }

    /// When the message of the PUBLISH just polled was received by the
    /// broker; `None` for a resend (measured on its first send) or when
    /// already taken.
    pub fn take_sent_received_at(&mut self) -> Option<Instant> {
        self.sent_received_at.take()
    }

    /// Queued messages found expired when their turn to be sent came (or
    /// on resend after a reconnect), since the last call. They were dropped
    /// without a [`DeliverOutcome`], so the shard counts them from here.
    pub fn take_dropped_expired(&mut self) -> u32 {
        std::mem::take(&mut self.dropped_expired)
    }

    /// A client pings when it has sent nothing else for a while (spec
    /// 3.1.2.10), which for most is when it is idle: the moment to give
    /// back the buffers its traffic left behind. An empty `VecDeque` keeps
    /// its capacity, and the control queue's is over 1 KiB (four 264-byte
    /// packets) once a single SUBACK or ack has passed through it; an idle
    /// subscriber would hold that, and the queue's and the actions', for
    /// good. At worst an active client pays one allocation per keep-alive.
    /// The PINGRESP itself is a flag, unless answers already wait ahead of
    /// it.
    fn handle_pingreq(&mut self) {
        // A held ticket holds a PINGRESP asked for after it, too.
        if !self.control.is_empty() || self.pingresp_owed || self.control.unconfirmed() > 0 {
            self.control.push_back(Packet::PingResp);
            return;
        }
        self.control.release_buffers();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        if self.actions.is_empty() {
            self.actions = VecDeque::new();
        }
        self.pingresp_owed = true;
    }

    /// Ends the current connection: a v5 client is told why first. The
    /// Reason String goes out whatever Request Problem Information said:
    /// DISCONNECT is exempt (spec 3.1.2.11.7). Answers still held behind a
    /// ticket are dropped so that the DISCONNECT is not held with them.
    fn close(&mut self, problem: Option<Problem>) {
        self.control.drop_held();
        if let Some(problem) = problem
            && self.protocol.is_v5()
        {
            self.control
                .push_back(Packet::Disconnect(Box::new(Disconnect {
                    reason: problem.reason,
                    properties: DisconnectProperties {
                        reason_string: Some(problem.detail.into()),
                        ..DisconnectProperties::default()
                    },
                })));
        }
        self.closing = true;
        self.actions.push_back(SessionAction::Close);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::testing::*;
    use super::*;
    use crate::protocol::topic::matches;
    use crate::protocol::{
        PubResponse, PubResponseProperties, Publish, Subscribe, SubscribeProperties,
        TopicSubscription,
    };

    /// The smallest shard that exercises the contract: sessions by index,
    /// subscriptions as (session, filter, options, id), no retained store.
    struct Shard {
        sessions: Vec<Session>,
        subscriptions: Vec<(usize, ByteString, SubscriptionOptions, Option<u32>)>,
    }

    impl Shard {
        fn run_actions(&mut self, from: usize, now: Instant) {
            while let Some(action) = self.sessions[from].poll_action() {
                match action {
                    SessionAction::Publish { message, ticket } => {
                        let targets: Vec<_> = self
                            .subscriptions
                            .iter()
                            .filter(|(_, filter, _, _)| matches(filter, &message.topic))
                            .cloned()
                            .collect();
                        for (to, _, options, id) in targets {
                            let delivery = Delivery {
                                granted_qos: options.qos,
                                retain_as_published: options.retain_as_published,
                                from_retained_store: false,
                                subscription_ids: id.into_iter().collect(),
                            };
                            self.sessions[to].handle_deliver(&message, delivery, now);
                        }
                        if let Some(ticket) = ticket {
                            self.sessions[from].confirm(ticket);
                        }
                    }
                    SessionAction::Subscribe {
                        filter,
                        options,
                        subscription_id,
                        ticket,
                        ..
                    } => {
                        self.subscriptions
                            .retain(|(to, f, _, _)| !(*to == from && *f == filter));
                        self.subscriptions
                            .push((from, filter, options, subscription_id));
                        self.sessions[from].confirm(ticket);
                    }
                    SessionAction::Unsubscribe { filter } => self
                        .subscriptions
                        .retain(|(to, f, _, _)| !(*to == from && *f == filter)),
                    SessionAction::Close | SessionAction::Expired => {}
                }
            }
        }

        fn send(&mut self, from: usize, packet: Packet, now: Instant) -> Result<(), ReasonCode> {
            let result = self.sessions[from].handle_packet(packet, now);
            self.run_actions(from, now);
            result
        }
    }

    fn ack(packet_id: u16) -> PubResponse {
        PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: PubResponseProperties::default(),
        }
    }

    /// Every connected client holds a `Session`, idle or not, so its size is
    /// a per-connection cost: 704 bytes with the will, the config copy and
    /// the rarely used tables inline, 296 with them boxed or narrowed, 304
    /// with the tickets that hold answers (boxed: 48 bytes inline), 312
    /// with the store's journal (a pointer, null unless stored), 320 with
    /// the ACL rules (a pointer, null without an ACL), 312 with the
    /// client's packet size and the expired count in one word. This
    /// catches a field that puts them back; an upper bound, and only where
    /// it was measured, since std's type sizes differ between targets.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn an_idle_session_stays_small() {
        assert!(
            std::mem::size_of::<Session>() <= 312,
            "Session grew to {} bytes",
            std::mem::size_of::<Session>()
        );
    }

    #[test]
    fn qos2_publish_reaches_a_subscriber_exactly_once_across_its_reconnect() {
        let now = Instant::now();
        let mut publisher = Session::new("pub".into(), now);
        publisher.handle_connect(&connect(ProtocolVersion::V5), false, &config(), now);
        let mut subscriber = Session::new("sub".into(), now);
        subscriber.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        let mut shard = Shard {
            sessions: vec![publisher, subscriber],
            subscriptions: Vec::new(),
        };
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![TopicSubscription {
                filter: "sensors/+/temp".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: SubscribeProperties {
                subscription_identifier: Some(7),
                ..SubscribeProperties::default()
            },
        };
        shard.send(1, Packet::Subscribe(subscribe), now).unwrap();
        assert!(matches!(
            transmit(&mut shard.sessions[1], now).as_slice(),
            [Packet::SubAck(_)]
        ));

        let publish = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "sensors/kitchen/temp".into(),
            packet_id: 10,
            properties: Default::default(),
            payload: "21.5".into(),
        };
        shard
            .send(0, Packet::Publish(publish.clone()), now)
            .unwrap();
        // The publisher's PUBREC went missing; it sends the PUBLISH again.
        shard
            .send(
                0,
                Packet::Publish(Publish {
                    dup: true,
                    ..publish
                }),
                now,
            )
            .unwrap();
        shard.send(0, Packet::PubRel(ack(10)), now).unwrap();
        assert_eq!(
            transmit(&mut shard.sessions[0], now)
                .iter()
                .map(Packet::packet_type)
                .collect::<Vec<_>>(),
            vec![
                crate::protocol::PacketType::PubRec,
                crate::protocol::PacketType::PubRec,
                crate::protocol::PacketType::PubComp
            ]
        );

        let first = publishes(transmit(&mut shard.sessions[1], now));
        assert_eq!(first.len(), 1, "routed once");
        assert_eq!(first[0].properties.subscription_identifiers, vec![7]);
        assert_eq!(first[0].payload, "21.5".as_bytes());
        let id = first[0].packet_id;

        // The subscriber drops off before acknowledging, and comes back.
        let later = now + Duration::from_secs(5);
        shard.sessions[1].handle_connection_lost(later);
        let connack = shard.sessions[1].handle_connect(
            &persistent(ProtocolVersion::V5),
            false,
            &config(),
            later,
        );
        assert!(connack.session_present);
        let again = publishes(transmit(&mut shard.sessions[1], later));
        assert_eq!(again.len(), 1);
        assert!(again[0].dup);
        assert_eq!(again[0].packet_id, id);
        shard.send(1, Packet::PubRec(ack(id)), later).unwrap();
        assert_eq!(
            transmit(&mut shard.sessions[1], later),
            vec![Packet::PubRel(ack(id))]
        );
        shard.send(1, Packet::PubComp(ack(id)), later).unwrap();
        assert_eq!(transmit(&mut shard.sessions[1], later), vec![]);
        assert_eq!(shard.sessions[1].inflight.len(), 0);
    }
}

//! The per-client session state machine (sans-IO, quinn-proto style).
//!
//! A [`Session`] lives on its client id's home shard and outlives
//! connections: it holds subscriptions (as the client asked for them),
//! QoS 1/2 state in both directions, the outbound queue and the will. It
//! never touches a socket or a clock: the shard feeds it packets, routed
//! messages and `now`, and drains what it wants done with [`Session::poll_action`]
//! (for the router) and [`Session::poll_transmit`] (for the socket).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use crate::message::Message;
use crate::protocol::{
    ConnAck, Connect, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
};

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
    Publish(Arc<Message>),
    /// Add or replace this session's subscription in the trie, then deliver
    /// retained messages matching it if `send_retained`.
    Subscribe {
        filter: ByteString,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        send_retained: bool,
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

pub struct Session {
    _todo: (),
}

impl Session {
    pub fn new(client_id: ByteString, now: Instant) -> Session {
        let _ = (client_id, now);
        todo!("session")
    }

    pub fn client_id(&self) -> &ByteString {
        todo!("session")
    }

    /// Protocol level of the current (or last) connection.
    pub fn protocol(&self) -> ProtocolVersion {
        todo!("session")
    }

    pub fn is_connected(&self) -> bool {
        todo!("session")
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
        now: Instant,
    ) -> ConnAck {
        let _ = (connect, assigned_client_id, config, now);
        todo!("session")
    }

    /// The keep-alive deadline: no packet within this long closes the
    /// connection (1.5 times the negotiated keep-alive). `None` when 0.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        todo!("session")
    }

    /// A packet from the client after CONNECT. `Err` carries the reason to
    /// close the connection with; a v5 DISCONNECT with it is already queued.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<(), ReasonCode> {
        let _ = (packet, now);
        todo!("session")
    }

    /// A message routed to this session.
    pub fn handle_deliver(
        &mut self,
        message: &Arc<Message>,
        delivery: Delivery,
        now: Instant,
    ) -> DeliverOutcome {
        let _ = (message, delivery, now);
        todo!("session")
    }

    /// The connection is gone (abnormal close, takeover, or after
    /// DISCONNECT). Schedules or emits the will and the session's end.
    pub fn handle_connection_lost(&mut self, now: Instant) {
        let _ = now;
        todo!("session")
    }

    /// When [`Session::handle_timeout`] next has work (will delay, expiry).
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!("session")
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!("session")
    }

    pub fn poll_action(&mut self) -> Option<SessionAction> {
        todo!("session")
    }

    /// The next packet for the socket, control packets first, then queued
    /// messages while the inflight window allows. `None` when offline.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        let _ = now;
        todo!("session")
    }
}

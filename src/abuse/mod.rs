//! Limits against abuse: what one client, one source address or one
//! client id in a reconnect loop may cost the broker (issue 13).
//!
//! - [`publish`]: messages and bytes per second of PUBLISH per client,
//!   enforced by reading the client more slowly (TCP back-pressure), never
//!   by dropping what it sent;
//! - [`address`]: connection attempts per second and connections open at
//!   once per source address (the one a PROXY protocol header names when
//!   the listener expects one), refused before their CONNECT is read;
//! - [`flapping`]: a client id connecting too often in a window is
//!   refused for a while.
//!
//! Every limit is off by default. The state machines are sans-IO ([`rate`]
//! is the token bucket they share) and take `now`; the shard calls them
//! when a connection is accepted, at CONNECT, and when its reader decodes
//! a PUBLISH.

pub mod address;
pub mod flapping;
pub mod publish;
pub mod rate;

use address::{AddressLimit, AddressLimits};
use flapping::FlappingSettings;
use publish::{PublishLimit, PublishLimits};

/// The limits as configured; every one off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbuseSettings {
    pub publish: PublishLimits,
    /// Connections open at once per source address; 0 is no limit.
    pub max_connections_per_address: u32,
    /// Connection attempts per second per source address; 0 is no limit.
    pub max_connection_rate_per_address: u64,
    /// `None` when flapping is not detected.
    pub flapping: Option<FlappingSettings>,
}

/// The limits every shard applies; clones share the per-address table.
#[derive(Debug, Clone, Default)]
pub struct AbuseLimits {
    pub publish: PublishLimits,
    pub addresses: AddressLimits,
    pub flapping: Option<FlappingSettings>,
}

/// Why a client was slowed or refused, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    PublishRate,
    PublishBytes,
    AddressConnections,
    AddressRate,
    Flapping,
}

impl AbuseLimits {
    pub fn new(settings: &AbuseSettings) -> AbuseLimits {
        AbuseLimits {
            publish: settings.publish,
            addresses: AddressLimits::new(
                settings.max_connections_per_address,
                settings.max_connection_rate_per_address,
            ),
            flapping: settings.flapping,
        }
    }
}

impl LimitKind {
    pub const ALL: [LimitKind; 5] = [
        LimitKind::PublishRate,
        LimitKind::PublishBytes,
        LimitKind::AddressConnections,
        LimitKind::AddressRate,
        LimitKind::Flapping,
    ];

    /// The `limit` label of `ringmq_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::PublishRate => "publish_rate",
            LimitKind::PublishBytes => "publish_bytes",
            LimitKind::AddressConnections => "address_connections",
            LimitKind::AddressRate => "address_rate",
            LimitKind::Flapping => "flapping",
        }
    }
}

impl From<PublishLimit> for LimitKind {
    fn from(limit: PublishLimit) -> LimitKind {
        match limit {
            PublishLimit::Messages => LimitKind::PublishRate,
            PublishLimit::Bytes => LimitKind::PublishBytes,
        }
    }
}

impl From<AddressLimit> for LimitKind {
    fn from(limit: AddressLimit) -> LimitKind {
        match limit {
            AddressLimit::Connections => LimitKind::AddressConnections,
            AddressLimit::Rate => LimitKind::AddressRate,
        }
    }
}

//! The cluster's settings, validated: what `config` produces from the
//! `[cluster]` table and the `--node-id`, `--cluster-*` and `--seeds`
//! flags, and what the cluster runtime starts from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a node needs to join a cluster. `None` in the server
/// configuration means a single node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Unique in the cluster; defaults to the host name.
    pub node_id: String,
    /// The UDP address QUIC (and gossip, inside QUIC) listens on.
    pub listen: SocketAddr,
    /// What peers dial to reach this node: `listen` unless told otherwise
    /// (NAT, Kubernetes). Never an unspecified address.
    pub advertise: SocketAddr,
    /// Other nodes' cluster addresses as given (`host:port`), resolved and
    /// re-resolved by the runtime so that a DNS name may point at a
    /// changing set of nodes (a Kubernetes headless service).
    pub seeds: Vec<String>,
    pub trust: ClusterTrust,
    pub ack: AckMode,
    /// How often gossip probes a member; failure detection takes a few
    /// of these plus `suspect_timeout`.
    pub probe_interval: Duration,
    /// How long a suspected member has to refute before it is declared
    /// down.
    pub suspect_timeout: Duration,
    /// Longest a SUBACK waits for live peers to acknowledge a new route.
    pub route_ack_timeout: Duration,
    /// Bytes of messages held for one peer that has not acknowledged
    /// them; past it QoS 0 is dropped first, then QoS 1/2.
    pub peer_buffer_bytes: usize,
    /// How long an unreachable peer's routes and outbox are kept; also
    /// how long a voter of the ownership raft may be gone before the
    /// leader replaces it.
    pub peer_hold: Duration,
    /// Live nodes, this one included, that a node must see before it
    /// forms the ownership raft ([`crate::cluster::ownership::reconcile`]).
    pub bootstrap_expect: usize,
    /// Nodes that hold each persistent session, its owner included
    /// ([`crate::cluster::node`], "Replicated sessions"); 1 keeps no copy.
    pub replication_factor: usize,
    /// Where the ownership raft keeps its vote, log and snapshot: the
    /// broker's data dir. Without one, a temporary dir for this process's
    /// life, and the node joins the raft as a new member at every start.
    pub data_dir: Option<PathBuf>,
}

/// How nodes prove to each other that they belong. `Debug` leaves the
/// secret out, so that logging the settings does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub enum ClusterTrust {
    /// PEM files: the cluster CA, and this node's certificate and key
    /// signed by it.
    Files {
        ca_file: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// A secret every node shares, from which each derives the same CA and
    /// makes its own certificate.
    Secret(String),
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterTrust::Files {
                ca_file,
                cert_file,
                key_file,
            } => f
                .debug_struct("Files")
                .field("ca_file", ca_file)
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .finish(),
            ClusterTrust::Secret(_) => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// When a QoS 1/2 publisher is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Only once every peer node with matching subscribers has the message.
    Remote,
    /// As soon as this node has routed it.
    Local,
}

/// Longest node id: ids appear in every gossip message and log line, and
/// name certificate files.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Whether `id` may name a node: 1 to [`MAX_NODE_ID_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`, so that it is safe as a file name, a log field and
/// a certificate common name. Says why not.
pub fn check_node_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err("must be 1 to 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only letters, digits, `.`, `_` and `-`");
    }
    // `.` and `..` would name directories when the id names a file.
    if id.bytes().all(|b| b == b'.') {
        return Err("must not be only dots");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_the_secret_out() {
        let trust = ClusterTrust::Secret("hunter2-hunter2-hunter2".to_owned());
        assert_eq!(format!("{trust:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn node_ids() {
        for good in ["a", "node-1", "n1.example.com", "A_b", &"x".repeat(64)] {
            assert_eq!(check_node_id(good), Ok(()), "{good}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a/b", "é", ".", "..", "n:1"] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }
}

//! Session ownership across the cluster: one owner per client id, fenced
//! by an epoch, decided by raft.
//!
//! # What it is for
//!
//! A client may connect to any node, so two nodes can each believe they
//! serve the same session: the node the client left (not yet aware it
//! left) and the node it reconnected to. Each client id therefore has
//! exactly one *owner* node, recorded with an *epoch*: a number that grows
//! with every change of owner. A node serves a session only under the
//! epoch it was granted, and anything written under an epoch (session
//! state handed over, a replica's copy) is accepted only while that epoch
//! is still current ([`OwnershipTable::check`]). A node that lost a
//! session without knowing it is fenced: whatever it says under its old
//! epoch is refused everywhere that has applied the newer grant.
//!
//! # Why openraft
//!
//! Agreeing on "who owns this client id now" across crashes and
//! partitions is consensus, and consensus protocols invented in-house are
//! where clusters lose data. [`openraft`] is a maintained, widely used
//! Raft (it runs Databend's metadata service), tested against its own
//! suite, and shaped as a library: we supply the log store, the state
//! machine and the network; it supplies elections, replication, commit
//! and snapshots. Its storage test suite runs on our stores here.
//!
//! # What is replicated, and what it costs
//!
//! Only the ownership table ([`table`]): one [`Command`] per connect,
//! takeover or session end, never one per message. The publish path never
//! touches raft; a CONNECT pays one commit (a round trip to the leader
//! and from it to a majority).
//!
//! # The CAP choice, plainly
//!
//! Ownership is consistent before it is available. During a partition
//! the side holding a majority of the voters keeps granting ownership: a
//! client that reconnects on that side is served there, under a new
//! epoch. A node on the minority side cannot claim a client id (its claim
//! fails with [`OwnershipError::NoQuorum`] within the claim timeout): it
//! cannot confirm that nobody else has taken the session, so it does not
//! take over sessions it cannot confirm, and a client connecting there is
//! refused instead of being served twice. The sessions it already served
//! are fenced as soon as the majority grants them elsewhere; once the
//! partition heals it catches up and rejects the stale epochs itself.
//!
//! # When a claim fails
//!
//! A claim either returns the epoch a majority committed, or fails, and
//! a failed claim never lets the node serve: [`OwnershipError::NoQuorum`]
//! (no majority within the timeout) or [`OwnershipError::Unconfirmed`]
//! (the leader's answer was lost). Either may still have committed; the
//! grant then names a node that does not know it holds it, which serves
//! nothing under it, and the next claim supersedes it. A claim is retried
//! only while it certainly was not proposed, so a late repeat can never
//! land after another node's newer claim and take the session back.
//!
//! # What survives a restart
//!
//! A voter keeps its vote, its log and its last snapshot in
//! `ownership.redb` in the data dir ([`store`]), each synced before raft
//! counts on it: a vote before the vote request is answered, entries
//! before they count towards a majority, a snapshot before the log it
//! covers is purged. A node that restarts, even after a kill -9, rejoins
//! under its own raft id as the member it was: [`Ownership::start`]
//! rebuilds its table from the snapshot and the committed log after it
//! before it returns, a former leader starts as leader of its old term
//! (and steps down as soon as it hears of a newer one), and no epoch
//! granted before the restart is granted again. The committed log id is
//! written unsynced (it is a hint, see [`store`]): after a kill -9 the
//! table may come back a few entries short, and the leader's first
//! message brings the rest.
//!
//! # In a running cluster
//!
//! Every clustered node runs the raft on the cluster thread's tokio
//! runtime (`cluster/runtime/ownership.rs`), its file in the data dir,
//! or without one in a temporary dir under a raft id new at every start
//! (see there for what that costs). Raft ids come from node names
//! ([`raft::raft_id`]: the first 8 bytes of the name's SHA-256), and a
//! member's `BasicNode::addr` is its node name, which the runtime maps
//! to a link. Requests travel over the cluster's mutually-authenticated
//! QUIC connections, one stream per request
//! (`cluster/runtime/raftnet.rs`), postcard-encoded ([`wire`]).
//!
//! Nobody configures the voters. A new cluster forms the raft once
//! `cluster.bootstrap_expect` nodes (3 by default) without raft state
//! see each other, on the one with the smallest node name; from then on
//! the leader adds every live node as a learner, keeps up to 5 voters,
//! an odd number, and replaces a voter gone for longer than
//! `cluster.peer_hold` ([`reconcile`] has the rules and why).
//!
//! # The pieces
//!
//! - [`table`]: the state machine's logic, pure data: claim, release,
//!   check.
//! - [`raft`]: openraft's type configuration, the raft log, raft ids.
//! - [`state_machine`]: the table as openraft applies and snapshots it.
//! - [`store`]: the vote, log and snapshot on disk, in one redb file.
//! - [`network`]: the [`Transport`] trait (raft's RPCs and a command
//!   forwarded to the leader) and openraft's network over it.
//! - [`wire`]: the requests and answers as they cross between nodes,
//!   and what a peer may not send.
//! - [`reconcile`]: who votes, decided from gossip; sans-IO.
//! - [`handle`]: [`Ownership`], a node's async handle: `claim`,
//!   `release`, `check`, and the membership changes the reconciler
//!   decides.
//! - `mem.rs` and `quic_net.rs` (tests): an in-memory transport whose
//!   links can be cut, and the cluster's QUIC transport between
//!   in-process endpoints; `tests.rs` runs the same 3- and 5-node
//!   scenarios (partitions, restarts, snapshots) over both, each node's
//!   store in a temporary dir.
//!
//! # Left for later
//!
//! Every CONNECT claims its client id and a session held elsewhere is
//! handed over (`cluster::node::takeover`, `shard::state::handover`).
//! A restarted node drops the sessions it restored that another node
//! claimed meanwhile. Left: replicating sessions under their epoch, so a
//! dead owner's sessions survive; wills exactly once across a restart;
//! handing sessions and
//! leadership over before a graceful leave (the others elect after an
//! election timeout instead); and forming the raft anew when a majority
//! of its voters is gone for good (see `cluster/runtime/ownership.rs`).

pub mod handle;
pub mod network;
pub mod raft;
pub mod reconcile;
pub mod state_machine;
pub mod store;
pub mod table;
pub mod wire;

#[cfg(test)]
mod mem;
#[cfg(test)]
pub(crate) mod quic_net;
#[cfg(test)]
mod tests;

pub use handle::{Claimed, Ownership, OwnershipConfig, OwnershipError};
pub use network::{ForwardReply, LinkDown, Transport};
pub use store::{RaftStore, RaftStoreError};
pub use table::{Answer, Command, Epoch, Grant, NodeId, OwnershipTable};
pub use wire::{RaftAnswer, RaftRequest};

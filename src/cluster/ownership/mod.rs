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
//! # The pieces
//!
//! - [`table`]: the state machine's logic, pure data: claim, release,
//!   check.
//! - [`raft`]: openraft's type configuration and the raft log.
//! - [`state_machine`]: the table as openraft applies and snapshots it.
//! - [`store`]: the vote, log and snapshot on disk, in one redb file.
//! - [`network`]: the [`Transport`] trait (raft's RPCs and a command
//!   forwarded to the leader) and openraft's network over it.
//! - [`handle`]: [`Ownership`], a node's async handle: `claim`,
//!   `release`, `check`.
//! - `mem.rs` (tests): an in-memory transport whose links can be cut, on
//!   which `tests.rs` runs 3- and 5-node clusters through partitions and
//!   restarts, each node's store in a temporary dir.
//!
//! # Left for later
//!
//! This slice is the decision, its fencing and what a voter keeps across
//! a restart, tested over the in-memory transport. Still to come: the
//! real transport, as one more `ClusterMsg` variant on the existing
//! cluster link (postcard-encoded, as the store is); opening the store
//! in the broker's data dir; choosing the voters (up to 5) from gossip
//! membership; wiring `claim` into CONNECT; the takeover itself (the old
//! owner closing with 0x8E and sending the session over); and
//! replicating sessions under their epoch.

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

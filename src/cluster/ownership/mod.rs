//! Session ownership across the cluster: one owner per client id, fenced
//! by an epoch.
//!
//! A client may connect to any node, so two nodes can each believe they
//! serve the same session: the node the client left (not yet aware it
//! left) and the node it reconnected to. Each client id therefore has
//! exactly one *owner* node, recorded with an *epoch*: a number that grows
//! with every change of owner. A node serves a session only under the
//! epoch it was granted, and anything written under an epoch (session
//! state handed over, a replica's copy) is accepted only while that epoch
//! is still current ([`OwnershipTable::check`]).
//!
//! [`table`] is the decision's state machine, pure data; which order its
//! commands apply in is for a consensus protocol to decide.

pub mod table;

pub use table::{Answer, Command, Epoch, Grant, NodeId, OwnershipTable};

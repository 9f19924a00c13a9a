//! The ownership table: which node owns each client id, under which
//! epoch. Pure data and the replicated state machine's whole logic: raft
//! ([`super::raft`]) decides the order of [`Command`]s, every node applies
//! them here in that order, and so every node holds the same table once it
//! has applied the same log.

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// A node as the ownership raft names it. Raft wants a small `Copy` id;
/// mapping the cluster's node names (`cluster.node_id`) onto these is the
/// job of whoever starts the raft.
pub type NodeId = u64;

/// A fencing token: the number of one grant of ownership. Strictly
/// increasing per client id, so "my epoch is the current one" is a
/// complete test of "I still own it": every later grant carries a larger
/// number.
pub type Epoch = u64;

/// Who owns a client id, since which grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub node: NodeId,
    pub epoch: Epoch,
}

/// What is replicated: one command per connect, takeover or session end,
/// never per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Give `client_id` to `node` under a new epoch, whoever held it.
    /// Unconditional on purpose: raft orders two racing claims, the later
    /// one wins, and the earlier claimer learns it lost because its epoch
    /// no longer passes [`OwnershipTable::check`].
    Claim { client_id: ByteString, node: NodeId },
    /// `node` is done with `client_id` (its session ended). Applies only
    /// if `node` still holds it under `epoch`, so a late release from a
    /// node that was already superseded cannot free someone else's grant.
    Release {
        client_id: ByteString,
        node: NodeId,
        epoch: Epoch,
    },
    /// Give `client_id` to `node` under a new epoch only if `from` still
    /// holds it: a replica taking over the sessions of a node that died
    /// must not take one whose client has meanwhile reconnected elsewhere.
    /// If `node` holds it already, its grant is the answer, so that a
    /// promotion whose answer was lost can be proposed again.
    Promote {
        client_id: ByteString,
        from: NodeId,
        node: NodeId,
    },
    /// Changes nothing. `node` proposes it, then waits until it has
    /// applied it (its answer names its log index): from then on, what
    /// `node` reads of the table holds everything committed before, as
    /// fresh as the majority's ([`crate::cluster::ownership::Ownership::catch_up`]).
    Barrier { node: NodeId },
}

/// What applying one log entry answered, handed back to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The entry was raft's own (a new leader's blank entry, a membership
    /// change), not a [`Command`].
    Nothing,
    /// The claim was granted under `epoch`; `previous` is the grant it
    /// replaced, so the new owner knows whom to ask for the session.
    Claimed {
        epoch: Epoch,
        previous: Option<Grant>,
    },
    /// Whether the release applied (false: the grant had moved on).
    Released(bool),
    /// The promotion's epoch, or `None` if the client id had moved on.
    Promoted(Option<Epoch>),
    /// A barrier's place in the log (`index`), answered by the state
    /// machine, which knows it; the table itself answers 0.
    Barrier { index: u64 },
}

/// The replicated state.
///
/// Epochs come from one counter for the whole table instead of one per
/// client id. Per client id they still strictly increase (each grant takes
/// the next number of a counter that never goes back), and a released
/// client id can be forgotten entirely: its next grant is numbered above
/// anything it ever had without the table remembering it. With a counter
/// per client id, the table would have to keep a tombstone for every
/// client id ever seen, and brokers see many short-lived random ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipTable {
    grants: FxHashMap<ByteString, Grant>,
    /// The last epoch handed out, to any client id.
    last_epoch: Epoch,
}

impl OwnershipTable {
    pub fn new() -> OwnershipTable {
        OwnershipTable::default()
    }

    pub fn apply(&mut self, command: Command) -> Answer {
        match command {
            Command::Claim { client_id, node } => {
                let (epoch, previous) = self.claim(client_id, node);
                Answer::Claimed { epoch, previous }
            }
            Command::Release {
                client_id,
                node,
                epoch,
            } => Answer::Released(self.release(&client_id, node, epoch)),
            Command::Promote {
                client_id,
                from,
                node,
            } => match self.grants.get(&client_id) {
                Some(grant) if grant.node == from => {
                    Answer::Promoted(Some(self.claim(client_id, node).0))
                }
                // A promotion proposed again after an answer was lost.
                Some(grant) if grant.node == node => Answer::Promoted(Some(grant.epoch)),
                _ => Answer::Promoted(None),
            },
            Command::Barrier { .. } => Answer::Barrier { index: 0 },
        }
    }

    /// Gives `client_id` to `node` under the next epoch; returns it and
    /// the grant it replaced.
    pub fn claim(&mut self, client_id: ByteString, node: NodeId) -> (Epoch, Option<Grant>) {
        // u64 epochs at one claim per microsecond last 584,000 years: no
        // wrap to handle.
        self.last_epoch += 1;
        let grant = Grant {
            node,
            epoch: self.last_epoch,
        };
        (self.last_epoch, self.grants.insert(client_id, grant))
    }

    /// Frees `client_id` if `node` holds it under `epoch`.
    pub fn release(&mut self, client_id: &str, node: NodeId, epoch: Epoch) -> bool {
        if !self.check(client_id, node, epoch) {
            return false;
        }
        self.grants.remove(client_id);
        true
    }

    /// Whether `node` holds `client_id` under `epoch`: the fencing check a
    /// node makes before it accepts anything written under an epoch.
    pub fn check(&self, client_id: &str, node: NodeId, epoch: Epoch) -> bool {
        self.grants.get(client_id) == Some(&Grant { node, epoch })
    }

    pub fn owner(&self, client_id: &str) -> Option<Grant> {
        self.grants.get(client_id).copied()
    }

    /// The client ids `node` owns and their epochs, to hand its sessions
    /// over. A scan: it runs when a node leaves or dies, not per connect.
    pub fn owned_by(&self, node: NodeId) -> Vec<(ByteString, Epoch)> {
        self.grants
            .iter()
            .filter(|(_, grant)| grant.node == node)
            .map(|(client_id, grant)| (client_id.clone(), grant.epoch))
            .collect()
    }

    pub fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }

    /// Client ids with an owner.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn claim(table: &mut OwnershipTable, client_id: &str, node: NodeId) -> Answer {
        table.apply(Command::Claim {
            client_id: client_id.into(),
            node,
        })
    }

    #[test]
    fn a_claim_fences_the_previous_owner() {
        let mut table = OwnershipTable::new();
        assert_eq!(
            claim(&mut table, "c", 2),
            Answer::Claimed {
                epoch: 1,
                previous: None
            }
        );
        assert!(table.check("c", 2, 1));
        assert_eq!(
            claim(&mut table, "c", 3),
            Answer::Claimed {
                epoch: 2,
                previous: Some(Grant { node: 2, epoch: 1 })
            }
        );
        assert!(!table.check("c", 2, 1), "the old owner is fenced");
        assert!(!table.check("c", 3, 1), "the old epoch fails for anyone");
        assert!(
            !table.check("c", 2, 2),
            "the new epoch is not the old owner's"
        );
        assert!(table.check("c", 3, 2));
    }

    #[test]
    fn a_promotion_takes_a_client_id_only_from_the_node_named() {
        let mut table = OwnershipTable::new();
        claim(&mut table, "c", 1);
        let promote = |table: &mut OwnershipTable, from| {
            table.apply(Command::Promote {
                client_id: "c".into(),
                from,
                node: 3,
            })
        };
        assert_eq!(promote(&mut table, 2), Answer::Promoted(None));
        assert!(table.check("c", 1, 1), "node 1 keeps it");
        assert_eq!(promote(&mut table, 1), Answer::Promoted(Some(2)));
        assert!(table.check("c", 3, 2));
        assert_eq!(
            promote(&mut table, 1),
            Answer::Promoted(Some(2)),
            "proposed again, the same grant"
        );
        claim(&mut table, "c", 4);
        assert_eq!(promote(&mut table, 1), Answer::Promoted(None), "moved on");
        assert_eq!(
            table.apply(Command::Promote {
                client_id: "gone".into(),
                from: 1,
                node: 3,
            }),
            Answer::Promoted(None)
        );
    }

    #[test]
    fn reclaiming_on_the_same_node_fences_the_earlier_connection() {
        let mut table = OwnershipTable::new();
        claim(&mut table, "c", 1);
        claim(&mut table, "c", 1);
        assert!(!table.check("c", 1, 1));
        assert!(table.check("c", 1, 2));
    }

    #[test]
    fn release_applies_only_for_the_current_grant() {
        let mut table = OwnershipTable::new();
        claim(&mut table, "c", 1);
        claim(&mut table, "c", 2);
        let stale = Command::Release {
            client_id: "c".into(),
            node: 1,
            epoch: 1,
        };
        assert_eq!(table.apply(stale), Answer::Released(false));
        assert_eq!(table.owner("c"), Some(Grant { node: 2, epoch: 2 }));
        assert!(!table.release("c", 1, 2), "right epoch, wrong node");
        assert!(table.release("c", 2, 2));
        assert_eq!(table.owner("c"), None);
        assert!(table.is_empty());
        assert!(!table.check("c", 2, 2), "a released grant is fenced too");
    }

    #[test]
    fn an_epoch_is_never_reused_after_a_release() {
        let mut table = OwnershipTable::new();
        claim(&mut table, "c", 1);
        table.release("c", 1, 1);
        assert_eq!(
            claim(&mut table, "c", 1),
            Answer::Claimed {
                epoch: 2,
                previous: None
            }
        );
        assert!(!table.check("c", 1, 1));
    }

    #[test]
    fn owned_by_lists_one_nodes_grants() {
        let mut table = OwnershipTable::new();
        claim(&mut table, "a", 1);
        claim(&mut table, "b", 2);
        claim(&mut table, "c", 1);
        claim(&mut table, "a", 2);
        let mut owned = table.owned_by(1);
        owned.sort();
        assert_eq!(owned, vec![(ByteString::from("c"), 3)]);
        let mut owned = table.owned_by(2);
        owned.sort();
        assert_eq!(
            owned,
            vec![(ByteString::from("a"), 4), (ByteString::from("b"), 2)]
        );
        assert!(table.owned_by(3).is_empty());
    }

    fn command() -> impl Strategy<Value = Command> {
        let client_id = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(ByteString::from);
        prop_oneof![
            (client_id.clone(), 1u64..4)
                .prop_map(|(client_id, node)| Command::Claim { client_id, node }),
            (client_id.clone(), 1u64..4, 0u64..12).prop_map(|(client_id, node, epoch)| {
                Command::Release {
                    client_id,
                    node,
                    epoch,
                }
            }),
            (client_id, 1u64..4, 1u64..4).prop_map(|(client_id, from, node)| {
                Command::Promote {
                    client_id,
                    from,
                    node,
                }
            }),
            (1u64..4).prop_map(|node| Command::Barrier { node }),
        ]
    }

    proptest! {
        /// Whatever the commands: each client id's epochs strictly
        /// increase, every grant it ever had other than the current one
        /// fails the check, and so does a grant from a release.
        #[test]
        fn epochs_increase_and_stale_grants_fail(commands in prop::collection::vec(command(), 0..60)) {
            let mut table = OwnershipTable::new();
            let mut history: FxHashMap<ByteString, Vec<Grant>> = FxHashMap::default();
            for command in commands {
                let client_id = match &command {
                    Command::Claim { client_id, .. }
                    | Command::Release { client_id, .. }
                    | Command::Promote { client_id, .. } => client_id.clone(),
                    // Changes nothing: "a" is as good as any to check.
                    Command::Barrier { .. } => ByteString::from("a"),
                };
                let before = table.owner(&client_id);
                let node = match &command {
                    Command::Claim { node, .. } | Command::Promote { node, .. } => *node,
                    Command::Release { .. } | Command::Barrier { .. } => 0,
                };
                let promoted_from = match &command {
                    Command::Promote { from, .. } => Some(*from),
                    _ => None,
                };
                match table.apply(command) {
                    Answer::Claimed { epoch, previous } => {
                        prop_assert_eq!(previous, before);
                        let grants = history.entry(client_id.clone()).or_default();
                        if let Some(last) = grants.last() {
                            prop_assert!(epoch > last.epoch);
                        }
                        grants.push(Grant { node, epoch });
                    }
                    Answer::Promoted(Some(epoch))
                        if before.is_some_and(|g| g.node == node && Some(g.node) != promoted_from) =>
                    {
                        prop_assert_eq!(before.map(|grant| grant.epoch), Some(epoch));
                        prop_assert_eq!(table.owner(&client_id), before);
                    }
                    Answer::Promoted(Some(epoch)) => {
                        prop_assert_eq!(before.map(|grant| grant.node), promoted_from);
                        let grants = history.entry(client_id.clone()).or_default();
                        if let Some(last) = grants.last() {
                            prop_assert!(epoch > last.epoch);
                        }
                        grants.push(Grant { node, epoch });
                    }
                    Answer::Released(true) => prop_assert!(before.is_some()),
                    Answer::Released(false)
                    | Answer::Promoted(None)
                    | Answer::Nothing
                    | Answer::Barrier { .. } => {
                        prop_assert_eq!(table.owner(&client_id), before);
                    }
                }
                for (client_id, grants) in &history {
                    let current = table.owner(client_id);
                    for grant in grants {
                        let passes = table.check(client_id, grant.node, grant.epoch);
                        prop_assert_eq!(passes, current == Some(*grant));
                    }
                }
            }
        }
    }
}

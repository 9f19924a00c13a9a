//! The ownership raft's messages as they travel between nodes: the body
//! of a `ClusterMsg::RaftRequest` or `RaftReply` frame, postcard-encoded
//! (as the raft's file is, [`super::store`]: openraft's types carry serde,
//! not rkyv).
//!
//! A peer's bytes are untrusted: [`decode_request`] and [`decode_answer`]
//! refuse what does not decode, and [`check_request`] what decodes but
//! could not have come from the node that sent it (a request in another
//! node's name, a claim for another node) or that openraft should never
//! be shown (entries out of order). Either closes the link it came on.

use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, EntryPayload, LogId, Membership, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use super::network::ForwardReply;
use super::raft::TypeConfig;
use super::table::{Command, NodeId, OwnershipTable};

/// What one raft asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot: openraft's `Snapshot` holds the table behind a
    /// box and is not serde, so its two parts travel.
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        table: OwnershipTable,
    },
    /// A command for the leader to propose, from a node that does not
    /// lead ([`super::Ownership::claim`]).
    Forward(Command),
}

/// The answer to a [`RaftRequest`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftAnswer {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    Forward(ForwardReply),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftWireError {
    #[error("raft message does not decode: {0}")]
    Decode(String),
    #[error("raft message has {0} bytes after its end")]
    Trailing(usize),
    #[error("raft message cannot be encoded: {0}")]
    Encode(String),
    /// Decoded, but not something the sending node may say.
    #[error("raft request refused: {0}")]
    Refused(String),
}

/// No term or log index in a request may be larger: a raft that makes a
/// term per millisecond would take 8,900 years to reach it, and below it
/// openraft's own `+ 1`s on what a peer sent cannot overflow.
pub const MAX_TERM_OR_INDEX: u64 = 1 << 48;

pub fn encode_request(request: &RaftRequest) -> Result<Vec<u8>, RaftWireError> {
    postcard::to_allocvec(request).map_err(|error| RaftWireError::Encode(error.to_string()))
}

pub fn encode_answer(answer: &RaftAnswer) -> Result<Vec<u8>, RaftWireError> {
    postcard::to_allocvec(answer).map_err(|error| RaftWireError::Encode(error.to_string()))
}

pub fn decode_request(bytes: &[u8]) -> Result<RaftRequest, RaftWireError> {
    decode_whole(bytes)
}

pub fn decode_answer(bytes: &[u8]) -> Result<RaftAnswer, RaftWireError> {
    decode_whole(bytes)
}

/// Decodes `bytes` entirely: bytes left over mean the two ends disagree
/// on the layout, which must not pass as a shorter message.
fn decode_whole<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RaftWireError> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|error: postcard::Error| RaftWireError::Decode(error.to_string()))?;
    if !rest.is_empty() {
        return Err(RaftWireError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Whether `request` may come from the peer whose raft ids are
/// `senders` (the node at the other end of the link it came on; a node
/// has one id, or two while it is unknown whether it keeps a data dir,
/// see [`super::raft::is_raft_id_of`]): every request names its sender
/// (the leader's or candidate's vote, the claimer of a command), and a
/// node speaks only for itself. Terms and indexes stay under
/// [`MAX_TERM_OR_INDEX`]. Append entries must also hold a run of
/// consecutive entries right after `prev_log_id`, as openraft assumes,
/// a snapshot's membership must lie within it, and a membership must
/// name a node for each voter (openraft looks them up unchecked).
pub fn check_request(request: &RaftRequest, senders: &[NodeId]) -> Result<(), RaftWireError> {
    let named = match request {
        RaftRequest::AppendEntries(append) => append.vote.leader_id().voted_for(),
        RaftRequest::Vote(vote) => vote.vote.leader_id().voted_for(),
        RaftRequest::Snapshot { vote, .. } => vote.leader_id().voted_for(),
        RaftRequest::Forward(
            Command::Claim { node, .. }
            | Command::Release { node, .. }
            | Command::Promote { node, .. }
            | Command::Barrier { node },
        ) => Some(*node),
    };
    if !named.is_some_and(|named| senders.contains(&named)) {
        return Err(RaftWireError::Refused(format!(
            "a {} request in the name of raft node {named:?}, from {senders:?}",
            request.kind()
        )));
    }
    let log_ids: Vec<Option<LogId<NodeId>>> = match request {
        RaftRequest::AppendEntries(append) => [append.prev_log_id, append.leader_commit]
            .into_iter()
            .chain(append.entries.iter().map(|entry| Some(entry.log_id)))
            .collect(),
        RaftRequest::Vote(vote) => vec![vote.last_log_id],
        RaftRequest::Snapshot { meta, .. } => {
            vec![meta.last_log_id, *meta.last_membership.log_id()]
        }
        RaftRequest::Forward(_) => Vec::new(),
    };
    let vote_term = match request {
        RaftRequest::AppendEntries(append) => append.vote.leader_id().term,
        RaftRequest::Vote(vote) => vote.vote.leader_id().term,
        RaftRequest::Snapshot { vote, .. } => vote.leader_id().term,
        RaftRequest::Forward(_) => 0,
    };
    let sane = |n: u64| n <= MAX_TERM_OR_INDEX;
    if !sane(vote_term)
        || !log_ids
            .iter()
            .flatten()
            .all(|id| sane(id.index) && sane(id.leader_id.term))
    {
        return Err(RaftWireError::Refused(format!(
            "a {} request with a term or index past {MAX_TERM_OR_INDEX}",
            request.kind()
        )));
    }
    let memberships: Vec<&Membership<NodeId, BasicNode>> = match request {
        RaftRequest::AppendEntries(append) => append
            .entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                EntryPayload::Membership(membership) => Some(membership),
                _ => None,
            })
            .collect(),
        RaftRequest::Snapshot { meta, .. } => vec![meta.last_membership.membership()],
        RaftRequest::Vote(_) | RaftRequest::Forward(_) => Vec::new(),
    };
    for membership in memberships {
        let nodes: Vec<NodeId> = membership.nodes().map(|(&id, _)| id).collect();
        let joint = membership.get_joint_config();
        // One config, or two while changing; none only before a raft is
        // formed, which no snapshot or entry comes from.
        let shaped = (1..=2).contains(&joint.len()) && joint.iter().all(|ids| !ids.is_empty());
        if !shaped || !membership.voter_ids().all(|voter| nodes.contains(&voter)) {
            return Err(RaftWireError::Refused(format!(
                "a {} request with a malformed membership: {membership:?}",
                request.kind()
            )));
        }
    }
    match request {
        RaftRequest::AppendEntries(append) => {
            let mut expected = append.prev_log_id.map_or(0, |prev| prev.index + 1);
            let mut term = append.prev_log_id.map_or(0, |prev| prev.leader_id.term);
            for entry in &append.entries {
                if entry.log_id.index != expected || entry.log_id.leader_id.term < term {
                    return Err(RaftWireError::Refused(format!(
                        "append entries out of order: {} where index {expected} was due",
                        entry.log_id
                    )));
                }
                expected = entry.log_id.index + 1;
                term = entry.log_id.leader_id.term;
            }
        }
        RaftRequest::Snapshot { meta, .. } if *meta.last_membership.log_id() > meta.last_log_id => {
            return Err(RaftWireError::Refused(
                "snapshot membership after its last log id".to_owned(),
            ));
        }
        _ => {}
    }
    Ok(())
}

impl RaftRequest {
    /// What it is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRequest::AppendEntries(_) => "append entries",
            RaftRequest::Vote(_) => "vote",
            RaftRequest::Snapshot { .. } => "snapshot",
            RaftRequest::Forward(_) => "forward",
        }
    }
}

impl RaftAnswer {
    pub fn kind(&self) -> &'static str {
        match self {
            RaftAnswer::AppendEntries(_) => "append entries",
            RaftAnswer::Vote(_) => "vote",
            RaftAnswer::Snapshot(_) => "snapshot",
            RaftAnswer::Forward(_) => "forward",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Entry, StoredMembership};

    use super::*;
    use crate::cluster::ownership::Answer;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(sender: NodeId, prev: Option<LogId<NodeId>>, ids: &[LogId<NodeId>]) -> RaftRequest {
        RaftRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(3, sender),
            prev_log_id: prev,
            entries: ids
                .iter()
                .map(|&log_id| Entry {
                    log_id,
                    payload: EntryPayload::Normal(Command::Claim {
                        client_id: "c".into(),
                        node: 2,
                    }),
                })
                .collect(),
            leader_commit: prev,
        })
    }

    fn membership<const N: usize>(voters: [NodeId; N]) -> Membership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|&id| (id, BasicNode::new(format!("n{id}"))))
            .collect();
        Membership::new(vec![voters.into_iter().collect()], nodes)
    }

    fn every_request() -> Vec<RaftRequest> {
        let mut table = OwnershipTable::new();
        table.claim("c".into(), 7);
        vec![
            append(7, Some(log_id(1, 4)), &[log_id(1, 5), log_id(2, 6)]),
            RaftRequest::Vote(VoteRequest::new(Vote::new(4, 7), Some(log_id(2, 6)))),
            RaftRequest::Snapshot {
                vote: Vote::new_committed(4, 7),
                meta: SnapshotMeta {
                    last_log_id: Some(log_id(2, 6)),
                    last_membership: StoredMembership::new(Some(log_id(1, 0)), membership([7])),
                    snapshot_id: "2-6-1".into(),
                },
                table,
            },
            RaftRequest::Forward(Command::Release {
                client_id: "c".into(),
                node: 7,
                epoch: 1,
            }),
        ]
    }

    #[test]
    fn requests_and_answers_round_trip() {
        for request in every_request() {
            let bytes = encode_request(&request).expect("encodes");
            let back = decode_request(&bytes).expect("decodes");
            assert_eq!(encode_request(&back).expect("encodes"), bytes);
            assert_eq!(back.kind(), request.kind());
            check_request(&back, &[7]).expect("a request of node 7's own");
        }
        let answers = [
            RaftAnswer::Vote(Ok(VoteResponse::new(Vote::new(4, 7), None, true))),
            RaftAnswer::AppendEntries(Ok(AppendEntriesResponse::Success)),
            RaftAnswer::Snapshot(Ok(SnapshotResponse::new(Vote::new_committed(4, 7)))),
            RaftAnswer::Forward(ForwardReply::Applied(Answer::Released(true))),
            RaftAnswer::Forward(ForwardReply::NotLeader(Some(3))),
        ];
        for answer in answers {
            let bytes = encode_answer(&answer).expect("encodes");
            let back = decode_answer(&bytes).expect("decodes");
            assert_eq!(encode_answer(&back).expect("encodes"), bytes);
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        let bytes = encode_request(&every_request().remove(1)).expect("encodes");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_request(&longer).err(),
            Some(RaftWireError::Trailing(1))
        );
        for cut in 0..bytes.len() {
            assert!(decode_request(&bytes[..cut]).is_err(), "{cut} bytes");
        }
        assert!(decode_request(&[200]).is_err(), "unknown kind");
        assert!(decode_answer(&[]).is_err());
    }

    #[test]
    fn a_node_speaks_only_for_itself() {
        for request in every_request() {
            let refused = check_request(&request, &[8, 9]);
            assert!(
                matches!(refused, Err(RaftWireError::Refused(_))),
                "{}: {refused:?}",
                request.kind()
            );
        }
    }

    /// A membership as a peer's bytes may hold it, which
    /// `Membership::new` would not make: the same serde layout, any parts.
    fn raw_membership(
        configs: Vec<BTreeSet<NodeId>>,
        nodes: BTreeMap<NodeId, BasicNode>,
    ) -> Membership<NodeId, BasicNode> {
        #[derive(Serialize)]
        struct Parts {
            configs: Vec<BTreeSet<NodeId>>,
            nodes: BTreeMap<NodeId, BasicNode>,
        }
        let bytes = postcard::to_allocvec(&Parts { configs, nodes }).expect("encodes");
        postcard::from_bytes(&bytes).expect("decodes as a membership")
    }

    #[test]
    fn a_membership_must_be_whole() {
        let with = |membership| {
            let mut request = append(7, Some(log_id(1, 4)), &[log_id(1, 5)]);
            if let RaftRequest::AppendEntries(append) = &mut request {
                append.entries[0].payload = EntryPayload::Membership(membership);
            }
            check_request(&request, &[7])
        };
        with(membership([7, 8])).expect("a membership naming its voters");
        let voters: BTreeSet<NodeId> = [7, 8].into();
        let only_7 = BTreeMap::from([(7, BasicNode::new("n7"))]);
        for bad in [
            raw_membership(vec![voters.clone()], only_7.clone()),
            raw_membership(Vec::new(), only_7.clone()),
            raw_membership(vec![BTreeSet::new()], only_7.clone()),
            raw_membership(
                vec![voters.clone(); 3],
                membership([7, 8])
                    .nodes()
                    .map(|(&id, node)| (id, node.clone()))
                    .collect(),
            ),
        ] {
            let refused = with(bad.clone());
            assert!(
                matches!(refused, Err(RaftWireError::Refused(_))),
                "{bad:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let prev = Some(log_id(1, 4));
        for ids in [
            &[log_id(1, 6)][..],
            &[log_id(1, 5), log_id(1, 5)],
            &[log_id(2, 5), log_id(1, 6)],
            &[log_id(1, 4)],
        ] {
            let refused = check_request(&append(7, prev, ids), &[7]);
            assert!(matches!(refused, Err(RaftWireError::Refused(_))), "{ids:?}");
        }
        check_request(&append(7, None, &[log_id(1, 0), log_id(1, 1)]), &[7])
            .expect("from the start");
        check_request(&append(7, prev, &[]), &[3, 7]).expect("a heartbeat");
        let far = Some(log_id(1, MAX_TERM_OR_INDEX + 1));
        let refused = check_request(&append(7, far, &[]), &[7]);
        assert!(
            matches!(refused, Err(RaftWireError::Refused(_))),
            "{refused:?}"
        );
        let last = Some(log_id(1, u64::MAX));
        let refused = check_request(&append(7, last, &[log_id(1, 0)]), &[7]);
        assert!(
            matches!(refused, Err(RaftWireError::Refused(_))),
            "{refused:?}"
        );
    }

    proptest::proptest! {
        /// A peer's bytes, valid requests with bytes changed anywhere:
        /// refused or decoded, and what decodes is checked, without a
        /// panic (the fuzz target `cluster_frame` goes further).
        #[test]
        fn damaged_requests_never_panic(
            which in 0usize..4,
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
        ) {
            let mut bytes = encode_request(&every_request()[which]).expect("encodes");
            for (at, value) in damage {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(request) = decode_request(&bytes) {
                let _ = check_request(&request, &[7]);
                encode_request(&request).expect("what decodes encodes");
            }
            let _ = decode_answer(&bytes);
        }
    }
}

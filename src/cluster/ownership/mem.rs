//! An in-memory [`Transport`] for tests: every node's raft in one process,
//! requests handed straight to the target's [`Raft`], links that can be
//! cut and healed, each direction on its own. A request goes out only if
//! its way is open, and its reply comes back only if the way back is open
//! once the request has been handled: a link cut meanwhile, or cut one
//! way only, loses the reply of a request that was acted on, as a network
//! does.

use std::sync::{Mutex, MutexGuard, PoisonError};

use openraft::Raft;
use rustc_hash::{FxHashMap, FxHashSet};

use super::network::{LinkDown, Transport, answer};
use super::raft::TypeConfig;
use super::table::NodeId;
use super::wire::{RaftAnswer, RaftRequest};

#[derive(Default)]
pub struct MemRouter {
    state: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    nodes: FxHashMap<NodeId, Raft<TypeConfig>>,
    /// Cut directions: `(a, b)` stops what `a` sends to `b`.
    cut: FxHashSet<(NodeId, NodeId)>,
}

impl MemRouter {
    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `raft` reachable as node `id`.
    pub fn add(&self, id: NodeId, raft: Raft<TypeConfig>) {
        self.lock().nodes.insert(id, raft);
    }

    /// Cuts every link between `side` and the nodes not in it.
    pub fn partition(&self, side: &[NodeId]) {
        let mut routes = self.lock();
        let others: Vec<NodeId> = routes
            .nodes
            .keys()
            .copied()
            .filter(|id| !side.contains(id))
            .collect();
        for &a in side {
            for &b in &others {
                routes.cut.insert((a, b));
                routes.cut.insert((b, a));
            }
        }
    }

    /// Stops what `from` sends to `to`; the other way stays open.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// The raft at `to`, if `from` can reach it.
    fn reach(&self, from: NodeId, to: NodeId) -> Result<Raft<TypeConfig>, LinkDown> {
        let routes = self.lock();
        let raft = routes
            .nodes
            .get(&to)
            .filter(|_| !routes.cut.contains(&(from, to)));
        raft.cloned().ok_or(LinkDown::NotSent { from, to })
    }

    /// `to`'s answer to `from`, if the way back is open.
    fn reply<R>(&self, from: NodeId, to: NodeId, reply: R) -> Result<R, LinkDown> {
        if self.lock().cut.contains(&(to, from)) {
            return Err(LinkDown::NoReply { from, to });
        }
        Ok(reply)
    }
}

impl Transport for MemRouter {
    async fn send(
        &self,
        from: NodeId,
        to: NodeId,
        request: RaftRequest,
    ) -> Result<RaftAnswer, LinkDown> {
        let raft = self.reach(from, to)?;
        let reply = answer(&raft, request).await;
        self.reply(from, to, reply)
    }
}

//! The shard's index of its sessions by client id.
//!
//! A map keyed by the id held a second 32-byte `ByteString` in every
//! bucket beside the session's own: 40 bytes a bucket, at a load of 5/8
//! to 7/8 about 50 to 65 bytes an idle connection. This table holds only
//! the slab key, and finds and compares ids through the sessions, so a
//! shard stores each client id once. Every key in it is a live slab entry:
//! the shard removes a session from here before it leaves the slab.

use std::hash::BuildHasher;

use bytestring::ByteString;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;
use slab::Slab;

use super::{SessionKey, SessionSlot};

#[derive(Default)]
pub(super) struct ClientIds {
    table: HashTable<SessionKey>,
}

fn hash(client_id: &str) -> u64 {
    FxBuildHasher.hash_one(client_id)
}

fn id_of(sessions: &Slab<SessionSlot>, key: SessionKey) -> &str {
    sessions[key].session.client_id()
}

impl ClientIds {
    pub(super) fn get(&self, sessions: &Slab<SessionSlot>, client_id: &str) -> Option<SessionKey> {
        (self.table)
            .find(hash(client_id), |&key| id_of(sessions, key) == client_id)
            .copied()
    }

    /// Files session `key`, already in `sessions`, under its client id, in
    /// place of any other session filed under it.
    pub(super) fn insert(&mut self, sessions: &Slab<SessionSlot>, key: SessionKey) {
        let client_id = id_of(sessions, key);
        let entry = self.table.entry(
            hash(client_id),
            |&other| id_of(sessions, other) == client_id,
            |&other| hash(id_of(sessions, other)),
        );
        match entry {
            Entry::Occupied(mut occupied) => *occupied.get_mut() = key,
            Entry::Vacant(vacant) => {
                vacant.insert(key);
            }
        }
    }

    /// Takes session `key` out of the index (it stays in `sessions`), if
    /// it is the one filed under its client id: a stub or a session since
    /// replaced under the same id leaves the one filed there in place.
    pub(super) fn remove(&mut self, sessions: &Slab<SessionSlot>, key: SessionKey) {
        let found = (self.table).find_entry(hash(id_of(sessions, key)), |&other| other == key);
        if let Ok(occupied) = found {
            occupied.remove();
        }
    }

    pub(super) fn client_ids<'a>(
        &'a self,
        sessions: &'a Slab<SessionSlot>,
    ) -> impl Iterator<Item = &'a ByteString> + 'a {
        self.table
            .iter()
            .map(|&key| sessions[key].session.client_id())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::session::Session;

    fn slot(client_id: &str) -> SessionSlot {
        SessionSlot {
            session: Session::new(client_id.into(), Instant::now()),
            conn: None,
            epoch: 0,
        }
    }

    #[test]
    fn sessions_are_found_by_their_own_client_id_through_growth_and_removal() {
        let mut sessions = Slab::new();
        let mut ids = ClientIds::default();
        // Enough to make the table grow (and rehash through the sessions)
        // several times.
        let keys: Vec<SessionKey> = (0..1000)
            .map(|n| {
                let key = sessions.insert(slot(&format!("client-{n}")));
                ids.insert(&sessions, key);
                key
            })
            .collect();
        for (n, &key) in keys.iter().enumerate() {
            assert_eq!(ids.get(&sessions, &format!("client-{n}")), Some(key));
        }
        assert_eq!(ids.get(&sessions, "client-1000"), None);

        // Removed from the index first, then from the slab.
        for &key in keys.iter().step_by(2) {
            ids.remove(&sessions, key);
            sessions.remove(key);
        }
        for (n, &key) in keys.iter().enumerate() {
            let expected = (n % 2 == 1).then_some(key);
            assert_eq!(ids.get(&sessions, &format!("client-{n}")), expected);
        }
        assert_eq!(ids.client_ids(&sessions).count(), 500);

        // A second session under an id takes its place in the index.
        let newer = sessions.insert(slot("client-1"));
        ids.insert(&sessions, newer);
        assert_eq!(ids.get(&sessions, "client-1"), Some(newer));
        assert_eq!(ids.client_ids(&sessions).count(), 500);
        // The one it replaced leaving takes nothing out.
        ids.remove(&sessions, keys[1]);
        assert_eq!(ids.get(&sessions, "client-1"), Some(newer));
    }
}

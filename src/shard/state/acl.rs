//! The shard's side of the ACL (`crate::auth::acl`): each session gets
//! its client's rules at CONNECT, or, restored or taken over from another
//! node, those of the user name its record keeps; and every message is
//! checked against its
//! receiver's read rules before it is queued, whatever brought it here (a
//! local or forwarded PUBLISH, another node, the retained store, a will,
//! a shared subscription's choice). Decisions are this node's: a message
//! from another node is filtered by this node's file for the subscribers
//! connected here.

use std::sync::Arc;

use bytestring::ByteString;

use super::{SessionKey, ShardState};
use crate::auth::acl_cache::SessionAcl;
use crate::message::Message;

impl ShardState {
    /// Gives session `key` its rules: those of the user its last client
    /// connected as (on CONNECT, and for a session restored or taken over,
    /// whose record keeps the user name).
    pub(super) fn set_acl(&mut self, key: SessionKey, username: Option<ByteString>) {
        let Some(handle) = self.config.auth.acl() else {
            return;
        };
        let session = &mut self.sessions[key].session;
        let acl = SessionAcl::new(handle.clone(), username, session.client_id().clone());
        session.set_acl(Some(acl));
    }

    /// Whether `message` may go to session `key`. Every session gets its
    /// rules when it comes to this shard (`set_acl`), restored or taken
    /// over ones from the user name their record keeps; one without rules
    /// with an ACL configured gets nothing.
    pub(super) fn may_deliver(&mut self, key: SessionKey, message: &Arc<Message>) -> bool {
        if self.config.auth.acl().is_none() {
            return true;
        }
        let allowed = self.sessions[key]
            .session
            .may_read(&message.topic)
            .unwrap_or(false);
        if !allowed {
            self.metrics.acl_denied.deliver += 1;
        }
        allowed
    }

    /// Moves the session's PUBLISH and SUBSCRIBE refusals into the shard's
    /// metrics.
    pub(super) fn count_acl_denials(&mut self, key: SessionKey) {
        if let Some(slot) = self.sessions.get_mut(key)
            && let Some(denied) = slot.session.take_acl_denials()
        {
            self.metrics.acl_denied.publish += denied.publish;
            self.metrics.acl_denied.subscribe += denied.subscribe;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::rc::Rc;
    use std::time::Instant;

    use super::super::tests::{connect_v5, shard};
    use super::*;
    use crate::auth::acl::Acl;
    use crate::auth::{AclSource, AuthSettings, Authenticator};
    use crate::protocol::QoS;
    use crate::session::testing::message;

    #[test]
    fn a_session_without_a_known_user_gets_nothing() {
        let state = shard();
        let mut state = state.borrow_mut();
        let auth = Authenticator::start(&AuthSettings {
            password_file: None,
            allow_anonymous: true,
            threads: 1,
            queue: 1,
            acl_file: Some(AclSource {
                path: PathBuf::from("/nonexistent/acl"),
                acl: Acl::parse("user alice\ntopic read a/#\n").expect("valid"),
            }),
        })
        .expect("starts");
        let mut config = (*state.config).clone();
        config.auth = Arc::new(auth);
        state.config = Rc::new(config);

        let mut connect = connect_v5("c");
        connect.username = Some("alice".into());
        let key = state
            .attach(&connect, false, -1, 0, Instant::now())
            .conn
            .key;
        assert!(state.may_deliver(key, &message("a/b", QoS::AtMostOnce)));
        assert!(!state.may_deliver(key, &message("b", QoS::AtMostOnce)));
        assert_eq!(state.metrics.acl_denied.deliver, 1);

        // As restored from the store: no client has said who it is.
        state.sessions[key].session.set_acl(None);
        assert!(!state.may_deliver(key, &message("a/b", QoS::AtMostOnce)));
    }
}

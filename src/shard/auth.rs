//! The CONNECT's credentials, checked on the shard that read it
//! ([`crate::auth`] has the rules). The check's hash runs on a verifier
//! thread; the connection's task waits for the answer while the shard
//! goes on serving everyone else. With an ACL, a will is checked here too.

use std::cell::RefCell;
use std::net::SocketAddr;

use monoio::net::TcpStream;
use tracing::warn;

use super::connection::refuse;
use super::framing::Framing;
use super::state::ShardState;
use crate::auth::acl::Access;
use crate::auth::{AuthFailure, Authenticator};
use crate::protocol::Connect;

/// Checks `connect`'s user name and password. On a refusal, counts it,
/// logs it with the client id and address, sends the refusing CONNACK and
/// returns `false`: the caller drops the connection. Either way the
/// password is dropped from `connect`, which may still travel to another
/// shard.
pub(super) async fn authenticate(
    state: &RefCell<ShardState>,
    stream: &mut TcpStream,
    websocket: Option<&RefCell<Framing>>,
    connect: &mut Connect,
    peer: SocketAddr,
) -> bool {
    let password = connect.password.take();
    let auth = state.borrow().config().auth.clone();
    if !auth.is_active() {
        return true;
    }
    let Err(failure) = auth
        .check(connect.username.as_ref(), password.as_ref())
        .await
    else {
        return true;
    };
    state.borrow_mut().metrics.auth_failed(failure);
    warn!(
        client = %connect.client_id,
        %peer,
        username = ?connect.username.as_deref(),
        reason = failure.label(),
        "authentication failed"
    );
    refuse(stream, websocket, connect.protocol, failure.reason_code()).await;
    false
}

/// On a listener with `use_identity_as_username`: the verified client
/// certificate's common name, `identity`, becomes `connect`'s user name,
/// and no password is checked (the handshake did the authenticating). A
/// client without one (none sent, where the listener does not require
/// one, or one without a common name) is refused as Not authorized, like
/// [`authenticate`]'s refusals.
pub(super) async fn authenticate_identity(
    state: &RefCell<ShardState>,
    stream: &mut TcpStream,
    websocket: Option<&RefCell<Framing>>,
    connect: &mut Connect,
    peer: SocketAddr,
    identity: Option<String>,
) -> bool {
    connect.password = None;
    if let Some(name) = identity {
        connect.username = Some(name.into());
        return true;
    }
    let failure = AuthFailure::NotAuthorized;
    state.borrow_mut().metrics.auth_failed(failure);
    warn!(
        client = %connect.client_id,
        %peer,
        reason = failure.label(),
        "authentication failed: no client certificate with a common name"
    );
    refuse(stream, websocket, connect.protocol, failure.reason_code()).await;
    false
}

/// Checks `connect`'s will against the ACL, once its client id is final
/// (assigned if it was empty), since a pattern may name it. On a refusal,
/// counts it (as a refused PUBLISH, and as an authentication failure
/// `not_authorized`), logs it, sends CONNACK Not authorized and returns
/// `false`: the caller drops the connection. Before the connection moves
/// or claims its client id, like [`authenticate`].
pub(super) async fn authorize_will(
    state: &RefCell<ShardState>,
    stream: &mut TcpStream,
    websocket: Option<&RefCell<Framing>>,
    connect: &Connect,
    peer: SocketAddr,
) -> bool {
    let auth = state.borrow().config().auth.clone();
    if may_will(&auth, connect) {
        return true;
    }
    let failure = AuthFailure::NotAuthorized;
    {
        let mut state = state.borrow_mut();
        state.metrics.acl_denied.publish += 1;
        state.metrics.auth_failed(failure);
    }
    warn!(
        client = %connect.client_id,
        %peer,
        username = ?connect.username.as_deref(),
        topic = ?connect.will.as_ref().map(|will| &*will.topic),
        "will not authorized by the acl"
    );
    refuse(stream, websocket, connect.protocol, failure.reason_code()).await;
    false
}

/// As Mosquitto 2: a will on a topic the client may not publish to
/// refuses the CONNECT with Not authorized, rather than accepting a will
/// that would never go out. (The receivers' read rules still apply when
/// it does go out.)
fn may_will(auth: &Authenticator, connect: &Connect) -> bool {
    let (Some(acl), Some(will)) = (auth.acl(), &connect.will) else {
        return true;
    };
    let user = connect.username.as_deref();
    acl.current()
        .check(user, &connect.client_id, &will.topic, Access::Write)
}

//! Where a shard applies the limits against abuse ([`crate::abuse`] has
//! the rules): a source address's limits when a connection is accepted,
//! flapping when a CONNECT reaches its client id's home shard, and a
//! client's PUBLISH rate in its reader.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use tracing::{debug, warn};

use super::connection::ConnHandle;
use super::state::ShardState;
use crate::abuse::LimitKind;
use crate::abuse::address::AddressPermit;
use crate::abuse::flapping::Verdict;
use crate::abuse::publish::{PublishLimit, PublishRate};
use crate::protocol::Packet;

/// Counts a connection from `peer` (the client a PROXY header named, if
/// any) against its address's limits: its permit, or `None` when it is to
/// be closed unanswered, before its CONNECT is read (counted here; the
/// table logs it, at most once a second: not one line per refusal, which
/// an attack would turn into a flood of them).
pub(super) fn admit_address(
    state: &RefCell<ShardState>,
    peer: SocketAddr,
) -> Option<AddressPermit> {
    let addresses = state.borrow().config().abuse.addresses.clone();
    match addresses.admit(peer.ip(), Instant::now()) {
        Ok(permit) => Some(permit),
        Err(limit) => {
            let kind = LimitKind::from(limit);
            let mut state = state.borrow_mut();
            state.metrics.refused(kind);
            state.metrics.limited(kind);
            None
        }
    }
}

/// Counts a CONNECT of `client_id` on its home shard; `false` when the id
/// is flapping and the CONNECT is to be refused (counted and logged here).
pub(super) fn admit_client_id(
    state: &RefCell<ShardState>,
    client_id: &ByteString,
    peer: SocketAddr,
) -> bool {
    let mut state = state.borrow_mut();
    let Some(flapping) = &mut state.flapping else {
        return true;
    };
    let now = Instant::now();
    match flapping.connect(client_id, now) {
        Verdict::Admitted => return true,
        Verdict::Banned(until) => warn!(
            client = %client_id,
            %peer,
            ban_secs = until.duration_since(now).as_secs(),
            "client id flapping (connecting too often); refused for a while"
        ),
        // One line per ban: a client in a loop retries for its length.
        Verdict::StillBanned(until) => debug!(
            client = %client_id,
            %peer,
            secs_left = until.duration_since(now).as_secs(),
            "flapping client id still banned; refused"
        ),
    }
    state.metrics.limited(LimitKind::Flapping);
    false
}

/// The next packet `decode` takes off `bytes`, unless the client's
/// PUBLISH rate is exhausted at `now`: then `None`, and the rest waits in
/// `bytes` (and the socket) until [`pause`] is over. A PUBLISH is charged
/// its whole length. Without limits this is one branch.
pub(super) fn next_packet(
    publishes: &mut Option<Box<PublishRate>>,
    now: Instant,
    bytes: &mut BytesMut,
    decode: impl FnOnce(&mut BytesMut) -> Option<Packet>,
) -> Option<Packet> {
    let Some(rate) = publishes else {
        return decode(bytes);
    };
    if rate.paused(now).is_some() {
        return None;
    }
    let before = bytes.len();
    let packet = decode(bytes)?;
    if let Packet::Publish(_) = packet {
        rate.charge(now, before - bytes.len());
    }
    Some(packet)
}

/// Waits out a pause the client's PUBLISH rate called for `limit` until
/// `until`, or until `closing` completes (then `false`). Its keep-alive is
/// pushed past the pause: the broker, not the client, is the silent one.
pub(super) async fn pause(
    state: &RefCell<ShardState>,
    (until, limit): (Instant, PublishLimit),
    keep_alive: Option<(&ConnHandle, Duration)>,
    closing: impl Future<Output = ()>,
) -> bool {
    if let Some((conn, timeout)) = keep_alive {
        conn.heard_from(until, timeout);
    }
    let alarm = {
        let mut state = state.borrow_mut();
        state.metrics.limited(limit.into());
        state.deadlines.alarm(until)
    };
    alarm.on(closing).await.is_none()
}

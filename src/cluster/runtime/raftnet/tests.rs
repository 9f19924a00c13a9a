//! The transport's edges over real QUIC connections between two
//! in-process endpoints: what a lost exchange answers, what a peer's bad
//! frames do to the link, and a request too large for one frame. The
//! exchanges that work are the ownership scenarios' (`ownership/tests.rs`,
//! module `quic`).

use openraft::raft::{VoteRequest, VoteResponse};
use std::collections::BTreeSet;

use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership, Vote};

use super::*;
use crate::cluster::ownership::OwnershipTable;
use crate::cluster::ownership::quic_net::TestEndpoint;

const SHORT: Duration = Duration::from_millis(300);

/// Node 1's transport, linked to node 2 over `connection` if given.
fn transport(connection: Option<&quinn::Connection>, timeout: Duration) -> QuicTransport {
    let links: RaftLinks = Arc::new(connection.map(|c| (2, c.clone())).into_iter().collect());
    let (_, links) = watch::channel(links);
    QuicTransport::new(
        links,
        Timeouts {
            rpc: timeout,
            forward: timeout,
            snapshot: timeout,
        },
    )
}

fn vote_of(candidate: NodeId) -> RaftRequest {
    RaftRequest::Vote(VoteRequest::new(Vote::new(1, candidate), None))
}

/// Two endpoints (kept alive with the connections) and a connection
/// between them: node 1's end, node 2's end.
async fn pair() -> ([TestEndpoint; 2], quinn::Connection, quinn::Connection) {
    let endpoints = [TestEndpoint::new("node-1"), TestEndpoint::new("node-2")];
    let (one, two) = endpoints[0].connect(&endpoints[1]).await;
    (endpoints, one, two)
}

/// Node 2 answering node 1's requests, without a raft of its own.
fn serve_without_raft(connection: &quinn::Connection) {
    let (_, server) = watch::channel(None);
    tokio::spawn(serve(
        connection.clone(),
        "node-1".to_owned(),
        vec![1],
        server,
        SHORT,
    ));
}

/// How `connection` was closed by its peer: the code and the reason.
async fn closed_by_peer(connection: &quinn::Connection) -> (u32, String) {
    let closed = tokio::time::timeout(Duration::from_secs(5), connection.closed())
        .await
        .expect("the link is closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner() as u32,
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("closed otherwise: {other}"),
    }
}

/// Sends `bytes` on a new stream.
async fn send_raw(connection: &quinn::Connection, bytes: &[u8]) {
    let (mut send, _recv) = connection.open_bi().await.expect("a stream");
    send.write_all(bytes).await.expect("written");
    send.finish().expect("finished");
    // Keep the stream until the peer has read it.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
}

fn encoded(msg: &ClusterMsg) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame::encode(msg, &mut out).expect("encodes");
    out.to_vec()
}

#[tokio::test]
async fn without_a_link_a_request_is_not_sent() {
    let answer = transport(None, SHORT).send(1, 2, vote_of(1)).await;
    assert_eq!(answer.err(), Some(LinkDown::NotSent { from: 1, to: 2 }));

    // A link closed before the request: no stream opens, nothing leaves.
    let (_endpoints, one, _two) = pair().await;
    one.close(0u32.into(), b"gone");
    let answer = transport(Some(&one), SHORT).send(1, 2, vote_of(1)).await;
    assert_eq!(answer.err(), Some(LinkDown::NotSent { from: 1, to: 2 }));
}

#[tokio::test]
async fn a_request_that_went_out_unanswered_is_no_reply() {
    // Dropped on arrival: the peer has no raft running.
    let (_endpoints, one, two) = pair().await;
    serve_without_raft(&two);
    let answer = transport(Some(&one), Duration::from_secs(5))
        .send(1, 2, vote_of(1))
        .await;
    assert_eq!(answer.err(), Some(LinkDown::NoReply { from: 1, to: 2 }));
    assert!(one.close_reason().is_none(), "nobody broke the protocol");

    // Taken and never answered: lost once the timeout passes.
    let (_endpoints, one, two) = pair().await;
    let held = tokio::spawn(async move {
        let stream = two.accept_bi().await.expect("a stream");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(stream);
    });
    let started = Instant::now();
    let answer = transport(Some(&one), SHORT).send(1, 2, vote_of(1)).await;
    assert_eq!(answer.err(), Some(LinkDown::NoReply { from: 1, to: 2 }));
    assert!(started.elapsed() >= SHORT);
    held.abort();
}

#[tokio::test]
async fn a_malformed_request_closes_the_link_with_the_reason() {
    let garbage = ClusterMsg::RaftRequest {
        id: 1,
        more: false,
        body: vec![0xff, 0xff, 0xff],
    };
    let in_another_name = ClusterMsg::RaftRequest {
        id: 1,
        more: false,
        body: wire::encode_request(&vote_of(9)).expect("encodes"),
    };
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage body", encoded(&garbage), "does not decode"),
        (
            "another node's name",
            encoded(&in_another_name),
            "in the name of",
        ),
        (
            "not a request",
            encoded(&ClusterMsg::Leave),
            "other than a raft request",
        ),
        ("a bad prefix", vec![0xff; 8], "over"),
    ];
    for (case, bytes, reason) in cases {
        let (_endpoints, one, two) = pair().await;
        serve_without_raft(&two);
        tokio::spawn({
            let one = one.clone();
            async move { send_raw(&one, &bytes).await }
        });
        let (code, why) = closed_by_peer(&one).await;
        assert_eq!(code, CLOSE_PROTOCOL, "{case}: {why}");
        assert!(why.contains(reason), "{case}: {why}");
    }
}

#[tokio::test]
async fn a_reply_to_another_request_closes_the_link() {
    let (_endpoints, one, two) = pair().await;
    tokio::spawn(async move {
        let (mut send, mut recv) = two.accept_bi().await.expect("a stream");
        let _ = recv.read_to_end(MAX_FRAME_LEN).await;
        let answer = RaftAnswer::Vote(Ok(VoteResponse::new(Vote::new(1, 2), None, true)));
        let body = wire::encode_answer(&answer).expect("encodes");
        let reply = encoded(&ClusterMsg::RaftReply { id: 999, body });
        send.write_all(&reply).await.expect("written");
        send.finish().expect("finished");
        let _ = tokio::time::timeout(Duration::from_secs(5), two.closed()).await;
    });
    let answer = transport(Some(&one), Duration::from_secs(5))
        .send(1, 2, vote_of(1))
        .await;
    assert_eq!(answer.err(), Some(LinkDown::NoReply { from: 1, to: 2 }));
    assert!(
        matches!(
            one.close_reason(),
            Some(quinn::ConnectionError::LocallyClosed)
        ),
        "{:?}",
        one.close_reason()
    );
}

/// A snapshot of 100,000 client ids is some megabytes: several frames,
/// joined again on arrival.
#[tokio::test]
async fn a_request_larger_than_a_frame_crosses_in_pieces() {
    let mut table = OwnershipTable::new();
    for i in 0..100_000 {
        table.claim(format!("client-{i:08}-with-a-longish-id").into(), 2);
    }
    let request = RaftRequest::Snapshot {
        vote: Vote::new_committed(3, 2),
        meta: SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 2), 10)),
            last_membership: StoredMembership::new(
                Some(LogId::new(CommittedLeaderId::new(1, 2), 0)),
                Membership::new(vec![BTreeSet::from([2])], ()),
            ),
            snapshot_id: "3-10".into(),
        },
        table: table.clone(),
    };
    let body = wire::encode_request(&request).expect("encodes");
    assert!(body.len() > 2 * CHUNK, "{} bytes", body.len());

    let (_endpoints, one, two) = pair().await;
    let sent = tokio::spawn(async move {
        let (mut send, _recv) = two.open_bi().await.expect("a stream");
        write_request(&mut send, 7, &body).await.expect("written");
        // Until the other end has it all.
        let _ = tokio::time::timeout(Duration::from_secs(10), two.closed()).await;
    });
    let (_send, recv) = one.accept_bi().await.expect("a stream");
    let (id, received) = read_request(recv, &[2]).await.expect("read whole");
    assert_eq!(id, 7);
    let RaftRequest::Snapshot {
        table: received, ..
    } = received
    else {
        panic!("a {} request", received.kind());
    };
    assert_eq!(received, table);
    one.close(0u32.into(), b"done");
    let _ = sent.await;
}

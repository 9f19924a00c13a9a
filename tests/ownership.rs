//! The ownership raft in real `ringmq` processes: three nodes on
//! 127.0.0.x form it by themselves (`cluster.bootstrap_expect`'s default,
//! 3), elect one leader, replace a leader killed with `kill -9`, take a
//! restarted node back as the member it was, and a node cut off from the
//! majority stops being ready. Everything is read from the outside: the
//! `ringmq_ownership_*` gauges, `/ready` and the logs.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Nodes};
use common::http::get;

/// How long a cluster gets to form the raft and elect: gossip, the
/// reconciler's settle (2 s at the default probe interval), an election.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the survivors of a killed leader get to elect another: the
/// raft's election timeout is 0.75 to 1.5 s; a loaded machine may need a
/// second round or two.
const ELECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A gauge's value in `text`, if exposed.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Node `i`'s view of the raft: (leads, voters, has quorum).
fn raft_of(cluster: &Cluster, i: usize) -> Option<(bool, f64, bool)> {
    let text = cluster.metrics(i);
    Some((
        gauge(&text, "ringmq_ownership_is_leader")? == 1.0,
        gauge(&text, "ringmq_ownership_voters")?,
        gauge(&text, "ringmq_ownership_has_quorum")? == 1.0,
    ))
}

/// Waits until exactly one of `nodes` leads and every one of them counts
/// `voters` voters and has a quorum; returns the leader.
fn wait_one_leader(cluster: &Cluster, nodes: &[usize], voters: f64, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let views: Vec<Option<(bool, f64, bool)>> =
            nodes.iter().map(|&i| raft_of(cluster, i)).collect();
        let leaders: Vec<usize> = nodes
            .iter()
            .zip(&views)
            .filter(|(_, view)| view.is_some_and(|(leads, _, _)| leads))
            .map(|(&i, _)| i)
            .collect();
        let agreed = views
            .iter()
            .all(|view| view.is_some_and(|(_, n, quorum)| n == voters && quorum));
        if let ([leader], true) = (leaders.as_slice(), agreed) {
            return *leader;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader with {voters} voters among {nodes:?} within {timeout:?}: {views:?}; logs:\n{}",
            logs(cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logs(cluster: &Cluster) -> String {
    cluster
        .nodes
        .iter()
        .flatten()
        .map(|broker| broker.logs())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

fn ready(cluster: &Cluster, i: usize) -> bool {
    get(cluster.node(i).metrics_addr(), "/ready").0 == 200
}

const FORMING: &str = "forming the ownership raft";

#[test]
fn three_nodes_elect_one_leader_and_replace_a_killed_one() {
    let mut cluster = Cluster::start_durable(3, "");
    let all = [0, 1, 2];
    let leader = wait_one_leader(&cluster, &all, 3.0, FORM_TIMEOUT);
    // Formed once, by the node with the smallest name.
    let formed: Vec<usize> = all
        .into_iter()
        .filter(|&i| cluster.node(i).logs().contains(FORMING))
        .collect();
    assert_eq!(
        formed,
        [0],
        "formed by node 0 alone; logs:\n{}",
        logs(&cluster)
    );

    cluster.kill(leader);
    let killed_at = Instant::now();
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != leader).collect();
    let next = wait_one_leader(&cluster, &survivors, 3.0, ELECT_TIMEOUT);
    println!(
        "leader node {leader} killed: node {next} leads {:.2} s later",
        killed_at.elapsed().as_secs_f64()
    );

    // Back on its data dir, as the member it was: no raft formed again,
    // still three voters.
    cluster.start_again(leader);
    cluster.wait_linked();
    wait_one_leader(&cluster, &all, 3.0, FORM_TIMEOUT);
    assert!(
        !cluster.node(leader).logs().contains(FORMING),
        "the restarted node formed a raft again:\n{}",
        cluster.node(leader).logs()
    );
}

/// SIGSTOP the other two nodes: the one left has no majority to reach,
/// and once the grace has passed, `/ready` says so; it is ready again
/// as soon as they are back. Without data dirs: the raft runs anyway.
#[test]
fn a_node_cut_off_from_the_majority_is_not_ready() {
    let cluster = Cluster::start(3, "");
    let all = [0, 1, 2];
    wait_one_leader(&cluster, &all, 3.0, FORM_TIMEOUT);
    assert!(all.iter().all(|&i| ready(&cluster, i)));

    for i in [1, 2] {
        cluster.node(i).signal(libc::SIGSTOP);
    }
    let stopped_at = Instant::now();
    let deadline = stopped_at + Duration::from_secs(15);
    while ready(&cluster, 0) {
        assert!(
            Instant::now() < deadline,
            "node 0 stayed ready without a majority; log:\n{}",
            cluster.node(0).logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lost_after = stopped_at.elapsed();
    let (status, why) = get(cluster.node(0).metrics_addr(), "/ready");
    assert_eq!(status, 503);
    assert!(why.contains("ownership raft"), "{why}");
    assert_eq!(
        raft_of(&cluster, 0).map(|(_, _, quorum)| quorum),
        Some(false)
    );
    // Not at once: a normal election must not flap readiness.
    assert!(lost_after >= Duration::from_secs(3), "{lost_after:?}");

    for i in [1, 2] {
        cluster.node(i).signal(libc::SIGCONT);
    }
    let resumed_at = Instant::now();
    let deadline = resumed_at + Duration::from_secs(15);
    while !ready(&cluster, 0) {
        assert!(
            Instant::now() < deadline,
            "node 0 not ready again; log:\n{}",
            cluster.node(0).logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "node 0 not ready {:.2} s after losing the majority, ready again {:.2} s after it came back",
        lost_after.as_secs_f64(),
        resumed_at.elapsed().as_secs_f64()
    );
    wait_one_leader(&cluster, &all, 3.0, FORM_TIMEOUT);
}

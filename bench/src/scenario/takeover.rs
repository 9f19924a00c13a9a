//! `takeover`: how long a session takes to follow its client to another
//! cluster node. Each of `--clients` clients starts a persistent session
//! (clean_session=0, one QoS 1 subscription) on `--broker`, then
//! reconnects `--moves` times, each time to the other node
//! (`--other-broker`, then back), and times each move from the start of
//! the TCP connect to the CONNACK: on loopback the connect itself takes
//! tens of microseconds, the rest is the new node claiming the client id
//! (the ownership raft) and the old one handing the session over. A move
//! whose CONNACK does not say session present lost the session and counts
//! as an error. By default the client disconnects before it moves; with
//! `--while-connected` the old connection stays open and is taken over.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use ringmq::protocol::QoS;
use serde::Serialize;

use super::new_histogram;
use super::sequential::{self, ClientRun, RunsReport};
use crate::cli::TakeoverArgs;
use crate::client::{ClientError, Connection};

/// What the run measured.
#[derive(Debug, Serialize)]
pub struct TakeoverReport {
    pub scenario: &'static str,
    pub broker: String,
    pub other_broker: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broker_pids: Vec<u32>,
    pub cpus: Vec<usize>,
    pub clients: u32,
    pub moves_per_client: u32,
    pub while_connected: bool,
    pub broker_cpu_us_per_move: Option<f64>,
    /// Moves whose CONNACK said session present; latency from the start
    /// of the TCP connect to the CONNACK.
    #[serde(flatten)]
    pub runs: RunsReport,
}

pub fn run(args: &TakeoverArgs) -> Result<TakeoverReport, String> {
    let runs = sequential::run(
        &args.cpus,
        &args.broker_pid,
        args.clients,
        Arc::new(args.clone()),
        client,
    )?;
    Ok(TakeoverReport {
        scenario: "takeover",
        broker: args.tls.broker(args.broker).to_string(),
        other_broker: args.tls.broker(args.other_broker).to_string(),
        broker_pids: args.broker_pid.clone(),
        cpus: args.cpus.0.clone(),
        clients: args.clients,
        moves_per_client: args.moves,
        while_connected: args.while_connected,
        broker_cpu_us_per_move: runs.cpu_us_per_completed(),
        runs: runs.report(),
    })
}

/// Client `n`: starts its session on `--broker`, then moves it back and
/// forth, stopping at the first error.
async fn client(args: Arc<TakeoverArgs>, tag: u64, n: usize) -> ClientRun {
    let mut latency = new_histogram();
    let mut completed = 0;
    let id = format!("bench-takeover-{tag:x}-{n}");
    let error = |e: ClientError| Some(e.to_string());
    let nodes = [
        args.tls.broker(args.other_broker),
        args.tls.broker(args.broker),
    ];
    let mut conn = match Connection::open_session(&nodes[1], &id, false).await {
        Ok(conn) => conn,
        Err(e) => return (latency, 0, error(e)),
    };
    if let Err(e) = conn
        .subscribe(&format!("bench/takeover/{tag:x}/{n}"), QoS::AtLeastOnce)
        .await
    {
        return (latency, 0, error(e));
    }
    for i in 0..args.moves {
        let to = &nodes[i as usize % 2];
        let old = if args.while_connected {
            Some(conn)
        } else {
            if let Err(e) = conn.disconnect().await {
                return (latency, completed, error(e));
            }
            None
        };
        let started = Instant::now();
        conn = match Connection::open_session(to, &id, false).await {
            Ok(conn) => conn,
            Err(e) => return (latency, completed, error(e)),
        };
        let took = started.elapsed();
        drop(old);
        if !conn.session_present {
            return (latency, completed, Some("the session did not move".into()));
        }
        sequential::record(&mut latency, took);
        completed += 1;
    }
    let _ = conn.disconnect().await;
    (latency, completed, None)
}

impl TakeoverReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "scenario takeover between {} and {} on cpus {:?}: {} clients x {} moves{}",
            self.broker,
            self.other_broker,
            self.cpus,
            self.clients,
            self.moves_per_client,
            if self.while_connected {
                ", taken over while connected"
            } else {
                ""
            }
        )?;
        let runs = &self.runs;
        writeln!(
            out,
            "total    {} moves with the session in {:.2}s",
            runs.completed, runs.wall_seconds
        )?;
        runs.print_text(out, "move", self.broker_cpu_us_per_move)
    }
}

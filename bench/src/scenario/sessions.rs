//! `sessions`: fills a broker with stored sessions and their queued
//! messages, through the broker itself, for timing a restart.
//!
//! Session n (client id `bench-stored-<n>`) connects with clean_session=0,
//! subscribes to `bench/stored/<n>` at QoS 1 and disconnects, at most
//! `--connect-concurrency` at a time per worker: the connections come and
//! go in waves, so 100,000 sessions fit under a 20,000 open-file limit.
//! Then one publisher per worker (clean session) publishes `--messages`
//! QoS 1 messages to each of its share of the topics, `--inflight` at a
//! time. Every message is queued for its one offline session, so the broker
//! ends up holding sessions × messages queued messages (with
//! `--data-dir`, a session record, a message record and a queue entry
//! each: 2.1 million records for 100,000 × 10).

use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use ringmq::protocol::{LazyPublishProperties, Packet, Publish, QoS};
use serde::Serialize;

use crate::cli::SessionsArgs;
use crate::client::{ClientError, Connection};
use crate::gate::Gate;
use crate::workers;

/// What the fill did.
#[derive(Debug, Serialize)]
pub struct SessionsReport {
    pub scenario: &'static str,
    pub broker: String,
    pub cpus: Vec<usize>,
    /// Sessions that connected, subscribed and disconnected.
    pub sessions: u64,
    pub subscribe_seconds: f64,
    /// QoS 1 messages the broker acknowledged.
    pub messages: u64,
    pub publish_seconds: f64,
    pub messages_per_second: f64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

/// One worker's share.
#[derive(Default)]
struct WorkerResult {
    sessions: u64,
    subscribe_seconds: f64,
    messages: u64,
    publish_seconds: f64,
    errors: BTreeMap<String, u64>,
}

pub fn run(args: &SessionsArgs) -> Result<SessionsReport, String> {
    workers::check_cpus(&args.cpus)?;
    workers::raise_fd_limit();
    let threads = {
        let args = Arc::new(args.clone());
        workers::spawn(&args.cpus.clone(), move |index| worker(index, args.clone()))
            .map_err(|e| format!("cannot start worker threads: {e}"))?
    };
    let mut report = SessionsReport {
        scenario: "sessions",
        broker: args.tls.broker(args.broker).to_string(),
        cpus: args.cpus.0.clone(),
        sessions: 0,
        subscribe_seconds: 0.0,
        messages: 0,
        publish_seconds: 0.0,
        messages_per_second: 0.0,
        errors: 0,
        error_kinds: BTreeMap::new(),
    };
    for thread in threads {
        let result = match thread.join() {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
            Err(_) => return Err("a worker thread panicked".into()),
        };
        report.sessions += result.sessions;
        report.messages += result.messages;
        report.subscribe_seconds = report.subscribe_seconds.max(result.subscribe_seconds);
        report.publish_seconds = report.publish_seconds.max(result.publish_seconds);
        for (kind, count) in result.errors {
            report.errors += count;
            *report.error_kinds.entry(kind).or_default() += count;
        }
    }
    if report.publish_seconds > 0.0 {
        report.messages_per_second = report.messages as f64 / report.publish_seconds;
    }
    Ok(report)
}

/// Sessions `index`, `index + workers`, ... : their subscriptions, then
/// their messages.
async fn worker(index: usize, args: Arc<SessionsArgs>) -> WorkerResult {
    let workers = args.cpus.0.len();
    let mine: Rc<Vec<u32>> = Rc::new(
        (index as u32..args.sessions)
            .step_by(workers)
            .collect::<Vec<_>>(),
    );
    let mut result = WorkerResult::default();

    let start = Instant::now();
    let gate = Rc::new(Gate::new(args.connect_concurrency as usize));
    let tasks: Vec<_> = mine
        .iter()
        .map(|&n| {
            let (gate, args) = (gate.clone(), args.clone());
            monoio::spawn(async move {
                let _turn = gate.acquire().await;
                store_session(&args, n).await
            })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(()) => result.sessions += 1,
            Err(e) => *result.errors.entry(format!("session: {e}")).or_default() += 1,
        }
    }
    result.subscribe_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    match publish(&args, &mine, &mut result.messages).await {
        Ok(()) => {}
        Err(e) => *result.errors.entry(format!("publisher: {e}")).or_default() += 1,
    }
    result.publish_seconds = start.elapsed().as_secs_f64();
    result
}

/// Connects session `n` (clean_session=0), subscribes it, disconnects.
async fn store_session(args: &SessionsArgs, n: u32) -> Result<(), ClientError> {
    let mut conn = Connection::open_session(
        &args.tls.broker(args.broker),
        &format!("bench-stored-{n}"),
        false,
    )
    .await?;
    conn.subscribe(&format!("bench/stored/{n}"), QoS::AtLeastOnce)
        .await?;
    conn.disconnect().await
}

/// `--messages` rounds over the worker's topics, `--inflight` PUBLISHes
/// unacknowledged at most; counts each PUBACK into `acked`.
async fn publish(args: &SessionsArgs, topics: &[u32], acked: &mut u64) -> Result<(), ClientError> {
    let broker = args.tls.broker(args.broker);
    let mut conn = Connection::open(&broker, &format!("bench-filler-{}", topics[0])).await?;
    let payload = Bytes::from(vec![b'x'; args.payload as usize]);
    let inflight = u64::from(args.inflight);
    let total = topics.len() as u64 * u64::from(args.messages);
    let mut sent: u64 = 0;
    while *acked < total {
        while sent < total && sent - *acked < inflight {
            let topic = topics[(sent % topics.len() as u64) as usize];
            conn.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: ByteString::from(format!("bench/stored/{topic}")),
                // Ids 1..=65535 in turn; the window is far smaller.
                packet_id: (sent % 65_535 + 1) as u16,
                properties: LazyPublishProperties::default(),
                payload: payload.clone(),
            }))?;
            sent += 1;
        }
        conn.flush().await?;
        conn.fill().await?;
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::PubAck(_) => *acked += 1,
                Packet::PingResp => {}
                other => return Err(ClientError::Unexpected(other.packet_type())),
            }
        }
    }
    conn.disconnect().await
}

impl SessionsReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "sessions: {} stored in {:.2} s; messages: {} queued in {:.2} s ({:.0} msg/s); errors: {}",
            self.sessions,
            self.subscribe_seconds,
            self.messages,
            self.publish_seconds,
            self.messages_per_second,
            self.errors
        )?;
        for (kind, count) in &self.error_kinds {
            writeln!(out, "  {count} x {kind}")?;
        }
        Ok(())
    }
}

//! `stresser`: mqtt-stresser's flow (inovex/mqtt-stresser, `worker.go`).
//!
//! Workers start in batches of `-rampup-size`, `-rampup-delay` apart.
//! Worker i owns topic `internal/mqtt-stresser/<hostname>/worker<i>-<random>`
//! and two MQTT 3.1.1 connections (clean session unless
//! `--persistent-subscribers`/`--persistent-publishers`, keep-alive 30 s): the
//! subscriber connects and subscribes at `-subscriber-qos`; then the
//! publisher connects and the worker's clock starts. The publisher sends
//! `-num-messages` messages at `-publisher-qos`, each waited for before the
//! next (QoS 0: written; 1: PUBACK; 2: PUBCOMP; at most `-timeout`, after
//! which the worker carries on, as mqtt-stresser does), then disconnects:
//! that is the publish time. The receive time runs from the same start to
//! the subscriber's last expected message. (mqtt-stresser starts its
//! receive clock when publishing ends, but its client holds deliveries
//! back until then, so its figure is the client draining its own buffer;
//! a client that reads as messages arrive cannot reproduce that, and from
//! the start the figure says something about the broker.)
//! A worker's rate is its messages over its time; the report has the
//! fastest, slowest and median worker and their histogram.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use monoio::time::sleep_until;
use ringmq::protocol::{LazyPublishProperties, Packet, Publish, QoS};

use super::{Shared, WorkerCtx, WorkerOutput};
use crate::cli::StresserArgs;
use crate::client::{ClientError, ConnectOptions, Connection};
use crate::control::{Control, Phase};
use crate::cpu;
use crate::report::Progress;
use crate::stats::{ErrorLog, OpenConnection, WorkerStats};
use crate::stresser_report::{Event, RunFacts, StresserReport, WorkerResult};
use crate::workers;

/// mqtt-stresser's keep-alive (paho's default).
const KEEP_ALIVE: u16 = 30;

/// What every stresser thread shares besides [`Shared`].
struct Plan {
    args: StresserArgs,
    hostname: String,
    start: Instant,
    /// One per worker, filled in as workers finish.
    results: Mutex<Vec<Option<WorkerResult>>>,
    seed: u64,
}

pub fn run(args: &StresserArgs) -> Result<StresserReport, String> {
    crate::stats::init_clock();
    workers::check_cpus(&args.cpus)?;
    workers::raise_fd_limit();
    let cpu_before = cpu::sum_cpu_seconds(&args.broker_pid)?;
    let clients = args.num_clients as usize;
    let shared = Arc::new(Shared {
        control: Control::new(Duration::ZERO, Duration::ZERO),
        stats: (0..args.cpus.0.len())
            .map(|_| Arc::new(WorkerStats::default()))
            .collect(),
        errors: ErrorLog::default(),
        run_tag: super::run_tag(),
        connect_limit: usize::MAX,
    });
    let start = Instant::now();
    let plan = Arc::new(Plan {
        args: args.clone(),
        hostname: hostname(),
        start,
        results: Mutex::new(vec![None; clients]),
        seed: shared.run_tag,
    });
    // Workers act as soon as they start: no subscribe/connect barrier.
    shared.control.advance(Phase::Run);
    let threads = {
        let (shared, plan) = (shared.clone(), plan.clone());
        workers::spawn(&args.cpus, move |index| {
            thread_main(index, shared.clone(), plan.clone())
        })
        .map_err(|e| format!("cannot start worker threads: {e}"))?
    };
    let finished = || {
        let results = plan.results.lock().unwrap_or_else(|e| e.into_inner());
        results.iter().all(Option::is_some)
    };
    let mut progress = Progress::new(&shared.stats);
    progress.label = "stressing";
    progress.wait(Some(start + args.global_timeout), || {
        finished() || threads.iter().any(|t| t.is_finished())
    });
    shared.control.advance(Phase::Stop);
    for thread in threads {
        match thread.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
            Err(_) => return Err("a worker thread panicked".into()),
        }
    }
    let wall_seconds = start.elapsed().as_secs_f64();
    let cpu_after = cpu::sum_cpu_seconds(&args.broker_pid)?;
    let results = std::mem::take(&mut *plan.results.lock().unwrap_or_else(|e| e.into_inner()));
    let results = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| WorkerResult::new(i, Event::NotStarted)))
        .collect();
    Ok(StresserReport::new(
        RunFacts {
            broker: args.tls.broker(args.broker).to_string(),
            clients: u64::from(args.num_clients),
            messages_per_client: u64::from(args.num_messages),
            publisher_qos: args.publisher_qos as u8,
            subscriber_qos: args.subscriber_qos as u8,
            wall_seconds,
            broker_cpu_seconds: cpu_before
                .zip(cpu_after)
                .map(|(a, b)| ((b - a) * 1e3).round() / 1e3),
        },
        results,
    ))
}

/// The machine's name, as mqtt-stresser puts it in topics.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// splitmix64: a per-worker random suffix without a dependency.
fn random_u32(seed: u64, worker: usize) -> u32 {
    let mut z = seed.wrapping_add((worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 33) as u32
}

/// When worker `i` starts: batch `i / size`, `delay` apart.
fn start_offset(worker: usize, size: u32, delay: Duration) -> Duration {
    delay * (worker / size.max(1) as usize) as u32
}

/// The payload of message `n`.
fn payload(args: &StresserArgs, n: u32) -> Bytes {
    match &args.constant_payload {
        Some(constant) => Bytes::copy_from_slice(constant.as_bytes()),
        None => Bytes::from(format!("this is msg #{n}!")),
    }
}

async fn thread_main(index: usize, shared: Arc<Shared>, plan: Arc<Plan>) -> WorkerOutput {
    let ctx = WorkerCtx::new(index, shared);
    let tasks: Vec<_> = (index..plan.args.num_clients as usize)
        .step_by(ctx.workers())
        .map(|i| {
            let (ctx, plan) = (ctx.clone(), plan.clone());
            monoio::spawn(async move {
                let result = worker(&ctx, &plan, i).await;
                if result.event != Event::Completed
                    && let Some(e) = &result.error
                {
                    ctx.shared.errors.record(ctx.stats(), e.clone());
                }
                plan.results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            })
        })
        .collect();
    ctx.follow().await;
    for task in tasks {
        task.await;
    }
    ctx.output()
}

/// One mqtt-stresser worker, start to finish.
async fn worker(ctx: &Rc<WorkerCtx>, plan: &Plan, i: usize) -> WorkerResult {
    let args = &plan.args;
    let begin = plan.start + start_offset(i, args.rampup_size, args.rampup_delay);
    let started = ctx
        .or_stop(sleep_until(monoio::time::Instant::from_std(begin)))
        .await;
    if started.is_none() {
        return WorkerResult::new(i, Event::NotStarted);
    }
    let suffix = random_u32(plan.seed, i);
    let topic = format!(
        "internal/mqtt-stresser/{}/worker{i}-{suffix}",
        plan.hostname
    );
    let options = |role: &str| {
        let persistent = match role {
            "sub" => args.sessions.persistent_subscribers,
            _ => args.sessions.persistent_publishers,
        };
        // A kept session needs an id the next connection can name again:
        // no per-run suffix.
        let client_id = match persistent {
            true => format!("mqtt-stresser-{role}-{}-worker{i}", plan.hostname),
            false => format!("mqtt-stresser-{role}-{}-worker{i}-{suffix}", plan.hostname),
        };
        ConnectOptions {
            keep_alive: KEEP_ALIVE,
            username: args.username.clone(),
            password: args.password.clone(),
            buffer: 4096,
            clean_start: !persistent,
            ..ConnectOptions::new(&client_id)
        }
    };
    let fail = |event: Event, error: ClientError| WorkerResult {
        error: Some(format!("{event:?}: {error}")),
        ..WorkerResult::new(i, event)
    };

    let connect = |role: &'static str| {
        let options = options(role);
        async move {
            let broker = args.tls.broker(args.broker);
            Connection::open_within(&broker, &options, args.timeout).await
        }
    };
    let mut subscriber = match ctx.or_stop(connect("sub")).await {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => return fail(Event::ConnectFailed, e),
        None => return WorkerResult::new(i, Event::TimeoutExceeded),
    };
    let subscribed = monoio::time::timeout(
        args.timeout,
        subscriber.subscribe(&topic, args.subscriber_qos),
    );
    match ctx.or_stop(subscribed).await {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return fail(Event::SubscribeFailed, e),
        Some(Err(_)) => return fail(Event::SubscribeFailed, ClientError::Timeout),
        None => return WorkerResult::new(i, Event::TimeoutExceeded),
    }
    let publisher = match ctx.or_stop(connect("pub")).await {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => return fail(Event::ConnectFailed, e),
        None => return WorkerResult::new(i, Event::TimeoutExceeded),
    };

    let t0 = Instant::now();
    let expected = u64::from(args.num_messages);
    let progress = Rc::new(Received::default());
    let receiver = {
        let (ctx, progress) = (ctx.clone(), progress.clone());
        monoio::spawn(async move {
            let _open = OpenConnection::new(ctx.stats());
            let receiving = receive(&ctx, &mut subscriber, expected, &progress);
            let outcome = ctx.or_stop(receiving).await;
            if outcome.as_ref().is_some_and(Result::is_ok) {
                let _ = subscriber.disconnect().await;
            }
            outcome
        })
    };

    let mut result = WorkerResult::new(i, Event::Completed);
    let published = ctx
        .or_stop(publish(ctx, publisher, args, &topic, &mut result))
        .await;
    match published {
        Some(Ok(())) => result.publish_seconds = Some(t0.elapsed().as_secs_f64()),
        Some(Err(e)) => {
            result.event = Event::Aborted;
            result.error = Some(format!("publisher: {e}"));
        }
        None => result.event = Event::TimeoutExceeded,
    }
    let received = receiver.await;
    result.received = progress.count.get();
    match received {
        Some(Ok(())) => {
            result.receive_seconds = progress.last.get().map(|at| (at - t0).as_secs_f64());
        }
        Some(Err(e)) => {
            if result.event == Event::Completed {
                result.event = Event::Aborted;
                result.error = Some(format!("subscriber: {e}"));
            }
        }
        None => {
            if result.event == Event::Completed {
                result.event = Event::TimeoutExceeded;
            }
        }
    }
    result
}

/// A subscriber's count so far and when its last message came.
#[derive(Default)]
struct Received {
    count: Cell<u64>,
    last: Cell<Option<Instant>>,
}

/// Reads until `expected` messages have arrived, acknowledging as it goes.
async fn receive(
    ctx: &WorkerCtx,
    conn: &mut Connection,
    expected: u64,
    progress: &Received,
) -> Result<(), ClientError> {
    let mut last_ping = Instant::now();
    while progress.count.get() < expected {
        conn.fill().await?;
        conn.ping_due(&mut last_ping, Instant::now())?;
        let now = Instant::now();
        let mut count = 0;
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::Publish(publish) => {
                    count += 1;
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {
                            conn.queue_response(Packet::PubAck, publish.packet_id)?
                        }
                        QoS::ExactlyOnce => {
                            conn.queue_response(Packet::PubRec, publish.packet_id)?
                        }
                    }
                }
                Packet::PubRel(rel) => conn.queue_response(Packet::PubComp, rel.packet_id)?,
                Packet::PingResp => {}
                other => return Err(ClientError::Unexpected(other.packet_type())),
            }
        }
        if count > 0 {
            progress.count.set(progress.count.get() + count);
            progress.last.set(Some(now));
            ctx.stats().received.add(count);
        }
        conn.flush().await?;
    }
    Ok(())
}

/// Publishes every message, each completed before the next, then
/// disconnects. A completion slower than `-timeout` is counted and
/// skipped: the next message goes out.
async fn publish(
    ctx: &WorkerCtx,
    mut conn: Connection,
    args: &StresserArgs,
    topic: &str,
    result: &mut WorkerResult,
) -> Result<(), ClientError> {
    let _open = OpenConnection::new(ctx.stats());
    let topic = ByteString::from(topic);
    let mut packet_id: u16 = 0;
    for n in 0..args.num_messages {
        let qos = args.publisher_qos;
        if qos != QoS::AtMostOnce {
            packet_id = packet_id.wrapping_add(1).max(1);
        }
        conn.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            properties: LazyPublishProperties::default(),
            payload: payload(args, n),
        }))?;
        conn.flush().await?;
        result.published += 1;
        ctx.stats().sent.add(1);
        if qos == QoS::AtMostOnce {
            continue;
        }
        let completion = monoio::time::timeout(args.timeout, complete(&mut conn, qos, packet_id));
        match completion.await {
            Ok(Ok(())) => ctx.stats().acked.add(1),
            Ok(Err(e)) => return Err(e),
            Err(_) => result.publish_timeouts += 1,
        }
    }
    conn.disconnect().await
}

/// Waits for PUBACK (QoS 1), or PUBREC, sends PUBREL, waits for PUBCOMP
/// (QoS 2). Acknowledgements of earlier, timed-out publishes are skipped.
async fn complete(conn: &mut Connection, qos: QoS, id: u16) -> Result<(), ClientError> {
    loop {
        match conn.recv().await? {
            Packet::PubAck(ack) if qos == QoS::AtLeastOnce && ack.packet_id == id => return Ok(()),
            Packet::PubRec(rec) => {
                conn.queue_response(Packet::PubRel, rec.packet_id)?;
                conn.flush().await?;
            }
            Packet::PubComp(comp) if comp.packet_id == id => return Ok(()),
            Packet::PubAck(_) | Packet::PubComp(_) | Packet::PingResp => {}
            other => return Err(ClientError::Unexpected(other.packet_type())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_start_rampup_delay_apart() {
        let delay = Duration::from_millis(500);
        assert_eq!(start_offset(0, 100, delay), Duration::ZERO);
        assert_eq!(start_offset(99, 100, delay), Duration::ZERO);
        assert_eq!(start_offset(100, 100, delay), delay);
        assert_eq!(start_offset(250, 100, delay), delay * 2);
    }

    #[test]
    fn suffixes_differ_between_workers() {
        assert_ne!(random_u32(7, 0), random_u32(7, 1));
        assert_eq!(random_u32(7, 3), random_u32(7, 3));
    }

    #[test]
    fn default_payload_is_mqtt_stressers() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["b", "stresser"]).expect("defaults");
        let crate::cli::Scenario::Stresser(args) = cli.scenario else {
            panic!("not stresser")
        };
        assert_eq!(payload(&args, 7), Bytes::from_static(b"this is msg #7!"));
    }
}

//! `pairs`: N subscriber/publisher pairs, pair N on topic `bench/pair/N`.
//!
//! Both connections of a pair live on the same worker (pair N on worker
//! N mod workers), so the pair's task knows whether its subscriber made it
//! and skips the publisher if not. Every publish has exactly one receiver.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::time::{Duration, Instant};

use monoio::time::sleep_until;
use ringmq::protocol::{Packet, QoS};

use super::{Plan, Shared, WorkerCtx, WorkerOutput, yield_now};
use crate::cli::PairsArgs;
use crate::client::{ClientError, Connection, PublishTemplate, stamp_of};
use crate::control::Phase;
use crate::flow::{Flow, FlowControl};
use crate::stats::{OpenConnection, nanos_at, now_nanos};

pub fn run(args: &PairsArgs) -> Result<crate::report::Summary, String> {
    let pairs = args.pairs as usize;
    let plan = Plan {
        scenario: "pairs",
        subscribers: pairs,
        publishers: pairs,
        deliveries_per_publish: 1,
        params: serde_json::json!({
            "layout": "pairs",
            "pairs": args.pairs,
            "publishers": args.pairs,
            "subscribers": args.pairs,
            "qos": args.qos as u8,
            "payload": args.payload,
            "rate": args.rate,
            "inflight": args.inflight,
            "batch": args.batch,
            "max_lag": args.max_lag,
            "connect_concurrency": args.common.connect_concurrency,
            "persistent_subscribers": args.sessions.persistent_subscribers,
            "persistent_publishers": args.sessions.persistent_publishers,
        }),
    };
    let args = Arc::new(args.clone());
    super::run(&args.common.clone(), plan, move |index, shared| {
        worker(index, shared, args.clone())
    })
}

async fn worker(index: usize, shared: Arc<Shared>, args: Arc<PairsArgs>) -> WorkerOutput {
    let ctx = WorkerCtx::new(index, shared);
    let tasks: Vec<_> = (index..args.pairs as usize)
        .step_by(ctx.workers())
        .map(|n| monoio::spawn(pair(ctx.clone(), args.clone(), n)))
        .collect();
    ctx.follow().await;
    for task in tasks {
        task.await;
    }
    ctx.output()
}

async fn pair(ctx: Rc<WorkerCtx>, args: Arc<PairsArgs>, n: usize) {
    let topic = format!("bench/pair/{n}");

    let subscriber = ctx
        .or_stop(async {
            let _turn = ctx.connect_gate.acquire().await;
            let broker = args.common.subscriber_broker(n);
            let clean = !args.sessions.persistent_subscribers;
            let mut conn =
                Connection::open_session(&broker, &format!("bench-sub-{n}"), clean).await?;
            conn.subscribe(&topic, args.qos).await?;
            Ok::<_, ClientError>(conn)
        })
        .await;
    let subscriber = ctx.settle_subscriber("subscriber", subscriber);
    let flow = Rc::new(Flow::new(args.max_lag, 1, args.qos == QoS::AtMostOnce));
    let receiver = subscriber.map(|conn| monoio::spawn(receive(ctx.clone(), conn, flow.clone())));

    if ctx.reached(Phase::Connect).await {
        publisher(&ctx, &args, &topic, n, receiver.is_some(), &*flow).await;
    }
    // Whatever happened, the subscriber's task ends before the worker's.
    if let Some(receiver) = receiver {
        receiver.await;
    }
}

/// The publisher of pair `n`: connects (unless its subscriber could not),
/// waits for the run, publishes.
pub(super) async fn publisher(
    ctx: &WorkerCtx,
    args: &PairsArgs,
    topic: &str,
    n: usize,
    subscribed: bool,
    flow: &impl FlowControl,
) {
    let control = ctx.control();
    let conn = match subscribed {
        true => ctx
            .or_stop(async {
                let _turn = ctx.connect_gate.acquire().await;
                let clean = !args.sessions.persistent_publishers;
                let broker = args.common.publisher_broker();
                Connection::open_session(&broker, &format!("bench-pub-{n}"), clean).await
            })
            .await
            .and_then(|result| result.map_err(|e| ctx.error("publisher", &e)).ok()),
        false => None,
    };
    if conn.is_some() {
        control.publishers_ok.fetch_add(1, AcqRel);
        control.publishers_active.fetch_add(1, AcqRel);
    }
    control.publishers_settled.fetch_add(1, Release);

    if let Some(conn) = conn {
        let _open = OpenConnection::new(ctx.stats());
        if ctx.reached(Phase::Run).await {
            let publishing = publish(ctx, conn, args, topic, n, flow);
            if let Some(Err(e)) = ctx.or_stop(publishing).await {
                ctx.error("publisher", &e);
            }
        }
        control.publishers_active.fetch_sub(1, AcqRel);
    }
}

/// A subscriber's life after SUBACK, until the run stops.
pub(super) async fn receive<F: FlowControl>(ctx: Rc<WorkerCtx>, mut conn: Connection, flow: Rc<F>) {
    let _open = OpenConnection::new(ctx.stats());
    if let Some(Err(e)) = ctx.or_stop(receive_loop(&ctx, &mut conn, &*flow)).await {
        ctx.error("subscriber", &e);
    }
}

/// Receive, acknowledge and time deliveries; returns only on error.
async fn receive_loop(
    ctx: &WorkerCtx,
    conn: &mut Connection,
    flow: &impl FlowControl,
) -> Result<Infallible, ClientError> {
    let mut last_ping = Instant::now();
    loop {
        // One clock read per socket read: every packet in it arrived then.
        let now = now_nanos();
        let mut received = 0;
        while let Some(packet) = conn.next_packet()? {
            match packet {
                Packet::Publish(publish) => {
                    match stamp_of(&publish.payload, ctx.shared.run_tag) {
                        Some(stamp) => {
                            received += 1;
                            ctx.record_latency(now, stamp);
                        }
                        None => ctx.stats().stale.add(1),
                    }
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
        ctx.stats().received.add(received);
        flow.delivered(received);
        conn.ping_due(&mut last_ping, Instant::now())?;
        conn.flush().await?;
        conn.fill().await?;
    }
}

/// Publishes until the window ends, then waits for outstanding acks and
/// disconnects.
async fn publish(
    ctx: &WorkerCtx,
    mut conn: Connection,
    args: &PairsArgs,
    topic: &str,
    n: usize,
    flow: &impl FlowControl,
) -> Result<(), ClientError> {
    let template =
        PublishTemplate::new(topic, args.qos, args.payload as usize, ctx.shared.run_tag)?;
    let stats = ctx.stats();
    let end = ctx.control().window_end();
    let mut pace = Pace::new(
        ctx.control().start(),
        args.rate,
        n as f64 / f64::from(args.pairs),
    );
    let mut ids = PacketIds::new(args.qos, args.inflight);
    let mut sent = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let room = flow.room(sent);
        let count = (args.batch as usize)
            .min(ids.free())
            .min(pace.due(now) as usize)
            .min(room as usize);
        if count > 0 {
            let stamp = nanos_at(now);
            for _ in 0..count {
                let id = ids.take();
                template.append(conn.write_buf(), id, stamp);
            }
            conn.flush().await?;
            stats.sent.add(count as u64);
            pace.sent(count as u64);
            sent += count as u64;
            yield_now().await;
        } else if ids.outstanding() > 0 {
            conn.fill().await?;
            handle_acks(&mut conn, &mut ids, ctx)?;
            conn.flush().await?;
        } else if room == 0 {
            let written_off = flow.wait_for_room(sent).await;
            stats.written_off.add(written_off);
        } else {
            let next = pace.next_at().min(end);
            sleep_until(monoio::time::Instant::from_std(next)).await;
        }
    }
    while ids.outstanding() > 0 {
        conn.fill().await?;
        handle_acks(&mut conn, &mut ids, ctx)?;
        conn.flush().await?;
    }
    conn.disconnect().await
}

/// Handles every buffered packet a publisher received: PUBACK and PUBCOMP
/// free a packet id; PUBREC queues PUBREL.
fn handle_acks(
    conn: &mut Connection,
    ids: &mut PacketIds,
    ctx: &WorkerCtx,
) -> Result<(), ClientError> {
    let mut acked = 0;
    while let Some(packet) = conn.next_packet()? {
        match packet {
            Packet::PubAck(ack) if ids.release(ack.packet_id, IdState::Published) => acked += 1,
            Packet::PubRec(rec) if ids.advance(rec.packet_id) => {
                conn.queue_response(Packet::PubRel, rec.packet_id)?
            }
            Packet::PubComp(comp) if ids.release(comp.packet_id, IdState::Released) => acked += 1,
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                ctx.stats().acked.add(acked);
                return Err(ClientError::UnknownPacketId(packet.packet_type()));
            }
            Packet::PingResp => {}
            other => return Err(ClientError::Unexpected(other.packet_type())),
        }
    }
    ctx.stats().acked.add(acked);
    Ok(())
}

/// When a rate-limited publisher may send: message k is due at
/// `start + (offset + k) / rate`. The offset (the pair's share of one
/// interval) staggers publishers so they do not all fire on the same tick.
struct Pace {
    start: Instant,
    /// Messages per second; 0 is unlimited.
    rate: u32,
    offset: f64,
    sent: u64,
}

impl Pace {
    fn new(start: Instant, rate: u32, offset: f64) -> Pace {
        Pace {
            start,
            rate,
            offset,
            sent: 0,
        }
    }

    /// Messages due but not yet sent at `now`.
    fn due(&self, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let owed = elapsed * f64::from(self.rate) - self.offset;
        if owed < 0.0 {
            return 0;
        }
        (owed as u64 + 1).saturating_sub(self.sent)
    }

    fn sent(&mut self, count: u64) {
        self.sent += count;
    }

    /// When the next message falls due.
    fn next_at(&self) -> Instant {
        let seconds = (self.sent as f64 + self.offset) / f64::from(self.rate.max(1));
        self.start + Duration::from_secs_f64(seconds)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdState {
    Free,
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// QoS 2 PUBREL sent; awaiting PUBCOMP.
    Released,
}

/// A publisher's packet ids and the state of each, so every ack is checked
/// against what is outstanding. At QoS 0 ids are not used and the window
/// is unlimited.
struct PacketIds {
    states: Vec<IdState>,
    limit: usize,
    outstanding: usize,
    next: u16,
}

impl PacketIds {
    fn new(qos: QoS, inflight: u16) -> PacketIds {
        let (states, limit) = match qos {
            QoS::AtMostOnce => (Vec::new(), usize::MAX),
            _ => (vec![IdState::Free; 1 << 16], usize::from(inflight)),
        };
        PacketIds {
            states,
            limit,
            outstanding: 0,
            next: 0,
        }
    }

    fn free(&self) -> usize {
        self.limit - self.outstanding
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The next free id (0 at QoS 0). Only called when [`Self::free`] > 0.
    fn take(&mut self) -> u16 {
        if self.states.is_empty() {
            return 0;
        }
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            let state = &mut self.states[usize::from(self.next)];
            if *state == IdState::Free {
                *state = IdState::Published;
                self.outstanding += 1;
                return self.next;
            }
        }
    }

    /// Frees `id` if it is in state `from`.
    fn release(&mut self, id: u16, from: IdState) -> bool {
        match self.states.get_mut(usize::from(id)) {
            Some(state) if *state == from => {
                *state = IdState::Free;
                self.outstanding -= 1;
                true
            }
            _ => false,
        }
    }

    /// QoS 2: PUBREC moves `id` from Published to Released.
    fn advance(&mut self, id: u16) -> bool {
        match self.states.get_mut(usize::from(id)) {
            Some(state) if *state == IdState::Published => {
                *state = IdState::Released;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_messages_over_time() {
        let start = Instant::now();
        let mut pace = Pace::new(start, 100, 0.5);
        assert_eq!(pace.due(start), 0);
        assert_eq!(pace.due(start + Duration::from_millis(5)), 1);
        pace.sent(1);
        assert_eq!(pace.due(start + Duration::from_millis(10)), 0);
        let next = pace.next_at() - start;
        assert!(next.abs_diff(Duration::from_millis(15)) < Duration::from_micros(1));
        assert_eq!(pace.due(start + Duration::from_millis(1006)), 100);
        assert_eq!(Pace::new(start, 0, 0.0).due(start), u64::MAX);
    }

    #[test]
    fn packet_ids_track_qos2_flow() {
        let mut ids = PacketIds::new(QoS::ExactlyOnce, 2);
        let a = ids.take();
        let b = ids.take();
        assert_ne!(a, b);
        assert_eq!(ids.free(), 0);
        assert!(!ids.release(a, IdState::Released), "PUBCOMP before PUBREC");
        assert!(ids.advance(a));
        assert!(!ids.advance(a), "duplicate PUBREC");
        assert!(ids.release(a, IdState::Released));
        assert_eq!(ids.free(), 1);
        assert!(!ids.release(999, IdState::Published));
        let c = ids.take();
        assert!(c != 0 && c != b);
    }

    #[test]
    fn packet_ids_skip_zero_and_wrap() {
        let mut ids = PacketIds::new(QoS::AtLeastOnce, 1);
        ids.next = u16::MAX;
        assert_eq!(ids.take(), 1);
        assert!(ids.release(1, IdState::Published));
        assert_eq!(PacketIds::new(QoS::AtMostOnce, 16).take(), 0);
    }
}

//! Hostile input over raw sockets against the real binary. Each case gets
//! the spec's answer (a v5 DISCONNECT with the reason code where there is
//! one: 0x81 malformed, 0x82 protocol error, 0x95 packet too large) and
//! closes only the connection it came on: in every test a [`Witness`] pair
//! of well-behaved clients streams QoS 1 messages through the broker the
//! whole time, and at the end the subscriber must hold every one of them,
//! in order.
//!
//! Cases covered elsewhere are not repeated here:
//! - tests/connect.rs: a first packet other than CONNECT (PINGREQ), a
//!   second CONNECT at 3.1.1, protocol level 3 under the name "MQTT", a
//!   wrong protocol name, a reserved CONNECT flag bit, an empty client id
//!   without clean session.
//! - tests/topics.rs: wildcards in a PUBLISH topic (v4 close, v5 0x90),
//!   invalid filters answered per filter in the SUBACK.
//! - tests/cli.rs: a whole packet past `--max-packet-size` (v4 and v5).
//! - tests/framing.rs: packets split across reads and joined in one.
//! - tests/limits.rs: the connect timeout against one silent and one
//!   dribbling socket, keep-alive against a dribbled packet.
//!
//! Beyond bad bytes, two clients that stop reading: one flooding PINGREQs
//! (the broker must stop reading it rather than buffer the answers), and
//! a subscriber whose socket fills (it must be cut off after its
//! keep-alive, not hold a descriptor for ever).

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::clients::v4;
use common::raw::Raw;
use common::wire::{self, Connect, Pub, V4, V5, frame};
use common::{Broker, RECV_TIMEOUT, unique_id};
use tokio::task::JoinHandle;

const WITNESS_TOPIC: &str = "witness/t";

/// Two well-behaved clients: a publisher sending a steady stream of
/// numbered QoS 1 messages, and a subscriber collecting them. The
/// subscriber also subscribes to `hostile/#`, the topics hostile clients
/// publish on, so that anything they manage to get routed shows up.
struct Witness {
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<u32>,
    subscriber: JoinHandle<(Vec<u32>, Vec<String>)>,
}

impl Witness {
    async fn start(broker: &Broker) -> Witness {
        let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("witness-sub")).await;
        assert_eq!(
            sub.subscribe(1, &[(WITNESS_TOPIC, 1), ("hostile/#", 1)])
                .await,
            vec![1, 1]
        );
        let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("witness-pub")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let pkid = (sent % 65_535) as u16 + 1;
                    // `publish` waits for the PUBACK: every message counted
                    // was accepted by the broker.
                    publisher
                        .publish(Pub::new(WITNESS_TOPIC, &sent.to_be_bytes()).qos(1, pkid))
                        .await;
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                publisher
                    .publish(Pub::new(WITNESS_TOPIC, b"end").qos(1, 1))
                    .await;
                sent
            }
        });
        let subscriber = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut stray = Vec::new();
            loop {
                // Panics (failing the test) if the stream stalls for
                // RECV_TIMEOUT or the connection closes.
                let p = sub.recv_publish().await;
                sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
                if p.topic != WITNESS_TOPIC {
                    stray.push(p.topic);
                } else if p.payload == b"end" {
                    return (received, stray);
                } else {
                    let n: [u8; 4] = p.payload.as_slice().try_into().expect("4-byte payload");
                    received.push(u32::from_be_bytes(n));
                }
            }
        });
        Witness {
            stop,
            publisher,
            subscriber,
        }
    }

    /// Stops the stream and asserts that every message arrived, in order,
    /// and nothing a hostile client published did.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.publisher.await.expect("witness publisher failed");
        let (received, stray) = self.subscriber.await.expect("witness subscriber failed");
        assert!(sent > 0, "the witness stream never ran");
        assert_eq!(
            received.len(),
            sent as usize,
            "witness lost messages: {} of {sent}",
            received.len()
        );
        assert!(
            received.iter().copied().eq(0..sent),
            "witness messages out of order"
        );
        assert!(stray.is_empty(), "hostile messages were routed: {stray:?}");
    }
}

/// Starts a broker (two shards, so handoffs are exercised) and a witness.
async fn start(args: &[&str]) -> (Broker, Witness) {
    let mut all = vec!["--cores", "2"];
    all.extend_from_slice(args);
    let broker = Broker::start(&all);
    let witness = Witness::start(&broker).await;
    (broker, witness)
}

/// Sends `bytes` before any CONNECT and asserts that the broker closes the
/// connection without answering.
async fn closed_silently_before_connect(broker: &Broker, bytes: &[u8], case: &str) {
    let mut raw = Raw::open(broker.addr, V4).await;
    raw.send_lossy(bytes).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "{case}: answered {seen:?}");
}

/// Connects at `version`, sends `bytes`, and asserts that the broker
/// closes the connection: v5 after a DISCONNECT with `reason`, 3.1.1
/// (which has no DISCONNECT from the server) without a word.
async fn disconnected(broker: &Broker, version: u8, bytes: &[u8], reason: u8, case: &str) {
    let (mut raw, _) =
        Raw::connect_ok(broker.addr, Connect::new(version, &unique_id("hostile"))).await;
    raw.send_lossy(bytes).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    if version == V5 {
        assert_eq!(
            seen.len(),
            1,
            "{case}: expected one DISCONNECT, got {seen:?}"
        );
        assert_eq!(
            seen[0].disconnect_reason(),
            reason,
            "{case}: DISCONNECT reason"
        );
    } else {
        assert!(seen.is_empty(), "{case} (3.1.1): answered {seen:?}");
    }
}

/// Both protocol versions of [`disconnected`].
async fn disconnected_both(broker: &Broker, bytes: impl Fn(u8) -> Vec<u8>, reason: u8, case: &str) {
    for version in [V4, V5] {
        disconnected(broker, version, &bytes(version), reason, case).await;
    }
}

/// CONNECT with the client id given as raw bytes.
fn connect_with_raw_id(version: u8, id: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', version, 0x02, 0, 60];
    if version == V5 {
        body.push(0);
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    frame(0x10, &body)
}

/// QoS 0 PUBLISH with the topic given as raw bytes.
fn publish_with_raw_topic(version: u8, topic: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    if version == V5 {
        body.push(0);
    }
    body.extend_from_slice(b"payload");
    frame(0x30, &body)
}

/// SUBSCRIBE with the given first byte and raw (filter, options) pairs.
fn subscribe_raw(version: u8, first_byte: u8, pkid: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if version == V5 {
        body.push(0);
    }
    for (filter, options) in filters {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter);
        body.push(*options);
    }
    frame(first_byte, &body)
}

/// Bytes that are invalid UTF-8, or valid UTF-8 the spec forbids.
const BAD_STRINGS: [(&[u8], &str); 4] = [
    (b"hostile/\xC3\x28", "invalid UTF-8"),
    (b"hostile/\xED\xA0\x80", "UTF-16 surrogate"),
    (b"hostile/\xC0\xAF", "overlong encoding"),
    (b"hostile/a\x00b", "U+0000"),
];

#[tokio::test]
async fn garbage_bytes() {
    let (broker, witness) = start(&[]).await;
    closed_silently_before_connect(&broker, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP").await;
    closed_silently_before_connect(&broker, &[0x00; 64], "reserved type 0").await;
    closed_silently_before_connect(&broker, &[0xF0, 0x00], "AUTH before CONNECT").await;
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    closed_silently_before_connect(&broker, &noise, "noise").await;
    // After CONNECT: a reserved packet type is malformed.
    disconnected_both(&broker, |_| vec![0x00, 0x00], 0x81, "reserved type 0").await;
    disconnected_both(&broker, |_| noise.clone(), 0x81, "noise").await;
    witness.finish().await;
}

#[tokio::test]
async fn invalid_remaining_length() {
    let (broker, witness) = start(&[]).await;
    // The fourth length byte may not have its continuation bit set.
    let five_bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    closed_silently_before_connect(&broker, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], "CONNECT").await;
    disconnected_both(&broker, |_| five_bytes.to_vec(), 0x81, "5-byte varint").await;
    witness.finish().await;
}

#[tokio::test]
async fn remaining_length_past_max_packet_size_is_refused_before_the_body() {
    let (broker, witness) = start(&["--max-packet-size", "1024"]).await;
    // Only the fixed header of a 64 KiB PUBLISH is sent: the broker must
    // refuse on the declared length, not wait for the body.
    let header = [0x30, 0x80, 0x80, 0x04];
    disconnected_both(&broker, |_| header.to_vec(), 0x95, "declared 64 KiB").await;
    let mut connect = Connect::v5("too-big").encode();
    connect.truncate(1);
    connect.extend_from_slice(&[0x80, 0x80, 0x04]);
    closed_silently_before_connect(&broker, &connect, "64 KiB CONNECT").await;
    witness.finish().await;
}

#[tokio::test]
async fn truncated_packets_then_close() {
    let (broker, witness) = start(&[]).await;
    // Half a CONNECT, then the client closes: no CONNACK, no session.
    let connect = Connect::v5("truncated").encode();
    let mut raw = Raw::open(broker.addr, V5).await;
    raw.send(&connect[..connect.len() / 2]).await;
    raw.drop_abruptly();

    // Half a PUBLISH after CONNECT, then close: nothing is routed.
    for version in [V4, V5] {
        let (mut raw, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, &unique_id("trunc"))).await;
        let publish = Pub::new("hostile/truncated", &[b'x'; 200])
            .qos(1, 1)
            .encode(version);
        raw.send(&publish[..100]).await;
        raw.drop_abruptly();
    }
    // A length that promises more than the packet's fields hold.
    // A SUBSCRIBE whose filter length runs past the packet's end.
    disconnected_both(
        &broker,
        |_| vec![0x82, 0x04, 0x00, 0x01, 0x00, 0x05],
        0x81,
        "SUBSCRIBE cut inside",
    )
    .await;
    // The same client id connects cleanly afterwards.
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("truncated")).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
    witness.finish().await;
}

#[tokio::test]
async fn bad_strings_in_topics_filters_and_client_ids() {
    let (broker, witness) = start(&[]).await;
    for (bytes, what) in BAD_STRINGS {
        disconnected_both(
            &broker,
            |v| publish_with_raw_topic(v, bytes),
            0x81,
            &format!("topic: {what}"),
        )
        .await;
        disconnected_both(
            &broker,
            |v| subscribe_raw(v, 0x82, 1, &[(bytes, 0)]),
            0x81,
            &format!("filter: {what}"),
        )
        .await;
        for version in [V4, V5] {
            // A malformed CONNECT gets no CONNACK (as in tests/connect.rs).
            closed_silently_before_connect(
                &broker,
                &connect_with_raw_id(version, &bytes[8..]),
                &format!("client id: {what}"),
            )
            .await;
        }
    }
    witness.finish().await;
}

#[tokio::test]
async fn unsupported_protocol_levels_get_connack_0x01() {
    let (broker, witness) = start(&[]).await;
    for level in [0, 2, 6, 255] {
        let mut raw = Raw::open(broker.addr, V4).await;
        raw.send(&connect_with_raw_id(level, b"level")).await;
        let seen = raw.expect_closed(RECV_TIMEOUT).await;
        // The level is unknown, so the answer is in the 3.1.1 form, which
        // every version's client can read (spec 3.1.2.2).
        assert_eq!(seen.len(), 1, "level {level}: {seen:?}");
        assert_eq!(seen[0].first_byte, 0x20, "level {level}: CONNACK");
        assert_eq!(seen[0].body, [0x00, 0x01], "level {level}");
    }
    witness.finish().await;
}

#[tokio::test]
async fn second_connect_is_a_v5_protocol_error() {
    let (broker, witness) = start(&[]).await;
    disconnected(
        &broker,
        V5,
        &Connect::v5("again").encode(),
        0x82,
        "second CONNECT",
    )
    .await;
    witness.finish().await;
}

#[tokio::test]
async fn reserved_flag_bits() {
    let (broker, witness) = start(&[]).await;
    // SUBSCRIBE, UNSUBSCRIBE and PUBREL must have flags 0b0010; the rest 0.
    disconnected_both(
        &broker,
        |v| subscribe_raw(v, 0x80, 1, &[(b"a", 0)]),
        0x81,
        "SUBSCRIBE flags 0",
    )
    .await;
    disconnected_both(
        &broker,
        |v| subscribe_raw(v, 0x8A, 1, &[(b"a", 0)]),
        0x81,
        "SUBSCRIBE flags 0xA",
    )
    .await;
    disconnected_both(
        &broker,
        |v| {
            let mut bytes = wire::unsubscribe(v, 1, &["a"]);
            bytes[0] = 0xA0;
            bytes
        },
        0x81,
        "UNSUBSCRIBE flags 0",
    )
    .await;
    disconnected_both(
        &broker,
        |_| vec![0x60, 0x02, 0x00, 0x01],
        0x81,
        "PUBREL flags 0",
    )
    .await;
    disconnected_both(&broker, |_| vec![0xC1, 0x00], 0x81, "PINGREQ flags 1").await;
    disconnected_both(
        &broker,
        |_| vec![0x41, 0x02, 0x00, 0x01],
        0x81,
        "PUBACK flags 1",
    )
    .await;
    // Reserved bits of the subscription options: the top two in v5, all
    // but QoS in 3.1.1.
    disconnected(
        &broker,
        V5,
        &subscribe_raw(V5, 0x82, 1, &[(b"a", 0xC0)]),
        0x81,
        "options 0xC0",
    )
    .await;
    disconnected(
        &broker,
        V4,
        &subscribe_raw(V4, 0x82, 1, &[(b"a", 0x04)]),
        0x81,
        "v4 options 0x04",
    )
    .await;
    // Retain Handling 3 is a protocol error, not malformed.
    disconnected(
        &broker,
        V5,
        &subscribe_raw(V5, 0x82, 1, &[(b"a", 0x30)]),
        0x82,
        "retain handling 3",
    )
    .await;
    // Will QoS without the will flag (MQTT-3.1.2-13), at both versions.
    for version in [V4, V5] {
        let mut connect = connect_with_raw_id(version, b"will-qos");
        connect[9] |= 0x08;
        closed_silently_before_connect(&broker, &connect, "will QoS without will").await;
    }
    witness.finish().await;
}

#[tokio::test]
async fn qos_3() {
    let (broker, witness) = start(&[]).await;
    disconnected_both(
        &broker,
        |v| {
            let mut bytes = Pub::new("hostile/qos3", b"x").qos(2, 1).encode(v);
            bytes[0] |= 0x06;
            bytes
        },
        0x81,
        "PUBLISH QoS 3",
    )
    .await;
    // In a SUBSCRIBE, v5 calls a Maximum QoS of 3 a protocol error.
    disconnected_both(
        &broker,
        |v| subscribe_raw(v, 0x82, 1, &[(b"hostile/x", 3)]),
        0x82,
        "SUBSCRIBE QoS 3",
    )
    .await;
    witness.finish().await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_with_no_filters() {
    let (broker, witness) = start(&[]).await;
    disconnected_both(
        &broker,
        |v| subscribe_raw(v, 0x82, 1, &[]),
        0x82,
        "SUBSCRIBE",
    )
    .await;
    disconnected_both(
        &broker,
        |v| wire::unsubscribe(v, 1, &[]),
        0x82,
        "UNSUBSCRIBE",
    )
    .await;
    witness.finish().await;
}

#[tokio::test]
async fn packet_id_zero() {
    let (broker, witness) = start(&[]).await;
    disconnected_both(
        &broker,
        |v| Pub::new("hostile/id0", b"x").qos(1, 0).encode(v),
        0x82,
        "PUBLISH QoS 1",
    )
    .await;
    disconnected_both(
        &broker,
        |v| Pub::new("hostile/id0", b"x").qos(2, 0).encode(v),
        0x82,
        "PUBLISH QoS 2",
    )
    .await;
    disconnected_both(
        &broker,
        |v| subscribe_raw(v, 0x82, 0, &[(b"a", 0)]),
        0x82,
        "SUBSCRIBE",
    )
    .await;
    disconnected_both(
        &broker,
        |v| wire::unsubscribe(v, 0, &["a"]),
        0x82,
        "UNSUBSCRIBE",
    )
    .await;
    witness.finish().await;
}

#[tokio::test]
async fn pubrel_for_an_unknown_packet_id_is_answered_and_the_connection_kept() {
    let (broker, witness) = start(&[]).await;
    for (version, reason) in [(V4, 0x00), (V5, 0x92)] {
        let (mut raw, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, &unique_id("pubrel"))).await;
        raw.send(&wire::ack(wire::PUBREL, 4242)).await;
        let (pkid, got) = raw.recv_kind(wire::PUBCOMP).await.ack();
        assert_eq!((pkid, got), (4242, reason), "v{version}: PUBCOMP");
        raw.send(&wire::pingreq()).await;
        raw.recv_kind(wire::PINGRESP).await;
    }
    witness.finish().await;
}

#[tokio::test]
async fn publish_before_connect_is_not_routed() {
    let (broker, witness) = start(&[]).await;
    for version in [V4, V5] {
        let bytes = Pub::new("hostile/early", b"x").qos(1, 1).encode(version);
        closed_silently_before_connect(&broker, &bytes, "PUBLISH first").await;
    }
    witness.finish().await;
}

#[tokio::test]
async fn server_packets_from_a_client_are_protocol_errors() {
    let (broker, witness) = start(&[]).await;
    disconnected_both(&broker, |_| vec![0xD0, 0x00], 0x82, "PINGRESP").await;
    disconnected(
        &broker,
        V5,
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
        0x82,
        "SUBACK",
    )
    .await;
    witness.finish().await;
}

// Back-pressure and the blocked writer's cut-off depend on how each I/O
// driver wakes a blocked operation, so both drivers are tried.

#[tokio::test]
async fn a_pingreq_flood_that_never_reads_the_answers_is_not_buffered() {
    pingreq_flood("auto").await;
}

#[tokio::test]
async fn a_pingreq_flood_that_never_reads_the_answers_is_not_buffered_on_epoll() {
    pingreq_flood("epoll").await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_reset_after_its_keep_alive() {
    stalled_subscriber("auto").await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_reset_after_its_keep_alive_on_epoll() {
    stalled_subscriber("epoll").await;
}

async fn pingreq_flood(driver: &str) {
    let (broker, witness) = start(&["--io-driver", driver]).await;
    let (mut flooder, _) = Raw::connect_ok(broker.addr, Connect::v4("flooder")).await;
    flooder.set_recv_buffer(4096);
    let rss_before = broker.rss_kib();
    // 64 KiB of PINGREQs a write, never reading a PINGRESP, until the
    // broker stops reading (a write times out) or 16 MiB have gone.
    let chunk: Vec<u8> = wire::pingreq().repeat(32 * 1024);
    let mut sent = 0;
    while sent < 16 << 20 && flooder.send_lossy(&chunk).await {
        sent += chunk.len();
    }
    let grown = broker.rss_kib().saturating_sub(rss_before);
    // Each PINGREQ queued a PINGRESP of a hundred-odd bytes in memory
    // before the broker applied back-pressure: gigabytes for 16 MiB.
    assert!(
        grown < 64 * 1024,
        "broker grew by {grown} KiB for {sent} bytes of PINGREQ"
    );
    // The connection is paused, not dropped: reading lets it go on.
    assert_eq!(
        flooder.recv_kind(wire::PINGRESP).await.kind(),
        wire::PINGRESP
    );
    witness.finish().await;
}

async fn stalled_subscriber(driver: &str) {
    let (broker, witness) = start(&["--io-driver", driver]).await;
    let (mut stalled, _) = Raw::connect_ok(broker.addr, Connect::v4("stalled").keep_alive(1)).await;
    stalled.set_recv_buffer(4096);
    assert_eq!(stalled.subscribe(1, &[("firehose/t", 0)]).await, vec![0]);
    let with_stalled = open_fds(broker.pid());
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("firehose")).await;
    for _ in 0..100 {
        publisher
            .send(&Pub::new("firehose/t", &[b'f'; 60_000]).encode(V4))
            .await;
    }
    // The keep-alive (1.5 s) ends the connection; the writer, blocked on a
    // peer that reads nothing, gets a grace period (5 s) and is then cut
    // off: the broker's descriptor is released without the peer's help.
    wait_for_fds(
        broker.pid(),
        Duration::from_secs(15),
        "stalled subscriber",
        // The publisher's descriptor was opened since `with_stalled`.
        |n| n <= with_stalled,
    )
    .await;
    witness.finish().await;
}

/// Raises this process's soft open-file limit to the hard one: the test
/// holds 10,000 sockets at once.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we
    // pass, which lives for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("cannot list the broker's descriptors")
        .count()
}

/// Polls `/proc/PID/fd` until `done` holds for the count, or panics.
async fn wait_for_fds(
    pid: u32,
    within: Duration,
    what: &str,
    done: impl Fn(usize) -> bool,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let count = open_fds(pid);
        if done(count) {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: broker has {count} descriptors open after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_connections_are_shed_after_the_connect_timeout() {
    const SILENT: usize = 10_000;
    let limit = raise_open_file_limit();
    assert!(
        limit as usize > SILENT + 1000,
        "open-file limit {limit} is too low for this test"
    );
    let (broker, witness) = start(&["--connect-timeout", "2"]).await;
    let pid = broker.pid();
    let baseline = open_fds(pid);

    let addr = broker.addr;
    let sockets = tokio::task::spawn_blocking(move || {
        (0..SILENT)
            .map(|i| {
                std::net::TcpStream::connect(addr)
                    .unwrap_or_else(|error| panic!("connection {i}: {error}"))
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("connecting thread");
    let opened = Instant::now();
    // The broker accepted them (they hold its descriptors)... Half is
    // enough to show it: on a slow host the first may be shed already.
    wait_for_fds(pid, RECV_TIMEOUT, "accepting", |n| {
        n >= baseline + SILENT / 2
    })
    .await;

    // ...and serves a well-behaved client while holding them.
    let mut sub = v4::Client::simple(addr, "amid-the-silent-sub").await;
    sub.subscribe("silent/t", v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::Client::simple(addr, "amid-the-silent-pub").await;
    publisher
        .publish("silent/t", v4::QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"still here");

    // Every silent socket reads end-of-file once the timeout has passed.
    let sockets = tokio::task::spawn_blocking(move || {
        let deadline = opened + Duration::from_secs(15);
        for (i, mut socket) in sockets.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            let mut byte = [0u8; 1];
            match socket.read(&mut byte) {
                Ok(0) => {}
                Ok(_) => panic!("silent connection {i} was sent data"),
                Err(error) => panic!("silent connection {i} not closed by the broker: {error}"),
            }
        }
    })
    .await;
    sockets.expect("every silent connection was closed");
    let shed_after = opened.elapsed();
    assert!(
        shed_after >= Duration::from_millis(1500),
        "shed after {shed_after:?}, before the timeout"
    );
    // The broker's descriptors are back near where they were.
    wait_for_fds(pid, RECV_TIMEOUT, "shedding", |n| n <= baseline + 50).await;

    // The well-behaved clients are still connected and working.
    publisher
        .publish("silent/t", v4::QoS::AtLeastOnce, false, b"after")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"after");
    witness.finish().await;
}

#[test]
fn bad_strings_table_is_what_it_says() {
    for (bytes, what) in BAD_STRINGS {
        assert!(bytes.starts_with(b"hostile/"), "{what}");
        let invalid = std::str::from_utf8(bytes).is_err();
        assert_eq!(invalid, !bytes.contains(&0), "{what}");
    }
}

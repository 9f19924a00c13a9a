//! The store against real files in a temporary directory: what is
//! written comes back, damage is found and named, the dir refuses what it
//! must, and records follow their shard when the number of shards changes.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::dir::{DataDir, Partition, RECORDS, scan};
use super::log::{Log, segments};
use super::record::{self, Encoder, EntryRecord, FlightRecord, SessionRecord, SubscriptionRecord};
use super::restore::{RestoredShard, restore};
use super::writer::{Op, apply, mutations};
use super::{Durability, StoreError, StoreSettings};
use crate::message::Message;
use crate::protocol::QoS;
use crate::shard::home_shard;
use crate::testing::TempDir;

impl TempDir {
    fn settings(&self, repair: bool) -> StoreSettings {
        StoreSettings {
            dir: self.0.clone(),
            durability: Durability::Always,
            interval: Duration::from_millis(100),
            repair,
        }
    }
}

fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        publisher: "pub".into(),
        expires_at: None,
        received_at: Instant::now(),
    })
}

fn write(partition: &Partition, ops: Vec<Op>) {
    partition
        .commit(|table| {
            let mut encoder = Encoder::default();
            ops.iter().try_for_each(|op| {
                apply(table, op, Instant::now(), SystemTime::now(), &mut encoder)
            })
        })
        .unwrap();
}

fn session(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        username: None,
        protocol: 4,
        session_expiry: u32::MAX,
        connected: false,
        expires_at_ms: None,
        subscriptions: vec![SubscriptionRecord {
            filter: "t/#".into(),
            options: 1,
            id: None,
        }],
        will: None,
    }
}

/// A session with two messages owed: the first sent as packet id 5.
fn session_ops(client_id: &str) -> Vec<Op> {
    let entry = |message| EntryRecord {
        message,
        qos: 1,
        retain: false,
        subscription_ids: Vec::new(),
        shared: None,
    };
    vec![
        Op::Session(Box::new(session(client_id))),
        Op::Message {
            id: 1,
            message: message("t/1", b"one"),
        },
        Op::Message {
            id: 2,
            message: message("t/2", b"two"),
        },
        Op::Entry {
            client_id: client_id.into(),
            seq: 1,
            entry: entry(1),
        },
        Op::Flight {
            client_id: client_id.into(),
            seq: 1,
            flight: FlightRecord {
                packet_id: 5,
                released: false,
            },
        },
        Op::Entry {
            client_id: client_id.into(),
            seq: 2,
            entry: entry(2),
        },
    ]
}

fn read(partition: &Partition, repair: bool) -> Result<RestoredShard, StoreError> {
    restore(partition, repair, Instant::now(), SystemTime::now())
}

fn owed(shard: &RestoredShard) -> Vec<(String, Option<u16>, String)> {
    shard
        .sessions
        .iter()
        .flat_map(|(session, _)| {
            session.messages.iter().map(|m| {
                (
                    session.client_id.to_string(),
                    m.packet_id,
                    m.message
                        .as_ref()
                        .map_or(String::new(), |m| m.topic.to_string()),
                )
            })
        })
        .collect()
}

#[test]
fn what_is_written_comes_back_and_what_is_removed_does_not() {
    let temp = TempDir::new("roundtrip");
    {
        let dir = DataDir::open(&temp.settings(false), 1).unwrap();
        let partition = &dir.partitions[0];
        write(partition, session_ops("c"));
        write(partition, session_ops("gone"));
        write(partition, vec![Op::RemoveSession("gone".into())]);
        write(partition, vec![Op::Retained(message("r", b"kept"))]);
    }
    let dir = DataDir::open(&temp.settings(false), 1).unwrap();
    let shard = read(&dir.partitions[0], false).unwrap();
    assert_eq!(
        owed(&shard),
        vec![
            ("c".into(), Some(5), "t/1".into()),
            ("c".into(), None, "t/2".into())
        ]
    );
    assert_eq!(shard.sessions[0].1[0].filter, "t/#");
    assert_eq!(shard.retained.len(), 1);
    assert_eq!(shard.retained[0].payload, Bytes::from_static(b"kept"));
    // Each of the two messages is referred to by one of c's entries.
    let mut refs: Vec<u32> = shard.messages.iter().map(|m| m.2).collect();
    refs.sort();
    assert_eq!(refs, vec![1, 1]);
}

#[test]
fn a_damaged_record_is_named_and_skipped_only_with_repair() {
    let temp = TempDir::new("damage");
    {
        let dir = DataDir::open(&temp.settings(false), 1).unwrap();
        let partition = &dir.partitions[0];
        write(partition, session_ops("c"));
        // A value whose checksum does not match its bytes.
        let key = record::entry_key(record::ENTRY, "c", 2);
        let mut value = record::encode(
            &key,
            &EntryRecord {
                message: 2,
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                shared: None,
            },
        );
        let last = value.len() - 1;
        value[last] ^= 0x40;
        let tx = partition.db.begin_write().unwrap();
        tx.open_table(RECORDS)
            .unwrap()
            .insert(key.as_slice(), value.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let dir = DataDir::open(&temp.settings(false), 1).unwrap();
    let error = read(&dir.partitions[0], false).err().expect("refused");
    let text = error.to_string();
    assert!(text.contains("damaged record"), "{text}");
    assert!(text.contains("shard-0.redb"), "{text}");
    assert!(text.contains("q\\x00\\x01c"), "{text}");
    assert!(text.contains("--repair"), "{text}");
    let repaired = read(&dir.partitions[0], true).unwrap();
    assert_eq!(owed(&repaired), vec![("c".into(), Some(5), "t/1".into())]);
}

#[test]
fn the_dir_refuses_another_broker_and_an_unknown_format() {
    let temp = TempDir::new("refuse");
    let first = DataDir::open(&temp.settings(false), 1).unwrap();
    let second = DataDir::open(&temp.settings(false), 1)
        .err()
        .expect("locked");
    assert!(matches!(second, StoreError::Locked { .. }), "{second}");
    drop(first);
    std::fs::write(temp.0.join("FORMAT"), "ringmq-data 99\n").unwrap();
    let error = DataDir::open(&temp.settings(false), 1)
        .err()
        .expect("format");
    assert!(error.to_string().contains("ringmq-data 99"), "{error}");
}

#[test]
fn records_follow_their_shard_when_the_shard_count_changes() {
    let temp = TempDir::new("rehome");
    let clients: Vec<String> = (0..12).map(|i| format!("client-{i}")).collect();
    {
        let dir = DataDir::open(&temp.settings(false), 2).unwrap();
        for client in &clients {
            let partition = &dir.partitions[home_shard(client, 2)];
            // Message ids collide across the old partitions on purpose.
            write(partition, session_ops(client));
        }
    }
    for shards in [3, 1, 2] {
        let dir = DataDir::open(&temp.settings(false), shards).unwrap();
        let mut seen = Vec::new();
        for (index, partition) in dir.partitions.iter().enumerate() {
            let shard = read(partition, false).unwrap();
            for (session, _) in &shard.sessions {
                assert_eq!(home_shard(&session.client_id, shards), index);
                let topics: Vec<_> = session
                    .messages
                    .iter()
                    .map(|m| m.message.as_ref().unwrap().topic.to_string())
                    .collect();
                assert_eq!(topics, ["t/1", "t/2"], "{}", session.client_id);
                seen.push(session.client_id.to_string());
            }
        }
        seen.sort();
        let mut expected = clients.clone();
        expected.sort();
        assert_eq!(seen, expected, "{shards} shards");
        let sets: Vec<_> = std::fs::read_dir(&temp.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("set-"))
            .collect();
        assert_eq!(sets.len(), 1, "the old set is removed");
        assert!(scan(&dir.partitions[0]).is_ok());
    }
}

#[test]
fn what_the_cluster_owes_its_peers_comes_back_until_acknowledged() {
    use super::outbox::{ClusterStore, OutboxOp};
    let temp = TempDir::new("outbox");
    let put = |peer: &str, stream, seq, payload| OutboxOp::Put {
        peer: peer.into(),
        stream,
        seq,
        share: (seq == 3).then(|| "$share/g/t".into()),
        message: message("t", payload),
    };
    {
        let dir = DataDir::open(&temp.settings(false), 1).unwrap();
        let mut store = ClusterStore::new(dir.cluster.clone(), Durability::Always, Duration::ZERO);
        store
            .commit(vec![
                put("n1", 0, 1, b"one"),
                put("n1", 0, 2, b"two"),
                put("n1", 0, 3, b"three"),
                put("n1", 1, 1, b"other stream"),
                put("n2", 0, 1, b"forgotten peer"),
            ])
            .unwrap();
        store
            .commit(vec![
                OutboxOp::Ack {
                    peer: "n1".into(),
                    stream: 0,
                    through: 1,
                },
                OutboxOp::Remove {
                    peer: "n1".into(),
                    stream: 1,
                    seq: 1,
                },
                OutboxOp::Forget { peer: "n2".into() },
            ])
            .unwrap();
    }
    let dir = DataDir::open(&temp.settings(false), 3).unwrap();
    let store = ClusterStore::new(dir.cluster.clone(), Durability::Always, Duration::ZERO);
    let owed = store.restore(false).unwrap();
    let summary: Vec<_> = owed
        .iter()
        .map(|o| {
            (
                o.peer.to_string(),
                o.stream,
                o.message.payload.clone(),
                o.share.as_ref().map(|s| s.to_string()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("n1".into(), 0, Bytes::from_static(b"two"), None),
            (
                "n1".into(),
                0,
                Bytes::from_static(b"three"),
                Some("$share/g/t".into())
            ),
        ]
    );
}

/// Appends `ops` to a new log segment of `partition`, as the writer does
/// between two checkpoints, and returns the segment's path.
fn log(partition: &Partition, ops: &[Op]) -> PathBuf {
    let mut log = Log::open(&partition.path).unwrap();
    let mut records = Vec::new();
    let mut encoder = Encoder::default();
    for op in ops {
        mutations::<Infallible>(
            op,
            Instant::now(),
            SystemTime::now(),
            &mut encoder,
            |mutation| {
                mutation.encode(&mut records);
                Ok(())
            },
        )
        .unwrap();
    }
    log.append(&records).unwrap();
    segments(&partition.path).unwrap().pop().unwrap().1
}

#[test]
fn the_log_a_crash_left_is_read_through_and_then_applied() {
    let temp = TempDir::new("replay");
    let newest = {
        let dir = DataDir::open(&temp.settings(false), 1).unwrap();
        let partition = &dir.partitions[0];
        // Checkpointed: in redb, then removed by the log.
        write(partition, session_ops("gone"));
        log(partition, &[Op::RemoveSession("gone".into())]);
        let newest = log(partition, &session_ops("c"));
        // The crash cut the last append short.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        std::io::Write::write_all(&mut file, &[40, 0, 0, 0, 1, 2]).unwrap();
        newest
    };
    let expected = vec![
        ("c".into(), Some(5), "t/1".into()),
        ("c".into(), None, "t/2".into()),
    ];
    let dir = DataDir::open(&temp.settings(false), 1).unwrap();
    let partition = &dir.partitions[0];
    let shard = read(partition, false).unwrap();
    assert_eq!(owed(&shard), expected);
    assert_eq!(shard.unapplied.segments.len(), 2);
    // The torn append is cut off, so that segments after it read clean.
    let whole = std::fs::metadata(&newest).unwrap().len();
    let (_, stop) = super::log::parse(&std::fs::read(&newest).unwrap()[..whole as usize]);
    assert_eq!(stop, None);

    super::log::replay(partition, &shard.unapplied).unwrap();
    assert!(
        segments(&partition.path).unwrap().is_empty(),
        "applied segments are deleted"
    );
    let again = read(partition, false).unwrap();
    assert_eq!(owed(&again), expected);
    assert!(again.unapplied.segments.is_empty());
}

#[test]
fn a_damaged_log_record_stops_the_start_unless_repair() {
    let temp = TempDir::new("damaged-log");
    let older = {
        let dir = DataDir::open(&temp.settings(false), 1).unwrap();
        let partition = &dir.partitions[0];
        let older = log(partition, &session_ops("a"));
        log(partition, &session_ops("b"));
        older
    };
    let mut bytes = std::fs::read(&older).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&older, bytes).unwrap();

    let dir = DataDir::open(&temp.settings(false), 1).unwrap();
    let error = read(&dir.partitions[0], false).err().expect("refused");
    let text = error.to_string();
    assert!(
        text.contains("shard-0.log.1") && text.contains("--repair"),
        "{text}"
    );

    let shard = read(&dir.partitions[0], true).unwrap();
    // b's segment is whole; a's is kept up to the damage.
    assert!(owed(&shard).iter().any(|(client, _, _)| client == "b"));
}

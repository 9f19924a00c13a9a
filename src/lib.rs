//! ringmq: a thread-per-core MQTT broker on io_uring.
//!
//! # The shape of it
//!
//! One thread per core, pinned, each with its own monoio runtime on
//! io_uring (or epoll where io_uring is unavailable). A thread is a
//! *shard*: it accepts connections (every shard listens on the same port
//! through SO_REUSEPORT), owns the sessions whose client ids hash to it,
//! and owns the part of the subscription trie those sessions created.
//! Shard state is `Rc`/`RefCell`, not `Send`: there is no lock to take on
//! the publish path because there is nothing shared to lock. Shards
//! exchange messages ([`shard::mesh::ShardMsg`]) through lock-free queues,
//! in batches, waking each other at most once per batch.
//!
//! A PUBLISH is decoded once into a refcounted [`message::Message`] whose
//! payload is a slice of the read buffer; the publisher's shard looks up
//! which shards have matching subscribers (its route table), sends each of
//! them the same `Arc`, and delivers to its own subscribers. Each target
//! shard matches against its own trie. Nothing is copied per subscriber
//! until the bytes are encoded into that subscriber's socket buffer, and a
//! connection's output is written once per turn of the loop, however many
//! packets it holds.
//!
//! # The rooms
//!
//! - [`protocol`]: sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec, one file per packet
//!   type; bytes in, packets out; no runtime, no clock.
//! - [`session`]: the per-client state machine (QoS flows, inflight, queue,
//!   will, expiry); packets and `now` in, actions and packets out.
//! - [`router`]: pure data structures: the topic trie, the retained
//!   store, and shared subscription groups.
//! - [`shard`]: the only code that awaits: threads, runtimes, listeners,
//!   connections, the cross-core mesh, and the routing glue.
//! - [`cluster`]: several nodes as one broker. Gossip membership (foca),
//!   each node's filters announced to the others, and forwarding over QUIC
//!   (quinn, mutual TLS) with rkyv frames, acknowledged and deduplicated.
//!   The cluster runtime is one more place in the mesh: to a shard's route
//!   table, the other nodes are one place with subscribers. Its logic
//!   ([`cluster::node`], [`cluster::membership`]) is sans-IO and tested in
//!   a seeded in-memory cluster; `tests/cluster*.rs` run real nodes.
//!   Session ownership ([`cluster::ownership`]: one owner per client id,
//!   fenced by an epoch) is decided by raft (openraft), on connect and
//!   takeover only; every clustered node runs it over the same QUIC
//!   connections, its voters chosen from gossip.
//! - [`metrics`]: per-shard counters and histograms gathered through the
//!   mesh when scraped; HTTP `/metrics`, `/health`, `/ready`; `$SYS`.
//! - [`store`]: sessions, their messages and the retained store on disk
//!   (a write-ahead log per shard in front of a redb partition, written by
//!   a thread per partition), read back at start-up.
//! - [`auth`]: who may connect: the password file (argon2id, or
//!   Mosquitto's PBKDF2 lines), anonymous clients, and the threads that
//!   verify passwords off the shards; and what a client may publish to and
//!   read (`acl_file`, Mosquitto's format), applied by its session.
//! - [`abuse`]: limits against abuse: PUBLISH rates per client,
//!   connections per source address, flapping client ids; sans-IO, applied
//!   by the shards.
//! - [`tls`]: client listeners' certificates (rustls), reloaded on
//!   SIGHUP; the per-connection TLS session is `shard::tls`, handed over
//!   with the connection to its home shard.
//! - [`config`]: command line and TOML, validated once.
//!
//! Each room's module documentation gives the reasons for its design.

pub mod abuse;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod message;
pub mod metrics;
pub mod protocol;
pub mod router;
pub mod session;
pub mod shard;
pub mod store;
pub mod tls;

#[cfg(test)]
mod testing;

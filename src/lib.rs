//! ringmq: a thread-per-core MQTT broker on io_uring.

pub mod config;
pub mod message;
pub mod protocol;
pub mod router;
pub mod session;

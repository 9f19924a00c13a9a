//! The cluster: membership, route propagation, forwarding between nodes.

pub mod frame;
pub mod membership;
pub mod settings;
pub mod tls;

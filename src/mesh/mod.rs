//! The peer mesh (DESIGN.md §4). So far, the pure parts: the codec that turns a
//! cluster's exports into gossip keys and values and back, signed roots with the
//! adoption rule, the transport's framing, and the cluster liveness state machine.
//! The chitchat peer, the transport's sockets and the observe loop come next.

pub mod codec;
pub mod frame;
pub mod liveness;

//! The peer mesh (DESIGN.md §4). So far, the pure parts: the codec that turns a
//! cluster's exports into gossip keys and values and back, signed roots with the
//! adoption rule, and the cluster liveness state machine. The chitchat peer, the
//! transport and the observe loop that feed them come next.

pub mod codec;
pub mod liveness;

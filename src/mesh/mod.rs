//! The peer mesh (DESIGN.md §4). So far: the codec that turns a cluster's exports into
//! gossip keys and values and back, signed roots with the adoption rule, the cluster
//! liveness state machine (all pure), and the transport that carries chitchat 0.11.1
//! over TCP streams in frames. The observe loop, the publisher and the wiring into
//! `fleetdns run` come next.

pub mod codec;
pub mod frame;
pub mod liveness;
pub mod transport;

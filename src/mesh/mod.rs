//! The peer mesh (DESIGN.md §4): the codec that turns a cluster's exports into gossip
//! keys and values and back, signed roots with the adoption rule, the cluster liveness
//! state machine (all pure); the transport that carries chitchat 0.11.1 over TCP
//! streams in frames; the publisher and observer that write and adopt exports in
//! chitchat node states; the running node (observe loop, alive stamps, publisher
//! election, gossip supervision, gossip-on-change) and its metrics; mutual TLS for
//! every connection.

pub mod codec;
pub mod frame;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod push;
pub mod tls;
pub mod transport;

//! The peer mesh (DESIGN.md §4). So far: the codec that turns a cluster's exports into
//! gossip keys and values and back, signed roots with the adoption rule, the cluster
//! liveness state machine (all pure), the transport that carries chitchat 0.11.1 over
//! TCP streams in frames, and the publisher and observer that write and adopt exports
//! in chitchat node states. The observe loop task, alive stamps, the publisher election
//! and the wiring into `fleetdns run` and `fleetdns demo` come next.

pub mod codec;
pub mod frame;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod transport;

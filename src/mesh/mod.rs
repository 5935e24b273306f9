//! The peer mesh (DESIGN.md §4). So far: the codec that turns a cluster's exports into
//! gossip keys and values and back. The chitchat peer, the mTLS transport, signed roots
//! and the observe loop come next.

pub mod codec;

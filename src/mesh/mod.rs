//! The peer mesh (DESIGN.md §4). So far, the pure parts: the codec that turns a
//! cluster's exports into gossip keys and values and back, and signed roots with the
//! adoption rule. The chitchat peer, the mTLS transport and the observe loop come next.

pub mod codec;

//! The DNS side: zone (RRsets from the view), index (pre-encoded answers), wire (the
//! query parser and reply writers) and server (UDP and TCP sockets).

pub mod index;
pub mod server;
pub mod wire;
pub mod zone;

//! The DNS side: names (the grammar), zone (RRsets from the view), index (pre-encoded answers), wire (the
//! query parser and reply writers) and server (UDP and TCP sockets).

pub mod encode;
pub mod index;
pub mod names;
pub mod server;
pub mod wire;
pub mod zone;

//! The DNS side: names (the grammar), zone (RRsets from the view), index (pre-encoded answers), wire (the
//! query parser and reply writers), server (UDP and TCP sockets) and, on Linux, mmsg (the UDP
//! worker threads).

pub mod encode;
pub mod index;
#[cfg(target_os = "linux")]
mod mmsg;
pub mod names;
pub mod server;
pub mod wire;
pub mod zone;

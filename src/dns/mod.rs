//! The DNS side: names (the grammar), zone (RRsets from the view), index (pre-encoded answers), wire (the
//! query parser and reply writers), server (UDP, TCP and DNS-over-TLS sockets), dot (the DoT TLS
//! configuration) and, on Linux, mmsg (the UDP worker threads).

pub mod dot;
pub mod encode;
pub mod index;
#[cfg(target_os = "linux")]
mod mmsg;
pub mod names;
pub mod server;
pub mod wire;
pub mod zone;

//! fleetdns: multicluster service discovery over authoritative DNS.
//!
//! The pure core (model, config, view, dns zone/index/wire, snapshot) turns services
//! into pre-encoded answers; thin edges (source, dns server, ops, app) do the I/O.

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dns;
pub mod export;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod view;

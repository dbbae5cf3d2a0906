//! svc-handler: reconciles Consul config entries (ServiceDefaults, ServiceResolver,
//! ServiceRouter, terminating-gateway links) from desired state kept in Consul KV.
//!
//! The binary (`src/main.rs`) is only the command line; everything else lives here
//! so that tests and benchmarks can use it.

pub mod batches;
pub mod cli;
pub mod commands;
pub mod consul;
pub mod daemon;
pub mod entries;
pub mod fields;
pub mod http;
pub mod keys;
pub mod kind;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod queue;
pub mod reconcile;
pub mod records;
pub mod spec;
pub mod watch;

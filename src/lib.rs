//! svc-handler: reconciles Consul config entries (ServiceDefaults, ServiceResolver,
//! ServiceRouter, terminating-gateway links) from desired state kept in Consul KV.
//!
//! The binary (`src/main.rs`) is only the command line; everything else lives here
//! so that tests and benchmarks can use it.

pub mod consul;
pub mod entries;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod reconcile;
pub mod records;
pub mod spec;

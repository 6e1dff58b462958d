//! reflektor: a stateless, cluster-local OCI registry mirror for containerd.
//!
//! The library holds every concern of the agent, one module each. `cmd` is
//! the composition root that wires them per command; every other module
//! only imports the ones below it (`agent/tests/layers.rs` holds the order),
//! and the `reflektor` binary only parses flags and runs a command.

pub mod auth;
pub mod backoff;
pub mod bootstrap;
pub mod cli;
pub mod cmd;
pub mod doctor;
pub mod duration;
pub mod errors;
pub mod http_client;
pub mod manifests;
pub mod metrics;
pub mod mirror_config;
pub mod oci;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod store;
pub mod version;

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

//! reflektor: a stateless, cluster-local OCI registry mirror for containerd.
//!
//! The library holds every concern of the agent, one module each; the
//! `reflektor` binary only wires them together.

pub mod bootstrap;
pub mod cli;
pub mod doctor;
pub mod metrics;
pub mod mirror_config;
pub mod oci;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod serve;
pub mod state;
pub mod store;
pub mod version;

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;

//! reflektor: a stateless, cluster-local OCI registry mirror for containerd.
//!
//! The library holds every concern of the agent, one module each; the
//! `reflektor` binary only wires them together.

pub mod cli;
pub mod doctor;
pub mod runtime;
pub mod version;

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;

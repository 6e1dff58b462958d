//! The reflektor harness: real containerd builds from distribution packages,
//! run as isolated nodes, and the real agent binary run against them.

pub mod agent;
pub mod cri;
pub mod debian;
pub mod http;
pub mod image;
pub mod matrix;
pub mod node;
pub mod scenario;
pub mod support;
pub mod upstream;

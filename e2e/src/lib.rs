//! The reflektor harness: real containerd builds from distribution packages,
//! run as isolated nodes, and the real agent binary run against them.

pub mod acceptance;
pub mod agent;
pub mod agent_image;
pub mod cluster;
pub mod cluster_dns;
pub mod cri;
pub mod demo;
pub mod deploy;
pub mod http;
pub mod image;
pub mod kubelet;
pub mod matrix;
pub mod netns;
pub mod node;
pub mod packages;
pub mod packet_filter;
pub mod pod;
pub mod pod_template;
pub mod report;
pub mod scenario;
pub mod support;
pub mod throttle;
pub mod upstream;

/// The Debian source, at the path the tests have always used.
pub use packages::debian;

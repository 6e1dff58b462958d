//! Shared pieces of reflektor's benchmarks: the servers they start, the one
//! client every server is fetched with, and what a process costs, read from
//! `/proc` so that every server is measured the same way from outside.

pub mod announced;
pub mod client;
pub mod compare;
pub mod layout;
pub mod load;
pub mod nginx;
pub mod process;
pub mod runner;
pub mod scale;
pub mod stats;

//! The composition root: each command's wiring of the parts. Only this
//! module knows every other one; the parts below it never import their
//! consumers, and meet here through the traits they declare.

mod check_version;
mod cleanup;
mod configuration;
mod doctor;
mod listen;
mod logging;
mod manifests;
mod open_files;
mod peers;
mod registry;
mod signals;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub use logging::directive as log_directive;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckVersion(args) => Ok(check_version::run(&args)),
        Command::Doctor(args) => doctor::run(&args).await,
        Command::Configuration(args) => configuration::configure(args).await,
        Command::Cleanup(args) => cleanup::cleanup(&args).await,
        Command::CleanupWait(args) => cleanup::wait(&args).await,
        Command::Manifests(args) => manifests::run(&args),
        Command::Registry(args) => registry::run(&args).await,
    }
}

//! The `reflektor` binary: parse flags, set up logging, run one command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use reflektor::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(reflektor::cmd::log_directive(&cli.log_level)) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!(
                "reflektor: --log-level {:?} is not a level or filter ({error}); expected \
                 error, warn, info, debug or trace",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reflektor: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(reflektor::cmd::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reflektor: {error:#}");
            ExitCode::from(1)
        }
    }
}

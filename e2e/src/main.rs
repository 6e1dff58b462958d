//! `reflektor-e2e`: the harness's command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::debian::Suite;
use reflektor_e2e::matrix::{self, Outcome};

#[derive(Debug, Parser)]
#[command(
    name = "reflektor-e2e",
    about = "Runs real containerd builds from Debian packages against the reflektor agent",
    long_about = "Runs real containerd builds from Debian packages against the reflektor agent.\n\n\
        Builds are fetched once with apt-get download (a private apt configuration; the \
        system's is left alone) into $REFLEKTOR_E2E_CACHE, $XDG_CACHE_HOME/reflektor-e2e or \
        ~/.cache/reflektor-e2e. Each node is a containerd with its own root, state, socket and \
        config. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run `reflektor doctor` against every Debian build and print the verdicts.
    ///
    /// Exit code 0 when every build got its expected verdict (bullseye's 1.4
    /// refused as too old, the rest accepted with no failed check), 1 otherwise.
    Matrix {
        /// Only these suites (bullseye, bookworm, trixie, sid); repeatable.
        #[arg(long = "suite", value_name = "SUITE")]
        suites: Vec<Suite>,
        /// Print the rows as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reflektor-e2e: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let Command::Matrix { suites, json } = cli.command;
    let suites = if suites.is_empty() {
        Suite::ALL.to_vec()
    } else {
        suites
    };
    let reflektor = Reflektor::locate()?;
    let mut rows = Vec::new();
    for suite in suites {
        rows.push(matrix::run_suite(&reflektor, suite).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for row in &rows {
            println!(
                "doctor on Debian {} (containerd {}):\n{}",
                row.suite, row.reported, row.doctor_table
            );
        }
        println!("{}", matrix::render(&rows));
    }
    let failed = rows.iter().filter(|r| r.outcome == Outcome::Fail).count();
    if failed > 0 {
        eprintln!(
            "matrix: {failed} of {} builds did not get their expected verdict",
            rows.len()
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "matrix: all {} builds got their expected verdict",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

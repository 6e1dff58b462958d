//! `reflektor doctor`, and the same checks as the registry's gate.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;

use crate::cli::{ContainerdArgs, DoctorArgs, Output};
use crate::doctor::{self, Status, Target};
use crate::runtime::Containerd;

pub async fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run(&target(&args.containerd)).await.report;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            let width = (!std::io::stdout().is_terminal()).then_some(140);
            print!("{}", report.render_table(width));
        }
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn target(args: &ContainerdArgs) -> Target {
    Target {
        containerd_sock: args.containerd_sock.clone(),
        containerd_config: args.containerd_config.clone(),
        registry_config_path: args
            .registry_config_path
            .containerd_registry_config_path
            .clone(),
    }
}

/// Doctor's checks, as a gate: refuse what cannot work, warn about what
/// might not, and say why either way. Hands on the connection it made.
pub async fn preflight(args: &ContainerdArgs) -> anyhow::Result<Containerd> {
    let diagnosis = doctor::run(&target(args)).await;
    let mut failures = Vec::new();
    for check in &diagnosis.report.checks {
        match check.status {
            Status::Ok => {
                tracing::info!(check = %check.check, source = %check.source, "{}", check.detail)
            }
            Status::Warn => {
                tracing::warn!(check = %check.check, source = %check.source, "{}", check.detail)
            }
            Status::Fail => {
                let fix = check.fix.as_deref().unwrap_or("see `reflektor doctor`");
                failures.push(format!("{}: {}\n  fix: {fix}", check.check, check.detail));
            }
        }
    }
    match diagnosis.containerd {
        Some(containerd) if failures.is_empty() => Ok(containerd),
        // A failed socket check is among the failures.
        _ => bail!(
            "containerd on this node cannot work with reflektor:\n{}",
            failures.join("\n")
        ),
    }
}

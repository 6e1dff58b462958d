//! The `reflektor` binary as users run it: a real process with real flags,
//! never the library called in-process, so that the tests cover flag parsing,
//! exit codes and output formats too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use reflektor::doctor::Report;

use crate::node::ContainerdNode;

/// Overrides where the agent binary is looked for.
const BIN_ENV: &str = "REFLEKTOR_BIN";

#[derive(Debug, Clone)]
pub struct Reflektor {
    bin: PathBuf,
}

/// What `reflektor doctor --output json` exited with and printed.
#[derive(Debug, Clone)]
pub struct DoctorRun {
    pub exit_code: i32,
    pub report: Report,
}

/// What `reflektor check-version` exited with and printed.
#[derive(Debug, Clone)]
pub struct CheckVersionRun {
    pub exit_code: i32,
    pub output: serde_json::Value,
}

impl Reflektor {
    /// Finds the binary that `cargo build -p reflektor` made. `just test` and
    /// `just e2e` build it first; a plain `cargo test` does not.
    pub fn locate() -> Result<Self> {
        if let Some(bin) = std::env::var_os(BIN_ENV) {
            return Ok(Self { bin: bin.into() });
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let bin = target.join("debug/reflektor");
        if !bin.is_file() {
            bail!(
                "the agent binary {} is missing. Fix: run `cargo build -p reflektor` first \
                 (`just test` and `just e2e` do), or set {BIN_ENV}",
                bin.display()
            );
        }
        Ok(Self { bin })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs doctor against a node, with the node's own config file and the
    /// registry config path reflektor would write to on that node.
    pub fn doctor(&self, node: &ContainerdNode, registry_config_path: &Path) -> Result<DoctorRun> {
        let output = self.run(|cmd| {
            cmd.arg("doctor")
                .arg("--output=json")
                .arg("--containerd-sock")
                .arg(node.socket())
                .arg("--containerd-config")
                .arg(node.config_file())
                .arg("--containerd-registry-config-path")
                .arg(registry_config_path)
        })?;
        let report = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reflektor doctor printed something that is not its JSON report:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok(DoctorRun {
            exit_code: exit_code(&output)?,
            report,
        })
    }

    pub fn check_version(&self, version: &str) -> Result<CheckVersionRun> {
        let output = self.run(|cmd| cmd.arg("check-version").arg("--").arg(version))?;
        let parsed = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "reflektor check-version {version:?} printed no JSON object; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok(CheckVersionRun {
            exit_code: exit_code(&output)?,
            output: parsed,
        })
    }

    fn run(&self, args: impl FnOnce(&mut Command) -> &mut Command) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        args(&mut cmd);
        cmd.output()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }
}

/// A signal instead of an exit code means the agent crashed, which is
/// exactly what this project exists to prevent.
fn exit_code(output: &Output) -> Result<i32> {
    match output.status.code() {
        Some(code) => Ok(code),
        None => bail!(
            "reflektor was killed by a signal ({:?}); stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

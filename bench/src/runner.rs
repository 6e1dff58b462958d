//! What the runner binaries share: where they write, the agent they
//! measure, and a main that stops everything on Ctrl-C.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use reflektor_e2e::agent::Reflektor;

/// `<workspace>/target/bench`.
pub fn default_out_dir() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).join("target/bench")
}

/// The agent binary, run at the default log level as users run it, and
/// whether it is a release build; a debug one is measured only with a
/// warning, since its figures say little.
pub fn agent(runner: &str) -> Result<(Reflektor, bool)> {
    let reflektor = Reflektor::locate()?.with_log_level("info");
    let release = !reflektor.bin().to_string_lossy().contains("/debug/");
    if !release {
        eprintln!(
            "{runner}: WARNING: measuring the debug build {}; `just {runner}` builds and uses \
             the release one",
            reflektor.bin().display()
        );
    }
    Ok((reflektor, release))
}

/// Runs `run` to its end, or until Ctrl-C: returning drops it, and with it
/// every server it started.
pub async fn main(runner: &str, run: impl Future<Output = Result<()>>) -> ExitCode {
    tokio::select! {
        result = run => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{runner}: {error:#}");
                ExitCode::from(1)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("{runner}: interrupted; stopping every server it started");
            ExitCode::from(130)
        }
    }
}

/// One progress line on stderr.
pub fn progress(runner: &str, line: &str) {
    eprintln!("[{runner}] {line}");
}

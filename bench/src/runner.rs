//! What the runner binaries share: where they write, the agent they
//! measure, and a main that stops everything on Ctrl-C.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use reflektor_e2e::agent::Reflektor;
use serde::Serialize;

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

/// Writes `<stem>.md` and `<stem>.json` into `dir`, creating it: the pair
/// every runner leaves for `docs/bench/`.
pub fn write_report(dir: &Path, stem: &str, markdown: String, json: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (path, text) in [
        (dir.join(format!("{stem}.md")), markdown),
        (
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(json)? + "\n",
        ),
    ] {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One progress line on stderr.
pub fn progress(runner: &str, line: &str) {
    eprintln!("[{runner}] {line}");
}

//! `reflektor check-version`: one version string, judged as at start-up.

use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{CheckVersionArgs, Runtime};
use crate::version::{ContainerdPolicy, VerdictKind};

/// What `check-version` prints.
#[derive(Debug, Serialize)]
struct VersionReport {
    input: String,
    components: Option<Vec<u64>>,
    version: Option<String>,
    suffix: Option<String>,
    /// Whether the suffix is valid SemVer; shown, never used.
    suffix_semver: Option<bool>,
    verdict: VerdictKind,
    minimum: String,
    message: String,
}

pub fn run(args: &CheckVersionArgs) -> ExitCode {
    let Runtime::Containerd = args.runtime;
    let policy = ContainerdPolicy::new();
    // Bytes that are not UTF-8 become U+FFFD: the numbers a runtime could
    // mean are ASCII, so the verdict is the same as for the raw bytes.
    let input = args.version.to_string_lossy();
    let verdict = policy.evaluate(&input);
    let mut message = verdict.message.clone();
    if args.version.to_str().is_none() {
        message =
            format!("the version is not valid UTF-8; invalid bytes are shown as U+FFFD. {message}");
    }
    let parsed = verdict.parsed.as_ref().ok();
    let report = VersionReport {
        input: input.into_owned(),
        components: parsed.map(|v| v.components().to_vec()),
        version: parsed.map(ToString::to_string),
        suffix: parsed.map(|v| v.suffix().to_owned()),
        suffix_semver: parsed.map(|v| v.suffix_is_semver()),
        verdict: verdict.kind,
        minimum: verdict.minimum.to_string(),
        message,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("a report of strings and numbers serialises")
    );
    match verdict.kind {
        VerdictKind::TooOld => ExitCode::from(1),
        VerdictKind::Supported | VerdictKind::Unknown => ExitCode::SUCCESS,
    }
}

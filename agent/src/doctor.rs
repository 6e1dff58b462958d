//! `reflektor doctor`: can this node's containerd work with reflektor?
//!
//! The same checks run before the agent starts serving, so a node that
//! cannot work is refused with the reason and the fix, not left to fail
//! silently at pull time. Each check names the source of what it read,
//! because a wrong answer from the wrong file is the usual way these go wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use crate::runtime::{
    ConfigFile, ConfigFileError, Containerd, CriStatus, GlobBase, RuntimeError, discard_table,
    registry_table, table_header,
};
use crate::version::{ContainerdPolicy, RuntimeVersion, VerdictKind};

/// Where doctor looks.
#[derive(Debug, Clone)]
pub struct Target {
    pub containerd_sock: PathBuf,
    pub containerd_config: PathBuf,
    /// Where reflektor writes `hosts.toml` files; containerd's `config_path`
    /// must include it.
    pub registry_config_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One row of the report. Deserialisable so that the harness can read what
/// the real binary printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What the detail was read from: an API, a file, or nothing.
    pub source: String,
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub containerd_sock: PathBuf,
    /// The version string as containerd reported it, when it answered.
    pub containerd_version: Option<String>,
    pub verdict: Option<VerdictKind>,
    pub checks: Vec<Check>,
}

/// Where a registry setting came from; decides which TOML dialect a fix
/// hint is written in.
enum Source {
    Cri,
    File(ConfigFile),
    /// Neither answered; `major` is containerd's major version if known.
    Nothing {
        reason: String,
        major: Option<u64>,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Cri => "CRI Status (verbose config)".to_owned(),
            Source::File(file) => {
                let files: Vec<String> = file
                    .files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                format!("config file {}", files.join(" + "))
            }
            Source::Nothing { .. } => "none".to_owned(),
        }
    }

    /// The config version whose syntax the fix hint uses.
    fn config_version(&self) -> i64 {
        match self {
            Source::File(file) => file.version(),
            Source::Nothing {
                major: Some(2..), ..
            } => 3,
            _ => 2,
        }
    }
}

impl Report {
    /// The row of the named check, if doctor got that far.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == name)
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// A table for people, wrapped to the terminal, or to `width` when
    /// there is no terminal to measure.
    pub fn render_table(&self, width: Option<u16>) -> String {
        let mut table = Table::new();
        table
            .load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["check", "status", "detail", "source", "fix"]);
        if let Some(width) = width {
            table.set_width(width);
        }
        for check in &self.checks {
            table.add_row([
                check.check.to_owned(),
                check.status.to_string(),
                check.detail.clone(),
                check.source.clone(),
                check.fix.clone().unwrap_or_default(),
            ]);
        }
        let summary = if self.failed() {
            "doctor: containerd on this node cannot work with reflektor; apply the fixes above."
        } else {
            "doctor: no failed checks."
        };
        format!("{table}\n{summary}\n")
    }
}

/// The report, and the connection it made when containerd answered, so that
/// a caller that goes on to use containerd does not connect again.
pub struct Diagnosis {
    pub report: Report,
    pub containerd: Option<Containerd>,
}

pub async fn run(target: &Target) -> Diagnosis {
    let mut report = Report {
        containerd_sock: target.containerd_sock.clone(),
        containerd_version: None,
        verdict: None,
        checks: Vec::new(),
    };
    let containerd = match Containerd::connect(&target.containerd_sock).await {
        Ok(containerd) => {
            report.checks.push(Check {
                check: "containerd socket".to_owned(),
                status: Status::Ok,
                detail: format!("connected to {}", target.containerd_sock.display()),
                source: "unix socket".to_owned(),
                fix: None,
            });
            Some(containerd)
        }
        Err(error) => {
            report.checks.push(Check {
                check: "containerd socket".to_owned(),
                status: Status::Fail,
                detail: error.to_string(),
                source: "unix socket".to_owned(),
                fix: Some(
                    "run doctor on a node with containerd, with --containerd-sock set to its \
                     socket"
                        .to_owned(),
                ),
            });
            None
        }
    };

    let mut cri = None;
    if let Some(containerd) = &containerd {
        let version = containerd.version().await;
        let cri_status = containerd.cri_status().await;
        report.checks.push(cri_check(&cri_status));
        let (raw, source) = match (&version, &cri_status) {
            (Ok(raw), _) => (Some(raw.clone()), "containerd Version API"),
            (Err(_), Ok(cri)) => (Some(cri.runtime_version.clone()), "CRI Version"),
            (Err(_), Err(_)) => (None, "none"),
        };
        report
            .checks
            .push(version_check(raw.as_deref(), &version, source));
        if let Some(raw) = raw {
            report.verdict = Some(ContainerdPolicy::new().evaluate(&raw).kind);
            report.containerd_version = Some(raw);
        }
        cri = cri_status.ok();
    }

    let version = report
        .containerd_version
        .as_deref()
        .and_then(|raw| RuntimeVersion::parse(raw).ok());
    let major = version.as_ref().map(|v| v.components()[0]);
    let file = ConfigFile::load(
        &target.containerd_config,
        GlobBase::for_containerd(version.as_ref()),
    );
    report
        .checks
        .push(config_path_check(target, cri.as_ref(), &file, major));
    report
        .checks
        .push(discard_check(cri.as_ref(), &file, major));
    Diagnosis { report, containerd }
}

fn cri_check(status: &Result<CriStatus, RuntimeError>) -> Check {
    match status {
        Ok(cri) => Check {
            check: "CRI API".to_owned(),
            status: Status::Ok,
            detail: format!(
                "CRI {} answers: {} {}",
                cri.api, cri.runtime_name, cri.runtime_version
            ),
            source: "CRI Version".to_owned(),
            fix: None,
        },
        Err(error) => Check {
            check: "CRI API".to_owned(),
            status: Status::Warn,
            detail: format!("CRI does not answer: {error}"),
            source: "CRI Version".to_owned(),
            fix: Some(
                "kubelet needs the CRI plugin: make sure \"cri\" is not in containerd's \
                 disabled_plugins"
                    .to_owned(),
            ),
        },
    }
}

fn version_check(
    raw: Option<&str>,
    version_rpc: &Result<String, RuntimeError>,
    source: &str,
) -> Check {
    let Some(raw) = raw else {
        let detail = match version_rpc {
            Err(error) => format!("containerd did not report its version: {error}"),
            Ok(_) => "containerd did not report its version".to_owned(),
        };
        return Check {
            check: "containerd version".to_owned(),
            status: Status::Warn,
            detail,
            source: source.to_owned(),
            fix: None,
        };
    };
    let verdict = ContainerdPolicy::new().evaluate(raw);
    let (status, fix) = match verdict.kind {
        VerdictKind::Supported => (Status::Ok, None),
        VerdictKind::TooOld => (Status::Fail, Some(ContainerdPolicy::FIX.to_owned())),
        VerdictKind::Unknown => (Status::Warn, None),
    };
    Check {
        check: "containerd version".to_owned(),
        status,
        detail: verdict.message,
        source: source.to_owned(),
        fix,
    }
}

/// Picks CRI when it reports the setting, else the config file, else nothing.
fn pick<T>(
    from_cri: Option<T>,
    file: &Result<ConfigFile, ConfigFileError>,
    from_file: impl Fn(&ConfigFile) -> T,
    major: Option<u64>,
) -> (Option<T>, Source) {
    if let Some(value) = from_cri {
        return (Some(value), Source::Cri);
    }
    match file {
        Ok(file) => (Some(from_file(file)), Source::File(file.clone())),
        Err(error) => (
            None,
            Source::Nothing {
                reason: format!("CRI does not report it, and {error}"),
                major,
            },
        ),
    }
}

/// The name of the check that containerd reads the directory reflektor
/// writes to; `configuration` runs it before writing.
pub const CONFIG_PATH_CHECK: &str = "registry config_path";

fn config_path_check(
    target: &Target,
    cri: Option<&CriStatus>,
    file: &Result<ConfigFile, ConfigFileError>,
    major: Option<u64>,
) -> Check {
    let wanted = target.registry_config_path.display().to_string();
    if cri.is_some_and(CriStatus::lacks_config_path) {
        return Check {
            check: CONFIG_PATH_CHECK.to_owned(),
            status: Status::Fail,
            detail: "this containerd's CRI plugin has no registry config_path setting (it \
                     arrived in containerd 1.5.0), so it ignores hosts.toml mirror files \
                     whatever its config file says"
                .to_owned(),
            source: Source::Cri.describe(),
            fix: Some(ContainerdPolicy::FIX.to_owned()),
        };
    }
    let (value, source) = pick(
        cri.and_then(CriStatus::registry_config_path),
        file,
        ConfigFile::registry_config_path,
        major,
    );
    let header = table_header(&registry_table(source.config_version()));
    let set_it = format!("[{header}]\n  config_path = \"{wanted}\"\nthen restart containerd");
    let (status, detail, fix) = match value {
        None => (
            Status::Warn,
            format!("cannot read the registry config_path: {}", reason(&source)),
            Some(
                "point --containerd-config at containerd's config file so it can be checked"
                    .to_owned(),
            ),
        ),
        Some(path) if path.is_empty() => (
            Status::Fail,
            "registry config_path is not set, so containerd ignores hosts.toml mirror files \
             and never asks reflektor"
                .to_owned(),
            Some(set_it),
        ),
        Some(path) if !includes(&path, &target.registry_config_path) => (
            Status::Fail,
            format!(
                "registry config_path is {path:?}, which does not include {wanted}, where \
                 reflektor writes hosts.toml mirror files"
            ),
            Some(format!(
                "{set_it}; or run reflektor with --containerd-registry-config-path set to one \
                 of {path:?}"
            )),
        ),
        Some(path) => (
            Status::Ok,
            format!("registry config_path {path:?} includes {wanted}"),
            None,
        ),
    };
    Check {
        check: CONFIG_PATH_CHECK.to_owned(),
        status,
        detail,
        source: source.describe(),
        fix,
    }
}

fn discard_check(
    cri: Option<&CriStatus>,
    file: &Result<ConfigFile, ConfigFileError>,
    major: Option<u64>,
) -> Check {
    let (value, source) = pick(
        cri.and_then(CriStatus::discard_unpacked_layers),
        file,
        ConfigFile::discard_unpacked_layers,
        major,
    );
    let version = source.config_version();
    let header = table_header(&discard_table(version));
    let (status, detail, fix) = match value {
        None => (
            Status::Warn,
            format!("cannot read discard_unpacked_layers: {}", reason(&source)),
            Some(
                "point --containerd-config at containerd's config file so it can be checked"
                    .to_owned(),
            ),
        ),
        Some(true) => (
            Status::Fail,
            "discard_unpacked_layers is true: containerd deletes layer blobs once they are \
             unpacked, so this node has nothing to serve to its peers"
                .to_owned(),
            Some(format!(
                "[{header}]\n  discard_unpacked_layers = false\nthen restart containerd"
            )),
        ),
        Some(false) => (
            Status::Ok,
            "discard_unpacked_layers is false: layer blobs stay in the content store".to_owned(),
            None,
        ),
    };
    Check {
        check: "discard_unpacked_layers".to_owned(),
        status,
        detail,
        source: source.describe(),
        fix,
    }
}

fn reason(source: &Source) -> String {
    match source {
        Source::Nothing { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

/// containerd's `config_path` may list several directories separated by `:`.
fn includes(config_path: &str, wanted: &Path) -> bool {
    config_path
        .split(':')
        .any(|entry| Path::new(entry.trim_end_matches('/')) == wanted.components().as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_may_be_a_list() {
        let wanted = Path::new("/etc/containerd/certs.d");
        assert!(includes("/etc/containerd/certs.d", wanted));
        assert!(includes(
            "/etc/docker/certs.d:/etc/containerd/certs.d/",
            wanted
        ));
        assert!(!includes("/etc/docker/certs.d", wanted));
        assert!(!includes("", wanted));
        assert!(includes(
            "/etc/containerd/certs.d",
            Path::new("/etc/containerd/certs.d/")
        ));
    }
}

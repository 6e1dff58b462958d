//! Which runtime versions reflektor accepts, and how it says so.
//!
//! The policy refuses only what truly cannot work. A version we cannot parse
//! is not proof of an old runtime, so it gives `unknown`: the agent warns and
//! lets the configuration checks decide.

use serde::{Deserialize, Serialize};

use super::{Excerpt, ParseError, RuntimeVersion};

/// A minimum version for one runtime, with the reason it exists and what an
/// operator can do about it, so that a refusal explains itself.
#[derive(Debug, Clone)]
pub struct ContainerdPolicy {
    minimum: RuntimeVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Supported,
    TooOld,
    Unknown,
}

/// The outcome of checking one version string.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// The string as the runtime reported it.
    pub input: String,
    pub parsed: Result<RuntimeVersion, ParseError>,
    pub minimum: RuntimeVersion,
    pub message: String,
}

impl ContainerdPolicy {
    /// Why 1.5.0: containerd reads `hosts.toml` mirror files from the CRI
    /// registry `config_path` only from 1.5.0 on, and those files are the only
    /// way reflektor has to point containerd at itself.
    pub const WHY: &'static str = "1.5.0 is the first containerd release that reads registry \
        mirrors from hosts.toml files under the CRI registry config_path, and those files are \
        how reflektor points containerd at itself";

    pub const FIX: &'static str = "upgrade containerd on this node to 1.5.0 or newer (Debian \
        bookworm ships 1.6.20, trixie 1.7.24), or keep reflektor off this node with a \
        nodeSelector or node affinity on the DaemonSet";

    pub fn new() -> Self {
        Self {
            minimum: RuntimeVersion::from_components(&[1, 5, 0]),
        }
    }

    pub fn minimum(&self) -> &RuntimeVersion {
        &self.minimum
    }

    /// Never fails and never panics: every input gets a verdict.
    pub fn evaluate(&self, input: &str) -> Verdict {
        let parsed = RuntimeVersion::parse(input);
        let quoted = Excerpt::of(input);
        let minimum = &self.minimum;
        let (kind, message) = match &parsed {
            Ok(version) if version.cmp_numeric(minimum).is_lt() => (
                VerdictKind::TooOld,
                format!(
                    "containerd reports version {quoted}, parsed as {version}, which is older \
                     than the minimum {minimum}. Why: {}. Fix: {}.",
                    Self::WHY,
                    Self::FIX
                ),
            ),
            Ok(version) => (
                VerdictKind::Supported,
                format!(
                    "containerd reports version {quoted}, parsed as {version}, which meets the \
                     minimum {minimum}."
                ),
            ),
            Err(error) => (
                VerdictKind::Unknown,
                format!(
                    "cannot tell containerd's version: {error}. Going on: the \
                     configuration checks (registry config_path, discard_unpacked_layers) \
                     decide whether this containerd can work with reflektor."
                ),
            ),
        };
        Verdict {
            kind,
            input: input.to_owned(),
            parsed,
            minimum: minimum.clone(),
            message,
        }
    }
}

impl Default for ContainerdPolicy {
    fn default() -> Self {
        Self::new()
    }
}

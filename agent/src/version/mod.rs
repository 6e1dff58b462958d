//! Runtime version strings, parsed the way Kubernetes parses them.
//!
//! This module exists because of one crash: a strict SemVer check on
//! containerd's version took down every Debian node, whose containerd reports
//! `1.6.20~ds1`. Distributions decorate versions freely (`~ds1`, `+unknown`,
//! `-k3s1`, `-0ubuntu3~20.04.1`, `+bottlerocket`), and the kubelet copes with all
//! of them because it uses `ParseGeneric` from
//! `k8s.io/apimachinery/pkg/util/version`. We port that function rather than
//! use a SemVer crate:
//!
//! - `semver` is strict by design and rejects every suffix above;
//! - `lenient_semver` 0.4.2 fails on `~` ("Unexpected `~`" for `1.6.20~ds1`
//!   and `1.5.5-0ubuntu3~20.04.1`), exactly the Debian and Ubuntu strings, and
//!   accepts `01.2.3`, which Kubernetes rejects (both checked by hand).
//!
//! The port is small, and the upstream test vectors in
//! `fixtures/k8s-version-testvectors.tsv` pin its behaviour row by row.
//!
//! Only the numeric components take part in comparisons. The suffix is kept
//! for display; whether it happens to be valid SemVer is reported, never used.

mod policy;

pub use policy::{ContainerdPolicy, Verdict, VerdictKind};

use std::cmp::Ordering;
use std::fmt;

/// A version as `ParseGeneric` understands it: two or more numeric components
/// and whatever text followed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    components: Vec<u64>,
    suffix: String,
}

/// Why a string is not a version. Each variant carries the offending input so
/// that the message can quote it back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("version string is empty; expected something like \"1.6.20\"")]
    Empty,
    #[error(
        "{input} does not start with a version number; expected an optional \"v\" and \
         then dot-separated numbers such as \"1.6.20\""
    )]
    NoNumber { input: Excerpt },
    #[error(
        "{input} has a single number; expected at least two dot-separated numbers \
         such as \"1.6\""
    )]
    TooFewComponents { input: Excerpt },
    #[error("{input} has a leading zero in its first number {component}")]
    LeadingZero { input: Excerpt, component: Excerpt },
    #[error("{input} has the number {component}, which is larger than 2^64-1")]
    Overflow { input: Excerpt, component: Excerpt },
    #[error("{input} spans more than one line; expected a single-line version")]
    MultiLine { input: Excerpt },
}

/// An input quoted for an error message, shortened so that a hostile 10 KB
/// version string cannot flood a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt(String);

impl Excerpt {
    const MAX_CHARS: usize = 64;

    fn of(input: &str) -> Self {
        Self(input.to_owned())
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.chars().count();
        if total <= Self::MAX_CHARS {
            return write!(f, "{:?}", self.0);
        }
        let head: String = self.0.chars().take(Self::MAX_CHARS).collect();
        write!(f, "{head:?}… ({total} characters in all)")
    }
}

impl RuntimeVersion {
    /// Parses like Kubernetes' `ParseGeneric`, after trimming ASCII whitespace.
    ///
    /// Never panics, whatever the input: version strings come from runtimes we
    /// don't control.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(ParseError::Empty);
        }
        // Upstream's regex ends in `(.*)*$`, and `.` never matches a newline,
        // so a string with a line break inside it is not a version.
        if trimmed.contains('\n') {
            return Err(ParseError::MultiLine {
                input: Excerpt::of(input),
            });
        }
        let body = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let numeric_len = numeric_run_len(body);
        if numeric_len == 0 {
            return Err(ParseError::NoNumber {
                input: Excerpt::of(input),
            });
        }
        let (numbers, suffix) = body.split_at(numeric_len);
        let parts: Vec<&str> = numbers.split('.').collect();
        if parts.len() < 2 {
            return Err(ParseError::TooFewComponents {
                input: Excerpt::of(input),
            });
        }
        if parts[0].len() > 1 && parts[0].starts_with('0') {
            return Err(ParseError::LeadingZero {
                input: Excerpt::of(input),
                component: Excerpt::of(parts[0]),
            });
        }
        let components = parts
            .iter()
            .map(|part| {
                part.parse::<u64>().map_err(|_| ParseError::Overflow {
                    input: Excerpt::of(input),
                    component: Excerpt::of(part),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            components,
            suffix: suffix.to_owned(),
        })
    }

    pub fn components(&self) -> &[u64] {
        &self.components
    }

    /// The text after the numbers, such as `~ds1` or `+unknown`, verbatim.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Whether the suffix is a valid SemVer pre-release and/or build metadata.
    ///
    /// Display only: `~ds1` is not SemVer, and that must never matter.
    pub fn suffix_is_semver(&self) -> bool {
        semver_suffix(&self.suffix)
    }

    /// Compares numeric components only, with missing components counted as
    /// zero, so `1.5` equals `1.5.0` and `1.6.20~ds1` equals `1.6.20`.
    pub fn cmp_numeric(&self, other: &Self) -> Ordering {
        let len = self.components.len().max(other.components.len());
        (0..len)
            .map(|i| {
                let a = self.components.get(i).copied().unwrap_or(0);
                let b = other.components.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|ordering| ordering.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// A version built from known components, for minimums written in code.
    pub fn from_components(components: &[u64]) -> Self {
        Self {
            components: components.to_vec(),
            suffix: String::new(),
        }
    }
}

/// Prints the normalised numeric form, as Kubernetes' `String()` does for
/// generic versions: `1.6.20~ds1` prints as `1.6.20`.
impl fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, component) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{component}")?;
        }
        Ok(())
    }
}

/// Length of the leading `digits(.digits)*` run: it stops at the first
/// character that is not a digit or a dot followed by a digit, exactly where
/// upstream's greedy `[0-9]+(?:\.[0-9]+)*` stops.
fn numeric_run_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut end = 0;
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return end;
        }
        end = i;
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            i += 1;
        } else {
            return end;
        }
    }
}

fn semver_suffix(suffix: &str) -> bool {
    if suffix.is_empty() {
        return true;
    }
    let (pre, build) = match suffix.split_once('+') {
        Some((pre, build)) => (pre, Some(build)),
        None => (suffix, None),
    };
    let pre_ok = match pre.strip_prefix('-') {
        Some(pre) => !pre.is_empty() && semver::Prerelease::new(pre).is_ok(),
        None => pre.is_empty(),
    };
    let build_ok = build.is_none_or(|b| !b.is_empty() && semver::BuildMetadata::new(b).is_ok());
    pre_ok && build_ok
}

#[cfg(test)]
mod tests;

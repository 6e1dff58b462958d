//! The parser and policy against every row of both fixture files, plus the
//! hostile inputs a runtime or an operator could hand us.

use std::fmt::Write as _;

use super::*;
use crate::fixtures::{KubernetesVector, RuntimeRow};

/// The verdict a fixture row expects under the containerd policy; `None` for
/// rows of other runtimes, which the fixture marks `-`.
fn containerd_verdict(row: &RuntimeRow) -> Option<VerdictKind> {
    match row.verdict.as_str() {
        "supported" => Some(VerdictKind::Supported),
        "too_old" => Some(VerdictKind::TooOld),
        "unknown" => Some(VerdictKind::Unknown),
        "-" => None,
        other => panic!("runtime-versions.tsv: unknown verdict {other:?}"),
    }
}

/// `ok [1,2,3]` or `rejected`, the notation of the test-vector file.
fn generic_notation(result: &Result<RuntimeVersion, ParseError>) -> String {
    match result {
        Ok(v) => format!(
            "ok [{}]",
            v.components()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Err(_) => "rejected".to_owned(),
    }
}

/// What `ParseSemantic` would say, built from our generic parse plus the
/// display-only SemVer flag. It checks that flag against upstream.
fn semantic_notation(input: &str, result: &Result<RuntimeVersion, ParseError>) -> String {
    let Ok(v) = result else {
        return "rejected".to_owned();
    };
    let trimmed = input.trim_ascii();
    let body = trimmed.strip_prefix('v').unwrap_or(trimmed);
    let numbers = &body[..body.len() - v.suffix().len()];
    let leading_zero = numbers
        .split('.')
        .any(|part| part.len() > 1 && part.starts_with('0'));
    if v.components().len() != 3 || leading_zero || !v.suffix_is_semver() {
        return "rejected".to_owned();
    }
    let mut out = generic_notation(result);
    let (pre, build) = match v.suffix().split_once('+') {
        Some((pre, build)) => (pre, build),
        None => (v.suffix(), ""),
    };
    if let Some(pre) = pre.strip_prefix('-') {
        write!(out, " pre={pre}").unwrap();
    }
    if !build.is_empty() {
        write!(out, " build={build}").unwrap();
    }
    out
}

#[test]
fn agrees_with_every_kubernetes_parse_generic_vector() {
    let vectors = KubernetesVector::load();
    assert!(vectors.len() > 100, "fixture looks truncated");
    let disagreements: Vec<String> = vectors
        .iter()
        .filter_map(|row| {
            let ours = generic_notation(&RuntimeVersion::parse(&row.input));
            (ours != row.parse_generic).then(|| {
                format!(
                    "{} {:?}: upstream {}, ours {ours}",
                    row.test, row.input, row.parse_generic
                )
            })
        })
        .collect();
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn semver_flag_agrees_with_kubernetes_parse_semantic() {
    let disagreements: Vec<String> = KubernetesVector::load()
        .iter()
        .filter_map(|row| {
            let ours = semantic_notation(&row.input, &RuntimeVersion::parse(&row.input));
            (ours != row.parse_semantic).then(|| {
                format!(
                    "{:?}: upstream {}, ours {ours}",
                    row.input, row.parse_semantic
                )
            })
        })
        .collect();
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn agrees_with_every_runtime_version_row() {
    let rows = RuntimeRow::load();
    assert!(rows.len() > 100, "fixture looks truncated");
    let policy = ContainerdPolicy::new();
    let mut disagreements = Vec::new();
    for row in &rows {
        let parsed = RuntimeVersion::parse(&row.version);
        let components = match &parsed {
            Ok(v) => format!("{:?}", v.components()),
            Err(_) => "error".to_owned(),
        };
        if components != row.components {
            disagreements.push(format!(
                "{:?}: fixture {}, ours {components}",
                row.version, row.components
            ));
        }
        if let Some(expected) = containerd_verdict(row) {
            let verdict = policy.evaluate(&row.version).kind;
            if verdict != expected {
                disagreements.push(format!(
                    "{:?}: fixture verdict {expected:?}, ours {verdict:?}",
                    row.version
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn kubernetes_vectors_snapshot() {
    let mut table = String::new();
    for row in KubernetesVector::load() {
        let parsed = RuntimeVersion::parse(&row.input);
        let suffix = parsed.as_ref().map(|v| v.suffix().to_owned());
        writeln!(
            table,
            "{:<24} {:<34} {:<20} {}",
            row.test,
            format!("{:?}", row.input),
            generic_notation(&parsed),
            match suffix {
                Ok(s) => format!("suffix={s:?}"),
                Err(e) => format!("error: {e}"),
            }
        )
        .unwrap();
    }
    insta::assert_snapshot!(table);
}

#[test]
fn runtime_versions_snapshot() {
    let policy = ContainerdPolicy::new();
    let mut table = String::new();
    for row in RuntimeRow::load() {
        let verdict = policy.evaluate(&row.version);
        let (normalised, suffix, semver) = match &verdict.parsed {
            Ok(v) => (
                v.to_string(),
                format!("{:?}", v.suffix()),
                v.suffix_is_semver().to_string(),
            ),
            Err(_) => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let verdict = if row.runtime == "containerd" {
            format!("{:?}", verdict.kind)
        } else {
            "-".to_owned()
        };
        writeln!(
            table,
            "{:<11} {:<42} {:<10} {:<22} semver={:<5} {}",
            row.runtime,
            format!("{:?}", row.version),
            normalised,
            suffix,
            semver,
            verdict
        )
        .unwrap();
    }
    insta::assert_snapshot!(table);
}

#[test]
fn messages_snapshot() {
    let policy = ContainerdPolicy::new();
    let messages: Vec<String> = ["1.4.13~ds1", "1.6.20~ds1", "Unknown", ""]
        .iter()
        .map(|input| {
            let v = policy.evaluate(input);
            format!("{input:?} -> {:?}\n{}\n", v.kind, v.message)
        })
        .collect();
    insta::assert_snapshot!(messages.join("\n"));
}

#[test]
fn debian_suffixes_do_not_affect_comparison() {
    let debian = RuntimeVersion::parse("1.6.20~ds1").unwrap();
    let plain = RuntimeVersion::parse("1.6.20").unwrap();
    assert_eq!(debian.cmp_numeric(&plain), Ordering::Equal);
    assert_eq!(debian.suffix(), "~ds1");
    assert!(!debian.suffix_is_semver());
    assert_eq!(debian.to_string(), "1.6.20");
}

#[test]
fn missing_components_count_as_zero() {
    let short = RuntimeVersion::parse("1.5").unwrap();
    let long = RuntimeVersion::parse("1.5.0.0").unwrap();
    assert_eq!(short.cmp_numeric(&long), Ordering::Equal);
    let newer = RuntimeVersion::parse("1.5.0.1").unwrap();
    assert_eq!(short.cmp_numeric(&newer), Ordering::Less);
    assert_eq!(
        RuntimeVersion::parse("1.10")
            .unwrap()
            .cmp_numeric(&RuntimeVersion::parse("1.9.9").unwrap()),
        Ordering::Greater
    );
}

#[test]
fn hostile_inputs_get_a_verdict_not_a_panic() {
    let policy = ContainerdPolicy::new();
    let digits = "1".repeat(10 * 1024);
    let cases: Vec<(String, VerdictKind)> = vec![
        (String::new(), VerdictKind::Unknown),
        (digits.clone(), VerdictKind::Unknown),
        (format!("1.{digits}"), VerdictKind::Unknown),
        (format!("1.6.{digits}"), VerdictKind::Unknown),
        (
            "1.6.20\u{0}\u{7}\u{1b}[31m".to_owned(),
            VerdictKind::Supported,
        ),
        ("\u{0}1.6.20".to_owned(), VerdictKind::Unknown),
        ("1.6.20\nfoo".to_owned(), VerdictKind::Unknown),
        ("1.4.1\u{FFFD}".to_owned(), VerdictKind::TooOld),
        ("١.٢.٣".to_owned(), VerdictKind::Unknown),
        ("v".to_owned(), VerdictKind::Unknown),
        ("18446744073709551615.0".to_owned(), VerdictKind::Supported),
        ("18446744073709551616.0".to_owned(), VerdictKind::Unknown),
    ];
    for (input, expected) in cases {
        let verdict = policy.evaluate(&input);
        assert_eq!(verdict.kind, expected, "input {input:?}");
        assert!(
            verdict.message.len() < 2048,
            "message for a {}-byte input is {} bytes: quote less",
            input.len(),
            verdict.message.len()
        );
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_string_gets_a_verdict(input in any::<String>()) {
            let _ = ContainerdPolicy::new().evaluate(&input);
        }

        #[test]
        fn display_round_trips(components in prop::collection::vec(any::<u64>(), 2..8), suffix in "[~+-][a-z0-9.~+-]{0,12}") {
            let text = components.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            let parsed = RuntimeVersion::parse(&format!("v{text}{suffix}")).unwrap();
            prop_assert_eq!(parsed.components(), &components[..]);
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}

//! `reflektor check-version` as a process: the JSON it prints and the exit
//! codes scripts rely on, for ordinary and hostile arguments alike.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Output};

fn check_version(arg: impl Into<OsString>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflektor"))
        .arg("check-version")
        .arg(arg.into())
        .output()
        .expect("the reflektor binary runs")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn debian_versions_are_judged_by_their_numbers() {
    let rows: Vec<serde_json::Value> = [
        "1.4.13~ds1",
        "1.6.20~ds1",
        "1.7.24~ds1",
        "2.1.9+unknown",
        "Unknown",
    ]
    .into_iter()
    .map(|version| {
        let output = check_version(version);
        let mut report = json(&output);
        report["exit_code"] = output.status.code().into();
        report
    })
    .collect();
    insta::assert_json_snapshot!(rows);
}

#[test]
fn every_key_is_present_even_when_nothing_parses() {
    let output = check_version("");
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    let keys = [
        "input",
        "components",
        "version",
        "suffix",
        "verdict",
        "minimum",
        "message",
    ];
    for key in keys {
        assert!(report.get(key).is_some(), "{key} missing from {report}");
    }
    assert_eq!(report["verdict"], "unknown");
    assert!(report["components"].is_null());
}

#[test]
fn hostile_arguments_get_a_verdict_not_a_crash() {
    let digits = "7".repeat(10 * 1024);
    let cases: Vec<(OsString, &str)> = vec![
        (digits.clone().into(), "unknown"),
        (format!("1.{digits}").into(), "unknown"),
        ("1.6.20\u{1}\u{7f}\u{1b}[2J".into(), "supported"),
        ("\t\r\n 1.4.1 \n".into(), "too_old"),
        (OsString::from_vec(b"1.6.20\xff\xfe".to_vec()), "supported"),
        (OsString::from_vec(b"\xff1.6.20".to_vec()), "unknown"),
        ("-1.6.20".into(), "unknown"),
    ];
    for (arg, verdict) in cases {
        let output = check_version(arg.clone());
        let shown: String = arg.to_string_lossy().chars().take(40).collect();
        let code = output.status.code();
        assert!(
            code.is_some(),
            "{shown:?} killed the process: {:?}",
            output.status
        );
        let report = json(&output);
        assert_eq!(
            report["verdict"], verdict,
            "{shown:?}: {}",
            report["message"]
        );
        let expected_code = if verdict == "too_old" { 1 } else { 0 };
        assert_eq!(code, Some(expected_code), "{shown:?}");
        // `input` echoes the argument; the message must not repeat it whole.
        let message = report["message"].as_str().unwrap();
        assert!(
            message.len() < 2048,
            "{shown:?}: a {}-byte message",
            message.len()
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["1.6.20", "extra"],
        vec!["--runtime", "podman", "1.6.20"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_reflektor"))
            .arg("check-version")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn non_utf8_input_is_said_so() {
    let output = check_version(OsString::from_vec(b"1.6.20\xff".to_vec()));
    let report = json(&output);
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8"),
        "{report}"
    );
}

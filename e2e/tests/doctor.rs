//! `reflektor doctor` and `reflektor check-version`, the real binary, against
//! every Debian containerd build running as a real node: the verdicts that
//! started this project, and the misconfigurations doctor must catch, on a 1.x
//! build (read over CRI) and on the 2.x build (read from the config file).

use std::path::PathBuf;

use anyhow::Result;
use reflektor::doctor::{Check, Status};
use reflektor::version::VerdictKind;
use reflektor_e2e::agent::{DoctorRun, Reflektor};
use reflektor_e2e::debian::Suite;
use reflektor_e2e::node::{ContainerdNode, NodeConfig, RegistryConfigPath};
use reflektor_e2e::support;

/// Starts a node of `suite` with `config`, runs doctor and check-version
/// against it, and stops it.
async fn examine(suite: Suite, config: NodeConfig) -> Result<(String, DoctorRun, VerdictKind)> {
    let build = support::build(suite).await?;
    let node = ContainerdNode::start(&build, config).await?;
    let reflektor = Reflektor::locate()?;
    let registry_config_path = where_reflektor_writes(&node);
    let doctor = reflektor.doctor(&node, &registry_config_path)?;
    let reported = build.reported_version()?;
    let check_version = reflektor.check_version(&reported)?;
    node.stop().await?;
    let verdict: VerdictKind = serde_json::from_value(check_version.output["verdict"].clone())?;
    let expected_exit = if verdict == VerdictKind::TooOld { 1 } else { 0 };
    assert_eq!(
        check_version.exit_code, expected_exit,
        "{:#}",
        check_version.output
    );
    Ok((reported, doctor, verdict))
}

fn where_reflektor_writes(node: &ContainerdNode) -> PathBuf {
    node.registry_config_path()
        .map(PathBuf::from)
        .unwrap_or_else(|| node.dir().join("certs.d"))
}

fn check<'a>(run: &'a DoctorRun, name: &str) -> &'a Check {
    run.report
        .check(name)
        .unwrap_or_else(|| panic!("doctor has no {name:?} check: {:#?}", run.report))
}

#[tokio::test]
async fn bullseye_containerd_1_4_is_refused_with_the_reason_and_the_fix() -> Result<()> {
    if !support::root_or_skip("bullseye refusal") {
        return Ok(());
    }
    let (reported, run, verdict) =
        examine(Suite::Bullseye, NodeConfig::new("doctor-bullseye")).await?;
    assert_eq!(verdict, VerdictKind::TooOld);
    assert_eq!(run.exit_code, 1, "{:#?}", run.report);
    assert_eq!(run.report.verdict, Some(VerdictKind::TooOld));
    assert_eq!(
        run.report.containerd_version.as_deref(),
        Some(reported.as_str())
    );
    let version = check(&run, "containerd version");
    assert_eq!(version.status, Status::Fail);
    let parsed = reported.split('~').next().unwrap();
    for needle in [
        reported.as_str(),
        parsed,
        "1.5.0",
        "hosts.toml",
        "config_path",
    ] {
        assert!(
            version.detail.contains(needle),
            "{needle:?} missing from {:?}",
            version.detail
        );
    }
    let fix = version.fix.as_deref().unwrap_or_default();
    assert!(fix.contains("upgrade containerd"), "{fix:?}");
    // 1.4's CRI plugin has no config_path at all, whatever the file says.
    let config_path = check(&run, "registry config_path");
    assert_eq!(config_path.status, Status::Fail, "{config_path:#?}");
    assert!(
        config_path.source.starts_with("CRI Status"),
        "{config_path:#?}"
    );
    assert!(config_path.detail.contains("1.5.0"), "{config_path:#?}");
    // 1.4 serves only CRI v1alpha2: doctor must have fallen back to it.
    let cri = check(&run, "CRI API");
    assert_eq!(cri.status, Status::Ok, "{cri:?}");
    assert!(cri.detail.contains("v1alpha2"), "{cri:?}");
    Ok(())
}

async fn accepted(suite: Suite, source: &str) -> Result<()> {
    let (reported, run, verdict) =
        examine(suite, NodeConfig::new(format!("doctor-{suite}"))).await?;
    assert_eq!(verdict, VerdictKind::Supported, "{reported}");
    assert_eq!(run.exit_code, 0, "{:#?}", run.report);
    assert_eq!(
        run.report.containerd_version.as_deref(),
        Some(reported.as_str())
    );
    for name in [
        "containerd socket",
        "containerd version",
        "CRI API",
        "registry config_path",
        "discard_unpacked_layers",
    ] {
        let row = check(&run, name);
        assert_eq!(row.status, Status::Ok, "{suite}: {row:#?}");
    }
    assert!(
        check(&run, "CRI API").detail.contains("CRI v1 "),
        "{:?}",
        check(&run, "CRI API")
    );
    for name in ["registry config_path", "discard_unpacked_layers"] {
        let row = check(&run, name);
        assert!(
            row.source.starts_with(source),
            "{suite} {name}: source {:?}, expected {source:?}",
            row.source
        );
    }
    Ok(())
}

#[tokio::test]
async fn bookworm_containerd_1_6_is_accepted() -> Result<()> {
    if !support::root_or_skip("bookworm") {
        return Ok(());
    }
    accepted(Suite::Bookworm, "CRI Status").await
}

#[tokio::test]
async fn trixie_containerd_1_7_is_accepted() -> Result<()> {
    if !support::root_or_skip("trixie") {
        return Ok(());
    }
    accepted(Suite::Trixie, "CRI Status").await
}

/// containerd 2.x no longer reports the registry settings over CRI, so doctor
/// must have read them from the config file.
#[tokio::test]
async fn sid_containerd_2_1_is_accepted() -> Result<()> {
    if !support::root_or_skip("sid") {
        return Ok(());
    }
    accepted(Suite::Sid, "config file").await
}

/// The TOML table a fix hint must name, per config dialect.
fn registry_header(suite: Suite) -> &'static str {
    match suite {
        Suite::Sid => r#"[plugins."io.containerd.cri.v1.images".registry]"#,
        _ => r#"[plugins."io.containerd.grpc.v1.cri".registry]"#,
    }
}

fn discard_header(suite: Suite) -> &'static str {
    match suite {
        Suite::Sid => r#"[plugins."io.containerd.cri.v1.images"]"#,
        _ => r#"[plugins."io.containerd.grpc.v1.cri".containerd]"#,
    }
}

async fn fails_without_config_path(suite: Suite) -> Result<()> {
    let config = NodeConfig {
        registry_config_path: RegistryConfigPath::Unset,
        ..NodeConfig::new(format!("no-config-path-{suite}"))
    };
    let (_, run, _) = examine(suite, config).await?;
    assert_eq!(run.exit_code, 1, "{:#?}", run.report);
    let row = check(&run, "registry config_path");
    assert_eq!(row.status, Status::Fail, "{row:#?}");
    assert!(row.detail.contains("not set"), "{row:#?}");
    let fix = row.fix.as_deref().unwrap_or_default();
    assert!(fix.contains(registry_header(suite)), "{suite}: fix {fix:?}");
    assert!(fix.contains("config_path = \""), "{suite}: fix {fix:?}");
    // The rest of the node is fine, and doctor says so.
    assert_eq!(check(&run, "containerd version").status, Status::Ok);
    assert_eq!(check(&run, "discard_unpacked_layers").status, Status::Ok);
    Ok(())
}

async fn fails_when_discarding_layers(suite: Suite) -> Result<()> {
    let config = NodeConfig {
        discard_unpacked_layers: true,
        ..NodeConfig::new(format!("discard-{suite}"))
    };
    let (_, run, _) = examine(suite, config).await?;
    assert_eq!(run.exit_code, 1, "{:#?}", run.report);
    let row = check(&run, "discard_unpacked_layers");
    assert_eq!(row.status, Status::Fail, "{row:#?}");
    let fix = row.fix.as_deref().unwrap_or_default();
    assert!(fix.contains(discard_header(suite)), "{suite}: fix {fix:?}");
    assert!(
        fix.contains("discard_unpacked_layers = false"),
        "{suite}: fix {fix:?}"
    );
    assert_eq!(check(&run, "registry config_path").status, Status::Ok);
    Ok(())
}

#[tokio::test]
async fn bookworm_without_config_path_fails_doctor_with_the_toml_to_add() -> Result<()> {
    if !support::root_or_skip("bookworm without config_path") {
        return Ok(());
    }
    fails_without_config_path(Suite::Bookworm).await
}

#[tokio::test]
async fn sid_without_config_path_fails_doctor_with_the_toml_to_add() -> Result<()> {
    if !support::root_or_skip("sid without config_path") {
        return Ok(());
    }
    fails_without_config_path(Suite::Sid).await
}

#[tokio::test]
async fn bookworm_discarding_layers_fails_doctor() -> Result<()> {
    if !support::root_or_skip("bookworm discarding layers") {
        return Ok(());
    }
    fails_when_discarding_layers(Suite::Bookworm).await
}

#[tokio::test]
async fn sid_discarding_layers_fails_doctor() -> Result<()> {
    if !support::root_or_skip("sid discarding layers") {
        return Ok(());
    }
    fails_when_discarding_layers(Suite::Sid).await
}

/// A config_path that lists other directories but not reflektor's is as
/// useless as none; the hint offers both ways out.
#[tokio::test]
async fn config_path_without_reflektors_directory_fails_doctor() -> Result<()> {
    if !support::root_or_skip("config_path elsewhere") {
        return Ok(());
    }
    let config = NodeConfig {
        registry_config_path: RegistryConfigPath::Custom("/etc/docker/certs.d".to_owned()),
        ..NodeConfig::new("elsewhere-trixie")
    };
    let build = support::build(Suite::Trixie).await?;
    let node = ContainerdNode::start(&build, config).await?;
    let run = Reflektor::locate()?.doctor(&node, &node.dir().join("certs.d"))?;
    node.stop().await?;
    let row = check(&run, "registry config_path");
    assert_eq!(row.status, Status::Fail, "{row:#?}");
    assert!(row.detail.contains("does not include"), "{row:#?}");
    assert!(
        row.fix
            .as_deref()
            .unwrap_or_default()
            .contains("--containerd-registry-config-path")
    );
    assert_eq!(run.exit_code, 1);
    Ok(())
}

/// With nothing listening, doctor fails cleanly instead of hanging, and
/// still checks the config file it can read.
#[tokio::test]
async fn doctor_without_containerd_fails_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
    )?;
    let output = std::process::Command::new(Reflektor::locate()?.bin())
        .args(["doctor", "--output", "json", "--containerd-sock"])
        .arg(dir.path().join("missing.sock"))
        .arg("--containerd-config")
        .arg(&config)
        .output()?;
    assert_eq!(output.status.code(), Some(1));
    let report: reflektor::doctor::Report = serde_json::from_slice(&output.stdout)?;
    let socket = report.check("containerd socket").expect("socket row");
    assert_eq!(socket.status, Status::Fail);
    assert!(socket.detail.contains("missing.sock"), "{socket:?}");
    let path = report
        .check("registry config_path")
        .expect("config_path row");
    assert_eq!(path.status, Status::Ok, "{path:?}");
    assert!(path.source.contains("config.toml"), "{path:?}");
    Ok(())
}

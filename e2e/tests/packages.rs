//! Every package source, fetched on this host through the one interface the release
//! gate uses: each gives a containerd that reports a version the agent can read, or,
//! where the host cannot reach it, says why. Debian's archive must always be reachable
//! (every other test depends on it); a source that fails for any other reason is a bug.

use anyhow::{Result, bail, ensure};
use reflektor::version::RuntimeVersion;
use reflektor_e2e::packages::{self, FetchError, PackageSource};
use reflektor_e2e::support::root_or_skip;

/// What a fetch came to on this host.
enum Fetched {
    Built,
    Unavailable,
}

fn fetch(source: &dyn PackageSource) -> Result<Fetched> {
    let id = source.id();
    let cache = packages::default_cache_dir()?;
    let build = match source.fetch(&cache) {
        Ok(build) => build,
        Err(FetchError::Unavailable { reason }) => {
            eprintln!(
                "{id} ({}): unavailable on this host: {reason}",
                source.label()
            );
            return Ok(Fetched::Unavailable);
        }
        Err(FetchError::Failed(err)) => bail!(err.context(format!("fetching {id}"))),
    };
    ensure!(build.source == id, "{id} gave a build of {}", build.source);
    ensure!(
        !build.package_version.is_empty(),
        "{id} gave a build without a package version"
    );
    let reported = build.reported_version()?;
    if let Err(err) = RuntimeVersion::parse(&reported) {
        bail!(
            "{id}: containerd {} reports {reported:?}: {err}",
            build.package_version
        );
    }
    // The runc that came with it: what a node's pods run under. Newer suites
    // build it against a newer glibc than this host's, and then it cannot run
    // here; anything else is a broken build.
    let runc_bin = build.runc_bin();
    ensure!(
        runc_bin.is_file(),
        "{id}: no runc in {}",
        build.root.display()
    );
    let runc = std::process::Command::new(&runc_bin)
        .arg("--version")
        .output()?;
    let stdout = String::from_utf8_lossy(&runc.stdout);
    let stderr = String::from_utf8_lossy(&runc.stderr);
    let runc_here = if runc.status.success() && stdout.starts_with("runc version") {
        stdout.lines().next().unwrap_or_default().to_owned()
    } else if stderr.contains("GLIBC_") && stderr.contains("not found") {
        "runc needs a newer glibc than this host's".to_owned()
    } else {
        bail!("{id}: {} --version: {stdout}{stderr}", runc_bin.display());
    };
    eprintln!(
        "{id} ({}): package {}, containerd reports {reported}, {runc_here}",
        source.label(),
        build.package_version
    );
    Ok(Fetched::Built)
}

fn sources(prefix: &str) -> Vec<Box<dyn PackageSource>> {
    let sources: Vec<_> = packages::all_sources()
        .into_iter()
        .filter(|source| source.id().starts_with(prefix))
        .collect();
    assert!(!sources.is_empty(), "no source ids start with {prefix}");
    sources
}

#[test]
fn debian_sources_fetch_and_report_a_version() -> Result<()> {
    if !root_or_skip("debian_sources_fetch_and_report_a_version") {
        return Ok(());
    }
    for source in sources("debian:") {
        if let Fetched::Unavailable = fetch(source.as_ref())? {
            bail!(
                "{} is unavailable, but Debian's archive must be reachable for the tests",
                source.id()
            );
        }
    }
    Ok(())
}

#[test]
fn ubuntu_sources_fetch_or_are_unavailable() -> Result<()> {
    if !root_or_skip("ubuntu_sources_fetch_or_are_unavailable") {
        return Ok(());
    }
    for source in sources("ubuntu:") {
        fetch(source.as_ref())?;
    }
    Ok(())
}

#[test]
fn docker_rpm_fetches_or_is_unavailable() -> Result<()> {
    if !root_or_skip("docker_rpm_fetches_or_is_unavailable") {
        return Ok(());
    }
    for source in sources("docker-rpm:") {
        fetch(source.as_ref())?;
    }
    Ok(())
}

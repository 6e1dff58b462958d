//! Shared pieces of the integration tests: the cached build of a suite, the
//! root check and polling, so that each test file says only what it tests.

use anyhow::Result;

use crate::debian::Suite;
use crate::node;
use crate::packages::{ContainerdBuild, PackageSource, default_cache_dir};

/// The suite's containerd from the shared cache, fetched on first use.
pub async fn build(suite: Suite) -> Result<ContainerdBuild> {
    tokio::task::spawn_blocking(move || Ok(suite.fetch(&default_cache_dir()?)?)).await?
}

/// Whether a test that starts containerd may run. Without root it fails
/// loudly, unless `REFLEKTOR_E2E_ALLOW_SKIP=1` says skipping is fine, so a
/// green run never hides tests that did not run.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("REFLEKTOR_E2E_ALLOW_SKIP").as_deref() == Ok("1"),
        "{test} runs containerd and needs root; run as root, or set \
         REFLEKTOR_E2E_ALLOW_SKIP=1 to skip"
    );
    eprintln!("SKIPPED {test}: not root and REFLEKTOR_E2E_ALLOW_SKIP=1");
    false
}

/// The value at a dotted path of tables, e.g. `["plugins", cri, "registry",
/// "config_path"]`, in a parsed containerd config.
pub fn toml_value<'a>(config: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, tables) = path.split_last()?;
    let mut table = config;
    for key in tables {
        table = table.get(*key)?.as_table()?;
    }
    table.get(*last)
}

/// Polls `check` until it holds, failing after the harness's
/// patience (`REFLEKTOR_E2E_PATIENCE_SECS`, 30 s by default): for what a
/// cluster does in the background, such as advertising what a node pulled.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    reflektor::testing::eventually(what, node::patience()?, check).await
}

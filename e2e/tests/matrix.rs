//! The matrix's version and verdict columns for every Debian build the
//! cluster files name, as a snapshot: a new containerd upload, or a change in
//! how the agent judges one, shows up in review as a diff of this file.
//!
//! Debian only: it is the archive every host running the gate can reach, so
//! the snapshot does not depend on the host. When sid or a point release
//! moves, review the new row with `cargo insta review`.

use std::collections::BTreeSet;

use anyhow::Result;
use reflektor_e2e::agent::Reflektor;
use reflektor_e2e::cluster::{self, ClusterSpec};
use reflektor_e2e::matrix::verdict_name;
use reflektor_e2e::node::{ContainerdNode, NodeConfig};
use reflektor_e2e::packages;
use reflektor_e2e::support;

#[tokio::test]
async fn version_and_verdict_columns_of_the_debian_builds() -> Result<()> {
    if !support::root_or_skip("matrix version and verdict columns") {
        return Ok(());
    }
    let reflektor = Reflektor::locate()?;
    let sources: BTreeSet<String> = ClusterSpec::load_dir(&cluster::default_cluster_dir())?
        .iter()
        .flat_map(|spec| spec.nodes.iter().map(|n| n.source.clone()))
        .filter(|source| source.starts_with("debian:"))
        .collect();
    let cache = packages::default_cache_dir()?;
    let mut table = String::from("source | containerd reports | verdict\n");
    for source in sources {
        let package = packages::parse_source(&source)?;
        let cache = cache.clone();
        let build = tokio::task::spawn_blocking(move || package.fetch(&cache)).await??;
        let name = format!("columns-{}", source.replace(':', "-"));
        let node = ContainerdNode::start(&build, NodeConfig::new(name)).await?;
        // The same call the matrix makes for its verdict column.
        let doctor = reflektor.doctor(&node, node.certs_dir());
        node.stop().await?;
        let verdict = doctor?.report.verdict.map_or("-".to_owned(), verdict_name);
        table.push_str(&format!(
            "{source} | {} | {verdict}\n",
            build.reported_version()?
        ));
    }
    insta::assert_snapshot!(table);
    Ok(())
}

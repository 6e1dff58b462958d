//! `just demo`: what a newcomer runs first. Three nodes on three Debian
//! containerd builds and one upstream; one node pulls from the upstream,
//! the upstream goes offline, and the other two pull through their peers.
//! The table says where each image's bytes came from.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::agent::Reflektor;
use crate::cluster::{
    self, ADVERTISED_DIGESTS, Builds, ClusterSpec, ImageKind, LOCAL_BYTES, Member,
};
use crate::image::Platform;
use crate::matrix::{progress, verdict_name};
use crate::scenario::{self, Catalogue};
use crate::upstream::{PushedImage, Upstream};

const MIB: f64 = 1024.0 * 1024.0;

pub fn spec() -> ClusterSpec {
    ClusterSpec::new("demo")
        .describe("bookworm, trixie and sid nodes sharing one upstream")
        .node("bookworm", "debian:bookworm")
        .node("trixie", "debian:trixie")
        .node("sid", "debian:sid")
        .images([ImageKind::Small, ImageKind::Large])
}

pub async fn run(reflektor: &Reflektor) -> Result<()> {
    let spec = spec();
    spec.validate()?;
    let cache = crate::packages::default_cache_dir()?;
    let builds = match cluster::fetch_builds(&spec, &cache).await? {
        Builds::Ready(builds) => builds,
        Builds::Unavailable { source, reason } => {
            bail!("the demo needs {source}, which is unavailable on this host: {reason}")
        }
    };
    progress(
        "demo",
        "building a small image and one with a 256 MiB layer",
    );
    let catalogue = tokio::task::spawn_blocking(|| Catalogue::build(true, false)).await??;
    let large = catalogue
        .large
        .as_ref()
        .context("the catalogue has the large image")?;
    let mut upstream = Upstream::start().await?;
    let images = [
        upstream
            .push(&catalogue.layout, &catalogue.app, "demo/app")
            .await?,
        upstream
            .push(&catalogue.layout, large, "demo/large")
            .await?,
    ];
    progress("demo", &format!("upstream registry at {}", upstream.url()));

    let data = tempfile::Builder::new()
        .prefix("reflektor-demo-")
        .tempdir_in(crate::node::work_parent())?;
    let mut members = cluster::members(&spec, builds)?;
    let mut lines = Vec::new();
    for member in &mut members {
        let config = member.node_config("demo");
        member.start_node(config).await?;
        upstream.configure_node(member.node()?)?;
        let node = member.node()?;
        let verdict = reflektor.doctor(node, node.certs_dir())?.report.verdict;
        lines.push((
            member.build.reported_version()?,
            verdict.map_or_else(|| "-".to_owned(), verdict_name),
        ));
        progress(
            "demo",
            &format!(
                "{}: containerd {} ({}) started",
                member.spec.name,
                lines.last().unwrap().0,
                lines.last().unwrap().1
            ),
        );
    }
    let roles: Vec<usize> = (0..members.len()).collect();
    cluster::start_agents(&mut members, &roles, reflektor, data.path()).await?;
    for member in &members {
        reflektor.configure_mirror(member.node()?, member.agent()?.addr(), upstream.addr())?;
    }
    progress(
        "demo",
        "agents up, peered, and named in each node's hosts.toml",
    );

    let host = Platform::host()?;
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "node",
            "containerd",
            "verdict",
            "image",
            "bytes from",
            "size",
            "time",
        ]);
    for image in &images {
        let row = pull(&members, 0, image, &host, false).await?;
        table.add_row(row.cells(&members[0], &lines[0]));
        progress("demo", &row.line(&members[0]));
    }
    // Only then is the image findable: the seed advertises what it pulled.
    let held: u64 = images
        .iter()
        .map(|image| scenario::digests_held(&image.image, &host))
        .sum::<Result<u64>>()?;
    let seed = members[0].agent()?;
    crate::support::eventually("the seed advertising its images", || async {
        Ok(seed.metric(&ADVERTISED_DIGESTS).await? >= held as f64)
    })
    .await?;
    upstream.stop().await?;
    progress(
        "demo",
        "upstream registry stopped: from now on, only peers can serve",
    );
    for i in 1..members.len() {
        for image in &images {
            let row = pull(&members, i, image, &host, true).await?;
            table.add_row(row.cells(&members[i], &lines[i]));
            progress("demo", &row.line(&members[i]));
        }
    }
    println!("{table}");
    for member in &mut members {
        member.stop().await?;
    }
    progress(
        "demo",
        "stopped every node, agent and the upstream; nothing is left running",
    );
    Ok(())
}

struct PullRow {
    image: String,
    from: String,
    size: u64,
    seconds: f64,
}

impl PullRow {
    fn cells(&self, member: &Member, judged: &(String, String)) -> Vec<String> {
        vec![
            member.spec.name.clone(),
            judged.0.clone(),
            judged.1.clone(),
            self.image.clone(),
            self.from.clone(),
            format!("{:.1} MiB", self.size as f64 / MIB),
            format!("{:.2} s", self.seconds),
        ]
    }

    fn line(&self, member: &Member) -> String {
        format!(
            "{} pulled {} ({:.1} MiB) in {:.2} s from {}",
            member.spec.name,
            self.image,
            self.size as f64 / MIB,
            self.seconds,
            self.from
        )
    }
}

/// Pulls `image` on node `i` and names where its layers came from: the
/// peers whose agents served them, or the upstream.
async fn pull(
    members: &[Member],
    i: usize,
    image: &PushedImage,
    host: &Platform,
    through_peers: bool,
) -> Result<PullRow> {
    let size = scenario::layer_bytes(&image.image, host)?;
    let mut before = Vec::new();
    for member in members {
        before.push(member.agent()?.metric(&LOCAL_BYTES).await?);
    }
    let started = Instant::now();
    let pulled = members[i]
        .pull(&image.by_tag, if through_peers { size } else { 0 })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    // A serving agent counts a body once it has written all of it, a moment
    // after the puller has read it: look for a little while.
    let mut servers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pulled.from_peers > 0 && Instant::now() < deadline {
        servers.clear();
        let mut served = 0.0;
        for (k, member) in members.iter().enumerate() {
            let delta = member.agent()?.metric(&LOCAL_BYTES).await? - before[k];
            if k != i && delta > 0.0 {
                servers.push(member.spec.name.clone());
                served += delta;
            }
        }
        if served >= pulled.from_peers as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from = match (pulled.from_peers, servers.is_empty()) {
        (0, _) => "upstream".to_owned(),
        (_, false) => format!("peer {}", servers.join(" + ")),
        (_, true) => "peers".to_owned(),
    };
    Ok(PullRow {
        image: image
            .by_tag
            .rsplit('/')
            .next()
            .unwrap_or(&image.by_tag)
            .to_owned(),
        from,
        size,
        seconds,
    })
}

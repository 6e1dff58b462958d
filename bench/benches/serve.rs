//! Blob serving through the agent's real HTTP server, as a separate
//! process (the release build `just bench` makes): whole and ranged GETs
//! at 1 MiB, 64 MiB and 1 GiB from an agent's own OCI layout, and the same
//! blobs proxied through a second agent (the peer path).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hyper::Method;
use reflektor_bench::client;
use reflektor_e2e::agent::{Backend, LoopbackPeers, Reflektor};
use reflektor_e2e::image::{LayerSpec, OciLayout, Platform};

const MIB: u64 = 1024 * 1024;
const SIZES: [(&str, u64); 3] = [("1MiB", MIB), ("64MiB", 64 * MIB), ("1GiB", 1024 * MIB)];

fn serve(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let layout_dir = tempfile::tempdir().expect("a temp dir");
    let empty_dir = tempfile::tempdir().expect("a temp dir");
    let host = Platform::host().expect("the host platform");
    let mut layout = OciLayout::create(layout_dir.path(), 7).expect("a layout");
    let blobs: Vec<(&str, u64, String)> = SIZES
        .iter()
        .map(|(name, size)| {
            let image = layout
                .add_image(
                    &format!("blob-{name}"),
                    &host,
                    &[LayerSpec::uncompressed(*size)],
                )
                .expect("an image");
            (
                *name,
                *size,
                image.platforms[0].layers[0].blob.digest.clone(),
            )
        })
        .collect();
    reflektor_bench::layout::name_images(layout.dir()).expect("named images");
    OciLayout::create(empty_dir.path(), 7).expect("an empty layout");

    let reflektor = Reflektor::locate()
        .expect("the agent binary; run `just bench`")
        .with_log_level("info");
    let peers = LoopbackPeers::new(&reflektor, 4, 2, 2).expect("router ports");
    let (holder, proxy) = rt.block_on(async {
        let mut holder = peers
            .start(0, Backend::OciLayout(layout.dir()))
            .await
            .expect("the holding agent");
        let mut proxy = peers
            .start(1, Backend::OciLayout(empty_dir.path()))
            .await
            .expect("the proxying agent");
        holder.wait_until_ready().await.expect("holder ready");
        proxy.wait_until_ready().await.expect("proxy ready");
        reflektor_bench::announced::wait_announced(
            &holder,
            3 * SIZES.len(),
            std::time::Duration::from_secs(120),
        )
        .await
        .expect("announced");
        (holder, proxy)
    });

    for (group_name, agent) in [("serve/local", &holder), ("serve/peer", &proxy)] {
        let mut group = c.benchmark_group(group_name);
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(10));
        for (name, size, digest) in &blobs {
            let path = format!("/v2/bench/blobs/{digest}?ns=bench.example");
            group.throughput(Throughput::Bytes(*size));
            group.bench_function(BenchmarkId::new("whole", name), |b| {
                b.iter(|| {
                    rt.block_on(client::fetch(agent.addr(), Method::GET, &path, None))
                        .expect("a whole blob")
                })
            });
            // The middle half: a resumed pull's shape.
            let range = format!("bytes={}-{}", size / 4, size / 4 * 3 - 1);
            group.throughput(Throughput::Bytes(size / 2));
            group.bench_function(BenchmarkId::new("ranged", name), |b| {
                b.iter(|| {
                    rt.block_on(client::fetch(
                        agent.addr(),
                        Method::GET,
                        &path,
                        Some(&range),
                    ))
                    .expect("a ranged blob")
                })
            });
        }
        group.finish();
    }
    drop((holder, proxy));
}

criterion_group!(benches, serve);
criterion_main!(benches);

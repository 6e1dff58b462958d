//! Mirror resolve latency: a HEAD for a blob that only one agent holds,
//! asked of another, which must find the holder through the DHT and ask it,
//! with 3, 10 and 50 agents on loopback (release builds, from `just bench`).

use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hyper::Method;
use reflektor_bench::layout;
use reflektor_e2e::agent::{Backend, LoopbackPeers, Reflektor};

/// Every agent bootstraps from these first ones.
const SEEDS: usize = 3;
const KEYS: usize = 200;

fn resolve(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let reflektor = Reflektor::locate()
        .expect("the agent binary; run `just bench`")
        .with_log_level("info");
    let holding = tempfile::tempdir().expect("a temp dir");
    let empty = tempfile::tempdir().expect("a temp dir");
    let layers = layout::write_many(holding.path(), KEYS, "resolve").expect("a layout");
    layout::write_many(empty.path(), 0, "empty").expect("an empty layout");
    let mut group = c.benchmark_group("resolve");
    for n in [3usize, 10, 50] {
        let peers = LoopbackPeers::new(&reflektor, 5, n, SEEDS).expect("router ports");
        let agents = rt.block_on(async {
            let mut agents = Vec::new();
            for i in 0..n {
                let dir = if i == 0 { holding.path() } else { empty.path() };
                agents.push(
                    peers
                        .start(i, Backend::OciLayout(dir))
                        .await
                        .expect("an agent"),
                );
            }
            for agent in &mut agents {
                agent.wait_until_ready().await.expect("ready");
            }
            let holder = &agents[0];
            reflektor_bench::announced::wait_announced(
                holder,
                KEYS * layout::DIGESTS_PER_IMAGE,
                std::time::Duration::from_secs(120),
            )
            .await
            .expect("announced");
            agents
        });
        let next = AtomicUsize::new(0);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let via = &agents[1 + i % (n - 1)];
                let path = format!("/v2/bench/blobs/{}?ns=bench.example", layers[i % KEYS]);
                // A 404 is a lookup past the 20 ms resolve timeout: part of
                // the distribution, as containerd sees it.
                rt.block_on(reflektor_e2e::http::request(
                    via.addr(),
                    Method::HEAD,
                    &path,
                    &[],
                ))
                .expect("an answered HEAD")
            })
        });
        drop(agents);
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);

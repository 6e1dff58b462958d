//! What checking a peer's body against its digest costs: the mirror hashes
//! every whole body it relays from a peer, in the frames hyper hands it.
//! The figure per GiB is the CPU the check adds to the peer path, which the
//! README weighs against the path's own cost.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reflektor::oci::Digest;
use std::hint::black_box;

/// hyper's frames off a socket are at most a read buffer's worth.
const FRAME: usize = 16 * 1024;
const BODY: usize = 64 * 1024 * 1024;

fn verify(c: &mut Criterion) {
    let body: Vec<u8> = (0..BODY).map(|i| (i as u8).wrapping_mul(31)).collect();
    let digest = Digest::sha256_of(&body);
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(BODY as u64));
    group.sample_size(20);
    group.bench_function("sha256_64mib_in_16kib_frames", |b| {
        b.iter(|| {
            let mut verifier = digest.verifier();
            for frame in body.chunks(FRAME) {
                verifier.update(black_box(frame));
            }
            assert!(verifier.mismatch().is_none());
        })
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);

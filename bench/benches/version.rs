//! Version parsing and policy over the whole fixture corpus: the agent does
//! this once per start-up, so it only needs to stay cheap, but a regression to
//! something quadratic on hostile input would show here first.

use criterion::{Criterion, criterion_group, criterion_main};
use reflektor::fixtures::{KubernetesVector, RuntimeRow};
use reflektor::version::{ContainerdPolicy, RuntimeVersion};
use std::hint::black_box;

fn corpus() -> Vec<String> {
    let mut inputs: Vec<String> = RuntimeRow::load().into_iter().map(|r| r.version).collect();
    inputs.extend(KubernetesVector::load().into_iter().map(|v| v.input));
    inputs
}

fn parse(c: &mut Criterion) {
    let inputs = corpus();
    let policy = ContainerdPolicy::new();
    let mut group = c.benchmark_group("version");
    group.throughput(criterion::Throughput::Elements(inputs.len() as u64));
    group.bench_function("parse_corpus", |b| {
        b.iter(|| {
            for input in &inputs {
                let _ = black_box(RuntimeVersion::parse(black_box(input)));
            }
        })
    });
    group.bench_function("evaluate_corpus", |b| {
        b.iter(|| {
            for input in &inputs {
                black_box(policy.evaluate(black_box(input)));
            }
        })
    });
    let hostile = "1".repeat(10 * 1024);
    group.bench_function("evaluate_10k_digits", |b| {
        b.iter(|| black_box(policy.evaluate(black_box(&hostile))))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);

# reflektor: `./dev demo` first; `./dev test` is the fast check; `./dev e2e` is the release gate.
# `./dev <recipe>` installs what a new machine lacks (just included) and runs the recipe here.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Format, lint, unit and snapshot tests, then the integration tests against real containerd builds (needs root).
test: lint build
    cargo test --workspace

# The release gate: every cluster in fixtures/clusters, as a report in target/e2e (needs root).
# Pass flags through, e.g. `just e2e --only mixed --filter node-loss`, or `--deploy pod`
# to run the agent as the DaemonSet's pod through each node's CRI (after `just image`).
e2e *args: build
    cargo build -q -p reflektor-e2e --bins
    cargo run -q -p reflektor-e2e -- matrix {{args}}

# The release gate with the agent as users install it: its image, the DaemonSet's pod.
e2e-pod *args: image
    just e2e --deploy pod {{args}}

# The acceptance suite against a real cluster: KUBECONFIG's, or `--kubeconfig FILE`, with
# `--image` as its nodes can pull it. Exits 3 when no cluster is reachable.
e2e-kube *args: build
    cargo run -q -p reflektor-e2e -- kube {{args}}

# A kind cluster with the agent's image loaded, the acceptance suite against it, the cluster
# deleted. Needs docker and kind; exits 3 without them.
e2e-kind *args: image
    bash e2e/kind/run.sh {{args}}

# Three nodes (bookworm, trixie, sid) and an upstream: pulls through peers with the upstream offline.
demo: build
    cargo run -q -p reflektor-e2e -- demo

# What CI runs.
ci: test e2e

# Build the agent binary that the end-to-end tests run.
build:
    cargo build -p reflektor --bin reflektor

lint:
    cargo fmt --all --check
    cargo fmt --manifest-path fuzz/Cargo.toml --check
    cargo clippy --workspace --all-targets -- -D warnings

# Every fuzz target (request target, digest, Range, version, hosts.toml) for SECONDS each under
# libFuzzer on stable Rust; inputs run per target in target/fuzz/summary.md. `fuzz/run --merge`
# adds the new inputs worth keeping to fuzz/corpus/.
fuzz seconds="60" *targets:
    fuzz/run {{seconds}} {{targets}}

# The agent's image, target/image/reflektor.oci.tar, from the release build.
image: build-release
    cargo run -q -p reflektor-e2e -- image

# Regenerate deploy/ (the default manifests) from the generator.
manifests: build
    ./target/debug/reflektor manifests --out-dir deploy

# deploy/ and a k3s install with every option, checked strictly against Kubernetes 1.30's and 1.37's schemas.
validate-manifests: build
    bash .ci/validate-manifests

# The agent's module graph, layer by layer; fails on a cycle or an upward import.
modules:
    cargo test -q -p reflektor --test layers -- --nocapture every_import_points_down

# The agent as users run it: the benchmarks measure this build.
build-release:
    cargo build --release -p reflektor --bin reflektor

# criterion benchmarks: blob serving, the peer path, resolve latency, version parsing, peer-body verification (needs root).
bench *args: build-release
    REFLEKTOR_BIN={{justfile_directory()}}/target/release/reflektor cargo bench -p reflektor-bench {{args}}

# nginx, docker-registry and the agent over the same blob, side by side; writes target/bench/compare.* (needs root).
bench-compare *args: build-release
    bash .ci/deps --bench
    REFLEKTOR_BIN={{justfile_directory()}}/target/release/reflektor cargo run -q --release -p reflektor-bench --bin bench-compare -- --profile {{args}}

# One agent under load: 500 concurrent 64 MiB GETs, 10 000 HEAD/s for 30 s, 300 slowloris
# connections beside a normal client; errors, latencies, peak RSS, fds; writes target/bench/load.* (needs root).
load *args: build-release
    REFLEKTOR_BIN={{justfile_directory()}}/target/release/reflektor cargo run -q --release -p reflektor-bench --bin bench-load -- {{args}}

# 3, 10 and 50 agents on loopback: findability, advertising 10 000 keys, resolve latency, RSS; writes target/bench/scale.*.
bench-scale *args: build-release
    REFLEKTOR_BIN={{justfile_directory()}}/target/release/reflektor cargo run -q --release -p reflektor-bench --bin bench-scale -- {{args}}

# reflektor: `just demo` first; `just test` is the fast check; `just e2e` is the release gate; CI runs `just ci`.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Format, lint, unit and snapshot tests, then the integration tests against real containerd builds (needs root).
test: lint build
    cargo test --workspace

# The release gate: every cluster in fixtures/clusters, as a report in target/e2e (needs root).
# Pass flags through, e.g. `just e2e --only mixed --filter node-loss`.
e2e *args: build
    cargo run -q -p reflektor-e2e -- matrix {{args}}

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
    cargo clippy --workspace --all-targets -- -D warnings

# criterion benchmarks.
bench:
    cargo bench -p reflektor-bench

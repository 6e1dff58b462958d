# reflektor: `just test` is what CI runs; `just e2e` is the release gate.

set shell := ["bash", "-euo", "pipefail", "-c"]

default: test

# Format, lint, unit and snapshot tests, then real containerd builds from Debian (needs root).
test: lint build
    cargo test --workspace

# The release gate: the doctor matrix over every Debian containerd build, as a table.
e2e: build
    cargo run -q -p reflektor-e2e -- matrix

# Build the agent binary that the end-to-end tests run.
build:
    cargo build -p reflektor --bin reflektor

lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# criterion benchmarks.
bench:
    cargo bench -p reflektor-bench

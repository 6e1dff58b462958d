//! Readers for the version fixtures in `fixtures/`, shared by the unit tests,
//! the snapshot tests and the benchmarks so that all of them see the same rows.
//!
//! The files are data with their sources; these readers keep every column the
//! tests need and fail loudly on a malformed row rather than skip it.

use std::path::{Path, PathBuf};

/// The workspace's `fixtures/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// One row of `k8s-version-testvectors.tsv`: an upstream test vector and what
/// each of the three upstream parsers made of it.
#[derive(Debug, Clone)]
pub struct KubernetesVector {
    pub test: String,
    pub input: String,
    pub parse_generic: String,
    pub parse_semantic: String,
}

/// One row of `runtime-versions.tsv`: a version string seen on a real node.
#[derive(Debug, Clone)]
pub struct RuntimeRow {
    pub runtime: String,
    pub version: String,
    /// `[1, 6, 20]` or `error`, as `ParseGeneric` gives it.
    pub components: String,
    /// `supported`, `too_old` or `unknown` under the containerd policy; `-`
    /// for rows of other runtimes.
    pub verdict: String,
}

impl KubernetesVector {
    pub fn load() -> Vec<Self> {
        rows("k8s-version-testvectors.tsv", 5)
            .map(|cells| Self {
                test: cells[0].clone(),
                input: json_string(&cells[1]),
                parse_generic: cells[2].clone(),
                parse_semantic: cells[3].clone(),
            })
            .collect()
    }
}

impl RuntimeRow {
    pub fn load() -> Vec<Self> {
        rows("runtime-versions.tsv", 6)
            .map(|cells| Self {
                runtime: cells[0].clone(),
                version: json_string(&cells[1]),
                components: cells[4].clone(),
                verdict: cells[5].clone(),
            })
            .collect()
    }
}

fn rows(name: &str, columns: usize) -> impl Iterator<Item = Vec<String>> + use<> {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip(1)
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<String> = line.split('\t').map(str::to_owned).collect();
            assert_eq!(
                cells.len(),
                columns,
                "{name} row {}: expected {columns} tab-separated columns",
                i + 2
            );
            cells
        })
        .collect();
    rows.into_iter()
}

fn json_string(cell: &str) -> String {
    serde_json::from_str(cell)
        .unwrap_or_else(|e| panic!("fixture cell {cell:?} is not a JSON string: {e}"))
}

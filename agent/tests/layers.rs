//! The agent's module graph: every module imports only modules in layers
//! below its own, so the graph has no cycle and no upward import, and the
//! parts that `cmd` composes (`runtime`, `state`, `routing`, `registry`)
//! never know their consumers. Read from the `crate::` paths in the source,
//! test code included. `just modules` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. A module may import modules of earlier layers only.
const LAYERS: &[&[&str]] = &[
    // Helpers that know nothing of the agent, and the fixture readers.
    &["errors", "duration", "backoff", "fixtures", "testing"],
    // The vocabulary: versions, the OCI names, and sinks every part writes to.
    &["version", "oci", "metrics", "http_client", "auth"],
    // Talking to containerd.
    &["runtime"],
    // What a node holds, how containerd is pointed at the mirror, and
    // whether containerd can work with it.
    &["store", "mirror_config", "doctor"],
    // The parts `cmd` composes, and the objects that deploy them: none
    // imports another.
    &["state", "routing", "registry", "manifests"],
    // How the router finds its first peers.
    &["bootstrap"],
    // Argument definitions.
    &["cli"],
    // The composition root.
    &["cmd"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module each `crate::` path in `text` names.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}` on one line: each top-level item.
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.insert(head(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                found.insert(head(&item));
            } else {
                found.insert(head(rest));
            }
        }
    }
    found.remove("");
    found
}

fn head(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Module name → the modules it imports, from every file under `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a file name");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let mut used = imports(&text);
            used.remove(&module);
            graph.entry(module).or_default().extend(used);
        }
    }
    // The crate root and the binary declare and run the modules.
    graph.remove("lib");
    graph.remove("main");
    graph
}

#[test]
fn every_import_points_down() {
    let graph = graph();
    let mut wrong = Vec::new();
    let mut shown = String::new();
    for (module, used) in &graph {
        let Some(layer) = layer_of(module) else {
            wrong.push(format!(
                "{module} is in no layer: add it to LAYERS in agent/tests/layers.rs"
            ));
            continue;
        };
        let list: Vec<&str> = used.iter().map(String::as_str).collect();
        shown.push_str(&format!("{layer} {module:<14} -> {}\n", list.join(", ")));
        for target in used {
            match layer_of(target) {
                Some(below) if below < layer => {}
                Some(other) => wrong.push(format!(
                    "{module} (layer {layer}) imports {target} (layer {other}): an import \
                     must point to a lower layer; move the shared item down, or wire the two \
                     together in cmd"
                )),
                None => wrong.push(format!("{module} imports {target}, which is in no layer")),
            }
        }
    }
    println!("layer module         -> imports\n{shown}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_every_form_of_import() {
    let text = "use crate::oci::{Digest, Filter};\n\
                use crate::{metrics::Source, store::{ByteRange, BlobBody}};\n\
                // use crate::commented_out;\n\
                let x = crate::errors::chain(&e);\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["errors", "metrics", "oci", "store"]);
}

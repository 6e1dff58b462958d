//! An existing `hosts.toml`, which the node's owner wrote: reading it never
//! panics, and with --prepend-existing the file reflektor writes from it is
//! one containerd can read, with reflektor's hosts first, in order.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reflektor::mirror_config::{Existing, MirrorConfig, MirrorRequest};

/// Built once: only the existing file varies between inputs.
static CONFIG: LazyLock<MirrorConfig> = LazyLock::new(|| {
    MirrorRequest {
        registries: vec!["https://docker.io".parse().expect("a registry")],
        targets: ["http://127.0.0.1:30020", "http://127.0.0.1:30021"]
            .iter()
            .map(|t| t.parse().expect("a target"))
            .collect(),
        resolve_tags: true,
        prepend_existing: true,
        dial_timeout: "200ms".parse().expect("a timeout"),
        auth: None,
    }
    .validate()
    .expect("a valid request")
});

fuzz_target!(|text: &str| {
    let Ok(existing) = Existing::parse(text) else {
        return;
    };
    let config = &*CONFIG;
    let rendered = config.render(&config.registries()[0], Some((&existing, "fuzz")));
    let reread = Existing::parse(&rendered.text).unwrap_or_else(|e| {
        panic!(
            "reflektor wrote a hosts.toml it can't read ({e}):\n{}",
            rendered.text
        )
    });
    let hosts: Vec<String> = reread.hosts.into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        hosts.len(),
        rendered.targets + rendered.kept_hosts,
        "{}",
        rendered.text
    );
    let ours = ["http://127.0.0.1:30020", "http://127.0.0.1:30021"];
    assert_eq!(hosts[..ours.len()], ours[..], "{}", rendered.text);
});

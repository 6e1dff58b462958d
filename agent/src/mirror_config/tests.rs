//! Golden `hosts.toml` files for typical and odd flags, the backup and
//! cleanup rules on real temporary trees, and every refusal's message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn request(registries: &[&str], targets: &[&str]) -> MirrorRequest {
    MirrorRequest {
        registries: registries.iter().map(|r| r.parse().unwrap()).collect(),
        targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
        resolve_tags: true,
        prepend_existing: false,
        dial_timeout: "200ms".parse().unwrap(),
        auth: None,
    }
}

/// Every entry under a directory: kind, mode and content, by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Link { target: PathBuf },
}

fn capture(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, Entry::Link { target });
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir { mode });
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(rel, Entry::File { mode, bytes });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The tree as text for a snapshot: one line per entry, file contents
/// indented below their name. Entries under `skip` are left out.
fn render_tree(root: &Path, skip: Option<&str>) -> String {
    let mut out = String::new();
    for (rel, entry) in capture(root) {
        if skip.is_some_and(|skip| rel.starts_with(skip)) {
            continue;
        }
        let rel = rel.display();
        match entry {
            Entry::Dir { mode } => writeln!(out, "{rel}/ ({mode:o})").unwrap(),
            Entry::Link { target } => writeln!(out, "{rel} -> {}", target.display()).unwrap(),
            Entry::File { mode, bytes } => {
                writeln!(out, "{rel} ({mode:o})").unwrap();
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        for line in text.lines() {
                            writeln!(out, "  | {line}").unwrap();
                        }
                    }
                    Err(e) => writeln!(out, "  <{} bytes, not UTF-8>", e.as_bytes().len()).unwrap(),
                }
            }
        }
    }
    out
}

/// Writes `files` (relative path, content) under `root`.
fn populate(root: &Path, files: &[(&str, &[u8])]) {
    for (rel, bytes) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

/// Checks a generated `hosts.toml` the way containerd's `parseHostsFile`
/// would read it, and returns its host URLs in containerd's order.
fn containerd_reading(text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(text).expect("hosts.toml is valid TOML");
    if let Some(server) = table.get("server") {
        let server = server.as_str().expect("server is a string");
        assert!(
            server.starts_with("http://") || server.starts_with("https://"),
            "{server}"
        );
    }
    let existing = Existing::parse(text).unwrap();
    for (name, host) in &existing.hosts {
        let host = host.as_table().unwrap();
        if let Some(capabilities) = host.get("capabilities") {
            for capability in capabilities.as_array().expect("capabilities is an array") {
                let capability = capability.as_str().unwrap();
                assert!(["pull", "resolve", "push"].contains(&capability), "{name}");
            }
        }
        if let Some(timeout) = host.get("dial_timeout") {
            timeout
                .as_str()
                .expect("dial_timeout is a string")
                .parse::<DialTimeout>()
                .expect("dial_timeout is a Go duration");
        }
        assert_eq!(host.get("override_path"), None, "{name}");
    }
    existing.hosts.into_iter().map(|(name, _)| name).collect()
}

/// Runs `configure` on a fresh config path and returns it with the report.
fn configured(
    existing: &[(&str, &[u8])],
    request: MirrorRequest,
) -> (tempfile::TempDir, PathBuf, Report) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    populate(&root, existing);
    let config = request.validate().unwrap();
    let report = configure(&root, &config).unwrap();
    (tmp, root, report)
}

/// The live tree (backup excluded) as text, each `hosts.toml` checked.
fn live_tree(root: &Path) -> String {
    for (rel, entry) in capture(root) {
        if rel.ends_with(HOSTS_TOML) && !rel.starts_with(BACKUP_DIR) {
            let Entry::File { bytes, .. } = entry else {
                panic!("{} is not a file", rel.display())
            };
            containerd_reading(std::str::from_utf8(&bytes).unwrap());
        }
    }
    render_tree(root, Some(BACKUP_DIR))
}

// === golden files ===

#[test]
fn docker_hub_and_ghcr_through_two_targets() {
    let (_tmp, root, report) = configured(
        &[],
        request(
            &["https://docker.io", "https://ghcr.io"],
            &["http://127.0.0.1:30020", "http://127.0.0.1:30021"],
        ),
    );
    insta::assert_snapshot!(live_tree(&root));
    assert_eq!(
        containerd_reading(&fs::read_to_string(root.join("docker.io/hosts.toml")).unwrap()),
        ["http://127.0.0.1:30020", "http://127.0.0.1:30021"]
    );
    assert!(matches!(
        report.events[1],
        Event::BackedUp { entries: 0, .. }
    ));
}

#[test]
fn no_registries_mirror_everything_through_default() {
    let (_tmp, root, _) = configured(&[], request(&[], &["http://127.0.0.1:30020"]));
    insta::assert_snapshot!(live_tree(&root));
}

#[test]
fn star_and_default_both_mean_every_registry() {
    for wildcard in ["*", "_default"] {
        let (_tmp, root, _) = configured(
            &[],
            request(
                &["https://docker.io", wildcard],
                &["http://127.0.0.1:30020"],
            ),
        );
        let names: Vec<_> = entries(&root).unwrap();
        let names: Vec<_> = names.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, ["_backup", "_default", "docker.io"], "{wildcard}");
    }
}

#[test]
fn ipv6_ports_plain_http_registries_and_a_nested_path() {
    let (_tmp, root, _) = configured(
        &[],
        request(
            &[
                "http://127.0.0.1:5000",
                "https://[fd00::10]:5443",
                "https://registry.example:8443/",
            ],
            &[
                "http://[::1]:5000",
                "http://node.local:5000/some/path/",
                "https://10.0.0.7:30021",
            ],
        ),
    );
    insta::assert_snapshot!(live_tree(&root));
}

#[test]
fn resolve_tags_off_allows_only_pull() {
    let mut request = request(&["https://docker.io"], &["http://127.0.0.1:30020"]);
    request.resolve_tags = false;
    request.dial_timeout = "1.5s".parse().unwrap();
    let (_tmp, root, _) = configured(&[], request);
    insta::assert_snapshot!(live_tree(&root));
}

/// With credentials, each of our hosts gets Spegel's header table, which
/// containerd sends with every request to that host; the upstream gets none.
#[test]
fn basic_auth_is_each_mirror_hosts_header() {
    let mut request = request(
        &["https://docker.io"],
        &["http://127.0.0.1:30020", "http://127.0.0.1:30021"],
    );
    request.auth = Some(crate::auth::BasicAuth::new("hello", "world"));
    let (_tmp, root, _) = configured(&[], request);
    live_tree(&root);
    let text = fs::read_to_string(root.join("docker.io").join(HOSTS_TOML)).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table.get("header"), None, "{text}");
    for target in ["http://127.0.0.1:30020", "http://127.0.0.1:30021"] {
        assert_eq!(
            table["host"][target]["header"]["Authorization"].as_str(),
            Some("Basic aGVsbG86d29ybGQ="),
            "{text}"
        );
    }
}

const ORIGINAL_DOCKER_HOSTS: &str = r#"# The company pull-through cache first.
server = "https://registry-1.docker.io"
ca = "corp-ca.crt"

[header]
  x-team = "platform"

[host."https://cache.corp.example"]
  capabilities = ["pull", "resolve"]
  client = [["nested/client.cert", "nested/client.key"]]
  [host."https://cache.corp.example".header]
    authorization = ["Basic c2VjcmV0"]

[host."http://127.0.0.1:30020"]
  capabilities = ["pull"]

[host."mirror.gcr.io"]
  capabilities = ["pull"]
  skip_verify = true
"#;

#[test]
fn prepend_existing_keeps_original_hosts_after_ours() {
    let mut request = request(
        &["https://docker.io", "https://ghcr.io"],
        &["http://127.0.0.1:30020", "http://127.0.0.1:30021"],
    );
    request.prepend_existing = true;
    let (_tmp, root, report) = configured(
        &[
            ("docker.io/hosts.toml", ORIGINAL_DOCKER_HOSTS.as_bytes()),
            ("docker.io/corp-ca.crt", b"CA"),
            ("docker.io/nested/client.cert", b"CERT"),
            (
                "registry.corp.example/hosts.toml",
                b"server = \"https://registry.corp.example\"\n",
            ),
            ("registry.corp.example/ca.crt", b"CA2"),
        ],
        request,
    );
    insta::assert_snapshot!(live_tree(&root));
    assert_eq!(
        containerd_reading(&fs::read_to_string(root.join("docker.io/hosts.toml")).unwrap()),
        [
            "http://127.0.0.1:30020",
            "http://127.0.0.1:30021",
            "https://cache.corp.example",
            "mirror.gcr.io"
        ]
    );
    insta::assert_snapshot!(
        report
            .to_string()
            .replace(root.to_str().unwrap(), "<config>")
    );
}

#[test]
fn prepend_existing_merges_the_directory_containerd_would_use() {
    // containerd looks in `host_port_` before `host:port`; a directory with
    // only certificates is its CA and client settings.
    let mut request = request(
        &[
            "http://127.0.0.1:5000",
            "https://quay.io",
            "https://ghcr.io",
        ],
        &["http://127.0.0.1:30020"],
    );
    request.prepend_existing = true;
    let (_tmp, root, report) = configured(
        &[
            (
                "127.0.0.1_5000_/hosts.toml",
                b"[host.\"http://10.1.1.1:5000\"]\n",
            ),
            (
                "127.0.0.1:5000/hosts.toml",
                b"[host.\"http://unused:5000\"]\n",
            ),
            ("quay.io/ca.crt", b"CA"),
            ("quay.io/me.cert", b"CERT"),
            ("quay.io/me.key", b"KEY"),
            ("ghcr.io/hosts.toml", b"this is = not toml ["),
        ],
        request,
    );
    insta::assert_snapshot!(live_tree(&root));
    assert!(
        report
            .events
            .iter()
            .any(|e| matches!(e, Event::Unparseable { .. }))
    );
}

#[test]
fn prepend_existing_through_default_names_registries_that_bypass_it() {
    let mut request = request(&[], &["http://127.0.0.1:30020"]);
    request.prepend_existing = true;
    let (_tmp, root, report) = configured(
        &[
            ("_default/hosts.toml", b"[host.\"https://proxy.corp\"]\n"),
            (
                "registry.corp/hosts.toml",
                b"server = \"https://registry.corp\"\n",
            ),
        ],
        request,
    );
    insta::assert_snapshot!(live_tree(&root));
    assert!(report.events.contains(&Event::BypassesDefault {
        path: root.join("registry.corp")
    }));
}

#[test]
fn without_prepend_existing_the_originals_leave_containerds_view() {
    let (_tmp, root, _) = configured(
        &[
            ("docker.io/hosts.toml", ORIGINAL_DOCKER_HOSTS.as_bytes()),
            (
                "registry.corp/hosts.toml",
                b"server = \"https://registry.corp\"\n",
            ),
        ],
        request(&["https://docker.io"], &["http://127.0.0.1:30020"]),
    );
    let names: Vec<_> = entries(&root).unwrap();
    let names: Vec<_> = names.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(names, ["_backup", "docker.io"]);
    assert_eq!(
        fs::read_to_string(root.join("_backup/docker.io/hosts.toml")).unwrap(),
        ORIGINAL_DOCKER_HOSTS
    );
}

#[test]
fn a_hosts_toml_keeps_the_mode_of_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    populate(
        &root,
        &[(
            "docker.io/hosts.toml",
            b"server = \"https://registry-1.docker.io\"\n",
        )],
    );
    fs::set_permissions(
        root.join("docker.io/hosts.toml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for prepend_existing in [false, true] {
        let mut request = request(&["https://docker.io", "https://ghcr.io"], &["http://a:1"]);
        request.prepend_existing = prepend_existing;
        configure(&root, &request.validate().unwrap()).unwrap();
        let mode = |rel: &str| fs::metadata(root.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("docker.io/hosts.toml"), 0o600, "{prepend_existing}");
        assert_eq!(mode("ghcr.io/hosts.toml"), 0o644, "{prepend_existing}");
    }
}

// === backup and cleanup ===

/// A config path with what nodes really have, and some things they should
/// not: nested directories, bytes that are not UTF-8, a symlink, an empty
/// directory, unusual modes.
fn awkward_originals(root: &Path) {
    populate(
        root,
        &[
            ("docker.io/hosts.toml", ORIGINAL_DOCKER_HOSTS.as_bytes()),
            (
                "docker.io/certs/deep/er/ca.crt",
                b"-----BEGIN CERTIFICATE-----\n",
            ),
            (
                "registry.corp:5000/odd.bin",
                &[0, 0xff, 0xfe, b'\n', b'\r', 0x80],
            ),
            ("README", b"managed by ansible\n"),
        ],
    );
    fs::create_dir_all(root.join("empty.example")).unwrap();
    symlink("docker.io", root.join("index.docker.io")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(
        root.join("registry.corp:5000/odd.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(
        root.join("docker.io/certs"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
}

#[test]
fn cleanup_restores_the_original_tree_byte_for_byte() {
    for prepend_existing in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("certs.d");
        awkward_originals(&root);
        let before = capture(&root);
        let mut request = request(
            &[
                "https://docker.io",
                "http://registry.corp:5000",
                "https://ghcr.io",
            ],
            &["http://127.0.0.1:30020"],
        );
        request.prepend_existing = prepend_existing;
        let config = request.validate().unwrap();
        configure(&root, &config).unwrap();
        assert_ne!(capture(&root), before);

        let report = cleanup(&root).unwrap();
        assert_eq!(
            capture(&root),
            before,
            "prepend_existing {prepend_existing}"
        );
        assert!(matches!(
            report.events.last(),
            Some(Event::Restored { entries: 6, .. })
        ));

        let again = cleanup(&root).unwrap();
        assert_eq!(capture(&root), before);
        assert_eq!(
            again.events,
            [Event::NoBackup {
                backup: root.join(BACKUP_DIR),
                removed: 0
            }]
        );
    }
}

#[test]
fn configuration_twice_keeps_the_first_backup_and_writes_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    awkward_originals(&root);
    let before = capture(&root);
    let mut request = request(&["https://docker.io"], &["http://127.0.0.1:30020"]);
    request.prepend_existing = true;
    let config = request.validate().unwrap();

    configure(&root, &config).unwrap();
    let first = capture(&root);
    let report = configure(&root, &config).unwrap();
    assert_eq!(capture(&root), first);
    assert!(matches!(
        report.events[0],
        Event::BackupKept { entries: 6, .. }
    ));
    assert!(
        !report
            .events
            .iter()
            .any(|e| matches!(e, Event::Displaced { .. }))
    );

    // Other flags later: still the first backup, still restored exactly.
    let other = self::request(&[], &["http://127.0.0.1:30021"])
        .validate()
        .unwrap();
    configure(&root, &other).unwrap();
    cleanup(&root).unwrap();
    assert_eq!(capture(&root), before);
}

#[test]
fn a_missing_config_path_is_created_and_cleanup_leaves_it_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("etc/containerd/certs.d");
    let config = request(&[], &["http://127.0.0.1:30020"])
        .validate()
        .unwrap();
    let report = configure(&root, &config).unwrap();
    assert_eq!(
        report.events[0],
        Event::CreatedConfigPath { path: root.clone() }
    );
    cleanup(&root).unwrap();
    assert_eq!(capture(&root), BTreeMap::new());
}

#[test]
fn what_someone_adds_later_is_displaced_never_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    populate(&root, &[("docker.io/hosts.toml", b"# original\n")]);
    let config = request(&["https://docker.io"], &["http://127.0.0.1:30020"])
        .validate()
        .unwrap();
    configure(&root, &config).unwrap();

    // By hand, after reflektor: a new registry, and an edit to our file
    // without the marker.
    populate(
        &root,
        &[
            ("quay.io/hosts.toml", b"# added by hand\n"),
            ("docker.io/hosts.toml", b"# edited by hand\n"),
        ],
    );
    let report = configure(&root, &config).unwrap();
    assert!(report.events.contains(&Event::Displaced {
        from: root.join("quay.io"),
        to: root.join("_displaced/quay.io"),
    }));
    assert!(report.events.contains(&Event::Displaced {
        from: root.join("docker.io"),
        to: root.join("_displaced/docker.io"),
    }));

    populate(&root, &[("quay.io/hosts.toml", b"# added again\n")]);
    let report = cleanup(&root).unwrap();
    insta::assert_snapshot!(render_tree(&root, None));
    assert_eq!(
        report.events.last(),
        Some(&Event::DisplacedRemain {
            path: root.join(DISPLACED_DIR)
        })
    );
}

#[test]
fn spegel_backup_is_adopted_and_its_files_displaced() {
    // A node Spegel configured: its backup of the originals, and its own
    // generated files, which carry no reflektor marker.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    populate(
        &root,
        &[
            (
                "_backup/docker.io/hosts.toml",
                b"server = 'https://registry-1.docker.io'\n",
            ),
            (
                "docker.io/hosts.toml",
                b"server = 'https://registry-1.docker.io'\n\n[host.'http://10.0.0.1:30020']\n\
                  capabilities = ['pull', 'resolve']\ndial_timeout = '200ms'",
            ),
        ],
    );
    let config = request(&["https://docker.io"], &["http://127.0.0.1:30020"])
        .validate()
        .unwrap();
    let report = configure(&root, &config).unwrap();
    assert!(matches!(
        report.events[0],
        Event::BackupKept { entries: 1, .. }
    ));
    assert!(report.events.contains(&Event::Displaced {
        from: root.join("docker.io"),
        to: root.join("_displaced/docker.io"),
    }));
    cleanup(&root).unwrap();
    assert_eq!(
        fs::read(root.join("docker.io/hosts.toml")).unwrap(),
        b"server = 'https://registry-1.docker.io'\n"
    );
}

#[test]
fn cleanup_without_a_backup_removes_only_marked_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let config = request(&["https://docker.io", "https://ghcr.io"], &["http://a:1"])
        .validate()
        .unwrap();
    configure(&root, &config).unwrap();
    fs::remove_dir_all(root.join(BACKUP_DIR)).unwrap();
    populate(
        &root,
        &[
            ("ghcr.io/ca.crt", b"CA"),
            ("quay.io/hosts.toml", b"# not ours\n"),
        ],
    );

    let report = cleanup(&root).unwrap();
    assert_eq!(
        report.events,
        [Event::NoBackup {
            backup: root.join(BACKUP_DIR),
            removed: 2
        }]
    );
    insta::assert_snapshot!(render_tree(&root, None));
}

#[test]
fn marked_files_left_without_a_backup_are_not_backed_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let config = request(&["https://docker.io"], &["http://a:1"])
        .validate()
        .unwrap();
    configure(&root, &config).unwrap();
    fs::remove_dir_all(root.join(BACKUP_DIR)).unwrap();
    populate(&root, &[(".hosts.toml.reflektor-tmp", b"# half")]);

    let report = configure(&root, &config).unwrap();
    assert_eq!(report.events[0], Event::RemovedOwn { files: 2 });
    assert_eq!(capture(&root.join(BACKUP_DIR)), BTreeMap::new());
}

#[test]
fn an_interrupted_backup_is_resumed_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    awkward_originals(&root);
    let before = capture(&root);
    // A crash after moving two entries into the partial backup.
    fs::create_dir(root.join(PARTIAL_DIR)).unwrap();
    for name in ["docker.io", "README"] {
        fs::rename(root.join(name), root.join(PARTIAL_DIR).join(name)).unwrap();
    }

    // cleanup puts the partial backup back...
    let report = cleanup(&root).unwrap();
    assert_eq!(
        report.events[0],
        Event::Resumed {
            path: root.join(PARTIAL_DIR)
        }
    );
    assert_eq!(capture(&root), before);

    // ...and configuration completes it.
    fs::create_dir(root.join(PARTIAL_DIR)).unwrap();
    fs::rename(root.join("README"), root.join(PARTIAL_DIR).join("README")).unwrap();
    let config = request(&[], &["http://a:1"]).validate().unwrap();
    let report = configure(&root, &config).unwrap();
    assert!(matches!(
        report.events[1],
        Event::BackedUp { entries: 6, .. }
    ));
    cleanup(&root).unwrap();
    assert_eq!(capture(&root), before);
}

#[test]
fn an_interrupted_restore_is_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    awkward_originals(&root);
    let before = capture(&root);
    let config = request(&["https://docker.io"], &["http://a:1"])
        .validate()
        .unwrap();
    configure(&root, &config).unwrap();
    // A crash in cleanup after our files went and one original came back.
    fs::remove_dir_all(root.join("docker.io")).unwrap();
    fs::rename(root.join(BACKUP_DIR), root.join(RESTORING_DIR)).unwrap();
    fs::rename(root.join(RESTORING_DIR).join("README"), root.join("README")).unwrap();

    cleanup(&root).unwrap();
    assert_eq!(capture(&root), before);
}

#[test]
fn two_backups_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    populate(&root, &[("_backup/a", b""), ("_backup.partial/b", b"")]);
    let config = request(&[], &["http://a:1"]).validate().unwrap();
    let error = configure(&root, &config).unwrap_err();
    assert!(
        matches!(error, MirrorConfigError::TwoBackups { .. }),
        "{error}"
    );
    assert!(matches!(
        cleanup(&root).unwrap_err(),
        MirrorConfigError::TwoBackups { .. }
    ));
}

#[test]
fn a_config_path_that_is_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    fs::write(&root, b"").unwrap();
    let config = request(&[], &["http://a:1"]).validate().unwrap();
    let error = configure(&root, &config).unwrap_err().to_string();
    assert!(error.contains("is not a directory"), "{error}");
    assert!(cleanup(&root).is_err());
    assert_eq!(fs::read(&root).unwrap(), b"");
}

#[test]
fn cleanup_of_a_missing_config_path_does_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let report = cleanup(&root).unwrap();
    assert_eq!(report.events, [Event::NothingToDo { path: root.clone() }]);
    assert!(!root.exists());
}

// === refusals ===

#[test]
fn refused_values_say_what_is_wrong_and_how_to_write_it() {
    let mut out = String::new();
    let targets = [
        "",
        "127.0.0.1:30020",
        "ftp://127.0.0.1",
        "http://127.0.0.1:30020/?ns=docker.io",
        "http://127.0.0.1:30020#x",
        "http://user:pass@127.0.0.1:30020",
        "http://",
        "http://[::1:5000",
        "http://::1:5000",
        "http://[::g]:5000",
        "http://host:0",
        "http://host:65536",
        "http://host:+80",
        "http://under_score:5000",
        "http://host:5000//v2",
        "http://host:5000/a/../b",
        "http://host:5000/a b",
    ];
    for input in targets {
        let error = input.parse::<MirrorTarget>().unwrap_err();
        writeln!(out, "--mirror-targets {input:?}: {error}").unwrap();
    }
    for input in ["docker.io", "https://docker.io/library", "oci://ghcr.io"] {
        let error = input.parse::<MirroredRegistry>().unwrap_err();
        writeln!(out, "--mirrored-registries {input:?}: {error}").unwrap();
    }
    for input in ["", "200", "0s", "0ms0s", "-1s", "1d", "1..5s", "ms"] {
        let error = input.parse::<DialTimeout>().unwrap_err();
        writeln!(out, "--dial-timeout {input:?}: {error}").unwrap();
    }
    insta::assert_snapshot!(out);
}

#[test]
fn accepted_values_are_kept_as_containerd_needs_them() {
    let target = |s: &str| s.parse::<MirrorTarget>().unwrap().to_string();
    assert_eq!(target("HTTP://[::1]:5000"), "http://[::1]:5000");
    assert_eq!(
        target("http://node.local:5000/some/path/"),
        "http://node.local:5000/some/path"
    );
    assert_eq!(target("https://10.0.0.1"), "https://10.0.0.1");
    let registry = |s: &str| s.parse::<MirroredRegistry>().unwrap();
    assert_eq!(registry("https://docker.io/").dir(), "docker.io");
    assert_eq!(registry("*"), MirroredRegistry::Default);
    assert_eq!(
        registry("http://127.0.0.1:5000").candidate_dirs(),
        ["127.0.0.1_5000_", "127.0.0.1:5000"]
    );
    assert_eq!(registry("_default").candidate_dirs(), ["_default"]);
    for timeout in ["200ms", "1.5s", "1m30s", "500us", "3µs", ".5s", "1h"] {
        assert_eq!(timeout.parse::<DialTimeout>().unwrap().to_string(), timeout);
    }
}

#[test]
fn flags_that_contradict_each_other_are_refused() {
    let error = |registries: &[&str], targets: &[&str]| {
        request(registries, targets)
            .validate()
            .unwrap_err()
            .to_string()
    };
    insta::assert_snapshot!(
        [
            error(&[], &[]),
            error(&[], &["http://a:1", "http://A:1/"]),
            error(&["http://ghcr.io", "https://ghcr.io"], &["http://a:1"]),
            error(&["*", "_default"], &["http://a:1"]),
        ]
        .join("\n")
    );
}

//! `reflektor configuration` and `reflektor cleanup` as processes: the flag
//! spellings Spegel's chart uses, environment variables, exit codes, and the
//! summary an operator reads in the pod log.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// The binary with none of its environment variables inherited.
fn reflektor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reflektor"));
    for name in [
        "CONTAINERD_REGISTRY_CONFIG_PATH",
        "MIRRORED_REGISTRIES",
        "MIRROR_TARGETS",
        "RESOLVE_TAGS",
        "PREPEND_EXISTING",
        "DIAL_TIMEOUT",
    ] {
        command.env_remove(name);
    }
    // No containerd here: doctor's config_path check can read nothing, which
    // warns and writes; the tests that want the check give a config file.
    command
        .env("CONTAINERD_SOCK", "/nonexistent/containerd.sock")
        .env("CONTAINERD_CONFIG", "/nonexistent/config.toml")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the reflektor binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_path() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("certs.d");
    let path = path.to_str().unwrap().to_owned();
    (tmp, path)
}

#[test]
fn spegel_chart_arguments_configure_and_cleanup_restores() {
    let (_tmp, path) = config_path();
    let root = Path::new(&path);
    fs::create_dir_all(root.join("docker.io")).unwrap();
    fs::write(root.join("docker.io/hosts.toml"), "# original\n").unwrap();

    // The shape of Spegel's DaemonSet: one flag, several values.
    let output = reflektor(
        &[
            "configuration",
            &format!("--containerd-registry-config-path={path}"),
            "--mirrored-registries",
            "https://docker.io",
            "https://ghcr.io",
            "--mirror-targets",
            "http://10.0.0.1:30020",
            "http://10.0.0.1:30021",
            "--resolve-tags=false",
            "--prepend-existing=false",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("backed up 1 original entry"), "{stdout}");
    assert!(
        stdout.contains("ghcr.io/hosts.toml: 2 reflektor hosts"),
        "{stdout}"
    );
    let ghcr = fs::read_to_string(root.join("ghcr.io/hosts.toml")).unwrap();
    assert!(ghcr.contains("capabilities = [\"pull\"]\n"), "{ghcr}");

    let output = reflektor(
        &["cleanup", "--containerd-registry-config-path", &path],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("restored 1 original entry"));
    let names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["docker.io"]);
    assert_eq!(
        fs::read(root.join("docker.io/hosts.toml")).unwrap(),
        b"# original\n"
    );

    let output = reflektor(
        &["cleanup", "--containerd-registry-config-path", &path],
        &[],
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("no backup at"));
}

#[test]
fn environment_variables_configure_like_flags() {
    let (_tmp, path) = config_path();
    let output = reflektor(
        &["configuration"],
        &[
            ("CONTAINERD_REGISTRY_CONFIG_PATH", &path),
            // Empty, as a chart renders an empty list: every registry.
            ("MIRRORED_REGISTRIES", ""),
            (
                "MIRROR_TARGETS",
                "http://10.0.0.1:30020,http://[fd00::1]:30021",
            ),
            ("RESOLVE_TAGS", "true"),
            ("PREPEND_EXISTING", "true"),
            ("DIAL_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let hosts = fs::read_to_string(Path::new(&path).join("_default/hosts.toml")).unwrap();
    assert!(
        hosts.contains("[host.\"http://[fd00::1]:30021\"]"),
        "{hosts}"
    );
    assert!(hosts.contains("dial_timeout = \"1s\""), "{hosts}");
    assert!(hosts.contains("\"resolve\""), "{hosts}");
}

#[test]
fn bad_flags_exit_2_and_name_the_flag_and_the_fix() {
    let (_tmp, path) = config_path();
    let cases: [(&[&str], &str); 5] = [
        (&[], "--mirror-targets"),
        (
            &["--mirror-targets", "127.0.0.1:30020"],
            "\"http://127.0.0.1:30020\"",
        ),
        (
            &["--mirror-targets", "http://a:1?x=1"],
            "drop everything from the ?",
        ),
        (
            &["--mirror-targets", "http://a:1,http://a:1"],
            "list each mirror target once",
        ),
        (
            &[
                "--mirror-targets",
                "http://a:1",
                "--mirrored-registries",
                "https://docker.io/library",
            ],
            "drop the path",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["configuration", "--containerd-registry-config-path", &path];
        all.extend_from_slice(args);
        let output = reflektor(&all, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!Path::new(&path).exists(), "{args:?} must write nothing");
    }
}

#[test]
fn a_config_path_that_is_a_file_exits_1_and_is_left_alone() {
    let (_tmp, path) = config_path();
    fs::write(&path, "not a directory").unwrap();
    for args in [
        &["configuration", "--mirror-targets", "http://a:1"][..],
        &["cleanup"][..],
    ] {
        let mut all = args.to_vec();
        all.extend(["--containerd-registry-config-path", &path]);
        let output = reflektor(&all, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is not a directory. Fix:"), "{stderr}");
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a directory");
}

/// A containerd config file whose registry config_path is `config_path`.
fn containerd_config(dir: &Path, config_path: &str) -> String {
    let file = dir.join("config.toml");
    fs::write(
        &file,
        format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{config_path}\"\n"
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_owned()
}

/// Mounted at another path than containerd reads, `configuration` once
/// wrote hosts.toml files containerd never read, over another deployment's:
/// now it checks first, and writes nothing.
#[test]
fn a_directory_containerd_does_not_read_is_refused_before_anything_is_written() {
    let (tmp, path) = config_path();
    fs::create_dir_all(&path).unwrap();
    // `configuration` into `path`, with containerd reading `config_path`.
    let configure = |config_path: &str| {
        let config = containerd_config(tmp.path(), config_path);
        reflektor(
            &[
                "configuration",
                &format!("--containerd-registry-config-path={path}"),
                &format!("--containerd-config={config}"),
                "--mirror-targets=http://10.0.0.1:30020",
            ],
            &[],
        )
    };
    let output = configure("/etc/containerd/certs.d");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(stderr.contains("does not include"), "{stderr}");
    assert!(stderr.contains("fix: "), "{stderr}");
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0, "wrote something");

    let output = configure(&path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(Path::new(&path).join("_default/hosts.toml").is_file());
}

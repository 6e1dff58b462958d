//! A node's `config.toml`, in the schema its containerd major reads natively.
//!
//! containerd 1.x reads config version 2, where CRI is the single plugin
//! `io.containerd.grpc.v1.cri`. 2.x reads version 3, where image settings moved to
//! `io.containerd.cri.v1.images` and runtime settings to `io.containerd.cri.v1.runtime`;
//! 2.x would migrate a version 2 file, but writing version 3 keeps each setting where
//! the daemon under test really reads it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use toml::{Table, Value};

use super::Layout;

/// Plugins that would touch host-global state shared between nodes. Names a build does
/// not have are ignored by every containerd from 1.4 to 2.1, so one list serves all.
const DISABLED_PLUGINS: [&str; 7] = [
    // Creates and manages /opt/containerd.
    "io.containerd.internal.v1.opt",
    // Listens on /var/run/nri/nri.sock, which a second node could not bind.
    "io.containerd.nri.v1.nri",
    // Need host filesystems or pools, and would only fail or probe host state.
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    // Would export spans to whatever collector the host's OTEL_* variables name.
    "io.containerd.tracing.processor.v1.otlp",
];

/// What varies between nodes.
pub(super) struct Settings<'a> {
    pub layout: &'a Layout,
    pub registry_config_path: Option<&'a str>,
    pub discard_unpacked_layers: bool,
    pub sandbox_image: Option<&'a str>,
}

pub(super) fn render(major: u64, settings: &Settings) -> Result<String> {
    let layout = settings.layout;
    let (version, plugins) = match major {
        1 => (2, plugins_v2(settings)?),
        2 => (3, plugins_v3(settings)?),
        _ => bail!(
            "containerd {major}.x is newer than this harness; teach e2e/src/node/toml_config.rs its config schema"
        ),
    };
    let address = |path| -> Result<Value> { Ok(table([("address", utf8(path)?.into())]).into()) };
    let config = table([
        ("root", utf8(&layout.root)?.into()),
        ("state", utf8(&layout.state)?.into()),
        ("disabled_plugins", DISABLED_PLUGINS.to_vec().into()),
        ("grpc", address(&layout.socket)?),
        ("ttrpc", address(&layout.ttrpc_socket)?),
        // Off by default too, but a metrics port shared by nodes would collide: be explicit.
        ("metrics", table([("address", "".into())]).into()),
        ("plugins", plugins.into()),
    ]);
    let body = toml::to_string(&config).context("serializing the containerd config")?;
    // First, as containerd's docs show it; the serializer would sort it among the keys.
    Ok(format!("version = {version}\n{body}"))
}

/// Version 2: everything CRI under `io.containerd.grpc.v1.cri`.
fn plugins_v2(settings: &Settings) -> Result<Table> {
    let layout = settings.layout;
    let mut cri = stream_server();
    let containerd = table([
        ("snapshotter", "overlayfs".into()),
        (
            "discard_unpacked_layers",
            settings.discard_unpacked_layers.into(),
        ),
    ]);
    let cni = table([
        ("bin_dir", utf8(&layout.cni_bin_dir)?.into()),
        ("conf_dir", utf8(&layout.cni_conf_dir)?.into()),
    ]);
    cri.insert("containerd".into(), containerd.into());
    cri.insert("cni".into(), cni.into());
    // The harness runs as a root without CAP_SYS_RESOURCE, which runc needs to
    // write a lower oom_score_adj than its own.
    cri.insert("restrict_oom_score_adj".into(), true.into());
    if let Some(image) = settings.sandbox_image {
        cri.insert("sandbox_image".into(), image.into());
    }
    if let Some(registry) = registry(settings) {
        cri.insert("registry".into(), registry.into());
    }
    Ok(table([("io.containerd.grpc.v1.cri", cri.into())]))
}

/// Version 3: the gRPC plugin keeps only the stream server; images and runtime split off.
fn plugins_v3(settings: &Settings) -> Result<Table> {
    let layout = settings.layout;
    let mut images = table([
        ("snapshotter", "overlayfs".into()),
        (
            "discard_unpacked_layers",
            settings.discard_unpacked_layers.into(),
        ),
    ]);
    if let Some(registry) = registry(settings) {
        images.insert("registry".into(), registry.into());
    }
    if let Some(image) = settings.sandbox_image {
        images.insert(
            "pinned_images".into(),
            table([("sandbox", image.into())]).into(),
        );
    }
    // `bin_dirs` replaced `bin_dir` in 2.1, which warns about the old key; 2.0 knows only
    // `bin_dir` and would look in its default /opt/cni/bin instead.
    let cni = table([
        ("bin_dirs", vec![utf8(&layout.cni_bin_dir)?].into()),
        ("conf_dir", utf8(&layout.cni_conf_dir)?.into()),
    ]);
    Ok(table([
        ("io.containerd.grpc.v1.cri", stream_server().into()),
        ("io.containerd.cri.v1.images", images.into()),
        (
            "io.containerd.cri.v1.runtime",
            table([
                ("cni", cni.into()),
                // As in version 2: runc must not lower oom_score_adj here.
                ("restrict_oom_score_adj", true.into()),
            ])
            .into(),
        ),
    ]))
}

/// CRI's streaming server on an ephemeral loopback port, so nodes never fight over
/// 10010, and no TCP gRPC listener at all.
fn stream_server() -> Table {
    table([
        ("disable_tcp_service", true.into()),
        ("stream_server_address", "127.0.0.1".into()),
        ("stream_server_port", "0".into()),
    ])
}

/// The registry table, absent when unset: containerd's default then applies.
fn registry(settings: &Settings) -> Option<Table> {
    settings
        .registry_config_path
        .map(|path| table([("config_path", path.into())]))
}

fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// Config values are TOML strings, so node paths must be UTF-8.
pub(super) fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "node path {} is not UTF-8 and cannot go into a containerd config; choose another REFLEKTOR_E2E_WORK",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(major: u64, registry_config_path: Option<&str>) -> Table {
        let layout = Layout::new(Path::new("/w"));
        let settings = Settings {
            layout: &layout,
            registry_config_path,
            discard_unpacked_layers: true,
            sandbox_image: None,
        };
        toml::from_str(&render(major, &settings).unwrap()).unwrap()
    }

    #[test]
    fn v2_puts_cri_settings_under_the_grpc_plugin() {
        let config = rendered(1, Some("/certs"));
        let cri = "io.containerd.grpc.v1.cri";
        assert_eq!(config["version"].as_integer(), Some(2));
        assert_eq!(
            crate::support::toml_value(&config, &["plugins", cri, "registry", "config_path"]),
            Some(&Value::from("/certs"))
        );
        assert_eq!(
            crate::support::toml_value(
                &config,
                &["plugins", cri, "containerd", "discard_unpacked_layers"]
            ),
            Some(&Value::from(true))
        );
        assert_eq!(
            crate::support::toml_value(&config, &["ttrpc", "address"]),
            Some(&Value::from("/w/containerd.sock.ttrpc"))
        );
    }

    #[test]
    fn v3_puts_image_settings_under_the_images_plugin() {
        let config = rendered(2, Some("/certs"));
        let images = "io.containerd.cri.v1.images";
        assert_eq!(config["version"].as_integer(), Some(3));
        assert_eq!(
            crate::support::toml_value(&config, &["plugins", images, "registry", "config_path"]),
            Some(&Value::from("/certs"))
        );
        assert_eq!(
            crate::support::toml_value(&config, &["plugins", images, "discard_unpacked_layers"]),
            Some(&Value::from(true))
        );
        assert_eq!(
            crate::support::toml_value(
                &config,
                &["plugins", "io.containerd.grpc.v1.cri", "stream_server_port"]
            ),
            Some(&Value::from("0"))
        );
    }

    #[test]
    fn unset_registry_config_path_leaves_the_key_out() {
        for major in [1, 2] {
            let text = toml::to_string(&rendered(major, None)).unwrap();
            assert!(!text.contains("config_path"), "{text}");
        }
    }

    #[test]
    fn unknown_majors_are_refused() {
        let layout = Layout::new(Path::new("/w"));
        let settings = Settings {
            layout: &layout,
            registry_config_path: None,
            discard_unpacked_layers: false,
            sandbox_image: None,
        };
        assert!(render(3, &settings).is_err());
    }
}

//! OCI layouts with many small images, for the scale runs: what matters
//! there is how many keys an agent advertises, not how big the blobs are.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use reflektor::oci::Digest;
use serde_json::json;

/// The repository every bench image is named under; requests use
/// `/v2/bench/...?ns=bench.example`.
pub const NAME: &str = "bench.example/bench";
/// The annotation that gives an image in a layout a full reference. The
/// agent advertises only images with one: a bare tag (what skopeo and the
/// e2e layouts write) answers for any repository and so names nothing to
/// advertise.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Digests an image of [`write_many`] contributes: layer, config, manifest.
pub const DIGESTS_PER_IMAGE: usize = 3;

/// Writes `images` single-layer images into a fresh layout at `dir`, each
/// with its own bytes (so its own digests), and returns the layer digests.
/// `salt` makes two layouts' digests differ.
pub fn write_many(dir: &Path, images: usize, salt: &str) -> Result<Vec<Digest>> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let put = |bytes: &[u8]| -> Result<Digest> {
        let digest = Digest::sha256_of(bytes);
        let path = blobs.join(digest.hex());
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(digest)
    };
    let mut layers = Vec::with_capacity(images);
    let mut entries = Vec::with_capacity(images);
    for i in 0..images {
        let layer = format!("reflektor bench layer {salt} {i}\n").into_bytes();
        let layer_digest = put(&layer)?;
        let config =
            json!({"architecture": "amd64", "os": "linux", "salt": salt, "i": i}).to_string();
        let config_digest = put(config.as_bytes())?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest.to_string(), "size": layer.len()}],
        })
        .to_string();
        let manifest_digest = put(manifest.as_bytes())?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": format!("{salt}-{i}"),
                CONTAINERD_NAME: format!("{NAME}:{salt}-{i}"),
            },
        }));
        layers.push(layer_digest);
    }
    let index = json!({"schemaVersion": 2, "manifests": entries}).to_string();
    fs::write(dir.join("index.json"), index).context("writing index.json")?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .context("writing oci-layout")?;
    Ok(layers)
}

/// Gives every image in the layout at `dir` a full reference under
/// [`NAME`], keeping its tag, so that an agent serving the layout
/// advertises it.
pub fn name_images(dir: &Path) -> Result<()> {
    let path = dir.join("index.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut index: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let entries = index["manifests"]
        .as_array_mut()
        .with_context(|| format!("{} has no manifests array", path.display()))?;
    for entry in entries {
        let tag = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .with_context(|| format!("an entry of {} has no ref.name", path.display()))?
            .to_owned();
        entry["annotations"][CONTAINERD_NAME] = json!(format!("{NAME}:{tag}"));
    }
    fs::write(&path, index.to_string()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agent_store_reads_every_image() {
        let dir = tempfile::tempdir().unwrap();
        let layers = write_many(dir.path(), 50, "t").unwrap();
        assert_eq!(layers.len(), 50);
        let store = reflektor::store::OciLayoutStore::open(dir.path())
            .await
            .unwrap();
        let images = reflektor::store::ContentStore::images(&store)
            .await
            .unwrap();
        assert_eq!(images.len(), 50);
    }
}

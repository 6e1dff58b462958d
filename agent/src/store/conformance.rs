//! One suite every content store must pass: the OCI layout store in unit
//! tests, containerd's store in the harness against real containerd builds.
//! A backend that passes serves the registry correctly, whatever it is.

use std::io::Read;
use std::path::Path;

use futures::TryStreamExt;
use serde_json::json;

use super::{BlobBody, ByteRange, ContentStore, StoreError};
use crate::oci::{Digest, Name, RegistryHost, Tag, media_type};

/// What a store is expected to hold: one tagged image, its manifests with
/// their media types, and its blobs.
#[derive(Debug, Clone)]
pub struct Expected {
    pub registry: RegistryHost,
    pub name: Name,
    pub tag: Tag,
    pub root: Digest,
    /// Every manifest and index, the root first.
    pub manifests: Vec<(Digest, String)>,
    /// Every config and layer blob with its size.
    pub blobs: Vec<(Digest, u64)>,
}

/// Runs every check, panicking with the store's name and the failing case.
pub async fn run(label: &str, store: &dyn ContentStore, expected: &Expected) {
    store
        .ready()
        .await
        .unwrap_or_else(|e| panic!("{label}: not ready: {e}"));

    let resolved = store
        .resolve(&expected.registry, &expected.name, &expected.tag)
        .await
        .unwrap_or_else(|e| panic!("{label}: resolving the tag: {e}"));
    assert_eq!(resolved, expected.root, "{label}: tag resolves to the root");

    let images = store
        .images()
        .await
        .unwrap_or_else(|e| panic!("{label}: listing images: {e}"));
    let name = format!("{}/{}:{}", expected.registry, expected.name, expected.tag);
    assert!(
        images
            .iter()
            .any(|i| i.name == name && i.digest == expected.root),
        "{label}: {name} is not among the images: {images:?}"
    );

    let unknown_tag: Tag = "no-such-tag".parse().unwrap();
    assert!(
        matches!(
            store
                .resolve(&expected.registry, &expected.name, &unknown_tag)
                .await,
            Err(StoreError::NotFound(_))
        ),
        "{label}: an unknown tag is NotFound"
    );

    for (digest, media_type) in &expected.manifests {
        let manifest = store
            .manifest(digest)
            .await
            .unwrap_or_else(|e| panic!("{label}: manifest {digest}: {e}"));
        assert_eq!(&manifest.media_type, media_type, "{label}: {digest}");
        assert_eq!(
            Digest::sha256_of(&manifest.bytes),
            *digest,
            "{label}: manifest bytes hash to their digest"
        );
    }

    for (digest, size) in &expected.blobs {
        assert_eq!(
            store
                .blob_size(digest)
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}")),
            *size,
            "{label}: size of {digest}"
        );
        let whole = read(
            store,
            digest,
            ByteRange {
                start: 0,
                len: *size,
            },
        )
        .await;
        assert_eq!(
            Digest::sha256_of(&whole),
            *digest,
            "{label}: bytes of {digest}"
        );
        if *size > 2 {
            let range = ByteRange {
                start: 1,
                len: size - 2,
            };
            let part = read(store, digest, range).await;
            assert_eq!(
                part,
                whole[1..whole.len() - 1],
                "{label}: range of {digest}"
            );
        }
        assert!(
            matches!(store.manifest(digest).await, Err(StoreError::NotFound(_))),
            "{label}: blob {digest} must not be served as a manifest"
        );
    }

    let missing = Digest::sha256_of(b"reflektor conformance: not in any store");
    assert!(matches!(
        store.manifest(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.blob_size(&missing).await,
        Err(StoreError::NotFound(_))
    ));
    let one = ByteRange { start: 0, len: 1 };
    assert!(matches!(
        store.blob(&missing, one).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn read(store: &dyn ContentStore, digest: &Digest, range: ByteRange) -> Vec<u8> {
    bytes(store.blob(digest, range).await.unwrap()).await
}

/// The bytes a body hands over, however the backend hands them.
pub async fn bytes(body: BlobBody) -> Vec<u8> {
    match body {
        BlobBody::File { file, range } => {
            use std::io::{Seek, SeekFrom};
            let mut file = file;
            file.seek(SeekFrom::Start(range.start)).unwrap();
            let mut bytes = Vec::new();
            file.take(range.len).read_to_end(&mut bytes).unwrap();
            bytes
        }
        BlobBody::Stream(stream) => {
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
            chunks.concat()
        }
    }
}

/// Writes a two-platform image as an OCI layout under `dir`, tagged with a
/// full containerd-style name, and says what it holds. The blobs are not
/// real tar layers: a content store must not care.
pub fn write_layout(dir: &Path, seed: u8) -> Expected {
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let digest = Digest::sha256_of(bytes);
        std::fs::write(blobs_dir.join(digest.hex()), bytes).unwrap();
        digest
    };
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut platform_descriptors = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let layer: Vec<u8> = (0..(4096 + i * 1000))
            .map(|n| (n as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let layer_digest = put(&layer);
        let config = json!({"architecture": arch, "os": "linux", "seed": seed}).to_string();
        let config_digest = put(config.as_bytes());
        blobs.push((layer_digest.clone(), layer.len() as u64));
        blobs.push((config_digest.clone(), config.len() as u64));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer.len()}],
        })
        .to_string();
        let manifest_digest = put(manifest.as_bytes());
        manifests.push((manifest_digest.clone(), media_type::OCI_MANIFEST.to_owned()));
        platform_descriptors.push(json!({
            "mediaType": media_type::OCI_MANIFEST, "digest": manifest_digest,
            "size": manifest.len(), "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": platform_descriptors,
    })
    .to_string();
    let root = put(index.as_bytes());
    manifests.insert(0, (root.clone(), media_type::OCI_INDEX.to_owned()));
    let expected = Expected {
        registry: "example.com".parse().unwrap(),
        name: "team/app".parse().unwrap(),
        tag: "v1".parse().unwrap(),
        root: root.clone(),
        manifests,
        blobs,
    };
    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type::OCI_INDEX, "digest": root, "size": index.len(),
            "annotations": {"io.containerd.image.name": "example.com/team/app:v1"},
        }],
    });
    std::fs::write(dir.join("index.json"), layout_index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OciLayoutStore;

    #[tokio::test]
    async fn oci_layout_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let expected = write_layout(dir.path(), 7);
        let store = OciLayoutStore::open(dir.path()).await.unwrap();
        run("oci-layout", &store, &expected).await;
    }

    #[tokio::test]
    async fn a_directory_that_is_not_a_layout_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let error = OciLayoutStore::open(dir.path()).await.unwrap_err();
        assert!(error.to_string().contains("oci-layout"), "{error}");
    }
}

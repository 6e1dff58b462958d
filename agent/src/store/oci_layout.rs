//! An OCI image-layout directory as a content store: `oci-layout`,
//! `index.json` and `blobs/<alg>/<hex>`, as `skopeo copy … oci:DIR:TAG` and
//! `ctr image export` write them. For development, benchmarks and seeding a
//! cluster that cannot reach any registry.
//!
//! Tags come from the annotations on `index.json`'s descriptors:
//! `io.containerd.image.name` or `org.opencontainers.image.ref.name` holding
//! a full reference (`docker.io/library/nginx:1.27`) names exactly one image;
//! a bare tag (`1.27`, as skopeo writes it) answers for that tag under any
//! registry and repository, which is what a single-purpose seed directory
//! wants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::media_types::{Descriptor, MediaTypes};
use super::throttle::{MISS_INTERVAL, Throttle};
use super::{BlobBody, ByteRange, ContentStore, Image, Manifest, StoreError};
use crate::oci::{Digest, Name, RegistryHost, Tag};

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug)]
pub struct OciLayoutStore {
    root: PathBuf,
    /// Full references and bare tags (`:1.27`) to digests.
    tags: RwLock<HashMap<String, Digest>>,
    media_types: MediaTypes,
    /// Re-reads of `index.json` on a miss: each walks every index.
    rereads: Throttle,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

impl OciLayoutStore {
    /// Opens a layout directory and reads its index once; tags added later
    /// are picked up on the first miss.
    pub async fn open(root: &Path) -> Result<Self, StoreError> {
        Self::open_with(root, MISS_INTERVAL).await
    }

    /// [`Self::open`], re-reading the index on a miss at most once per
    /// `interval`.
    async fn open_with(root: &Path, interval: Duration) -> Result<Self, StoreError> {
        let marker = root.join("oci-layout");
        tokio::fs::metadata(&marker).await.map_err(|e| {
            StoreError::backend(
                format!(
                    "opening {}: it must be an OCI image layout with an oci-layout file, as \
                     `skopeo copy … oci:DIR:TAG` writes",
                    root.display()
                ),
                e,
            )
        })?;
        let store = Self {
            root: root.to_owned(),
            tags: RwLock::default(),
            media_types: MediaTypes::default(),
            rereads: Throttle::new(interval),
        };
        store.reload().await?;
        Ok(store)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        super::blob_path(&self.root, digest)
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let path = self.root.join("index.json");
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| StoreError::backend(format!("reading {}", path.display()), e))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::backend(format!("parsing {}", path.display()), e))?;
        let mut tags = HashMap::new();
        for entry in index.manifests {
            for key in [CONTAINERD_NAME, REF_NAME] {
                if let Some(name) = entry.annotations.get(key) {
                    tags.insert(tag_key(name), entry.descriptor.digest.clone());
                }
            }
            self.media_types
                .learn(entry.descriptor, |digest| async move {
                    tokio::fs::read(self.blob_path(&digest)).await.ok()
                })
                .await;
        }
        *self.tags.write().expect("tag map poisoned") = tags;
        Ok(())
    }

    /// Reads the index again after a miss, unless that was done less than
    /// the interval ago.
    async fn reload_on_miss(&self) -> Result<(), StoreError> {
        if self.rereads.ready() {
            self.reload().await?;
        }
        Ok(())
    }

    fn lookup(&self, registry: &RegistryHost, name: &Name, tag: &Tag) -> Option<Digest> {
        let tags = self.tags.read().expect("tag map poisoned");
        tags.get(&format!("{registry}/{name}:{tag}"))
            .or_else(|| tags.get(&format!(":{tag}")))
            .cloned()
    }
}

/// A full reference stays as it is; a bare tag becomes `:tag`, and so
/// does the tag of a registry-less `name:tag`.
fn tag_key(annotation: &str) -> String {
    if annotation.contains('/') {
        annotation.to_owned()
    } else {
        let tag = annotation.rsplit(':').next().unwrap_or(annotation);
        format!(":{tag}")
    }
}

fn not_found_or(error: std::io::Error, what: String, context: String) -> StoreError {
    if error.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(what)
    } else {
        StoreError::backend(context, error)
    }
}

#[async_trait]
impl ContentStore for OciLayoutStore {
    async fn resolve(
        &self,
        registry: &RegistryHost,
        name: &Name,
        tag: &Tag,
    ) -> Result<Digest, StoreError> {
        if let Some(digest) = self.lookup(registry, name, tag) {
            return Ok(digest);
        }
        self.reload_on_miss().await?;
        self.lookup(registry, name, tag)
            .ok_or_else(|| StoreError::NotFound(format!("{registry}/{name}:{tag}")))
    }

    async fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let media_type = match self.media_types.get(digest) {
            Some(media_type) => media_type,
            None => {
                self.reload_on_miss().await?;
                self.media_types
                    .get(digest)
                    .ok_or_else(|| StoreError::NotFound(format!("manifest {digest}")))?
            }
        };
        let path = self.blob_path(digest);
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            not_found_or(
                e,
                format!("manifest {digest}"),
                format!("reading {}", path.display()),
            )
        })?;
        Ok(Manifest {
            bytes: Bytes::from(bytes),
            media_type,
        })
    }

    async fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest);
        let metadata = tokio::fs::metadata(&path).await.map_err(|e| {
            not_found_or(
                e,
                format!("blob {digest}"),
                format!("reading {}", path.display()),
            )
        })?;
        Ok(metadata.len())
    }

    async fn blob(&self, digest: &Digest, range: ByteRange) -> Result<BlobBody, StoreError> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            not_found_or(
                e,
                format!("blob {digest}"),
                format!("opening {}", path.display()),
            )
        })?;
        Ok(BlobBody::File {
            file: file.into_std().await,
            range,
        })
    }

    /// Only full references name an image here; a bare tag belongs to no
    /// registry, so it cannot be advertised.
    async fn images(&self) -> Result<Vec<Image>, StoreError> {
        self.reload().await?;
        let tags = self.tags.read().expect("tag map poisoned");
        Ok(tags
            .iter()
            .filter(|(name, _)| !name.starts_with(':'))
            .map(|(name, digest)| Image {
                name: name.clone(),
                digest: digest.clone(),
            })
            .collect())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let path = self.root.join("index.json");
        tokio::fs::metadata(&path)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::backend(format!("reading {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::write_layout;

    /// A tag added after a miss is found only once the interval is over:
    /// misses in between do not re-read the index.
    #[tokio::test]
    async fn misses_reread_the_index_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let expected = write_layout(dir.path(), 3);
        let interval = Duration::from_millis(300);
        let store = OciLayoutStore::open_with(dir.path(), interval)
            .await
            .unwrap();
        let late: Tag = "late".parse().unwrap();
        let resolve = || store.resolve(&expected.registry, &expected.name, &late);
        assert!(matches!(resolve().await, Err(StoreError::NotFound(_))));

        let index_path = dir.path().join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let mut entry = index["manifests"][0].clone();
        entry["annotations"] = serde_json::json!({
            REF_NAME: format!("{}/{}:late", expected.registry, expected.name)
        });
        index["manifests"].as_array_mut().unwrap().push(entry);
        std::fs::write(&index_path, index.to_string()).unwrap();

        for _ in 0..100 {
            assert!(
                matches!(resolve().await, Err(StoreError::NotFound(_))),
                "a miss within the interval re-read the index"
            );
        }
        tokio::time::sleep(interval).await;
        assert_eq!(resolve().await.unwrap(), expected.root);
    }
}

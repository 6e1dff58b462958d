//! containerd's content store, the one nodes run: images through the images
//! service, sizes through the content service, and blob bytes straight from
//! `<content-path>/blobs/<alg>/<hex>` so that they can go out with
//! `sendfile(2)`. When that directory is not readable (the agent's pod does
//! not mount it), bytes come through the content service's `Read` instead.
//! Blobs still downloading are read from its `ingest/` directory
//! ([`super::ingest`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::media_types::{Descriptor, MediaTypes};
use super::throttle::{MISS_INTERVAL, Throttle};
use super::{BlobBody, ByteRange, ContentStore, Image, Manifest, PeerFed, StoreError, ingest};
use crate::oci::{Digest, Name, RegistryHost, Tag};
use crate::runtime::{Containerd, ImageRecord, ImageTarget, Namespace, RuntimeError};

#[derive(Debug)]
pub struct ContainerdStore {
    containerd: Containerd,
    namespace: Namespace,
    content_path: PathBuf,
    media_types: MediaTypes,
    /// Walks over every image for media types, so that requests for
    /// digests that are not manifests cannot make every request a walk.
    walks: Throttle,
    /// What the mirror is relaying to containerd: not shared in flight.
    peer_fed: Arc<PeerFed>,
}

impl ContainerdStore {
    /// `namespace` is where kubelet's images live: `k8s.io`.
    pub fn new(containerd: Containerd, namespace: Namespace, content_path: &Path) -> Self {
        Self {
            containerd,
            namespace,
            content_path: content_path.to_owned(),
            media_types: MediaTypes::default(),
            walks: Throttle::new(MISS_INTERVAL),
            peer_fed: Arc::default(),
        }
    }

    /// The set the mirror marks the blobs it relays in, so that this store
    /// does not share their downloads.
    pub fn peer_fed(&self) -> Arc<PeerFed> {
        Arc::clone(&self.peer_fed)
    }

    /// The ingest of `digest`, if one is being written and not by peers.
    async fn ingest(&self, digest: &Digest) -> Option<ingest::Ingest> {
        if self.peer_fed.contains(digest) {
            return None;
        }
        let (content, digest) = (self.content_path.clone(), digest.clone());
        tokio::task::spawn_blocking(move || ingest::find(&content, &digest))
            .await
            .ok()
            .flatten()
            .filter(ingest::Ingest::growing)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        super::blob_path(&self.content_path, digest)
    }

    async fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.containerd
            .content_size(&self.namespace, &digest.to_string())
            .await
            .map_err(|e| failed(e, "content Info", digest))?
            .ok_or_else(|| StoreError::NotFound(format!("blob {digest}")))
    }

    /// A range of a blob through the content service.
    async fn stream(
        &self,
        digest: &Digest,
        range: ByteRange,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StoreError> {
        self.containerd
            .read_content(&self.namespace, &digest.to_string(), range.start, range.len)
            .await
            .map_err(|e| match e {
                e if e.is_not_found() => StoreError::NotFound(format!("blob {digest}")),
                e => failed(e, "content Read", digest),
            })
    }

    /// A whole manifest: small, so read into memory, from disk when possible.
    async fn read_all(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        if let Ok(bytes) = tokio::fs::read(self.blob_path(digest)).await {
            return Ok(bytes);
        }
        let len = self.size(digest).await?;
        let chunks: Vec<Bytes> = self
            .stream(digest, ByteRange { start: 0, len })
            .await?
            .try_collect()
            .await
            .map_err(|e| StoreError::backend(format!("reading {digest}"), e))?;
        Ok(chunks.concat())
    }

    async fn learn(&self, target: Option<ImageTarget>) {
        let Some(target) = target else { return };
        let Ok(digest) = target.digest.parse::<Digest>() else {
            return;
        };
        let root = Descriptor {
            media_type: target.media_type,
            digest,
        };
        self.media_types
            .learn(
                root,
                |digest| async move { self.read_all(&digest).await.ok() },
            )
            .await;
    }

    async fn list(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.containerd
            .images(&self.namespace)
            .await
            .map_err(|e| StoreError::backend("listing containerd's images", e))
    }

    /// Walks every image: the fallback when a manifest was never seen
    /// through `resolve`, e.g. a pull by digest. At most once per
    /// [`MISS_INTERVAL`]; a miss in between stays a miss until then.
    async fn learn_all(&self) -> Result<(), StoreError> {
        if !self.walks.ready() {
            return Ok(());
        }
        for image in self.list().await? {
            self.learn(image.target).await;
        }
        Ok(())
    }
}

fn failed(error: RuntimeError, rpc: &str, digest: &Digest) -> StoreError {
    StoreError::backend(format!("calling containerd {rpc} for blob {digest}"), error)
}

#[async_trait]
impl ContentStore for ContainerdStore {
    async fn resolve(
        &self,
        registry: &RegistryHost,
        name: &Name,
        tag: &Tag,
    ) -> Result<Digest, StoreError> {
        let reference = format!("{registry}/{name}:{tag}");
        let image = self
            .containerd
            .image(&self.namespace, &reference)
            .await
            .map_err(|e| {
                StoreError::backend(format!("calling containerd images Get for {reference}"), e)
            })?
            .ok_or_else(|| StoreError::NotFound(reference.clone()))?;
        let target = image.target.clone();
        let digest = target
            .as_ref()
            .and_then(|t| t.digest.parse::<Digest>().ok())
            .ok_or_else(|| {
                StoreError::backend(
                    format!("reading the target of image {reference}"),
                    "containerd returned no valid target digest",
                )
            })?;
        self.learn(target).await;
        Ok(digest)
    }

    async fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let media_type = match self.media_types.get(digest) {
            Some(media_type) => media_type,
            None => {
                // Only content that exists is worth a walk over every image.
                self.size(digest).await?;
                self.learn_all().await?;
                self.media_types
                    .get(digest)
                    .ok_or_else(|| StoreError::NotFound(format!("manifest {digest}")))?
            }
        };
        let bytes = self.read_all(digest).await?;
        Ok(Manifest {
            bytes: Bytes::from(bytes),
            media_type,
        })
    }

    async fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.size(digest).await
    }

    async fn blob(&self, digest: &Digest, range: ByteRange) -> Result<BlobBody, StoreError> {
        match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(file) => Ok(BlobBody::File {
                file: file.into_std().await,
                range,
            }),
            Err(_) => Ok(BlobBody::Stream(self.stream(digest, range).await?)),
        }
    }

    async fn images(&self) -> Result<Vec<Image>, StoreError> {
        let mut images = Vec::new();
        for image in self.list().await? {
            // Learning here too means a manifest asked for by digest later
            // is known without another walk over every image.
            self.learn(image.target.clone()).await;
            if let Some(digest) = image.target.and_then(|t| t.digest.parse().ok()) {
                images.push(Image {
                    name: image.name,
                    digest,
                });
            }
        }
        Ok(images)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.containerd
            .version()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::backend("asking containerd for its version", e))
    }

    /// Only downloads that have begun and still grow: an empty ingest may
    /// be one whose bytes are about to come from a peer through the mirror,
    /// which marks it only once containerd asks, and one that stopped is a
    /// pull that failed.
    async fn in_flight(&self) -> Vec<Digest> {
        let content = self.content_path.clone();
        let listed = tokio::task::spawn_blocking(move || ingest::list(&content))
            .await
            .unwrap_or_default();
        self.peer_fed.forget_gone(listed.iter().map(|i| &i.digest));
        listed
            .into_iter()
            .filter(|i| i.written > 0 && i.growing() && !self.peer_fed.contains(&i.digest))
            .map(|i| i.digest)
            .collect()
    }

    async fn in_flight_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        if let Some(ingest) = self.ingest(digest).await {
            return Ok(ingest.total);
        }
        let committed = tokio::fs::metadata(self.blob_path(digest)).await;
        committed
            .map(|metadata| metadata.len())
            .map_err(|_| StoreError::NotFound(format!("blob {digest} in flight")))
    }

    async fn in_flight_blob(
        &self,
        digest: &Digest,
        range: ByteRange,
    ) -> Result<BlobBody, StoreError> {
        let not_found = || StoreError::NotFound(format!("blob {digest} in flight"));
        let Some(ingest) = self.ingest(digest).await else {
            let file = tokio::fs::File::open(self.blob_path(digest))
                .await
                .map_err(|_| not_found())?;
            return Ok(BlobBody::File {
                file: file.into_std().await,
                range,
            });
        };
        match ingest::stream(&ingest, range, self.blob_path(digest)) {
            Ok(stream) => Ok(BlobBody::Stream(stream)),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => Err(not_found()),
            Err(error) => Err(StoreError::backend(
                format!("opening the download in progress of blob {digest}"),
                error,
            )),
        }
    }
}

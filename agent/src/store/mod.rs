//! The content store seam: where the manifests and blobs the mirror serves
//! come from. containerd's store is what nodes run; an OCI image-layout
//! directory serves development, benchmarks and air-gapped seeding. Both pass
//! the same conformance suite (`conformance`, behind the `test-util` feature).

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod containerd;
pub mod ingest;
mod media_types;
mod oci_layout;
mod peer_fed;
mod throttle;

pub use containerd::ContainerdStore;
pub use oci_layout::OciLayoutStore;
pub use peer_fed::{PeerFed, Relay};

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::oci::{Digest, Name, RegistryHost, Tag};

/// A manifest or index, small enough to hold in memory, with the media type
/// its parent descriptor gave it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
}

/// Where a content-addressed directory (containerd's content store, an OCI
/// layout) keeps a blob: `<root>/blobs/<alg>/<hex>`. Safe by construction:
/// a digest's hex part is never anything but hex.
fn blob_path(root: &std::path::Path, digest: &Digest) -> std::path::PathBuf {
    root.join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
}

/// An image name and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub digest: Digest,
}

/// `len` bytes of a blob starting at `start`; the registry has already
/// checked them against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

/// A blob's bytes, as cheaply as the backend can hand them over.
pub enum BlobBody {
    /// On local disk: the registry sends the range with `sendfile(2)`, and
    /// the bytes never enter user space.
    File {
        file: std::fs::File,
        range: ByteRange,
    },
    /// Only reachable through an API, already cut to the range.
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

impl fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobBody::File { range, .. } => write!(f, "BlobBody::File({range:?})"),
            BlobBody::Stream(_) => f.write_str("BlobBody::Stream"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The sentinel every caller matches on: the store does not have it.
    #[error("{0} is not in the content store")]
    NotFound(String),
    #[error("the content store failed while {context}: {}", crate::errors::chain(error.as_ref()))]
    Backend {
        context: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub fn backend(
        context: impl Into<String>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            error: error.into(),
        }
    }
}

/// What the mirror needs from a node's content. Implementations must be
/// cheap to call concurrently: every request goes through them.
#[async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// The digest that `registry/name:tag` points at on this node.
    async fn resolve(
        &self,
        registry: &RegistryHost,
        name: &Name,
        tag: &Tag,
    ) -> Result<Digest, StoreError>;

    /// A manifest or index. A digest that is a config or layer blob is
    /// `NotFound` here: it is not a manifest.
    async fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError>;

    /// A blob's size, without opening it: enough to answer HEAD and to
    /// check a range.
    async fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError>;

    /// A range of a blob's bytes.
    async fn blob(&self, digest: &Digest, range: ByteRange) -> Result<BlobBody, StoreError>;

    /// Every image the store knows, by name, with the digest it points at.
    /// Names are as the runtime keeps them: `registry/repo:tag`, and for
    /// containerd also `registry/repo@digest` and bare config digests.
    async fn images(&self) -> Result<Vec<Image>, StoreError>;

    /// Whether the backend answers at all; drives `/readyz`.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Blobs the runtime is writing now, from elsewhere than peers, that
    /// peers may read as they grow ([`ingest`]). A store nothing writes
    /// into has none.
    async fn in_flight(&self) -> Vec<Digest> {
        Vec::new()
    }

    /// The size a blob being written will have, for a peer's HEAD. A
    /// download that has just been committed is still one: containerd
    /// moves the data into place before its metadata records the blob, and
    /// a peer told 404 in that moment would fetch the blob again from the
    /// upstream.
    async fn in_flight_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        Err(StoreError::NotFound(format!("blob {digest} in flight")))
    }

    /// A blob being written, for a peer, as it grows; `range` must end
    /// where the blob does, or it is `NotFound` here. Once committed, any
    /// range.
    async fn in_flight_blob(
        &self,
        digest: &Digest,
        _range: ByteRange,
    ) -> Result<BlobBody, StoreError> {
        Err(StoreError::NotFound(format!("blob {digest} in flight")))
    }
}

//! Media types the mirror serves. A manifest's `Content-Type` must be its own
//! media type, taken from the descriptor that points at it: containerd
//! refuses a manifest whose type does not match what it asked for.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Blobs carry no type of their own over the wire.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Whether a media type names a manifest or an index, as opposed to a
/// config or layer blob.
pub fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_INDEX | OCI_MANIFEST | DOCKER_MANIFEST_LIST | DOCKER_MANIFEST
    )
}

/// Whether a manifest media type lists other manifests.
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

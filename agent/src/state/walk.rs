//! Which content of an image this node really holds: from the image's
//! target down through indexes and manifests to configs and layers. A
//! multi-platform index is pulled for one platform only, so the walk skips
//! what is missing instead of advertising what a peer would fail to get.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::oci::Digest;
use crate::store::{ContentStore, StoreError};

#[derive(Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<Child>,
    config: Option<Child>,
    #[serde(default)]
    layers: Vec<Child>,
}

#[derive(Deserialize)]
struct Child {
    digest: Digest,
}

/// Every digest under `root` that the store can serve.
pub async fn present(
    store: &dyn ContentStore,
    root: &Digest,
) -> Result<BTreeSet<Digest>, StoreError> {
    let mut found = BTreeSet::new();
    let mut manifests = vec![root.clone()];
    while let Some(digest) = manifests.pop() {
        if found.contains(&digest) {
            continue;
        }
        let manifest = match store.manifest(&digest).await {
            Ok(manifest) => manifest,
            Err(StoreError::NotFound(_)) => continue,
            Err(error) => return Err(error),
        };
        found.insert(digest);
        // A manifest we cannot parse still counts; it has no children we
        // could name.
        let Ok(children) = serde_json::from_slice::<Children>(&manifest.bytes) else {
            continue;
        };
        manifests.extend(children.manifests.into_iter().map(|c| c.digest));
        for blob in children.config.into_iter().chain(children.layers) {
            match store.blob_size(&blob.digest).await {
                Ok(_) => {
                    found.insert(blob.digest);
                }
                Err(StoreError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(found)
}

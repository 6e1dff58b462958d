//! Which digests are manifests, and of which media type, learnt by walking
//! the descriptors that point at them: an image's target, then each index's
//! `manifests`. The registry must answer with the type its parent descriptor
//! declared; sniffing the JSON would be a guess.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;

use crate::oci::{Digest, media_type};

#[derive(Debug, Default)]
pub struct MediaTypes {
    known: RwLock<HashMap<Digest, String>>,
}

/// The part of a descriptor the walk needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
}

#[derive(Deserialize)]
struct IndexChildren {
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

impl MediaTypes {
    pub fn get(&self, digest: &Digest) -> Option<String> {
        self.known
            .read()
            .expect("media type map poisoned")
            .get(digest)
            .cloned()
    }

    /// Records `root` and everything below it. `read` fetches a manifest's
    /// bytes, or `None` when the store does not hold it (a platform that was
    /// never pulled), which ends that branch.
    pub async fn learn<F, Fut>(&self, root: Descriptor, read: F)
    where
        F: Fn(Digest) -> Fut,
        Fut: Future<Output = Option<Vec<u8>>>,
    {
        let mut pending = vec![root];
        while let Some(descriptor) = pending.pop() {
            if !media_type::is_manifest(&descriptor.media_type) {
                continue;
            }
            let is_index = media_type::is_index(&descriptor.media_type);
            let digest = descriptor.digest.clone();
            self.known
                .write()
                .expect("media type map poisoned")
                .insert(descriptor.digest, descriptor.media_type);
            if !is_index {
                continue;
            }
            let Some(bytes) = read(digest).await else {
                continue;
            };
            let Ok(index) = serde_json::from_slice::<IndexChildren>(&bytes) else {
                continue;
            };
            // A child without a valid media type or digest cannot be served
            // as a manifest anyway; skip it rather than fail the whole walk.
            pending.extend(
                index
                    .manifests
                    .into_iter()
                    .filter_map(|child| serde_json::from_value(child).ok()),
            );
        }
    }
}

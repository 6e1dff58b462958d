//! Which references this node serves: `--mirrored-registries` limits the
//! registries, `--registry-filters` excludes references by regular
//! expression, both as in Spegel.

use regex::Regex;

use super::error::RegistryError;
use super::target::{Kind, Target};
use crate::oci::Registry;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty means every registry.
    pub mirrored: Vec<Registry>,
    /// A reference that matches any of these is not served.
    pub exclude: Vec<Regex>,
}

impl Filter {
    /// A digest asked for without a registry is content-addressed and
    /// allowed; anything naming a registry must pass both lists.
    pub(super) fn check(&self, target: &Target) -> Result<(), RegistryError> {
        let Some(registry) = &target.registry else {
            return Ok(());
        };
        let reference = match &target.kind {
            Kind::Manifest(crate::oci::Reference::Tag(tag)) => {
                format!("{registry}/{}:{tag}", target.name)
            }
            Kind::Manifest(crate::oci::Reference::Digest(digest)) | Kind::Blob(digest) => {
                format!("{registry}/{}@{digest}", target.name)
            }
        };
        if !self.allows(registry, &reference) {
            let error = format!("{reference} is not mirrored by this node");
            return Err(match target.kind {
                Kind::Manifest(_) => RegistryError::ManifestUnknown(error),
                Kind::Blob(_) => RegistryError::BlobUnknown(error),
            });
        }
        Ok(())
    }

    /// Whether a full reference (`docker.io/library/nginx:1.27`) of
    /// `registry` is served and advertised.
    pub fn allows(&self, registry: &Registry, reference: &str) -> bool {
        let mirrored = self.mirrored.is_empty() || self.mirrored.contains(registry);
        mirrored && !self.exclude.iter().any(|filter| filter.is_match(reference))
    }
}

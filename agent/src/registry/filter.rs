//! The filter at the door: a request naming a reference this node does not
//! mirror is answered as unknown, before any store or peer is asked.

use super::error::RegistryError;
use super::target::{Kind, Target};
use crate::oci::{Filter, Reference};

/// A digest asked for without a registry is content-addressed and allowed;
/// anything naming a registry must pass the filter.
pub(super) fn check(filter: &Filter, target: &Target) -> Result<(), RegistryError> {
    let Some(registry) = &target.registry else {
        return Ok(());
    };
    let reference = match &target.kind {
        Kind::Manifest(Reference::Tag(tag)) => format!("{registry}/{}:{tag}", target.name),
        Kind::Manifest(Reference::Digest(digest)) | Kind::Blob(digest) => {
            format!("{registry}/{}@{digest}", target.name)
        }
    };
    if !filter.allows(registry, &reference) {
        let error = format!("{reference} is not mirrored by this node");
        return Err(match target.kind {
            Kind::Manifest(_) => RegistryError::ManifestUnknown(error),
            Kind::Blob(_) => RegistryError::BlobUnknown(error),
        });
    }
    Ok(())
}

//! The OCI distribution vocabulary: digests, repository names, tags and
//! media types, each parsed strictly at the edge so that nothing downstream
//! ever sees a path component it did not expect.
//!
//! Every parser here takes hostile input from the network: a name that
//! passes is safe to use in a containerd image name, a digest that passes is
//! safe to use as a file name under a content store.

mod digest;
mod filter;
pub mod media_type;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, Verifier};
pub use filter::Filter;
pub use reference::{Name, NameError, Reference, RegistryHost, RegistryHostError, Tag};

/// The parsers face the network: whatever they are given, they must not
/// panic, and whatever they accept must be safe to use as a path.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn accepted_names_are_safe_path_components(input in "\\PC{0,80}|[a-z0-9./_-]{0,40}") {
            if let Ok(name) = input.parse::<Name>() {
                let name = name.as_str();
                prop_assert!(!name.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
                prop_assert!(!name.contains(['%', '\\', '\0', ' ']));
            }
        }

        #[test]
        fn accepted_digests_round_trip_and_are_plain_hex(input in "(sha256|sha512|md5)?:?[0-9a-fA-F./]{0,130}|\\PC{0,20}") {
            if let Ok(digest) = input.parse::<Digest>() {
                prop_assert_eq!(digest.to_string(), input);
                prop_assert!(digest.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }

        #[test]
        fn references_never_panic(input in "\\PC{0,200}") {
            let _ = input.parse::<Reference>();
            let _ = input.parse::<RegistryHost>();
            let _ = input.parse::<Tag>();
        }
    }
}

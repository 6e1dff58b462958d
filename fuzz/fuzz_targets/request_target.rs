//! A `/v2/…` path and query, as a client sends them: parsing never panics,
//! and what it accepts is made only of parts that parse again by themselves.
//! Input: what follows `/v2/`, with the query after the first `?`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflektor::oci::{Digest, Name, RegistryHost};
use reflektor::registry::target::{Kind, Target};

fuzz_target!(|input: &str| {
    let (path, query) = match input.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (input, None),
    };
    if let Ok(target) = Target::parse(path, query) {
        assert!(!path.contains('%'));
        let name = target.name.to_string();
        assert_eq!(
            name.parse::<Name>().map(|n| n.to_string()).ok(),
            Some(name.clone())
        );
        assert!(!name.split('/').any(|part| part == ".." || part == "."));
        if let Some(registry) = &target.registry {
            assert!(registry.to_string().parse::<RegistryHost>().is_ok());
        }
        if let Kind::Blob(digest) = &target.kind {
            assert!(digest.to_string().parse::<Digest>().is_ok());
            assert!(path.ends_with(&digest.to_string()));
        }
    }
});

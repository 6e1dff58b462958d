//! A digest from a URL or a peer: whatever parses prints back as itself,
//! since the agent uses its text as a file name and a DHT key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflektor::oci::Digest;

fuzz_target!(|input: &str| {
    if let Ok(digest) = input.parse::<Digest>() {
        assert_eq!(digest.to_string(), input);
        assert!(!digest.hex().contains(['/', '.']));
    }
});

//! A runtime's version string, which reflektor never controls: parsing
//! never panics (Spegel's crash on `1.6.20~ds1` is why this project
//! exists), and an accepted version's printed form parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflektor::version::RuntimeVersion;

fuzz_target!(|input: &str| {
    if let Ok(version) = RuntimeVersion::parse(input) {
        assert!(version.components().len() >= 2);
        let again = RuntimeVersion::parse(&version.to_string()).expect("a printed version parses");
        assert_eq!(again.components(), version.components());
        assert_eq!(again.suffix(), "");
    }
});

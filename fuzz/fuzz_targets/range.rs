//! A `Range` header against a blob's size: a partial answer always lies
//! inside the blob and is never empty, whatever the header says. Input:
//! the size in decimal, a newline, then the header's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflektor::registry::range::{RangeRequest, parse};

fuzz_target!(|input: &[u8]| {
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Some(size) = std::str::from_utf8(&input[..newline])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    if let RangeRequest::Partial(range) = parse(Some(&input[newline + 1..]), size) {
        assert!(range.len >= 1, "{range:?} of {size}");
        let end = range.start.checked_add(range.len).expect("no overflow");
        assert!(end <= size, "{range:?} of {size}");
    }
});

//! The `Range` request header, for blobs: one byte range, as containerd and
//! resuming clients send it. Several ranges get the whole blob (RFC 9110
//! lets a server ignore a multi-range request); a range that cannot be met
//! or cannot be read gets 416.

use crate::store::ByteRange;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No `Range` header, a unit other than bytes, or several ranges.
    Whole,
    Partial(ByteRange),
    Unsatisfiable,
}

/// Interprets a `Range` header value against a blob of `size` bytes.
pub fn parse(header: Option<&[u8]>, size: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Whole;
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return RangeRequest::Unsatisfiable;
    };
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (start, end) = match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(n) if n > 0 && size > 0 => (size.saturating_sub(n), size - 1),
            _ => return RangeRequest::Unsatisfiable,
        },
        (first, "") => match number(first) {
            Some(start) if start < size => (start, size - 1),
            _ => return RangeRequest::Unsatisfiable,
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end && start < size => (start, end.min(size - 1)),
            _ => return RangeRequest::Unsatisfiable,
        },
    };
    RangeRequest::Partial(ByteRange {
        start,
        len: end - start + 1,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn partial(start: u64, len: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, len })
    }

    #[test]
    fn the_forms_clients_send() {
        let size = 1000;
        let cases: &[(&str, RangeRequest)] = &[
            ("bytes=0-0", partial(0, 1)),
            ("bytes=0-999", partial(0, 1000)),
            ("bytes=0-5000", partial(0, 1000)),
            ("bytes=500-", partial(500, 500)),
            ("bytes=-100", partial(900, 100)),
            ("bytes=-5000", partial(0, 1000)),
            ("bytes=999-", partial(999, 1)),
            ("bytes=1000-", RangeRequest::Unsatisfiable),
            ("bytes=5-4", RangeRequest::Unsatisfiable),
            ("bytes=-0", RangeRequest::Unsatisfiable),
            ("bytes=-", RangeRequest::Unsatisfiable),
            ("bytes=a-b", RangeRequest::Unsatisfiable),
            ("bytes=+1-2", RangeRequest::Unsatisfiable),
            ("bytes=1", RangeRequest::Unsatisfiable),
            (
                "bytes=99999999999999999999999-",
                RangeRequest::Unsatisfiable,
            ),
            ("bytes=0-1,5-6", RangeRequest::Whole),
            ("items=0-1", RangeRequest::Whole),
        ];
        for (header, expected) in cases {
            assert_eq!(parse(Some(header.as_bytes()), size), *expected, "{header}");
        }
        assert_eq!(parse(None, size), RangeRequest::Whole);
        assert_eq!(
            parse(Some(b"bytes=0-\xff"), size),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn nothing_in_an_empty_blob_can_be_ranged() {
        for header in ["bytes=0-0", "bytes=0-", "bytes=-1"] {
            assert_eq!(
                parse(Some(header.as_bytes()), 0),
                RangeRequest::Unsatisfiable
            );
        }
    }

    proptest! {
        #[test]
        fn any_header_stays_inside_the_blob(header in "\\PC{0,40}", size in 0u64..10_000) {
            if let RangeRequest::Partial(range) = parse(Some(header.as_bytes()), size) {
                prop_assert!(range.len > 0);
                prop_assert!(range.start + range.len <= size);
            }
        }

        #[test]
        fn well_formed_ranges_are_honoured(start in 0u64..5000, len in 1u64..5000, size in 1u64..10_000) {
            let header = format!("bytes={}-{}", start, start + len - 1);
            let got = parse(Some(header.as_bytes()), size);
            if start < size {
                prop_assert_eq!(got, partial(start, len.min(size - start)));
            } else {
                prop_assert_eq!(got, RangeRequest::Unsatisfiable);
            }
        }
    }
}

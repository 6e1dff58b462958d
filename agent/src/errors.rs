//! The project's one convention for error chains: a typed error names its
//! cause in its own message and never hands it out again as `source()`, so
//! every message reads whole in a log line, and `{:#}` at the edge prints
//! each cause once. Foreign errors that keep their detail in their own
//! chain (tonic's "transport error", hyper's "client error") are written
//! out whole with [`chain`].

use std::error::Error;
use std::fmt::Write as _;

/// An error and every cause below it, joined as `a: b: c`.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        // Some errors already quote their cause; say it once.
        if !text.ends_with(&next_text) {
            let _ = write!(text, ": {next_text}");
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&error), "outer: inner");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}

//! Go durations (`20ms`, `1.5s`, `1m30s`): Spegel's flags take them, and
//! containerd parses `dial_timeout` in `hosts.toml` with Go's
//! `time.ParseDuration`, ignoring the whole file when it cannot. One parser
//! for every such flag, so a value that one command accepts the other does
//! too, and what is written for containerd is exactly what was given.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration as the user wrote it, checked to be one Go would parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoDuration {
    text: String,
    duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration; expected a positive Go duration such as \"200ms\", \"1s\" \
     or \"1m30s\" (units ns, us, ms, s, m, h; at most 2562047h)"
)]
pub struct DurationError {
    input: String,
}

impl GoDuration {
    pub fn get(&self) -> Duration {
        self.duration
    }

    pub fn is_zero(&self) -> bool {
        self.duration.is_zero()
    }
}

/// Nanoseconds per unit, as `time.ParseDuration` spells them.
fn unit_nanos(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" | "μs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    })
}

impl FromStr for GoDuration {
    type Err = DurationError;

    /// Signs are refused: no timeout or interval here can be negative.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || DurationError {
            input: input.to_owned(),
        };
        // Go's one unitless duration.
        if input == "0" {
            return Ok(GoDuration {
                text: input.to_owned(),
                duration: Duration::ZERO,
            });
        }
        if input.is_empty() {
            return Err(invalid());
        }
        let mut rest = input;
        let mut nanos = 0f64;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(invalid)?;
            let number = &rest[..number_len];
            if number.matches('.').count() > 1 || !number.chars().any(|c| c != '.') {
                return Err(invalid());
            }
            let value: f64 = number.parse().map_err(|_| invalid())?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            nanos += value * unit_nanos(&rest[..unit_len]).ok_or_else(invalid)?;
            rest = &rest[unit_len..];
        }
        // Go's limit: about 2 562 047 hours. containerd ignores a whole
        // hosts.toml whose dial_timeout it cannot parse.
        if nanos > i64::MAX as f64 {
            return Err(invalid());
        }
        let duration = Duration::try_from_secs_f64(nanos / 1e9).map_err(|_| invalid())?;
        Ok(GoDuration {
            text: input.to_owned(),
            duration,
        })
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax_is_read_as_go_reads_it() {
        for (text, expected) in [
            ("20ms", Duration::from_millis(20)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("300us", Duration::from_micros(300)),
            ("300µs", Duration::from_micros(300)),
            (".5s", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("0ms0s", Duration::ZERO),
        ] {
            let parsed: GoDuration = text.parse().unwrap();
            assert_eq!(parsed.get(), expected, "{text}");
            assert_eq!(parsed.to_string(), text, "written back as given");
        }
    }

    #[test]
    fn what_go_refuses_is_refused_with_the_expected_form() {
        for text in [
            "", "200", "-1s", "+1s", "1d", "1..5s", "ms", ".s", "1 s", "2562048h",
        ] {
            let error = text.parse::<GoDuration>().unwrap_err().to_string();
            assert!(
                error.contains("expected a positive Go duration"),
                "{text}: {error}"
            );
        }
    }
}

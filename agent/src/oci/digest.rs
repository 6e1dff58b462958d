//! Content digests, as the distribution spec allows them in URLs.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: `sha256:` and 64 lowercase hex characters, or
/// `sha512:` and 128. Anything else is refused, so the hex part is always
/// safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "digest {0:?} has an unsupported algorithm; expected \"sha256:<64 hex>\" or \
         \"sha512:<128 hex>\""
    )]
    Algorithm(String),
    #[error("digest {input:?} is not {expected} lowercase hexadecimal characters after the colon")]
    Hex { input: String, expected: usize },
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of some bytes.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }
}

impl Digest {
    /// A hasher for bytes that claim to be this digest's content, checked
    /// as they stream instead of after gathering them.
    pub fn verifier(&self) -> Verifier {
        use sha2::Digest as _;
        let hasher = match self.algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        };
        Verifier {
            expected: self.clone(),
            hasher,
        }
    }
}

/// See [`Digest::verifier`].
pub struct Verifier {
    expected: Digest,
    hasher: Hasher,
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Verifier {
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match &mut self.hasher {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::Sha512(hasher) => hasher.update(bytes),
        }
    }

    /// The digest of what was hashed, when it is not the expected one.
    pub fn mismatch(self) -> Option<Digest> {
        use sha2::Digest as _;
        let (algorithm, hex) = match self.hasher {
            Hasher::Sha256(hasher) => (Algorithm::Sha256, hex::encode(hasher.finalize())),
            Hasher::Sha512(hasher) => (Algorithm::Sha512, hex::encode(hasher.finalize())),
        };
        let actual = Digest { algorithm, hex };
        (actual != self.expected).then_some(actual)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let shown = || input.chars().take(80).collect::<String>();
        let (algorithm, hex) = match input.split_once(':') {
            Some(("sha256", hex)) => (Algorithm::Sha256, hex),
            Some(("sha512", hex)) => (Algorithm::Sha512, hex),
            _ => return Err(DigestError::Algorithm(shown())),
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Hex {
                input: shown(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepts_exactly_the_spec_forms() {
        let digest: Digest = format!("sha256:{HEX64}").parse().unwrap();
        assert_eq!(digest.to_string(), format!("sha256:{HEX64}"));
        assert_eq!(digest, Digest::sha256_of(b""));
        let long = format!("sha512:{}", "a".repeat(128));
        assert_eq!(long.parse::<Digest>().unwrap().to_string(), long);
    }

    #[test]
    fn a_verifier_checks_bytes_fed_in_pieces() {
        let expected = Digest::sha256_of(b"hello world");
        let mut verifier = expected.verifier();
        verifier.update(b"hello ");
        verifier.update(b"world");
        assert_eq!(verifier.mismatch(), None);
        let mut verifier = expected.verifier();
        verifier.update(b"hello there");
        assert_eq!(verifier.mismatch(), Some(Digest::sha256_of(b"hello there")));
        // sha512 of "": the well-known value.
        let empty512: Digest = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e".parse().unwrap();
        assert_eq!(empty512.verifier().mismatch(), None);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            String::new(),
            "sha256".into(),
            "sha256:".into(),
            format!("sha256:{}", HEX64.to_uppercase()),
            format!("sha256:{}", &HEX64[1..]),
            format!("sha256:{HEX64}0"),
            format!("sha256:../{}", &HEX64[3..]),
            format!("SHA256:{HEX64}"),
            format!("md5:{HEX64}"),
            format!("sha512:{HEX64}"),
            format!("sha256:{}\u{0}", &HEX64[1..]),
            format!("sha256:{}é", &HEX64[2..]),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} was accepted");
        }
    }
}

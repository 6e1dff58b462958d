//! Basic auth on the mirror, as Spegel has it, so that both can run off one
//! Secret: the credentials are the files `username` and `password` in one
//! directory (`/etc/secrets/basic-auth`, where Spegel's chart mounts the
//! Secret named by `basicAuthSecretName`). With them, the registry answers
//! `/v2/` only to requests that carry them, the mirror sends them to its
//! peers, and `configuration` writes them into hosts.toml as a header, so
//! that containerd sends them too. Without them, auth is off.
//!
//! The files are taken byte for byte, with no trimming, exactly as Spegel
//! reads them: nodes of both in one cluster must agree on the credentials.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq as _;

/// Where Spegel's chart mounts the Secret, and where both read it.
pub const DEFAULT_DIR: &str = "/etc/secrets/basic-auth";

#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    username: Vec<u8>,
    password: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "reading {path}: {reason}; mount the basic-auth Secret there readable, or remove it \
         to turn auth off"
    )]
    Read { path: PathBuf, reason: String },
}

impl BasicAuth {
    pub fn new(username: impl Into<Vec<u8>>, password: impl Into<Vec<u8>>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The credentials in `dir`, or `None` when neither file is there or
    /// both are empty. A username alone means an empty password.
    pub fn load(dir: &Path) -> Result<Option<Self>, AuthError> {
        let read = |name: &str| {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(error) => Err(AuthError::Read {
                    path,
                    reason: error.to_string(),
                }),
            }
        };
        let (username, password) = (read("username")?, read("password")?);
        if username.is_empty() && password.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { username, password }))
    }

    /// The `Authorization` header value: `Basic base64(username:password)`.
    pub fn header_value(&self) -> String {
        let mut pair = self.username.clone();
        pair.push(b':');
        pair.extend_from_slice(&self.password);
        format!("Basic {}", STANDARD.encode(pair))
    }

    /// Whether an `Authorization` header carries these credentials. Both
    /// parts are compared in constant time, whatever the first one gave,
    /// so the time taken tells an attacker nothing.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(encoded) = authorization
            .and_then(|value| strip_prefix_ignore_case(value, b"basic "))
            .map(|value| value.trim_ascii())
        else {
            return false;
        };
        let Ok(decoded) = STANDARD.decode(encoded) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (username, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let user_ok = username.ct_eq(&self.username);
        let password_ok = password.ct_eq(&self.password);
        bool::from(user_ok & password_ok)
    }
}

/// The scheme is case-insensitive (RFC 9110).
fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

/// Never the password, so that a log line or a panic cannot leak it.
impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_spegels() {
        // Spegel's own test expects this value for hello:world.
        let auth = BasicAuth::new("hello", "world");
        assert_eq!(auth.header_value(), "Basic aGVsbG86d29ybGQ=");
    }

    #[test]
    fn only_the_right_credentials_are_accepted() {
        let auth = BasicAuth::new("hello", "world");
        let right = auth.header_value();
        assert!(auth.accepts(Some(right.as_bytes())));
        assert!(
            auth.accepts(Some(b"basic aGVsbG86d29ybGQ=")),
            "the scheme's case"
        );
        for wrong in [
            None,
            Some(&b""[..]),
            Some(b"Basic"),
            Some(b"Bearer aGVsbG86d29ybGQ="),
            Some(b"Basic not-base64!"),
            Some(b"Basic aGVsbG8="),
            Some(BasicAuth::new("hello", "World").header_value().as_bytes()),
            Some(BasicAuth::new("hell", "oworld").header_value().as_bytes()),
            Some(BasicAuth::new("hello", "world ").header_value().as_bytes()),
        ] {
            assert!(
                !auth.accepts(wrong),
                "{:?}",
                wrong.map(String::from_utf8_lossy)
            );
        }
    }

    #[test]
    fn loading_reads_the_files_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BasicAuth::load(dir.path()).unwrap(), None, "no files: off");
        std::fs::write(dir.path().join("username"), "").unwrap();
        std::fs::write(dir.path().join("password"), "").unwrap();
        assert_eq!(BasicAuth::load(dir.path()).unwrap(), None, "empty: off");
        std::fs::write(dir.path().join("username"), "user\n").unwrap();
        assert_eq!(
            BasicAuth::load(dir.path()).unwrap(),
            Some(BasicAuth::new("user\n", "")),
            "untrimmed, and a username alone has an empty password"
        );
        std::fs::write(dir.path().join("password"), "secret").unwrap();
        let loaded = BasicAuth::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, BasicAuth::new("user\n", "secret"));
        assert!(!format!("{loaded:?}").contains("secret"), "{loaded:?}");

        let unreadable = dir.path().join("not-a-dir");
        std::fs::write(&unreadable, "").unwrap();
        let error = BasicAuth::load(&unreadable).unwrap_err().to_string();
        assert!(error.contains("not-a-dir/username"), "{error}");
    }
}

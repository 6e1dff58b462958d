//! Who a node is, and which network it may join.
//!
//! The peer id is kept in the data directory so that a restarted node comes
//! back as the same peer: the records others hold for it stay valid instead
//! of pointing at a peer that no longer exists until they expire. The
//! optional pre-shared key keeps every node without it out of the network,
//! before any Kademlia message is read.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::{KeyParseError, PreSharedKey};

use super::RoutingError;

/// The identity file's name inside the data directory.
const IDENTITY_FILE: &str = "identity.key";

/// Reads this node's key from `<data_dir>/identity.key`, or creates one.
///
/// The file holds the key in libp2p's protobuf encoding, readable by the
/// owner only. A new key is written to a temporary file and then linked into
/// place, which fails if the file appeared meanwhile: two processes starting
/// at once end up with the same key, and a crash never leaves half a key.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, RoutingError> {
    let path = identity_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => return decode(&path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RoutingError::Identity {
                path,
                error: source,
            });
        }
    }
    let io_error = |source| RoutingError::Identity {
        path: path.clone(),
        error: source,
    };
    fs::create_dir_all(data_dir).map_err(io_error)?;
    let keypair = Keypair::generate_ed25519();
    let encoded = keypair
        .to_protobuf_encoding()
        .expect("an ed25519 key always encodes");
    let temporary = data_dir.join(format!(".{IDENTITY_FILE}.{}", std::process::id()));
    let written =
        write_private(&temporary, &encoded).and_then(|()| fs::hard_link(&temporary, &path));
    let _ = fs::remove_file(&temporary);
    match written {
        Ok(()) => Ok(keypair),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes = fs::read(&path).map_err(io_error)?;
            decode(&path, &bytes)
        }
        Err(source) => Err(io_error(source)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, RoutingError> {
    Keypair::from_protobuf_encoding(bytes).map_err(|source| RoutingError::IdentityInvalid {
        path: path.to_path_buf(),
        error: source,
    })
}

/// Reads a pre-shared key file in the format go-libp2p and IPFS use:
///
/// ```text
/// /key/swarm/psk/1.0.0/
/// /base16/
/// <64 hex digits>
/// ```
pub fn read_psk(path: &Path) -> Result<PreSharedKey, RoutingError> {
    let text = fs::read_to_string(path).map_err(|source| RoutingError::PskUnreadable {
        path: path.to_path_buf(),
        error: source,
    })?;
    parse_psk(&text).map_err(|problem| RoutingError::PskInvalid {
        path: path.to_path_buf(),
        problem,
    })
}

/// What is wrong with a pre-shared key file, in words.
fn parse_psk(text: &str) -> Result<PreSharedKey, &'static str> {
    text.parse().map_err(|e| match e {
        KeyParseError::InvalidKeyFile => "it does not have three lines",
        KeyParseError::InvalidKeyType => "its first line is not `/key/swarm/psk/1.0.0/`",
        KeyParseError::InvalidKeyEncoding => "its second line is not `/base16/`",
        KeyParseError::InvalidKeyLength => "its third line is not 64 hex digits long",
        KeyParseError::InvalidKeyChar(_) => "its third line holds a character that is not hex",
    })
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_restarted_node_keeps_its_peer_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");

        let first = load_or_create(&data_dir).expect("created");
        let second = load_or_create(&data_dir).expect("loaded");

        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        let mode = fs::metadata(identity_path(&data_dir))
            .expect("identity file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&data_dir)
            .expect("data dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![IDENTITY_FILE]);
    }

    #[test]
    fn a_damaged_identity_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(identity_path(dir.path()), b"not a key").expect("write");

        let error = load_or_create(dir.path()).expect_err("refused");

        let message = error.to_string();
        assert!(message.contains("identity.key"), "{message}");
        assert!(message.contains("move it away"), "{message}");
        assert_eq!(
            fs::read(identity_path(dir.path())).expect("kept"),
            b"not a key"
        );
    }

    #[test]
    fn psk_files_are_read_in_the_swarm_key_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("swarm.key");
        let key = PreSharedKey::new([7; 32]);
        fs::write(&path, key.to_key_file()).expect("write");
        assert_eq!(
            read_psk(&path).expect("parsed").fingerprint().to_string(),
            key.fingerprint().to_string()
        );

        fs::write(&path, "/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n").expect("write");
        let message = read_psk(&path).expect_err("refused").to_string();
        assert!(message.contains("`/base16/`"), "{message}");
        assert!(message.contains("swarm.key"), "{message}");
    }
}

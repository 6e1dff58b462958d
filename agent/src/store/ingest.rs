//! Blobs containerd is still writing: its ingest directory. A pull writes
//! each blob to `<content>/ingest/<key>/data`, next to `ref` (the writer's
//! reference, which ends in the blob's digest) and `total` (the size it
//! will have), and renames `data` into `blobs/` once it is whole and its
//! digest checked. Read from there, a blob this node is downloading can go
//! to a peer while it downloads, instead of the peer fetching it from the
//! upstream as well: when many nodes pull one new image, one download
//! serves them all.
//!
//! containerd has not checked these bytes yet, so they are hashed on the
//! way out, and the last of them is held back unless the whole blob
//! matches its digest.
//!
//! The layout is containerd's local content store's, which the agent
//! already reads committed blobs from; only the pieces named above are
//! read. An ingest that cannot be read whole (a half-written `ref`, a
//! directory removed while it is listed) is skipped: it will be read again
//! at the next look, or it is gone.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::ByteRange;
use crate::oci::{Digest, Verifier};

/// How long a blob being written may stop growing before a reader of it
/// gives up: the same bound a peer's body has, after which the reading
/// peer resumes elsewhere anyway.
pub const STALL: Duration = Duration::from_secs(10);
/// How often a reader that caught up looks for more bytes.
const POLL: Duration = Duration::from_millis(10);
/// Bytes read per step.
const CHUNK: usize = 256 * 1024;

/// One blob being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingest {
    pub digest: Digest,
    /// The size it will have.
    pub total: u64,
    /// Bytes written so far.
    pub written: u64,
    /// When bytes were last written.
    updated: std::time::SystemTime,
    data: PathBuf,
}

impl Ingest {
    /// Whether bytes were written within [`STALL`]: a download that stopped
    /// longer ago failed, and its reader would only wait for it to give up.
    pub fn growing(&self) -> bool {
        self.updated.elapsed().is_ok_and(|since| since < STALL)
    }
}

/// Every blob being written under `content` whose size is known, in no
/// particular order.
pub fn list(content: &Path) -> Vec<Ingest> {
    let Ok(entries) = std::fs::read_dir(content.join("ingest")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| read(&entry.ok()?.path()))
        .collect()
}

/// The ingest of `digest`, if one is being written.
pub fn find(content: &Path, digest: &Digest) -> Option<Ingest> {
    list(content).into_iter().find(|i| &i.digest == digest)
}

fn read(dir: &Path) -> Option<Ingest> {
    let reference = std::fs::read_to_string(dir.join("ref")).ok()?;
    let digest = digest_of(&reference)?;
    let total = std::fs::read_to_string(dir.join("total"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&total| total > 0)?;
    let data = dir.join("data");
    let metadata = std::fs::metadata(&data).ok()?;
    Some(Ingest {
        digest,
        total,
        written: metadata.len(),
        updated: metadata.modified().ok()?,
        data,
    })
}

/// The digest a writer's reference ends in: containerd names them
/// `<namespace>/<id>/<kind>-<digest>` (`k8s.io/12/layer-sha256:…`), and
/// other clients put the digest last too. A reference that ends otherwise
/// names no blob the agent can serve.
fn digest_of(reference: &str) -> Option<Digest> {
    let reference = reference.trim();
    ["sha256:", "sha512:"].iter().find_map(|algorithm| {
        let at = reference.rfind(algorithm)?;
        reference[at..].parse().ok()
    })
}

/// `range` of the blob `ingest` is writing, as it arrives. `range` must end
/// where the blob does, so that every byte can be checked before the last
/// goes out; the bytes before it are read and hashed too. `committed` is
/// where the blob lands once containerd has it whole: a download that
/// neither grows nor lands within [`STALL`] ends the stream with an error.
pub fn stream(
    ingest: &Ingest,
    range: ByteRange,
    committed: PathBuf,
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    if range.start.checked_add(range.len) != Some(ingest.total) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a blob being written is served only to its end",
        ));
    }
    let file = match File::open(&ingest.data) {
        Ok(file) => file,
        // Committed between the listing and now: the same bytes, whole.
        Err(_) => File::open(&committed)?,
    };
    let reader = Reader {
        file: Arc::new(file),
        data: ingest.data.clone(),
        committed,
        offset: 0,
        start: range.start,
        end: ingest.total,
        verifier: Some(ingest.digest.verifier()),
        grew: tokio::time::Instant::now(),
    };
    Ok(Box::pin(futures::stream::unfold(
        Some(reader),
        |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        },
    )))
}

struct Reader {
    file: Arc<File>,
    data: PathBuf,
    committed: PathBuf,
    /// Where the next read starts; below `start`, bytes are only hashed.
    offset: u64,
    start: u64,
    end: u64,
    /// Taken when the last byte is read.
    verifier: Option<Verifier>,
    /// When the file last grew (tokio's clock, so that tests can pause it).
    grew: tokio::time::Instant,
}

impl Reader {
    /// The next bytes to send, `None` at the end.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        while self.offset < self.end {
            let want = usize::try_from(self.end - self.offset)
                .unwrap_or(usize::MAX)
                .min(CHUNK);
            let (file, offset) = (Arc::clone(&self.file), self.offset);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buffer = vec![0; want];
                let read = file.read_at(&mut buffer, offset)?;
                buffer.truncate(read);
                io::Result::Ok(buffer)
            })
            .await
            .map_err(io::Error::other)??;
            if chunk.is_empty() {
                self.wait().await?;
                continue;
            }
            self.grew = tokio::time::Instant::now();
            let chunk_start = self.offset;
            self.offset += chunk.len() as u64;
            if let Some(verifier) = &mut self.verifier {
                verifier.update(&chunk);
            }
            if self.offset == self.end {
                self.check()?;
            }
            if self.offset <= self.start {
                continue;
            }
            let skip = usize::try_from(self.start.saturating_sub(chunk_start)).unwrap_or(0);
            return Ok(Some(Bytes::from(chunk).slice(skip..)));
        }
        Ok(None)
    }

    /// Waits for the writer, or says why there is nothing to wait for.
    async fn wait(&self) -> io::Result<()> {
        if self.grew.elapsed() >= STALL {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the download of this blob stopped at byte {} of {} for {}s",
                    self.offset,
                    self.end,
                    STALL.as_secs()
                ),
            ));
        }
        // Renamed into blobs/ means whole: the file can no longer grow, and
        // ended short of the size containerd was told.
        if !self.data.exists() && self.committed.exists() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the blob was committed with {} of the {} bytes its download announced",
                    self.offset, self.end
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }

    fn check(&mut self) -> io::Result<()> {
        let Some(actual) = self.verifier.take().and_then(Verifier::mismatch) else {
            return Ok(());
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the download in progress has digest {actual}; the response is cut short"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures::TryStreamExt;

    use super::*;

    /// An ingest as containerd's local store lays one out.
    fn ingest(content: &Path, key: &str, reference: &str, total: Option<u64>) -> PathBuf {
        let dir = content.join("ingest").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ref"), reference).unwrap();
        if let Some(total) = total {
            std::fs::write(dir.join("total"), total.to_string()).unwrap();
        }
        std::fs::write(dir.join("data"), b"").unwrap();
        dir.join("data")
    }

    fn blob(len: usize) -> (Vec<u8>, Digest) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::sha256_of(&bytes);
        (bytes, digest)
    }

    #[test]
    fn lists_the_blobs_being_written_by_the_digest_their_reference_ends_in() {
        let content = tempfile::tempdir().unwrap();
        let (_, digest) = blob(10);
        ingest(
            content.path(),
            "a",
            &format!("k8s.io/12/layer-{digest}"),
            Some(10),
        );
        // No size yet, or a reference naming no digest: nothing to serve.
        ingest(content.path(), "b", "k8s.io/13/layer-sha256:abc", Some(10));
        ingest(
            content.path(),
            "c",
            &format!("k8s.io/14/config-{digest}"),
            None,
        );
        let found = list(content.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].digest, digest);
        assert_eq!((found[0].total, found[0].written), (10, 0));
        assert!(found[0].growing(), "written just now");
        assert_eq!(find(content.path(), &digest), Some(found[0].clone()));
        assert!(list(&content.path().join("missing")).is_empty());
    }

    /// A writer appends in pieces while a reader streams from byte `start`.
    async fn stream_while_written(
        bytes: &[u8],
        start: usize,
        written_as: &[u8],
    ) -> io::Result<Vec<u8>> {
        let content = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(bytes);
        let data = ingest(
            content.path(),
            "k",
            &format!("k8s.io/1/layer-{digest}"),
            Some(bytes.len() as u64),
        );
        let found = find(content.path(), &digest).unwrap();
        let range = ByteRange {
            start: start as u64,
            len: (bytes.len() - start) as u64,
        };
        let body = stream(&found, range, content.path().join("blob")).unwrap();
        let written = written_as.to_vec();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(data).unwrap();
            for piece in written.chunks(100_000) {
                file.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let got: Result<Vec<Bytes>, _> = body.try_collect().await;
        writer.join().unwrap();
        got.map(|chunks| chunks.concat())
    }

    #[tokio::test]
    async fn a_blob_streams_as_it_is_written_from_any_byte_to_its_end() {
        let (bytes, _) = blob(1_000_000);
        let whole = stream_while_written(&bytes, 0, &bytes).await.unwrap();
        assert!(whole == bytes, "the whole blob differs");
        let rest = stream_while_written(&bytes, 654_321, &bytes).await.unwrap();
        assert!(rest == bytes[654_321..], "the rest differs");
    }

    #[tokio::test]
    async fn bytes_that_do_not_match_the_digest_never_reach_the_end() {
        let (bytes, _) = blob(600_000);
        let mut corrupt = bytes.clone();
        corrupt[599_999] ^= 1;
        let error = stream_while_written(&bytes, 0, &corrupt).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[tokio::test]
    async fn ranges_that_stop_short_of_the_end_are_refused() {
        let content = tempfile::tempdir().unwrap();
        let (_, digest) = blob(10);
        ingest(content.path(), "k", &format!("x/layer-{digest}"), Some(10));
        let found = find(content.path(), &digest).unwrap();
        let short = ByteRange { start: 0, len: 9 };
        let error = stream(&found, short, content.path().join("blob"))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    /// A download of a 1000-byte blob that has written 400.
    fn written_400_of_1000() -> (tempfile::TempDir, PathBuf, Ingest) {
        let content = tempfile::tempdir().unwrap();
        let (bytes, digest) = blob(1000);
        let data = ingest(
            content.path(),
            "k",
            &format!("x/layer-{digest}"),
            Some(1000),
        );
        std::fs::write(&data, &bytes[..400]).unwrap();
        let found = find(content.path(), &digest).unwrap();
        (content, data, found)
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_that_stops_ends_the_stream_after_the_stall_bound() {
        let (content, _, found) = written_400_of_1000();
        let whole = ByteRange {
            start: 0,
            len: 1000,
        };
        let started = tokio::time::Instant::now();
        let got: Result<Vec<Bytes>, _> = stream(&found, whole, content.path().join("blob"))
            .unwrap()
            .try_collect()
            .await;
        let error = got.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(
            started.elapsed() >= STALL,
            "gave up after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_blob_committed_short_of_its_size_ends_the_stream_at_once() {
        let (content, data, found) = written_400_of_1000();
        let committed = content.path().join("blob");
        let body = stream(
            &found,
            ByteRange {
                start: 0,
                len: 1000,
            },
            committed.clone(),
        )
        .unwrap();
        std::fs::rename(&data, &committed).unwrap();
        let started = std::time::Instant::now();
        let error = body.try_collect::<Vec<Bytes>>().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        assert!(started.elapsed() < STALL);
    }
}

//! State sync over a real OCI layout store, with a recording advertiser in
//! place of the router (a test double: the router has its own tests).

use super::*;
use crate::store::OciLayoutStore;
use crate::store::conformance::write_layout;

async fn sync(
    filter: Filter,
) -> (
    tempfile::TempDir,
    Arc<Recorder>,
    StateSync,
    crate::store::conformance::Expected,
) {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_layout(dir.path(), 9);
    let store = Arc::new(OciLayoutStore::open(dir.path()).await.unwrap());
    let recorder = Arc::new(Recorder::default());
    let sync = StateSync::new(store, recorder.clone(), filter, Arc::new(Metrics::new()));
    (dir, recorder, sync, expected)
}

#[tokio::test]
async fn advertises_the_tag_and_every_digest_it_holds() {
    let (_dir, recorder, mut sync, expected) = sync(Filter::default()).await;
    let changes = sync.resync().await.unwrap();
    let mut wanted: BTreeSet<String> = expected
        .manifests
        .iter()
        .map(|(d, _)| d.to_string())
        .chain(expected.blobs.iter().map(|(d, _)| d.to_string()))
        .collect();
    wanted.insert("example.com/team/app:v1".to_owned());
    assert_eq!(recorder.keys(), wanted);
    assert_eq!(changes.tags, 1);
    assert_eq!(changes.digests, wanted.len() - 1);
    assert_eq!(
        sync.resync().await.unwrap().advertised,
        0,
        "a second walk changes nothing"
    );
}

#[tokio::test]
async fn content_that_goes_away_is_withdrawn() {
    let (dir, recorder, mut sync, expected) = sync(Filter::default()).await;
    sync.resync().await.unwrap();
    let (layer, _) = &expected.blobs[0];
    std::fs::remove_file(dir.path().join("blobs/sha256").join(layer.hex())).unwrap();
    let changes = sync.resync().await.unwrap();
    assert_eq!(changes.withdrawn, 1);
    assert!(!recorder.keys().contains(&layer.to_string()));
}

#[tokio::test]
async fn filtered_images_are_not_advertised() {
    let filter = Filter {
        mirrored: vec!["docker.io".parse().unwrap()],
        exclude: vec![],
    };
    let (_dir, recorder, mut sync, _) = sync(filter).await;
    let changes = sync.resync().await.unwrap();
    assert_eq!(changes, Changes::default());
    assert!(recorder.keys().is_empty());
}

#[test]
fn tags_are_told_from_digests_and_ids() {
    assert!(is_tag("docker.io/library/nginx:1.27"));
    assert!(is_tag("127.0.0.1:5000/app:v1"));
    assert!(!is_tag("127.0.0.1:5000/app"));
    assert!(!is_tag("docker.io/library/nginx@sha256:abc"));
    assert_eq!(image_registry("sha256:abc"), None);
    assert_eq!(
        image_registry("127.0.0.1:5000/app:v1").unwrap().as_str(),
        "127.0.0.1:5000"
    );
}

/// A test double for containerd's ingest directory: an OCI layout store
/// whose downloads in progress the test sets. The real one is read by
/// `store::ingest`, and the whole path runs in e2e's `in_flight` test.
struct Downloading {
    layout: OciLayoutStore,
    in_flight: std::sync::Mutex<Vec<Digest>>,
}

#[async_trait]
impl ContentStore for Downloading {
    async fn resolve(
        &self,
        registry: &RegistryHost,
        name: &crate::oci::Name,
        tag: &crate::oci::Tag,
    ) -> Result<Digest, StoreError> {
        self.layout.resolve(registry, name, tag).await
    }

    async fn manifest(&self, digest: &Digest) -> Result<crate::store::Manifest, StoreError> {
        self.layout.manifest(digest).await
    }

    async fn blob_size(&self, digest: &Digest) -> Result<u64, StoreError> {
        self.layout.blob_size(digest).await
    }

    async fn blob(
        &self,
        digest: &Digest,
        range: crate::store::ByteRange,
    ) -> Result<crate::store::BlobBody, StoreError> {
        self.layout.blob(digest, range).await
    }

    async fn images(&self) -> Result<Vec<crate::store::Image>, StoreError> {
        self.layout.images().await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.layout.ready().await
    }

    async fn in_flight(&self) -> Vec<Digest> {
        self.in_flight.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_download_is_advertised_from_its_start_until_its_image_holds_it_or_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    write_layout(dir.path(), 9);
    let store = Arc::new(Downloading {
        layout: OciLayoutStore::open(dir.path()).await.unwrap(),
        in_flight: Default::default(),
    });
    let recorder = Arc::new(Recorder::default());
    let mut sync = StateSync::new(
        store.clone(),
        recorder.clone(),
        Filter::default(),
        Arc::new(Metrics::new()),
    );
    sync.resync().await.unwrap();
    let walked = recorder.keys().len();

    let layer = b"a layer no image holds yet";
    let digest = Digest::sha256_of(layer);
    *store.in_flight.lock().unwrap() = vec![digest.clone()];
    assert!(sync.new_download().await);
    assert_eq!(sync.resync().await.unwrap().advertised, 1);
    assert!(recorder.keys().contains(&digest.to_string()));
    assert!(!sync.new_download().await, "advertised already");

    // Committed, its image not yet recorded: still there to be found.
    std::fs::write(dir.path().join("blobs/sha256").join(digest.hex()), layer).unwrap();
    store.in_flight.lock().unwrap().clear();
    assert_eq!(sync.resync().await.unwrap().withdrawn, 0);
    assert!(recorder.keys().contains(&digest.to_string()));

    // Gone (the pull failed, containerd collected it): withdrawn.
    std::fs::remove_file(dir.path().join("blobs/sha256").join(digest.hex())).unwrap();
    assert_eq!(sync.resync().await.unwrap().withdrawn, 1);
    assert_eq!(recorder.keys().len(), walked);
}

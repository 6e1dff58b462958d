//! State sync, runtime → router: which keys this node advertises. A key is
//! an image's tag (`docker.io/library/nginx:1.27`) or the digest of a piece
//! of content it holds (index, manifest, config, layer).
//!
//! Rather than patch the advertised set event by event, every change
//! triggers a full walk from the images, debounced, and the whole set found
//! is handed to the router, which alone keeps what is advertised and
//! advertises or withdraws the difference. A walk reads only
//! manifests, so it is cheap even for hundreds of images, and it cannot
//! drift: content that arrives before its image (containerd writes blobs
//! before it creates the image record) is picked up by the walk that the
//! image's own event triggers, and a missed event is repaired by the next
//! walk or the periodic one.

mod walk;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::oci::{Digest, Filter, RegistryHost};
use crate::runtime::{Containerd, Namespace};
use crate::store::{ContentStore, StoreError};

/// The router seam: where advertised keys go. The libp2p router implements
/// it (wired in `cmd`); tests use a recorder.
#[async_trait]
pub trait Advertiser: Send + Sync {
    /// Makes `keys` the whole advertised set, and says what changed.
    async fn sync(&self, keys: Vec<String>) -> Result<Advertised, AdvertiseError>;
}

/// What one [`Advertiser::sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advertised {
    pub advertised: usize,
    pub withdrawn: usize,
}

/// Why the advertiser did not take the set, in its own words.
pub type AdvertiseError = Box<dyn std::error::Error + Send + Sync>;

/// Why one walk did not bring the advertised set in line.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("walking the images failed: {0}")]
    Store(StoreError),
    #[error("the router did not take the advertised set: {0}")]
    Advertise(AdvertiseError),
}

/// How often the whole set is walked even without events, to repair
/// anything an event stream lost.
const PERIODIC_RESYNC: Duration = Duration::from_secs(300);
/// Events come in bursts (a pull writes many blobs, then the image); one
/// walk after the burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// How often containerd's ingest directory is looked at for downloads that
/// began: a peer pulling the same image finds this node's download at most
/// this much (and an announcement) after its first byte.
const DOWNLOAD_POLL: Duration = Duration::from_millis(100);

/// What one sync changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub advertised: usize,
    pub withdrawn: usize,
    pub digests: usize,
    pub tags: usize,
}

pub struct StateSync {
    store: Arc<dyn ContentStore>,
    advertiser: Arc<dyn Advertiser>,
    filter: Filter,
    metrics: Arc<Metrics>,
    /// Blobs advertised while downloading that no image holds yet: once
    /// committed they stay advertised until their image walks them (its
    /// record comes after its last layer), or until they are gone.
    shared: BTreeSet<Digest>,
}

impl StateSync {
    pub fn new(
        store: Arc<dyn ContentStore>,
        advertiser: Arc<dyn Advertiser>,
        filter: Filter,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            advertiser,
            filter,
            metrics,
            shared: BTreeSet::new(),
        }
    }

    /// Walks every image and brings the advertised set in line with it.
    pub async fn resync(&mut self) -> Result<Changes, SyncError> {
        let mut tags = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for image in self.store.images().await.map_err(SyncError::Store)? {
            let Some(registry) = image_registry(&image.name) else {
                continue;
            };
            if !self.filter.allows(&registry, &image.name) {
                continue;
            }
            if is_tag(&image.name) {
                tags.insert(image.name.clone());
            }
            let present = walk::present(self.store.as_ref(), &image.digest)
                .await
                .map_err(SyncError::Store)?;
            for digest in present {
                digests.insert(digest.to_string());
            }
        }
        self.shared = self.shared_downloads(&digests).await;
        digests.extend(self.shared.iter().map(ToString::to_string));
        let wanted: Vec<String> = tags.iter().chain(digests.iter()).cloned().collect();
        let advertised = self
            .advertiser
            .sync(wanted)
            .await
            .map_err(SyncError::Advertise)?;
        self.metrics.set_advertised(digests.len(), tags.len());
        Ok(Changes {
            advertised: advertised.advertised,
            withdrawn: advertised.withdrawn,
            digests: digests.len(),
            tags: tags.len(),
        })
    }

    /// The downloads to advertise besides what the images hold: those in
    /// progress, and those since committed whose image is not recorded yet.
    /// Content filters cannot apply: a download names no registry.
    async fn shared_downloads(&self, walked: &BTreeSet<String>) -> BTreeSet<Digest> {
        let mut shared: BTreeSet<Digest> = self.store.in_flight().await.into_iter().collect();
        for digest in &self.shared {
            if shared.contains(digest) || walked.contains(&digest.to_string()) {
                continue;
            }
            if self.store.blob_size(digest).await.is_ok() {
                shared.insert(digest.clone());
            }
        }
        shared.retain(|digest| !walked.contains(&digest.to_string()));
        shared
    }

    /// Whether a download has begun that is not advertised yet.
    async fn new_download(&self) -> bool {
        let in_flight = self.store.in_flight().await;
        in_flight.iter().any(|digest| !self.shared.contains(digest))
    }

    /// Keeps the advertised set in sync with containerd until `shutdown`:
    /// a walk at start, after every burst of image or content events, every
    /// few minutes, and after containerd comes back from a restart. A failed
    /// walk is retried with backoff. The agent never stops because
    /// containerd did.
    ///
    /// The event subscription runs in its own task: containerd sends no
    /// response to a subscription until the first event, so nothing here
    /// may wait on it.
    pub async fn run(
        mut self,
        containerd: Containerd,
        namespace: Namespace,
        shutdown: CancellationToken,
    ) {
        let (signals, mut received) = tokio::sync::mpsc::channel(SIGNAL_QUEUE);
        let subscriber = tokio::spawn(subscribe(containerd, namespace, signals, shutdown.clone()));
        let mut pending = Some("start");
        let mut backoff = Backoff::default();
        let mut periodic = tokio::time::interval(PERIODIC_RESYNC);
        periodic.tick().await;
        let mut downloads = tokio::time::interval(DOWNLOAD_POLL);
        downloads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if let Some(reason) = pending {
                if self.logged_resync(reason).await {
                    pending = None;
                    backoff.reset();
                } else {
                    backoff.failed();
                }
            }
            let retry = backoff.wait();
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = periodic.tick() => pending = Some("periodic"),
                _ = downloads.tick(), if pending.is_none() => {
                    // No event says a download began: it is looked for.
                    if self.new_download().await {
                        pending = Some("download started");
                    }
                }
                () = tokio::time::sleep(retry), if pending.is_some() => {}
                signal = received.recv() => {
                    let Some(signal) = signal else { break };
                    // Let the burst finish, then walk once for all of it.
                    tokio::time::sleep(DEBOUNCE).await;
                    let mut reason = signal;
                    while let Ok(more) = received.try_recv() {
                        reason = reason.max(more);
                    }
                    pending = Some(reason.text());
                }
            }
        }
        subscriber.abort();
    }

    /// For stores without events (an OCI layout): a walk at start and
    /// every few minutes.
    pub async fn run_without_events(mut self, shutdown: CancellationToken) {
        let mut periodic = tokio::time::interval(PERIODIC_RESYNC);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = periodic.tick() => {
                    self.logged_resync("periodic").await;
                }
            }
        }
    }

    /// Whether the walk succeeded.
    async fn logged_resync(&mut self, reason: &str) -> bool {
        match self.resync().await {
            Ok(changes) => {
                tracing::info!(
                    reason,
                    advertised = changes.advertised,
                    withdrawn = changes.withdrawn,
                    digests = changes.digests,
                    tags = changes.tags,
                    "state synced"
                );
                true
            }
            Err(error) => {
                tracing::warn!(reason, %error, "state sync failed; will retry");
                false
            }
        }
    }
}

/// What the subscriber task tells the sync loop. When several arrive in
/// one burst, the walk is named after the greatest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Signal {
    /// An image or content event.
    Event,
    /// The stream ended: containerd went away or restarted.
    Ended,
    /// A new subscription is going out after the last one ended: whatever
    /// happened in between is found by the walk that follows it.
    Resubscribing,
}

impl Signal {
    fn text(self) -> &'static str {
        match self {
            Signal::Event => "events",
            Signal::Resubscribing => "resubscribed",
            Signal::Ended => "containerd went away",
        }
    }
}

/// Bound on signals waiting for the sync loop; a burst beyond it waits.
const SIGNAL_QUEUE: usize = 256;

/// Subscribes to image and content events, forwards them, and subscribes
/// again whenever the stream ends, with backoff while containerd is down.
async fn subscribe(
    containerd: Containerd,
    namespace: Namespace,
    signals: tokio::sync::mpsc::Sender<Signal>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !first && signals.send(Signal::Resubscribing).await.is_err() {
            return;
        }
        first = false;
        // containerd answers a subscription only with its first event, so
        // a pending one that breaks looks like one refused: the backoff
        // restarts whenever containerd answers, or a daemon restarted
        // again and again, with no event between, would be followed later
        // each time (5.4 s after the fifth restart in e2e's faults test).
        if containerd.version().await.is_ok() {
            backoff.reset();
        }
        match containerd
            .image_and_content_events(namespace.as_str())
            .await
        {
            Ok(events) => {
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(topic) => {
                            tracing::debug!(%topic, "containerd event");
                            if signals.send(Signal::Event).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "containerd event stream failed");
                            break;
                        }
                    }
                }
                tracing::warn!("containerd event stream ended; subscribing again");
                if signals.send(Signal::Ended).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let wait = backoff.failed();
                tracing::warn!(%error, ?wait, "cannot subscribe to containerd events; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The registry of an image name, when it has one: `sha256:…` image IDs
/// that CRI records as names have none.
fn image_registry(name: &str) -> Option<RegistryHost> {
    let (host, _) = name.split_once('/')?;
    host.parse().ok()
}

/// `registry/repo:tag`, as opposed to `registry/repo@digest`.
fn is_tag(name: &str) -> bool {
    !name.contains('@')
        && name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
}

/// A test double for the router: records the advertised set.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct Recorder {
    keys: std::sync::Mutex<BTreeSet<String>>,
}

#[cfg(any(test, feature = "test-util"))]
impl Recorder {
    pub fn keys(&self) -> BTreeSet<String> {
        self.keys.lock().expect("recorder poisoned").clone()
    }
}

#[cfg(any(test, feature = "test-util"))]
#[async_trait]
impl Advertiser for Recorder {
    async fn sync(&self, keys: Vec<String>) -> Result<Advertised, AdvertiseError> {
        let wanted: BTreeSet<String> = keys.into_iter().collect();
        let mut advertised = self.keys.lock().expect("recorder poisoned");
        let changes = Advertised {
            advertised: wanted.difference(&advertised).count(),
            withdrawn: advertised.difference(&wanted).count(),
        };
        *advertised = wanted;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests;

//! State sync, runtime → router: which keys this node advertises. A key is
//! an image's tag (`docker.io/library/nginx:1.27`) or the digest of a piece
//! of content it holds (index, manifest, config, layer).
//!
//! Rather than patch the advertised set event by event, every change
//! triggers a full walk from the images, debounced, and the difference to
//! what was advertised is advertised or withdrawn. A walk reads only
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

use crate::metrics::Metrics;
use crate::oci::Registry;
use crate::registry::Filter;
use crate::runtime::Containerd;
use crate::store::{ContentStore, StoreError};

/// The router seam: where advertised keys go. The libp2p router implements
/// it; tests use a recorder.
#[async_trait]
pub trait Advertiser: Send + Sync {
    async fn advertise(&self, keys: Vec<String>) -> anyhow::Result<()>;
    async fn withdraw(&self, keys: Vec<String>) -> anyhow::Result<()>;
}

/// How often the whole set is walked even without events, to repair
/// anything an event stream lost.
const PERIODIC_RESYNC: Duration = Duration::from_secs(300);
/// Events come in bursts (a pull writes many blobs, then the image); one
/// walk after the burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Backoff between attempts to resubscribe after containerd went away.
const RESUBSCRIBE_BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

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
    advertised: BTreeSet<String>,
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
            advertised: BTreeSet::new(),
        }
    }

    /// Walks every image and brings the advertised set in line with it.
    pub async fn resync(&mut self) -> Result<Changes, StoreError> {
        let mut tags = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for image in self.store.images().await? {
            let Some(registry) = image_registry(&image.name) else {
                continue;
            };
            if !self.filter.allows(&registry, &image.name) {
                continue;
            }
            if is_tag(&image.name) {
                tags.insert(image.name.clone());
            }
            for digest in walk::present(self.store.as_ref(), &image.digest).await? {
                digests.insert(digest.to_string());
            }
        }
        let wanted: BTreeSet<String> = tags.iter().chain(digests.iter()).cloned().collect();
        let new: Vec<String> = wanted.difference(&self.advertised).cloned().collect();
        let gone: Vec<String> = self.advertised.difference(&wanted).cloned().collect();
        let changes = Changes {
            advertised: new.len(),
            withdrawn: gone.len(),
            digests: digests.len(),
            tags: tags.len(),
        };
        if !gone.is_empty() {
            self.advertiser
                .withdraw(gone.clone())
                .await
                .map_err(|e| StoreError::backend("withdrawing keys from the router", e))?;
            // Recorded at once, so a failed advertise below does not make
            // the next walk withdraw these again.
            for key in &gone {
                self.advertised.remove(key);
            }
        }
        if !new.is_empty() {
            self.advertiser
                .advertise(new)
                .await
                .map_err(|e| StoreError::backend("advertising keys to the router", e))?;
        }
        self.advertised = wanted;
        self.metrics.set_advertised(changes.digests, changes.tags);
        Ok(changes)
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
        namespace: String,
        shutdown: CancellationToken,
    ) {
        let (signals, mut received) = tokio::sync::mpsc::channel(SIGNAL_QUEUE);
        let subscriber = tokio::spawn(subscribe(containerd, namespace, signals, shutdown.clone()));
        let mut pending = Some("start");
        let mut failures = 0usize;
        let mut periodic = tokio::time::interval(PERIODIC_RESYNC);
        periodic.tick().await;
        loop {
            if let Some(reason) = pending {
                if self.logged_resync(reason).await {
                    pending = None;
                    failures = 0;
                } else {
                    failures += 1;
                }
            }
            let retry = RESUBSCRIBE_BACKOFF[failures.min(RESUBSCRIBE_BACKOFF.len() - 1)];
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = periodic.tick() => pending = Some("periodic"),
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
    namespace: String,
    signals: tokio::sync::mpsc::Sender<Signal>,
    shutdown: CancellationToken,
) {
    let mut failures = 0usize;
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !first && signals.send(Signal::Resubscribing).await.is_err() {
            return;
        }
        first = false;
        match containerd.image_and_content_events(&namespace).await {
            Ok(events) => {
                failures = 0;
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
                let wait = RESUBSCRIBE_BACKOFF[failures.min(RESUBSCRIBE_BACKOFF.len() - 1)];
                failures += 1;
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
fn image_registry(name: &str) -> Option<Registry> {
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
    async fn advertise(&self, keys: Vec<String>) -> anyhow::Result<()> {
        self.keys.lock().expect("recorder poisoned").extend(keys);
        Ok(())
    }

    /// Withdrawing a key that was never advertised is a bug in the caller.
    async fn withdraw(&self, keys: Vec<String>) -> anyhow::Result<()> {
        let mut advertised = self.keys.lock().expect("recorder poisoned");
        for key in keys {
            anyhow::ensure!(advertised.remove(&key), "withdrew {key}, never advertised");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! Where Kademlia keeps provider records, sized for real nodes.
//!
//! libp2p's `MemoryStore` does not fit a registry mirror: by default it holds
//! 1 024 keys and 20 providers per key and drops the rest silently; it
//! reserves room for 20 providers inline for every key (about 3 KiB a key,
//! 300 MiB for 100 000 keys with one provider each); and it forgets an
//! expired record only when someone asks for that key again, so the records
//! of images nobody pulls any more pile up until the store refuses new ones.
//! This store holds only what is there, counts our own keys apart from the
//! records others ask us to keep (so a busy cluster cannot crowd out our own
//! advertisements), and is swept of expired records by the router.
//!
//! reflektor never stores value records: a peer's `PUT_VALUE` is refused.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

/// How many provider records a node keeps. Every limit refuses the record
/// that would exceed it; none evicts a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Keys this node itself provides. A node with a few thousand images
    /// serves a few hundred thousand digests and tags.
    pub max_provided_keys: usize,
    /// Records of other peers, over all keys: with the replication factor of
    /// 20, a node keeps about 20 records for each key of an average node.
    pub max_records: usize,
    /// Providers of one key. An image every node has (a DaemonSet's) has as
    /// many providers as the cluster has nodes; a lookup needs a handful.
    pub max_providers_per_key: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_provided_keys: 500_000,
            max_records: 2_000_000,
            max_providers_per_key: 1_000,
        }
    }
}

/// Provider records by key, ours and other peers'.
pub struct ProviderStore {
    local: PeerId,
    limits: StoreLimits,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// How many keys we provide ourselves, and how many records of others
    /// we hold: the two things `limits` bounds.
    provided_keys: usize,
    records: usize,
}

impl ProviderStore {
    pub fn new(local: PeerId, limits: StoreLimits) -> Self {
        ProviderStore {
            local,
            limits,
            providers: HashMap::new(),
            provided_keys: 0,
            records: 0,
        }
    }

    /// Drops every record that expired by `now`. Our own records carry no
    /// expiry (Kademlia stores them without one) and stay until withdrawn.
    pub fn purge_expired(&mut self, now: Instant) {
        let mut removed = 0;
        self.providers.retain(|_, records| {
            let before = records.len();
            records.retain(|record| !record.is_expired(now));
            removed += before - records.len();
            !records.is_empty()
        });
        self.records -= removed;
    }

    /// The number of keys this node provides.
    pub fn provided_keys(&self) -> usize {
        self.provided_keys
    }

    fn is_local(&self, record: &ProviderRecord) -> bool {
        record.provider == self.local
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::vec::IntoIter<Cow<'a, ProviderRecord>>;

    fn get(&self, _key: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    fn put(&mut self, _record: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _key: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let local = self.is_local(&record);
        if local && self.provided_keys >= self.limits.max_provided_keys {
            let already = self
                .providers
                .get(&record.key)
                .is_some_and(|records| records.iter().any(|r| r.provider == self.local));
            if !already {
                return Err(Error::MaxProvidedKeys);
            }
        }
        let records = match self.providers.entry(record.key.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(_) if !local && self.records >= self.limits.max_records => {
                return Err(Error::MaxRecords);
            }
            Entry::Vacant(entry) => entry.insert(Vec::with_capacity(1)),
        };
        if let Some(existing) = records.iter_mut().find(|r| r.provider == record.provider) {
            *existing = record;
            return Ok(());
        }
        if !local {
            // A full key makes room only from records that have expired.
            if records.len() >= self.limits.max_providers_per_key {
                let now = Instant::now();
                let before = records.len();
                records.retain(|r| !r.is_expired(now));
                self.records -= before - records.len();
            }
            if records.len() >= self.limits.max_providers_per_key
                || self.records >= self.limits.max_records
            {
                return Err(Error::MaxRecords);
            }
            self.records += 1;
        } else {
            self.provided_keys += 1;
        }
        records.push(record);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.get(key).cloned().unwrap_or_default()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers
            .values()
            .flatten()
            .filter(|record| self.is_local(record))
            .map(Cow::Borrowed)
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        let Entry::Occupied(mut entry) = self.providers.entry(key.clone()) else {
            return;
        };
        let records = entry.get_mut();
        if let Some(index) = records.iter().position(|r| &r.provider == provider) {
            records.swap_remove(index);
            if provider == &self.local {
                self.provided_keys -= 1;
            } else {
                self.records -= 1;
            }
        }
        if records.is_empty() {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::routing::record_key;

    fn record(key: &str, provider: PeerId, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            expires,
            ..ProviderRecord::new(record_key(key), provider, Vec::new())
        }
    }

    #[test]
    fn holds_a_hundred_thousand_of_our_own_keys_by_default() {
        let local = PeerId::random();
        let mut store = ProviderStore::new(local, StoreLimits::default());
        for i in 0..100_000 {
            let key = format!("sha256:{i:064x}");
            store
                .add_provider(record(&key, local, None))
                .unwrap_or_else(|e| panic!("key {i} refused: {e}"));
        }
        assert_eq!(store.provided_keys(), 100_000);
        assert_eq!(store.provided().count(), 100_000);
        let last = record_key(&format!("sha256:{:064x}", 99_999));
        assert_eq!(store.providers(&last)[0].provider, local);
    }

    #[test]
    fn holds_more_than_twenty_providers_for_one_key_by_default() {
        let mut store = ProviderStore::new(PeerId::random(), StoreLimits::default());
        let expires = Some(Instant::now() + Duration::from_secs(60));
        let peers: Vec<PeerId> = (0..500).map(|_| PeerId::random()).collect();
        for peer in &peers {
            store
                .add_provider(record("docker.io/library/nginx:1.27", *peer, expires))
                .expect("stored");
        }
        let stored = store.providers(&record_key("docker.io/library/nginx:1.27"));
        assert_eq!(stored.len(), 500);
        assert!(
            peers
                .iter()
                .all(|p| stored.iter().any(|r| r.provider == *p))
        );
    }

    #[test]
    fn refuses_what_exceeds_each_limit_and_keeps_what_it_has() {
        let local = PeerId::random();
        let limits = StoreLimits {
            max_provided_keys: 2,
            max_records: 3,
            max_providers_per_key: 2,
        };
        let mut store = ProviderStore::new(local, limits);
        let later = Some(Instant::now() + Duration::from_secs(60));

        store
            .add_provider(record("a", local, None))
            .expect("first key");
        store
            .add_provider(record("b", local, None))
            .expect("second key");
        assert!(matches!(
            store.add_provider(record("c", local, None)),
            Err(Error::MaxProvidedKeys)
        ));
        // Refreshing a key we already provide is not a new key.
        store
            .add_provider(record("a", local, None))
            .expect("refresh");

        // Our own record does not count against the records of others.
        let (p, q, r) = (PeerId::random(), PeerId::random(), PeerId::random());
        store.add_provider(record("a", p, later)).expect("p");
        assert!(matches!(
            store.add_provider(record("a", q, later)),
            Err(Error::MaxRecords)
        ));
        store.add_provider(record("b", q, later)).expect("q on b");
        store.add_provider(record("d", r, later)).expect("r on d");
        assert!(matches!(
            store.add_provider(record("e", r, later)),
            Err(Error::MaxRecords)
        ));
        assert_eq!(store.providers(&record_key("a")).len(), 2);
        assert!(matches!(
            store.put(Record::new(record_key("a"), b"value".to_vec())),
            Err(Error::MaxRecords)
        ));
    }

    #[test]
    fn a_full_key_makes_room_from_expired_records() {
        let limits = StoreLimits {
            max_providers_per_key: 1,
            ..StoreLimits::default()
        };
        let mut store = ProviderStore::new(PeerId::random(), limits);
        let past = Some(Instant::now() - Duration::from_secs(1));
        let later = Some(Instant::now() + Duration::from_secs(60));
        let (dead, alive) = (PeerId::random(), PeerId::random());
        store.add_provider(record("k", dead, past)).expect("dead");
        store
            .add_provider(record("k", alive, later))
            .expect("alive");
        let stored = store.providers(&record_key("k"));
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].provider, alive);
    }

    #[test]
    fn purge_drops_expired_records_of_others_and_keeps_ours() {
        let local = PeerId::random();
        let mut store = ProviderStore::new(local, StoreLimits::default());
        let now = Instant::now();
        let (gone, stays) = (PeerId::random(), PeerId::random());
        store.add_provider(record("k", local, None)).expect("ours");
        store
            .add_provider(record("k", gone, Some(now + Duration::from_secs(1))))
            .expect("gone");
        store
            .add_provider(record("old", gone, Some(now + Duration::from_secs(1))))
            .expect("old");
        store
            .add_provider(record("k", stays, Some(now + Duration::from_secs(60))))
            .expect("stays");

        store.purge_expired(now + Duration::from_secs(2));

        let providers: Vec<PeerId> = store
            .providers(&record_key("k"))
            .into_iter()
            .map(|r| r.provider)
            .collect();
        assert_eq!(providers.len(), 2);
        assert!(providers.contains(&local) && providers.contains(&stays));
        assert!(store.providers(&record_key("old")).is_empty());
        assert_eq!(store.records, 1);
        assert_eq!(store.provided_keys(), 1);
    }

    #[test]
    fn withdrawing_frees_room_for_a_new_key() {
        let local = PeerId::random();
        let limits = StoreLimits {
            max_provided_keys: 1,
            ..StoreLimits::default()
        };
        let mut store = ProviderStore::new(local, limits);
        store.add_provider(record("a", local, None)).expect("a");
        store.remove_provider(&record_key("a"), &local);
        store.add_provider(record("b", local, None)).expect("b");
        assert!(store.providers(&record_key("a")).is_empty());
        assert_eq!(store.provided_keys(), 1);
    }
}

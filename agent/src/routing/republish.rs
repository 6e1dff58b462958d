//! Which of our keys to announce again, a slice at a time.
//!
//! Provider records expire (20 minutes by default), so a node renews each of
//! its keys within the republish interval (15 minutes). libp2p can do this
//! itself, but it starts one query per key for every key at once: 100 000
//! queries in one burst every interval. Here the keys wait in a ring in the
//! order they were last announced, and each tick of the republish timer
//! takes the next slice of it, sized so that the ring goes round once per
//! interval.

use std::collections::{HashMap, HashSet, VecDeque};

use libp2p::kad::RecordKey;

/// How many ticks one republish interval is cut into: one tick every 15
/// seconds with the default interval.
pub const SLICES: usize = 60;

/// The keys this node provides, in republish order. While the set stays the
/// same, each key comes round once per interval.
#[derive(Debug, Default)]
pub struct Provided {
    /// Each provided key with the generation of its entry in `ring`.
    keys: HashMap<RecordKey, u64>,
    /// Keys in the order they are due; an entry whose generation no longer
    /// matches `keys` was withdrawn (and maybe advertised again since), and
    /// is dropped when it comes round.
    ring: VecDeque<(RecordKey, u64)>,
    next_generation: u64,
    /// Keys owed but not yet taken: a slice is `keys.len() / SLICES` keys,
    /// and the remainder carries over to the next tick.
    carry: usize,
}

impl Provided {
    /// Adds a key just announced, so it is due last. Returns whether it is
    /// new: a key already provided keeps its place.
    pub fn insert(&mut self, key: RecordKey) -> bool {
        if self.keys.contains_key(&key) {
            return false;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.keys.insert(key.clone(), generation);
        self.ring.push_back((key, generation));
        true
    }

    /// Returns whether the key was provided.
    pub fn remove(&mut self, key: &RecordKey) -> bool {
        self.keys.remove(key).is_some()
    }

    pub fn contains(&self, key: &RecordKey) -> bool {
        self.keys.contains_key(key)
    }

    /// The provided keys that `wanted` lacks.
    pub fn not_in(&self, wanted: &HashSet<&RecordKey>) -> Vec<RecordKey> {
        self.keys
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect()
    }

    /// The keys due at this tick. They move to the back of the ring;
    /// withdrawn entries met on the way are dropped, and do not count, so a
    /// key is never held up by the withdrawn keys ahead of it.
    pub fn next_slice(&mut self) -> Vec<RecordKey> {
        self.carry += self.keys.len();
        let take = self.carry / SLICES;
        self.carry %= SLICES;
        let mut due = Vec::with_capacity(take);
        while due.len() < take {
            let Some((key, generation)) = self.ring.pop_front() else {
                break;
            };
            if self.keys.get(&key) == Some(&generation) {
                due.push(key.clone());
                self.ring.push_back((key, generation));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::routing::record_key;

    fn keys(n: usize) -> Vec<RecordKey> {
        (0..n)
            .map(|i| record_key(&format!("sha256:{i:064x}")))
            .collect()
    }

    #[test]
    fn every_key_is_due_once_per_interval_in_even_slices() {
        let mut provided = Provided::default();
        for key in keys(150) {
            assert!(provided.insert(key));
        }
        let mut seen: HashMap<RecordKey, usize> = HashMap::new();
        for _ in 0..SLICES {
            let slice = provided.next_slice();
            assert!((2..=3).contains(&slice.len()), "slice of {}", slice.len());
            for key in slice {
                *seen.entry(key).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 150);
        assert!(seen.values().all(|&n| n == 1));
    }

    #[test]
    fn a_few_keys_go_out_one_at_a_time() {
        let mut provided = Provided::default();
        for key in keys(10) {
            provided.insert(key);
        }
        let slices: Vec<usize> = (0..SLICES).map(|_| provided.next_slice().len()).collect();
        assert!(slices.iter().all(|&n| n <= 1));
        assert_eq!(slices.iter().sum::<usize>(), 10);
    }

    #[test]
    fn withdrawn_keys_are_not_renewed_and_readvertised_ones_are_once() {
        let mut provided = Provided::default();
        let all = keys(SLICES);
        for key in &all {
            provided.insert(key.clone());
        }
        assert!(!provided.insert(all[0].clone()), "already provided");
        assert!(provided.remove(&all[1]));
        assert!(provided.remove(&all[2]));
        assert!(provided.insert(all[2].clone()));

        let due: Vec<RecordKey> = (0..SLICES).flat_map(|_| provided.next_slice()).collect();

        assert!(!due.contains(&all[1]));
        assert_eq!(due.iter().filter(|k| **k == all[2]).count(), 1);
        assert!(!provided.contains(&all[1]));
    }
}

//! A sharded copy-on-write hash map keyed by strings.
//!
//! Why: a [`crate::Directory`] snapshot must be cheap to clone (a writer
//! clones the current snapshot, edits the clone and swaps it in) and a
//! single-entry edit must not copy a table of millions of entries. Cloning a
//! `Table` copies [`SHARDS`] `Arc` pointers; the first edit of a shard in a
//! clone copies that shard only (`Arc::make_mut`), so a one-entry change of a
//! 1M-entry table copies about 1M / 256 entries. A table built from scratch
//! owns every shard, so a full load copies nothing.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashMap;

/// Number of shards. 256 keeps a single-entry edit of a 1M-entry table at
/// about 4,000 copied entries (well under a millisecond) while costing only
/// 256 empty maps for a tiny directory.
pub const SHARDS: usize = 256;

/// Fixed seed for choosing the shard: stable within a process, which is all
/// that matters since tables are never persisted by shard.
const SHARD_SEED: u64 = 0x7261_6d64_6972_0001;

/// One shard: shared between snapshots until one of them edits it.
type Shard<V> = Arc<HashMap<Box<str>, V>>;

/// A string-keyed map made of copy-on-write shards.
#[derive(Debug)]
pub struct Table<V> {
    shards: Box<[Shard<V>]>,
    len: usize,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Table {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

fn shard_of(key: &str) -> usize {
    let h = foldhash::fast::FixedState::with_seed(SHARD_SEED).hash_one(key);
    (h >> 56) as usize % SHARDS
}

impl<V: Clone> Table<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    /// The table's own key and the value stored under `key`.
    pub fn get_key_value(&self, key: &str) -> Option<(&str, &V)> {
        self.shards[shard_of(key)]
            .get_key_value(key)
            .map(|(k, v)| (&**k, v))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert or replace; copies the key's shard first if a snapshot shares it.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(key)]);
        let old = match shard.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                shard.insert(key.into(), value);
                None
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Mutable access to a value; copies the key's shard if it is shared.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let idx = shard_of(key);
        if !self.shards[idx].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.shards[idx]).get_mut(key)
    }

    /// Remove `key`; copies its shard only if the key is present.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let idx = shard_of(key);
        if !self.shards[idx].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[idx]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (&**k, v)))
    }

    /// Release spare capacity after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        for s in self.shards.iter_mut() {
            Arc::make_mut(s).shrink_to_fit();
        }
    }

    /// How many shards this table shares with `other` (for tests and stats:
    /// shows that an edit copied only what it touched).
    pub fn shared_shards(&self, other: &Table<V>) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_of_a_clone_copies_one_shard_and_leaves_original() {
        let mut a: Table<u32> = Table::new();
        for i in 0..10_000 {
            a.insert(&format!("k{i}"), i);
        }
        let mut b = a.clone();
        assert_eq!(b.shared_shards(&a), SHARDS);
        b.insert("k5", 99);
        b.remove("k6");
        assert!(b.shared_shards(&a) >= SHARDS - 2);
        assert_eq!(a.get("k5"), Some(&5));
        assert_eq!(a.get("k6"), Some(&6));
        assert_eq!(b.get("k5"), Some(&99));
        assert_eq!(b.get("k6"), None);
        assert_eq!(a.len(), 10_000);
        assert_eq!(b.len(), 9_999);
    }

    #[test]
    fn removing_a_missing_key_copies_nothing() {
        let mut a: Table<u32> = Table::new();
        a.insert("x", 1);
        let mut b = a.clone();
        assert_eq!(b.remove("nope"), None);
        assert_eq!(b.shared_shards(&a), SHARDS);
    }

    proptest::proptest! {
        #[test]
        fn behaves_like_a_hashmap(ops in proptest::collection::vec((0u8..3, 0u16..64, 0u32..100), 0..200)) {
            let mut t: Table<u32> = Table::new();
            let mut m = std::collections::HashMap::new();
            for (op, k, v) in ops {
                let key = format!("key{k}");
                match op {
                    0 => { proptest::prop_assert_eq!(t.insert(&key, v), m.insert(key.clone(), v)); }
                    1 => { proptest::prop_assert_eq!(t.remove(&key), m.remove(&key)); }
                    _ => { let snap = t.clone(); t.insert(&key, v); m.insert(key.clone(), v);
                           proptest::prop_assert!(snap.len() <= t.len()); }
                }
                proptest::prop_assert_eq!(t.len(), m.len());
            }
            for (k, v) in &m { proptest::prop_assert_eq!(t.get(k), Some(v)); }
        }
    }
}

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

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Number of shards. 256 keeps a single-entry edit of a 1M-entry table at
/// about 4,000 copied entries (well under a millisecond) while costing only
/// 256 empty maps for a tiny directory.
pub const SHARDS: usize = 256;

/// [`Table::reserve`] adds one `RESERVE_SLACK`th to each shard's share.
const RESERVE_SLACK: usize = 8;

/// Fixed seed of the key hash: stable within a process, which is all that
/// matters since tables are never persisted. One hash per lookup picks the
/// shard ([`shard_of`]) and probes it (all bits).
const SEED: u64 = 0x7261_6d64_6972_0001;

/// Longest key stored inline in its slot. Most addresses are shorter, so a
/// lookup reads the slot and never follows a pointer to the key (one cache
/// miss fewer on a table far larger than the caches), and no allocation is
/// spent per key.
const INLINE: usize = 30;

/// A table key: inline when short, on the heap otherwise. Always valid
/// UTF-8 (it is built from a `&str`).
#[derive(Clone)]
pub(crate) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Key {
    pub(crate) fn new(s: &str) -> Key {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Key::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(s.into())
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` in `Key::new`, so always UTF-8.
            Key::Inline { .. } => std::str::from_utf8(self.as_bytes()).expect("keys are UTF-8"),
            Key::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// One shard: the entries in one dense vector, and a hash index of
/// positions into it.
///
/// Why not the entries in the hash table itself: a hash table's buckets
/// are a power of two and at most seven eighths full, so at unlucky sizes
/// (a million users over 256 shards is one) half of them are empty, and an
/// empty bucket of `(Key, V)` costs 48 bytes for users, one of `u32` four.
/// The vector holds exactly the entries (sized once by [`Table::reserve`]
/// and trimmed by [`Table::shrink_to_fit`]). A lookup reads one index
/// bucket and then the entry, which holds the key inline; a bulk insert
/// appends to the vector and touches only the shard's small index (about
/// 40 KB at a million entries), which stays in the CPU caches.
#[derive(Clone)]
struct Shard<V> {
    /// Positions in `entries`, hashed by their entry's key.
    index: HashTable<u32>,
    entries: Vec<(Key, V)>,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            index: HashTable::new(),
            entries: Vec::new(),
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for Shard<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// An entry's position as the index stores it. A shard would need four
/// billion entries (a trillion in the table) to overflow it.
fn pos(i: usize) -> u32 {
    u32::try_from(i).expect("a shard holds fewer than 2^32 entries")
}

impl<V> Shard<V> {
    fn find(&self, h: u64, key: &str) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(h, |&i| entries[i as usize].0.as_bytes() == key.as_bytes())
            .map(|&i| i as usize)
    }

    fn get(&self, h: u64, key: &str) -> Option<&(Key, V)> {
        self.find(h, key).map(|i| &self.entries[i])
    }

    fn insert(&mut self, h: u64, key: &str, value: V) -> Option<V> {
        let Shard { index, entries } = self;
        // One probe finds the key or the slot for it.
        match index.entry(
            h,
            |&i| entries[i as usize].0.as_bytes() == key.as_bytes(),
            |&i| hash(entries[i as usize].0.as_str()),
        ) {
            Entry::Occupied(e) => Some(std::mem::replace(&mut entries[*e.get() as usize].1, value)),
            Entry::Vacant(e) => {
                e.insert(pos(entries.len()));
                entries.push((Key::new(key), value));
                None
            }
        }
    }

    fn remove(&mut self, h: u64, key: &str) -> Option<V> {
        let Shard { index, entries } = self;
        let i = match index.find_entry(h, |&i| entries[i as usize].0.as_bytes() == key.as_bytes()) {
            Ok(e) => e.remove().0 as usize,
            Err(_) => return None,
        };
        let (_, v) = entries.swap_remove(i);
        // The last entry moved into the hole: point its index bucket there.
        if let Some((k, _)) = entries.get(i) {
            let moved = pos(entries.len());
            if let Some(slot) = index.find_mut(hash(k.as_str()), |&j| j == moved) {
                *slot = pos(i);
            }
        }
        Some(v)
    }

    fn reserve(&mut self, additional: usize) {
        let Shard { index, entries } = self;
        index.reserve(additional, |&i| hash(entries[i as usize].0.as_str()));
        entries.reserve_exact(additional);
    }

    fn shrink_to_fit(&mut self) {
        let Shard { index, entries } = self;
        index.shrink_to_fit(|&i| hash(entries[i as usize].0.as_str()));
        entries.shrink_to_fit();
    }

    fn room(&self) -> usize {
        (self.index.capacity() - self.index.len()).min(self.entries.capacity() - self.entries.len())
    }
}

/// A string-keyed map made of copy-on-write shards, each shared between
/// snapshots until one of them edits it.
#[derive(Debug)]
pub struct Table<V> {
    shards: Box<[Arc<Shard<V>>]>,
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
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            len: 0,
        }
    }
}

fn hash(key: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(SEED).hash_one(key)
}

/// The shard of a key hash: bits 32 to 39. Not the top bits: hashbrown
/// tags each bucket with the hash's top seven bits (compared before any
/// key), so with the shard taken from the top bits every key of a shard
/// carried the same tag and each probe compared the key of every full
/// bucket in its group (a cache miss each). Not the low bits either: they
/// pick the bucket within the shard (a shard has far fewer than 2^32).
fn shard_of(h: u64) -> usize {
    (h >> 32) as usize % SHARDS
}

impl<V: Clone> Table<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// The table's own key and the value stored under `key`.
    pub fn get_key_value(&self, key: &str) -> Option<(&str, &V)> {
        let h = hash(key);
        self.shards[shard_of(h)]
            .get(h, key)
            .map(|(k, v)| (k.as_str(), v))
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
        let h = hash(key);
        let old = Arc::make_mut(&mut self.shards[shard_of(h)]).insert(h, key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Make room for `additional` more entries, spread over the shards as
    /// the hash spreads keys, so a bulk load of a known size does not
    /// rehash every shard at each doubling.
    pub fn reserve(&mut self, additional: usize) {
        if additional == 0 {
            return;
        }
        let per_shard = additional.div_ceil(SHARDS);
        // Shards fill unevenly (binomially: a 1M-entry table's shards hold
        // 3,906 ± 62); an eighth more keeps nearly all of them from growing.
        let per_shard = per_shard + per_shard / RESERVE_SLACK;
        for s in self.shards.iter_mut() {
            // A shard with room is left shared.
            if s.room() < per_shard {
                Arc::make_mut(s).reserve(per_shard);
            }
        }
    }

    /// Mutable access to a value; copies the key's shard if it is shared.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let h = hash(key);
        let idx = shard_of(h);
        let i = self.shards[idx].find(h, key)?;
        Some(&mut Arc::make_mut(&mut self.shards[idx]).entries[i].1)
    }

    /// Remove `key`; copies its shard only if the key is present.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let h = hash(key);
        let idx = shard_of(h);
        self.shards[idx].find(h, key)?;
        let v = Arc::make_mut(&mut self.shards[idx]).remove(h, key)?;
        self.len -= 1;
        Some(v)
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.shards
            .iter()
            .flat_map(|s| s.entries.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Release spare capacity after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        for s in self.shards.iter_mut() {
            if s.room() > 0 {
                Arc::make_mut(s).shrink_to_fit();
            }
        }
    }

    /// Every key whose entry differs between `self` (older) and `newer`, as
    /// `(key, old value, new value)`. Shards the two tables share are
    /// skipped unread, so the cost is the size of the shards edited since
    /// one was cloned from the other (a few thousand entries per edited
    /// shard at 1M entries), not the size of the table.
    pub fn diff<'a>(
        &'a self,
        newer: &'a Table<V>,
        mut f: impl FnMut(&'a str, Option<&'a V>, Option<&'a V>),
    ) where
        V: PartialEq,
    {
        for (a, b) in self.shards.iter().zip(newer.shards.iter()) {
            if Arc::ptr_eq(a, b) {
                continue;
            }
            for (k, old) in &a.entries {
                let key = k.as_str();
                match b.get(hash(key), key) {
                    Some((_, nv)) if nv == old => {}
                    Some((_, nv)) => f(key, Some(old), Some(nv)),
                    None => f(key, Some(old), None),
                }
            }
            for (k, nv) in &b.entries {
                let key = k.as_str();
                if a.find(hash(key), key).is_none() {
                    f(key, None, Some(nv));
                }
            }
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
    fn short_and_long_keys_both_work() {
        let mut t: Table<u32> = Table::new();
        let short = "a".repeat(INLINE);
        let long = "b".repeat(INLINE + 1);
        t.insert(&short, 1);
        t.insert(&long, 2);
        t.insert("é@x.org", 3);
        assert_eq!(t.get_key_value(&short), Some((short.as_str(), &1)));
        assert_eq!(t.get_key_value(&long), Some((long.as_str(), &2)));
        assert_eq!(t.get("é@x.org"), Some(&3));
        assert_eq!(t.get(&short[1..]), None);
        assert_eq!(std::mem::size_of::<Key>(), 32);
        let mut keys: Vec<&str> = t.iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, [short.as_str(), long.as_str(), "é@x.org"]);
    }

    #[test]
    fn reserve_makes_room_in_every_shard() {
        let mut t: Table<u32> = Table::new();
        t.insert("a", 1);
        let snap = t.clone();
        t.reserve(100 * SHARDS);
        assert!(t.shards.iter().all(|s| s.room() >= 100));
        assert_eq!(t.get("a"), Some(&1));
        assert_eq!(snap.get("a"), Some(&1));
        // Enough room already: nothing is copied.
        let again = t.clone();
        t.reserve(100 * SHARDS);
        assert_eq!(t.shared_shards(&again), SHARDS);
        for i in 0..100 * SHARDS as u32 {
            t.insert(&format!("k{i}"), i);
        }
        assert_eq!(t.len(), 100 * SHARDS + 1);
        assert_eq!(t.insert("k7", 8), Some(7));
        assert_eq!(t.get("k7"), Some(&8));
    }

    #[test]
    fn diff_reports_exactly_the_changed_keys() {
        let mut a: Table<u32> = Table::new();
        for i in 0..10_000 {
            a.insert(&format!("k{i}"), i);
        }
        let mut b = a.clone();
        b.insert("k5", 99);
        b.remove("k6");
        b.insert("new", 1);
        b.insert("k7", 7); // same value: no change
        let mut seen = Vec::new();
        a.diff(&b, |k, o, n| {
            seen.push((k.to_string(), o.copied(), n.copied()))
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                ("k5".to_string(), Some(5), Some(99)),
                ("k6".to_string(), Some(6), None),
                ("new".to_string(), None, Some(1)),
            ]
        );
        let mut none = 0;
        a.diff(&a.clone(), |_, _, _| none += 1);
        assert_eq!(none, 0);
    }

    #[test]
    fn removals_keep_every_other_entry_reachable() {
        // Removal moves a shard's last entry into the hole: with many
        // entries per shard, every moved entry must stay findable.
        let mut t: Table<u32> = Table::new();
        for i in 0..20_000u32 {
            t.insert(&format!("k{i}"), i);
        }
        let snap = t.clone();
        for i in (0..20_000u32).filter(|i| i % 3 == 0) {
            assert_eq!(t.remove(&format!("k{i}")), Some(i));
        }
        assert_eq!(t.len(), 20_000 - 6_667);
        assert_eq!(t.iter().count(), t.len());
        for i in 0..20_000u32 {
            let want = (i % 3 != 0).then_some(i);
            assert_eq!(t.get(&format!("k{i}")).copied(), want, "k{i}");
            assert_eq!(snap.get(&format!("k{i}")), Some(&i));
        }
        for i in (0..20_000u32).filter(|i| i % 3 == 0) {
            assert_eq!(t.insert(&format!("k{i}"), i + 1), None);
        }
        t.shrink_to_fit();
        for i in 0..20_000u32 {
            let want = if i % 3 == 0 { i + 1 } else { i };
            assert_eq!(t.get(&format!("k{i}")), Some(&want));
        }
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

//! The LDAP entries ramdir holds, keyed by `entryUUID`.
//!
//! RFC 4533 names entries by UUID (deletes may arrive as bare UUIDs), and an
//! entry's address can change (a rename, a new `mail`), so each entry
//! remembers what it contributed to the directory: its login and its alias
//! keys. Applying a change removes the old contributions and adds the new
//! ones inside one [`ramdir_core::DirectoryHandle::update`], so readers see
//! the old entry or the new one, never neither (a moved alias is never
//! briefly missing).
//!
//! Conflicts: an address claimed by LDAP replaces the same address from
//! files; two LDAP entries claiming one address is a directory error, and
//! the later change wins.

use std::collections::HashMap;

use ramdir_core::Directory;

use crate::mapping::EntryData;

/// An entryUUID (16 bytes, as in the Sync State control).
pub type Uuid = [u8; 16];

/// Parse the textual `entryUUID` attribute (`8-4-4-4-12` hex digits;
/// hyphens anywhere are ignored).
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    let mut out = [0u8; 16];
    let mut n = 0;
    for b in s.bytes().filter(|b| *b != b'-') {
        let d = (b as char).to_digit(16)? as u8;
        let byte = out.get_mut(n / 2)?;
        *byte = *byte << 4 | d;
        n += 1;
    }
    (n == 32).then_some(out)
}

/// Render a UUID in the textual form.
pub fn format_uuid(u: &Uuid) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What one entry contributed: its login and its alias keys, in one
/// allocation (a million entries would otherwise cost three or more heap
/// strings each). Each key is stored as its length (`LEN_BYTES` bytes,
/// little-endian) followed by its bytes, the login first.
#[derive(Clone, PartialEq, Eq)]
pub struct Contribution {
    keys: Box<[u8]>,
}

/// Bytes of a key's length in [`Contribution`]: a `u32`, so any key fits
/// (keys read back from a warm snapshot are not length-checked).
const LEN_BYTES: usize = 4;

impl Contribution {
    fn new<'a>(login: &'a str, aliases: impl Iterator<Item = &'a str> + Clone) -> Contribution {
        let size = aliases
            .clone()
            .chain([login])
            .map(|k| LEN_BYTES + k.len())
            .sum();
        let mut keys = Vec::with_capacity(size);
        for k in [login].into_iter().chain(aliases) {
            keys.extend_from_slice(&(k.len() as u32).to_le_bytes());
            keys.extend_from_slice(k.as_bytes());
        }
        Contribution {
            keys: keys.into_boxed_slice(),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        let mut rest = &self.keys[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<LEN_BYTES>()?;
            let (key, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            rest = tail;
            // Built from `&str`s in `Contribution::new`.
            Some(std::str::from_utf8(key).expect("keys are UTF-8"))
        })
    }

    /// The mailbox login.
    pub fn login(&self) -> &str {
        self.keys().next().unwrap_or_default()
    }

    /// Alias keys pointing at the login.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.keys().skip(1)
    }
}

impl std::fmt::Debug for Contribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contribution")
            .field("login", &self.login())
            .field("aliases", &self.aliases().collect::<Vec<_>>())
            .finish()
    }
}

/// Entries by UUID.
#[derive(Debug, Default, Clone)]
pub struct Index {
    entries: HashMap<Uuid, Contribution, foldhash::fast::RandomState>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Make room for `additional` more entries (a full load of a known
    /// size), so they go in without rehashing.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// Whether `uuid` is held.
    pub fn contains(&self, uuid: &Uuid) -> bool {
        self.entries.contains_key(uuid)
    }

    /// All UUIDs.
    pub fn uuids(&self) -> impl Iterator<Item = &Uuid> {
        self.entries.keys()
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Contribution)> {
        self.entries.iter()
    }

    /// Add or replace an entry, in `dir` too.
    pub fn put(&mut self, dir: &mut Directory, uuid: Uuid, data: EntryData) {
        if let Some(old) = self.entries.remove(&uuid) {
            withdraw(dir, &uuid, &old);
        }
        let Some(mut user) = data.user else {
            // Not a mailbox (any more): nothing to hold.
            return;
        };
        user.origin = Some(uuid);
        dir.insert_user(&user);
        let login = &user.login;
        for a in &data.aliases {
            dir.set_alias_to(a, login);
        }
        self.entries.insert(
            uuid,
            Contribution::new(login, data.aliases.iter().map(String::as_str)),
        );
    }

    /// Remove an entry, from `dir` too; returns whether it was held.
    pub fn delete(&mut self, dir: &mut Directory, uuid: &Uuid) -> bool {
        match self.entries.remove(uuid) {
            Some(old) => {
                withdraw(dir, uuid, &old);
                true
            }
            None => false,
        }
    }

    /// Copy every held entry from `from` into `to` (a directory rebuilt from
    /// files): LDAP data lives on across file reloads.
    pub fn carry_over(&self, from: &Directory, to: &mut Directory) {
        for c in self.entries.values() {
            let login = c.login();
            if let Some(u) = from.user(login) {
                to.insert_user(&u.to_spec(from.settings()));
            }
            for a in c.aliases() {
                to.set_alias_to(a, login);
            }
        }
    }
}

/// Take an entry's contributions out of the directory — only those it
/// still owns: when another entry has since claimed the address (moved to a
/// new entry, or deleted and re-created while ramdir was disconnected, so the
/// new entry arrives before the old one is swept), the new owner's mailbox
/// and aliases stay.
fn withdraw(dir: &mut Directory, uuid: &Uuid, c: &Contribution) {
    let login = c.login();
    let owned = dir.user(login).is_none_or(|u| u.origin == Some(*uuid));
    if !owned {
        return;
    }
    dir.remove_user(login);
    for a in c.aliases() {
        // Only remove an alias that still points here.
        if dir
            .alias(a)
            .is_some_and(|t| t.len() == 1 && &*t[0] == login)
        {
            dir.remove_alias(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::{Settings, UserSpec};

    fn data(login: &str, aliases: &[&str]) -> EntryData {
        EntryData {
            user: Some(UserSpec {
                login: login.into(),
                enabled: true,
                ..Default::default()
            }),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn uuids_parse_and_format() {
        let u = parse_uuid("4d1b2c3a-0000-1111-2222-0123456789ab").unwrap();
        assert_eq!(format_uuid(&u), "4d1b2c3a-0000-1111-2222-0123456789ab");
        assert_eq!(parse_uuid("xyz"), None);
        assert_eq!(parse_uuid("4d1b2c3a-0000-1111-2222-0123456789zz"), None);
    }

    #[test]
    fn modify_moves_contributions_and_delete_removes_them() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        let u = [1u8; 16];
        idx.put(&mut dir, u, data("a@x.org", &["a1@x.org"]));
        assert!(dir.has_user("a@x.org") && dir.alias("a1@x.org").is_some());
        // Rename: new login, alias moved.
        idx.put(&mut dir, u, data("b@x.org", &["b1@x.org"]));
        assert!(!dir.has_user("a@x.org") && dir.alias("a1@x.org").is_none());
        assert!(dir.has_user("b@x.org") && dir.alias("b1@x.org").unwrap()[0].as_ref() == "b@x.org");
        // An alias claimed by another entry is not removed by the first.
        let v = [2u8; 16];
        idx.put(&mut dir, v, data("c@x.org", &["b1@x.org"]));
        assert!(idx.delete(&mut dir, &u));
        assert_eq!(dir.alias("b1@x.org").unwrap()[0].as_ref(), "c@x.org");
        assert!(!dir.has_user("b@x.org"));
        assert!(!idx.delete(&mut dir, &u));
        // An entry that stops being a mailbox withdraws.
        idx.put(&mut dir, v, EntryData::default());
        assert!(!dir.has_user("c@x.org") && idx.is_empty());
    }

    #[test]
    fn an_address_taken_over_by_another_entry_survives_the_old_one() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        let (old, new) = ([1u8; 16], [2u8; 16]);
        idx.put(&mut dir, old, data("x@x.org", &["a@x.org"]));
        // Re-created while disconnected: the new entry arrives first…
        idx.put(&mut dir, new, data("x@x.org", &["a@x.org"]));
        // …then the old one is swept.
        assert!(idx.delete(&mut dir, &old));
        assert!(dir.has_user("x@x.org"), "the new owner's mailbox stays");
        assert_eq!(dir.user("x@x.org").unwrap().origin, Some(new));
        assert!(dir.alias("a@x.org").is_some(), "and its alias");
        // The address moved: the old entry changes its own address.
        let third = [3u8; 16];
        idx.put(&mut dir, third, data("y@x.org", &[]));
        idx.put(&mut dir, new, data("y@x.org", &[]));
        idx.put(&mut dir, third, data("z@x.org", &[]));
        assert!(dir.has_user("y@x.org") && dir.has_user("z@x.org"));
        // The owner itself withdrawing does remove it.
        assert!(idx.delete(&mut dir, &new));
        assert!(!dir.has_user("y@x.org"));
    }

    #[test]
    fn carry_over_into_a_rebuilt_directory() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, [3u8; 16], data("l@x.org", &["l1@x.org"]));
        let mut rebuilt = Directory::new(Settings::default());
        rebuilt.insert_user(&UserSpec {
            login: "file@x.org".into(),
            ..Default::default()
        });
        idx.carry_over(&dir, &mut rebuilt);
        assert!(rebuilt.has_user("l@x.org") && rebuilt.has_user("file@x.org"));
        assert!(rebuilt.alias("l1@x.org").is_some());
    }
}

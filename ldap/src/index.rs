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
//! files. Two LDAP entries claiming one address (as `mail` or as an alias,
//! in any combination) is a directory error, and neither wins: the address
//! becomes *ambiguous* in the directory ([`Directory::set_ambiguous`]), so
//! every protocol answers "temporary" for it, never one entry's data (or
//! password) under the other's name. Every claim is kept, so when all but
//! one go away (a delete, a typo fixed) the remaining one is served again.
//! Dovecot's own ldap passdb refuses a login that matches several entries
//! for the same reason.
//!
//! Memory: an uncontested address lives in the directory only (its owner
//! is found from the user's `origin` or, for an alias, from the owner of
//! its target), as a side table of every address would cost about 100 MB
//! at a million entries. Only contested addresses are held here, with each
//! claim's full data.

use std::collections::{BTreeMap, HashMap};

use ramdir_core::{Directory, UserSpec};

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

    /// Every key with its role, the aliases before the login.
    fn claims_aliases_first(&self) -> impl Iterator<Item = (&str, Role)> {
        self.aliases()
            .map(|a| (a, Role::Alias))
            .chain(std::iter::once((self.login(), Role::Mailbox)))
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

/// What an entry claims an address as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its login (the mailbox).
    Mailbox,
    /// An alias of its mailbox.
    Alias,
}

/// A claim's data, kept while its address is contested.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// The entry's mailbox (`origin` set to the entry); boxed because a
    /// user spec is several times the size of an alias claim.
    Mailbox(Box<UserSpec>),
    /// An alias delivering to the entry's login.
    Alias(String),
}

/// One entry's claim on a contested address.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The claiming entry.
    pub uuid: Uuid,
    /// Its DN, when known (for the log and `stats`). DNs are not kept per
    /// entry, so the entry that held the address before the conflict has
    /// none until the source has looked it up by entryUUID.
    pub dn: Option<String>,
    /// What it claims.
    pub what: Claimed,
}

/// A claim being made: borrowed, copied only if the address is contested.
#[derive(Clone, Copy)]
enum ClaimRef<'a> {
    Mailbox(&'a UserSpec),
    Alias(&'a str),
}

impl ClaimRef<'_> {
    fn to_owned(self) -> Claimed {
        match self {
            ClaimRef::Mailbox(u) => Claimed::Mailbox(Box::new(u.clone())),
            ClaimRef::Alias(l) => Claimed::Alias(l.to_string()),
        }
    }
}

impl Claimed {
    fn as_ref(&self) -> ClaimRef<'_> {
        match self {
            Claimed::Mailbox(u) => ClaimRef::Mailbox(u),
            Claimed::Alias(l) => ClaimRef::Alias(l),
        }
    }
}

/// Who holds an uncontested address in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// Nobody.
    Free,
    /// The file sources (LDAP replaces them).
    Files,
    /// An LDAP entry.
    Entry(Uuid),
}

/// Entries by UUID, and the claims on contested addresses.
#[derive(Debug, Default, Clone)]
pub struct Index {
    entries: HashMap<Uuid, Contribution, foldhash::fast::RandomState>,
    /// Addresses claimed by two or more entries, with every claim, in the
    /// order they were made. Empty in a healthy directory.
    contested: BTreeMap<String, Vec<Claim>>,
    /// Addresses that got a new claimant since the source last reported
    /// them (it names the claimants first: see `LdapSource::apply`).
    unreported: Vec<String>,
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

    /// Addresses claimed by more than one entry, with their claims, in
    /// address order.
    pub fn contested(&self) -> impl Iterator<Item = (&str, &[Claim])> {
        self.contested
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of contested (ambiguous) addresses.
    pub fn contested_len(&self) -> usize {
        self.contested.len()
    }

    /// The claims on `key`, when it is contested.
    pub fn claims(&self, key: &str) -> Option<&[Claim]> {
        self.contested.get(key).map(Vec::as_slice)
    }

    /// Whether some address got a new claimant since the last
    /// [`Index::take_unreported`].
    pub fn has_unreported(&self) -> bool {
        !self.unreported.is_empty()
    }

    /// The addresses that got a new claimant since the last call (each
    /// once, still contested), and the entries among their claimants whose
    /// DN is not known.
    pub fn take_unreported(&mut self) -> (Vec<String>, Vec<Uuid>) {
        let mut keys = std::mem::take(&mut self.unreported);
        keys.sort_unstable();
        keys.dedup();
        keys.retain(|k| self.contested.contains_key(k));
        let mut unnamed: Vec<Uuid> = keys
            .iter()
            .flat_map(|k| &self.contested[k])
            .filter(|c| c.dn.is_none())
            .map(|c| c.uuid)
            .collect();
        unnamed.sort_unstable();
        unnamed.dedup();
        (keys, unnamed)
    }

    /// Record the DN of an entry with contested claims.
    pub fn set_dn(&mut self, uuid: &Uuid, dn: &str) {
        for c in self.contested.values_mut().flatten() {
            if c.uuid == *uuid {
                c.dn = Some(dn.to_string());
            }
        }
    }

    /// The DNs known for entries with a contested claim (for the snapshot,
    /// so a restart logs the same names).
    pub fn known_dns(&self) -> HashMap<Uuid, &str> {
        self.contested
            .values()
            .flatten()
            .filter_map(|c| Some((c.uuid, c.dn.as_deref()?)))
            .collect()
    }

    /// An entry's mailbox as it would be served: from the directory, or
    /// from its claim when its login is contested (the warm snapshot keeps
    /// both claimants, so a restart is ambiguous and heals the same way).
    pub fn mailbox(&self, dir: &Directory, uuid: &Uuid) -> Option<UserSpec> {
        let login = self.entries.get(uuid)?.login();
        if let Some(claims) = self.contested.get(login) {
            return claims.iter().find_map(|c| match &c.what {
                Claimed::Mailbox(u) if c.uuid == *uuid => Some((**u).clone()),
                _ => None,
            });
        }
        dir.user(login)
            .filter(|u| u.origin == Some(*uuid))
            .map(|u| u.to_spec(dir.settings()))
    }

    /// Add or replace an entry, in `dir` too. `dn` names it in the log.
    pub fn put(&mut self, dir: &mut Directory, uuid: Uuid, data: EntryData, dn: Option<&str>) {
        // Withdraw what the entry no longer claims (aliases first: their
        // holder is found through the login, which must still be there).
        if let Some(old) = self.entries.get(&uuid).cloned() {
            let still = |key: &str, role: Role| match (&data.user, role) {
                (Some(u), Role::Mailbox) => u.login == key,
                (Some(_), Role::Alias) => data.aliases.iter().any(|a| a == key),
                (None, _) => false,
            };
            for (key, role) in old.claims_aliases_first() {
                if !still(key, role) {
                    self.release(dir, &uuid, key, role);
                }
            }
        }
        let Some(mut user) = data.user else {
            // Not a mailbox (any more): nothing to hold.
            self.entries.remove(&uuid);
            return;
        };
        user.origin = Some(uuid);
        self.claim(dir, uuid, dn, &user.login, ClaimRef::Mailbox(&user));
        for a in &data.aliases {
            self.claim(dir, uuid, dn, a, ClaimRef::Alias(&user.login));
        }
        self.entries.insert(
            uuid,
            Contribution::new(&user.login, data.aliases.iter().map(String::as_str)),
        );
    }

    /// Remove an entry, from `dir` too; returns whether it was held.
    pub fn delete(&mut self, dir: &mut Directory, uuid: &Uuid) -> bool {
        let Some(old) = self.entries.get(uuid).cloned() else {
            return false;
        };
        for (key, role) in old.claims_aliases_first() {
            self.release(dir, uuid, key, role);
        }
        self.entries.remove(uuid);
        true
    }

    /// Copy every held entry from `from` into `to` (a directory rebuilt from
    /// files): LDAP data lives on across file reloads, ambiguity included.
    pub fn carry_over(&self, from: &Directory, to: &mut Directory) {
        for c in self.entries.values() {
            let login = c.login();
            if let Some(u) = from.user(login) {
                to.insert_user(&u.to_spec(from.settings()));
            }
            for a in c.aliases() {
                if from
                    .alias(a)
                    .is_some_and(|t| t.len() == 1 && &*t[0] == login)
                {
                    to.set_alias_to(a, login);
                }
            }
        }
        for (key, claims) in &self.contested {
            to.set_ambiguous(key, claims.len() as u32);
        }
    }

    /// Who holds the uncontested `key` in `dir`.
    fn holder(&self, dir: &Directory, key: &str) -> Holder {
        let held = |o: &Uuid| self.entries.contains_key(o);
        if let Some(u) = dir.user(key) {
            return match u.origin {
                Some(o) if held(&o) => Holder::Entry(o),
                _ => Holder::Files,
            };
        }
        let Some(targets) = dir.alias(key) else {
            return Holder::Free;
        };
        // An LDAP alias has one target, the login of the entry that claims
        // it; that login's holder (or one of its claimants, when contested)
        // is the alias's holder if its entry lists the alias.
        let [target] = targets else {
            return Holder::Files;
        };
        let target: &str = target;
        let lists = |o: &Uuid| {
            self.entries
                .get(o)
                .is_some_and(|c| c.login() == target && c.aliases().any(|a| a == key))
        };
        let candidates: Vec<Uuid> = match self.contested.get(target) {
            Some(claims) => claims
                .iter()
                .filter(|c| matches!(c.what, Claimed::Mailbox(_)))
                .map(|c| c.uuid)
                .collect(),
            None => dir
                .user(target)
                .and_then(|u| u.origin)
                .into_iter()
                .collect(),
        };
        candidates
            .into_iter()
            .find(lists)
            .map_or(Holder::Files, Holder::Entry)
    }

    /// Entry `uuid` claims `key`.
    fn claim(
        &mut self,
        dir: &mut Directory,
        uuid: Uuid,
        dn: Option<&str>,
        key: &str,
        what: ClaimRef<'_>,
    ) {
        if let Some(claims) = self.contested.get_mut(key) {
            let claim = Claim {
                uuid,
                dn: dn.map(str::to_string),
                what: what.to_owned(),
            };
            match claims.iter_mut().find(|c| c.uuid == uuid) {
                Some(c) => {
                    let dn = claim.dn.or_else(|| c.dn.take());
                    *c = Claim { dn, ..claim };
                }
                None => {
                    claims.push(claim);
                    dir.set_ambiguous(key, claims.len() as u32);
                    self.unreported.push(key.to_string());
                }
            }
            return;
        }
        match self.holder(dir, key) {
            Holder::Entry(other) if other != uuid => {
                let theirs = take(dir, key, other);
                let claims = vec![
                    theirs,
                    Claim {
                        uuid,
                        dn: dn.map(str::to_string),
                        what: what.to_owned(),
                    },
                ];
                dir.set_ambiguous(key, 2);
                self.contested.insert(key.to_string(), claims);
                self.unreported.push(key.to_string());
            }
            _ => install(dir, key, what),
        }
    }

    /// Entry `uuid` no longer claims `key` (as `role`).
    fn release(&mut self, dir: &mut Directory, uuid: &Uuid, key: &str, role: Role) {
        if let Some(claims) = self.contested.get_mut(key) {
            claims.retain(|c| c.uuid != *uuid);
            match claims.len() {
                0 | 1 => {
                    let last = claims.pop();
                    self.contested.remove(key);
                    dir.clear_ambiguous(key);
                    if let Some(last) = last {
                        install(dir, key, last.what.as_ref());
                        tracing::warn!(
                            address = key,
                            entry_uuid = %format_uuid(&last.uuid),
                            dn = last.dn.as_deref().unwrap_or("?"),
                            "address claimed by one LDAP entry again: served from it"
                        );
                    }
                }
                n => dir.set_ambiguous(key, n as u32),
            }
            return;
        }
        // Only what the entry still holds: when another entry has since
        // taken the address over, or files hold it, it stays.
        if self.holder(dir, key) == Holder::Entry(*uuid) {
            match role {
                Role::Mailbox => dir.remove_user(key),
                Role::Alias => dir.remove_alias(key),
            };
        }
    }
}

/// Serve a claim.
fn install(dir: &mut Directory, key: &str, what: ClaimRef<'_>) {
    match what {
        ClaimRef::Mailbox(u) => dir.insert_user(u),
        ClaimRef::Alias(login) => dir.set_alias_to(key, login),
    }
}

/// The claim `owner` holds on the uncontested `key`, taken out of `dir`'s
/// served data (the caller marks the key ambiguous).
fn take(dir: &Directory, key: &str, owner: Uuid) -> Claim {
    let what = match dir.user(key) {
        Some(u) => Claimed::Mailbox(Box::new(u.to_spec(dir.settings()))),
        None => Claimed::Alias(
            dir.alias(key)
                .and_then(|t| t.first())
                .map(|t| t.to_string())
                .unwrap_or_default(),
        ),
    };
    Claim {
        uuid: owner,
        dn: None,
        what,
    }
}

/// The warning for a new claim on a contested address: every claimant by
/// entryUUID and DN where known. Never any of the claims' data.
pub fn log_conflict(key: &str, claims: &[Claim]) {
    let entries: Vec<String> = claims.iter().map(describe).collect();
    tracing::warn!(
        address = key,
        claims = claims.len(),
        entries = %entries.join("; "),
        "address claimed by more than one LDAP entry: a directory error; it is \
         answered \"temporary\" until only one entry claims it"
    );
}

/// `entryUUID=… (dn)` for the log and `stats`.
pub fn describe(c: &Claim) -> String {
    match &c.dn {
        Some(dn) => format!("entryUUID={} ({dn})", format_uuid(&c.uuid)),
        None => format!("entryUUID={}", format_uuid(&c.uuid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::Settings;
    use ramdir_core::lookup::LookupError;

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

    /// An entry with its own password hash, to tell whose data is served.
    fn with_pw(login: &str, aliases: &[&str], pw: &str) -> EntryData {
        let mut d = data(login, aliases);
        d.user.as_mut().unwrap().password = Some(pw.into());
        d
    }

    /// The password served for `login`, or the lookup error.
    fn served(dir: &Directory, login: &str) -> Result<Option<String>, LookupError> {
        Ok(dir
            .lookup_mailbox(login)?
            .and_then(|u| u.password.map(str::to_string)))
    }

    fn ambiguous(dir: &Directory, key: &str) -> bool {
        matches!(dir.mailbox_login(key), Err(LookupError::Ambiguous { .. }))
            && matches!(dir.lookup_alias(key), Err(LookupError::Ambiguous { .. }))
            && dir.user(key).is_none()
            && dir.alias(key).is_none()
    }

    const A: Uuid = [0xa; 16];
    const B: Uuid = [0xb; 16];
    const C: Uuid = [0xc; 16];

    #[test]
    fn a_second_entry_with_the_same_mail_makes_it_ambiguous_until_deleted() {
        for survivor in [A, B] {
            let mut dir = Directory::new(Settings::default());
            let mut idx = Index::new();
            idx.put(
                &mut dir,
                A,
                with_pw("u5@x.org", &["al5@x.org"], "{X}a"),
                None,
            );
            idx.put(
                &mut dir,
                B,
                with_pw("u5@x.org", &[], "{X}b"),
                Some("uid=dup,dc=x"),
            );
            assert!(ambiguous(&dir, "u5@x.org"), "never one entry's data");
            assert_eq!(dir.ambiguous_claims("u5@x.org"), Some(2));
            assert_eq!(dir.counts().ambiguous, 1);
            assert!(dir.has_domain("x.org"), "the domain stays ours");
            // An alias pointing at it is temporary too, not unknown.
            assert!(matches!(
                dir.lookup_alias("al5@x.org"),
                Err(LookupError::Ambiguous { .. })
            ));
            assert!(matches!(
                dir.mailbox_login("u5+ext@x.org"),
                Err(LookupError::Ambiguous { .. })
            ));
            let (claims, dn) = {
                let (k, c) = idx.contested().next().unwrap();
                assert_eq!(k, "u5@x.org");
                (c.len(), c[1].dn.clone())
            };
            assert_eq!((claims, dn.as_deref()), (2, Some("uid=dup,dc=x")));
            // One claim goes away: the other is served again, whole.
            let gone = if survivor == A { B } else { A };
            assert!(idx.delete(&mut dir, &gone));
            let want = if survivor == A { "{X}a" } else { "{X}b" };
            assert_eq!(served(&dir, "u5@x.org"), Ok(Some(want.into())));
            assert_eq!(dir.user("u5@x.org").unwrap().origin, Some(survivor));
            assert_eq!(dir.counts().ambiguous, 0);
            assert_eq!(idx.contested_len(), 0);
            let alias = dir.lookup_alias("al5@x.org");
            if survivor == A {
                assert_eq!(alias, Ok(Some(vec!["u5@x.org".to_string()])));
            } else {
                assert_eq!(alias, Ok(None), "A's alias left with A");
                assert!(!dir.has_user("al5@x.org") && dir.alias("al5@x.org").is_none());
            }
            // And the survivor's own withdrawal removes it for good.
            assert!(idx.delete(&mut dir, &survivor));
            assert_eq!(served(&dir, "u5@x.org"), Ok(None));
            assert_eq!(dir.counts().users, 0);
            assert!(!dir.has_domain("x.org"));
        }
    }

    #[test]
    fn a_typo_then_its_fix_restores_both_entries() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, A, with_pw("a@x.org", &["a1@x.org"], "{X}a"), None);
        idx.put(&mut dir, B, with_pw("b@x.org", &["b1@x.org"], "{X}b"), None);
        // B's mail changed to A's address by mistake.
        idx.put(
            &mut dir,
            B,
            with_pw("a@x.org", &["b1@x.org"], "{X}b"),
            Some("uid=b"),
        );
        assert!(ambiguous(&dir, "a@x.org"));
        assert_eq!(served(&dir, "b@x.org"), Ok(None), "B's old login is gone");
        for alias in ["a1@x.org", "b1@x.org"] {
            assert!(
                matches!(dir.lookup_alias(alias), Err(LookupError::Ambiguous { .. })),
                "{alias} leads to the ambiguous address"
            );
        }
        // B changes again while ambiguous (its claim is updated, not added).
        idx.put(
            &mut dir,
            B,
            with_pw("a@x.org", &["b1@x.org"], "{X}b2"),
            None,
        );
        assert_eq!(dir.ambiguous_claims("a@x.org"), Some(2));
        // Fixed.
        idx.put(
            &mut dir,
            B,
            with_pw("b@x.org", &["b1@x.org"], "{X}b2"),
            None,
        );
        assert_eq!(served(&dir, "a@x.org"), Ok(Some("{X}a".into())));
        assert_eq!(served(&dir, "b@x.org"), Ok(Some("{X}b2".into())));
        assert_eq!(dir.alias("a1@x.org").unwrap()[0].as_ref(), "a@x.org");
        assert_eq!(dir.alias("b1@x.org").unwrap()[0].as_ref(), "b@x.org");
        assert_eq!((dir.counts().ambiguous, idx.contested_len()), (0, 0));
    }

    #[test]
    fn alias_claims_conflict_with_aliases_and_logins() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, A, data("a@x.org", &["sales@x.org"]), None);
        // Another entry's alias equal to A's alias.
        idx.put(&mut dir, B, data("b@x.org", &["sales@x.org"]), None);
        assert!(ambiguous(&dir, "sales@x.org"));
        // A third entry whose login is that alias.
        idx.put(&mut dir, C, data("sales@x.org", &[]), None);
        assert_eq!(dir.ambiguous_claims("sales@x.org"), Some(3));
        assert!(dir.has_user("a@x.org") && dir.has_user("b@x.org"));
        // Each goes away in turn.
        assert!(idx.delete(&mut dir, &C));
        assert_eq!(dir.ambiguous_claims("sales@x.org"), Some(2));
        idx.put(&mut dir, A, data("a@x.org", &[]), None);
        assert_eq!(
            dir.lookup_alias("sales@x.org"),
            Ok(Some(vec!["b@x.org".to_string()]))
        );
        // An entry's own alias equal to another's login.
        idx.put(&mut dir, C, data("c@x.org", &["a@x.org"]), None);
        assert!(ambiguous(&dir, "a@x.org"));
        idx.put(&mut dir, C, data("c@x.org", &[]), None);
        assert!(dir.has_user("a@x.org") && dir.alias("a@x.org").is_none());
        assert_eq!(dir.user("a@x.org").unwrap().origin, Some(A));
        // A login swapped with its own alias is no conflict.
        idx.put(&mut dir, B, data("sales@x.org", &["b@x.org"]), None);
        assert_eq!(dir.alias("b@x.org").unwrap()[0].as_ref(), "sales@x.org");
        assert!(dir.has_user("sales@x.org") && !dir.has_user("b@x.org"));
        assert_eq!((dir.counts().ambiguous, idx.contested_len()), (0, 0));
    }

    #[test]
    fn a_full_load_with_duplicates_is_not_last_wins() {
        // The full load builds with `put` into a fresh index, in LDAP's order.
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, A, with_pw("d@x.org", &[], "{X}a"), Some("uid=a"));
        idx.put(&mut dir, B, with_pw("d@x.org", &[], "{X}b"), Some("uid=b"));
        idx.put(&mut dir, C, with_pw("d@x.org", &[], "{X}c"), Some("uid=c"));
        assert!(ambiguous(&dir, "d@x.org"));
        assert_eq!(dir.ambiguous_claims("d@x.org"), Some(3));
        let (_, claims) = idx.contested().next().unwrap();
        let names: Vec<String> = claims.iter().map(describe).collect();
        // The first claimant's DN was not kept (DNs are not held per entry,
        // see `Claim::dn`): it is named by its entryUUID.
        assert_eq!(
            names,
            [
                format!("entryUUID={}", format_uuid(&A)),
                format!("entryUUID={} (uid=b)", format_uuid(&B)),
                format!("entryUUID={} (uid=c)", format_uuid(&C)),
            ],
            "the log and stats name every claimant"
        );
        // Every entry keeps its own data for the warm snapshot.
        let pw = |u: &Uuid| idx.mailbox(&dir, u).and_then(|s| s.password);
        assert_eq!(
            [pw(&A), pw(&B), pw(&C)],
            [
                Some("{X}a".into()),
                Some("{X}b".into()),
                Some("{X}c".into())
            ]
        );
        assert!(idx.delete(&mut dir, &A));
        assert_eq!(dir.ambiguous_claims("d@x.org"), Some(2));
        assert!(idx.delete(&mut dir, &C));
        assert_eq!(served(&dir, "d@x.org"), Ok(Some("{X}b".into())));
    }

    /// Addresses the model test draws from.
    const POOL: [&str; 4] = ["p0@x.org", "p1@x.org", "p2@x.org", "p3@x.org"];

    /// The directory matches what the entries claim: an address claimed
    /// once is served from that entry (its own data), claimed twice or more
    /// is ambiguous, claimed by none is absent.
    fn check_model(dir: &Directory, model: &HashMap<Uuid, (String, Vec<String>, String)>) {
        for addr in POOL {
            let claims: Vec<(&Uuid, bool)> = model
                .iter()
                .filter_map(|(u, (login, aliases, _))| {
                    let as_login = login == addr;
                    (as_login || aliases.iter().any(|a| a == addr)).then_some((u, as_login))
                })
                .collect();
            match claims.as_slice() {
                [] => {
                    assert!(!dir.has_user(addr) && dir.alias(addr).is_none(), "{addr}");
                    assert_eq!(dir.ambiguous_claims(addr), None, "{addr}");
                }
                [(u, true)] => {
                    let user = dir.user(addr).unwrap_or_else(|| panic!("{addr}"));
                    assert_eq!(user.origin, Some(**u), "{addr}");
                    assert_eq!(user.password, Some(model[*u].2.as_str()), "{addr}");
                    assert!(dir.alias(addr).is_none(), "{addr}");
                }
                [(u, false)] => {
                    assert_eq!(dir.alias(addr), Some(&[model[*u].0.as_str().into()][..]));
                    assert!(!dir.has_user(addr), "{addr}");
                }
                many => {
                    assert_eq!(
                        dir.ambiguous_claims(addr),
                        Some(many.len() as u32),
                        "{addr}"
                    );
                    assert!(!dir.has_user(addr) && dir.alias(addr).is_none(), "{addr}");
                }
            }
        }
        assert_eq!(dir.has_domain("x.org"), !model.is_empty());
    }

    proptest::proptest! {
        /// Any sequence of puts and deletes of entries sharing a few
        /// addresses leaves the directory as the claims say, and deleting
        /// every entry leaves it empty.
        #[test]
        fn the_directory_follows_the_claims(
            ops in proptest::collection::vec(
                (0u8..4, 0usize..POOL.len(), proptest::collection::vec(0usize..POOL.len(), 0..3), 0u8..5),
                1..40,
            )
        ) {
            let mut dir = Directory::new(Settings::default());
            let mut idx = Index::new();
            let mut model = HashMap::new();
            for (n, (entry, login, aliases, kind)) in ops.into_iter().enumerate() {
                let uuid = [entry; 16];
                if kind == 0 {
                    idx.delete(&mut dir, &uuid);
                    model.remove(&uuid);
                } else {
                    let login = POOL[login].to_string();
                    // As the mapping gives them: folded, no duplicates,
                    // none equal to the login.
                    let mut al: Vec<String> = Vec::new();
                    for a in aliases.into_iter().map(|i| POOL[i].to_string()) {
                        if a != login && !al.contains(&a) {
                            al.push(a);
                        }
                    }
                    let pw = format!("{{X}}{n}");
                    let refs: Vec<&str> = al.iter().map(String::as_str).collect();
                    idx.put(&mut dir, uuid, with_pw(&login, &refs, &pw), None);
                    model.insert(uuid, (login, al, pw));
                }
                check_model(&dir, &model);
            }
            let all: Vec<Uuid> = idx.uuids().copied().collect();
            for u in &all {
                idx.delete(&mut dir, u);
            }
            let c = dir.counts();
            proptest::prop_assert_eq!((c.users, c.aliases, c.ambiguous, c.domains), (0, 0, 0, 0));
            proptest::prop_assert_eq!(idx.contested_len(), 0);
        }
    }

    #[test]
    fn ambiguity_survives_a_file_reload() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, A, data("d@x.org", &[]), None);
        idx.put(&mut dir, B, data("d@x.org", &[]), None);
        let mut rebuilt = Directory::new(Settings::default());
        idx.carry_over(&dir, &mut rebuilt);
        assert!(ambiguous(&rebuilt, "d@x.org"));
        assert!(idx.delete(&mut rebuilt, &A));
        assert_eq!(rebuilt.user("d@x.org").unwrap().origin, Some(B));
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
        idx.put(&mut dir, u, data("a@x.org", &["a1@x.org"]), None);
        assert!(dir.has_user("a@x.org") && dir.alias("a1@x.org").is_some());
        // Rename: new login, alias moved.
        idx.put(&mut dir, u, data("b@x.org", &["b1@x.org"]), None);
        assert!(!dir.has_user("a@x.org") && dir.alias("a1@x.org").is_none());
        assert!(dir.has_user("b@x.org") && dir.alias("b1@x.org").unwrap()[0].as_ref() == "b@x.org");
        // An alias claimed by another entry is not removed by the first.
        let v = [2u8; 16];
        idx.put(&mut dir, v, data("c@x.org", &["b1@x.org"]), None);
        assert!(idx.delete(&mut dir, &u));
        assert_eq!(dir.alias("b1@x.org").unwrap()[0].as_ref(), "c@x.org");
        assert!(!dir.has_user("b@x.org"));
        assert!(!idx.delete(&mut dir, &u));
        // An entry that stops being a mailbox withdraws.
        idx.put(&mut dir, v, EntryData::default(), None);
        assert!(!dir.has_user("c@x.org") && idx.is_empty());
    }

    #[test]
    fn an_address_taken_over_by_another_entry_survives_the_old_one() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        let (old, new) = ([1u8; 16], [2u8; 16]);
        idx.put(&mut dir, old, data("x@x.org", &["a@x.org"]), None);
        // Re-created while disconnected: the new entry arrives first…
        idx.put(&mut dir, new, data("x@x.org", &["a@x.org"]), None);
        // …then the old one is swept.
        assert!(idx.delete(&mut dir, &old));
        assert!(dir.has_user("x@x.org"), "the new owner's mailbox stays");
        assert_eq!(dir.user("x@x.org").unwrap().origin, Some(new));
        assert!(dir.alias("a@x.org").is_some(), "and its alias");
        // The address moved: the old entry changes its own address.
        let third = [3u8; 16];
        idx.put(&mut dir, third, data("y@x.org", &[]), None);
        idx.put(&mut dir, new, data("y@x.org", &[]), None);
        idx.put(&mut dir, third, data("z@x.org", &[]), None);
        assert!(dir.has_user("y@x.org") && dir.has_user("z@x.org"));
        // The owner itself withdrawing does remove it.
        assert!(idx.delete(&mut dir, &new));
        assert!(!dir.has_user("y@x.org"));
    }

    #[test]
    fn carry_over_into_a_rebuilt_directory() {
        let mut dir = Directory::new(Settings::default());
        let mut idx = Index::new();
        idx.put(&mut dir, [3u8; 16], data("l@x.org", &["l1@x.org"]), None);
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

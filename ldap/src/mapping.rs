//! From LDAP attributes to directory entries, as configured (like Dovecot's
//! `user_attrs`/`pass_attrs`).
//!
//! The default mapping fits `inetOrgPerson` plus `inetLocalMailRecipient`
//! (`misc.schema`: `mailLocalAddress`) plus ramdir's small `mailAccount`
//! schema (`mailQuotaBytes`, `mailEnabled`; shipped in `docs/ldap/`):
//!
//! | attribute | becomes |
//! |---|---|
//! | `mail` | the mailbox's login (canonical address) |
//! | `mailLocalAddress` | more addresses delivering to it (aliases) |
//! | `userPassword` | the password hash (`{SCHEME}…`) |
//! | `mailQuotaBytes` | the user's storage limit (Dovecot 2.4's `quota_storage_size`: bytes or a size, `0`/`unlimited` for none) |
//! | `mailEnabled` | `FALSE` disables logins (mail is still delivered) |
//! | `uidNumber`, `gidNumber`, `homeDirectory` | uid, gid, home when present |
//!
//! Two more limit attributes can be mapped, so one directory serves
//! Dovecot 2.3 and 2.4 alike: `quota_message_count` (2.4's spelling: a
//! message count) and `quota_rule` (2.3's spelling: `*:storage=1G:messages=N`
//! or a size). An entry whose attributes set one limit to two different
//! values is an error, like any bad value ([`ramdir_core::quota::QuotaFields`]);
//! a resource no attribute names is the default's, or unlimited when a
//! 2.3 rule is given (it replaces the default rule whole).
//!
//! An entry without the address attribute is not a mailbox and contributes
//! nothing (it may still be returned by a broad filter).

use std::borrow::Cow;
use std::collections::HashMap;

use ldap3::asn1::{PL, StructureTag};

use crate::ber::{self, CONSTRUCTED, Elements};
use ramdir_core::UserSpec;
use ramdir_core::address::Normalizer;
use ramdir_core::quota::{QuotaFields, QuotaLimit};

/// Which attributes give what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The mailbox address (login).
    pub address: String,
    /// Further addresses that deliver to the mailbox.
    pub aliases: Vec<String>,
    /// Password hash.
    pub password: Option<String>,
    /// Storage limit (2.4's `quota_storage_size`): bytes, or a size such
    /// as `10G`; `0` or `unlimited` for none.
    pub quota: Option<String>,
    /// Message limit (2.4's `quota_message_count`).
    pub quota_message_count: Option<String>,
    /// Limit in 2.3's spelling (`quota_rule`: `*:storage=1G[:messages=N]`
    /// or a size).
    pub quota_rule: Option<String>,
    /// Enabled flag (`TRUE`/`FALSE`, also `1`/`0`, `yes`/`no`).
    pub enabled: Option<String>,
    /// uid attribute.
    pub uid: Option<String>,
    /// gid attribute.
    pub gid: Option<String>,
    /// Home directory attribute.
    pub home: Option<String>,
    /// Dovecot `mail` location attribute.
    pub mail: Option<String>,
    /// uid when the entry has none.
    pub default_uid: Option<u32>,
    /// gid when the entry has none.
    pub default_gid: Option<u32>,
    /// The directory's `default_quota`: what an entry that limits only
    /// one resource, in 2.4's spelling, keeps for the other.
    pub default_quota: QuotaLimit,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            address: "mail".into(),
            aliases: vec!["mailLocalAddress".into()],
            password: Some("userPassword".into()),
            quota: Some("mailQuotaBytes".into()),
            quota_message_count: None,
            quota_rule: None,
            enabled: Some("mailEnabled".into()),
            uid: Some("uidNumber".into()),
            gid: Some("gidNumber".into()),
            home: Some("homeDirectory".into()),
            mail: None,
            default_uid: None,
            default_gid: None,
            default_quota: ramdir_core::Settings::default().default_quota,
        }
    }
}

/// What one LDAP entry contributes to the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryData {
    /// The mailbox, if the entry is one.
    pub user: Option<UserSpec>,
    /// Alias addresses (folded) that deliver to the mailbox.
    pub aliases: Vec<String>,
}

impl EntryData {
    /// The login, if any.
    pub fn login(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.login.as_str())
    }
}

/// Why an entry could not be mapped (it is skipped with a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError(pub String);

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Mapping {
    /// The user's own limit from the values of the three limit attributes
    /// (storage, message count, 2.3 rule), if any is present.
    fn quota_of(
        &self,
        storage: Option<&str>,
        messages: Option<&str>,
        rule: Option<&str>,
    ) -> Result<Option<QuotaLimit>, MapError> {
        let mut q = QuotaFields::new();
        let name = |a: &Option<String>| a.clone().unwrap_or_default();
        let r = (|| {
            if let Some(v) = rule {
                q.main_rule(&name(&self.quota_rule), v)?;
            }
            if let Some(v) = storage {
                q.storage_size(&name(&self.quota), v)?;
            }
            if let Some(v) = messages {
                q.message_count(&name(&self.quota_message_count), v)?;
            }
            Ok::<_, String>(())
        })();
        r.map_err(MapError)?;
        Ok(q.finish(self.default_quota).0)
    }

    /// Every attribute to request in searches.
    pub fn attributes(&self) -> Vec<String> {
        let mut v = vec![self.address.clone()];
        v.extend(self.aliases.iter().cloned());
        for a in [
            &self.password,
            &self.quota,
            &self.quota_message_count,
            &self.quota_rule,
            &self.enabled,
            &self.uid,
            &self.gid,
            &self.home,
            &self.mail,
        ]
        .into_iter()
        .flatten()
        {
            v.push(a.clone());
        }
        v.push("entryUUID".into());
        v
    }

    /// Map an entry's attributes. Attribute names are matched without
    /// regard to case, as LDAP does.
    pub fn map(
        &self,
        attrs: &HashMap<String, Vec<String>>,
        normalizer: &Normalizer,
    ) -> Result<EntryData, MapError> {
        let r = self.resolve();
        r.map(&r.view_attrs(attrs), normalizer)
    }

    /// The mapping made ready for mapping many entries: every attribute it
    /// reads, once, and which role reads which.
    pub fn resolve(&self) -> Resolved {
        let mut names: Vec<String> = Vec::new();
        let mut slot = |name: &str| match names.iter().position(|n| n.eq_ignore_ascii_case(name)) {
            Some(i) => i,
            None => {
                names.push(name.to_string());
                names.len() - 1
            }
        };
        let address = slot(&self.address);
        let aliases = self.aliases.iter().map(|a| slot(a)).collect();
        let mut opt = |name: &Option<String>| name.as_deref().map(&mut slot);
        let password = opt(&self.password);
        let quota = opt(&self.quota);
        let quota_message_count = opt(&self.quota_message_count);
        let quota_rule = opt(&self.quota_rule);
        let enabled = opt(&self.enabled);
        let uid = opt(&self.uid);
        let gid = opt(&self.gid);
        let home = opt(&self.home);
        let mail = opt(&self.mail);
        let uuid = slot(ENTRY_UUID);
        Resolved {
            mapping: self.clone(),
            names,
            address,
            aliases,
            password,
            quota,
            quota_message_count,
            quota_rule,
            enabled,
            uid,
            gid,
            home,
            mail,
            uuid,
        }
    }
}

/// The attribute holding an entry's UUID (RFC 4530), read with the others.
const ENTRY_UUID: &str = "entryUUID";

/// [`Mapping`] resolved once for many entries (a full load, a sync
/// session): the distinct attribute names it reads, each a slot, and the
/// slot of each role.
///
/// Why: a full load maps a million entries. Reading them straight from the
/// BER tree ldap3 hands over ([`Resolved::view`]), matching attribute
/// names to slots without allocating, skips ldap3's `SearchEntry` (a
/// `HashMap` with a `String` per value) and the lower-cased copy of it;
/// [`Mapping::map`] goes through the same [`Resolved::map`], so both ways
/// map alike.
#[derive(Debug, Clone)]
pub struct Resolved {
    mapping: Mapping,
    /// Distinct attribute names (distinct regardless of ASCII case).
    names: Vec<String>,
    address: usize,
    aliases: Vec<usize>,
    password: Option<usize>,
    quota: Option<usize>,
    quota_message_count: Option<usize>,
    quota_rule: Option<usize>,
    enabled: Option<usize>,
    uid: Option<usize>,
    gid: Option<usize>,
    home: Option<usize>,
    mail: Option<usize>,
    uuid: usize,
}

/// The values of one entry that a [`Resolved`] mapping reads, borrowed from
/// the entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryView<'a> {
    dn: &'a [u8],
    /// (slot, value), each attribute's values together and in the order
    /// the server sent them.
    values: Vec<(usize, &'a str)>,
}

impl<'a> EntryView<'a> {
    /// The entry's DN, for logs.
    pub fn dn(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.dn)
    }

    fn all(&self, slot: usize) -> impl Iterator<Item = &'a str> + '_ {
        self.values
            .iter()
            .filter(move |(s, _)| *s == slot)
            .map(|(_, v)| *v)
    }

    fn first(&self, slot: Option<usize>) -> Option<&'a str> {
        self.all(slot?).next()
    }

    /// Set the values of a slot, replacing what an earlier attribute of the
    /// same name gave (as ldap3's `SearchEntry` map does).
    fn set(&mut self, slot: usize, values: impl Iterator<Item = &'a str>) {
        if self.values.iter().any(|(s, _)| *s == slot) {
            self.values.retain(|(s, _)| *s != slot);
        }
        self.values.extend(values.map(|v| (slot, v)));
    }
}

/// `SearchResultEntry`'s application tag number (RFC 4511 4.5.2).
const SEARCH_RESULT_ENTRY: u64 = 4;

/// Class bits of a BER identifier byte.
const CLASS: u8 = 0xc0;

/// Why a search result entry could not be read: its BER is not the shape
/// RFC 4511 gives it (ldap3's own `SearchEntry::construct` panics on this).
const MALFORMED: &str = "malformed search result entry";

impl Resolved {
    /// The mapping this was resolved from.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn slot(&self, name: &[u8]) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Read the values the mapping needs from a search result entry's BER
    /// tree (`SearchResultEntry ::= [APPLICATION 4] SEQUENCE { objectName,
    /// attributes SEQUENCE OF SEQUENCE { type, vals SET OF value } }`),
    /// without copying them. As in ldap3's `SearchEntry`, an attribute with
    /// a value that is not UTF-8 is binary and not read here.
    pub fn view<'a>(&self, tag: &'a StructureTag) -> Result<EntryView<'a>, MapError> {
        let bad = || MapError(MALFORMED.into());
        if tag.id != SEARCH_RESULT_ENTRY {
            return Err(bad());
        }
        let PL::C(parts) = &tag.payload else {
            return Err(bad());
        };
        let (dn, attrs) = octets_then_list(parts).ok_or_else(bad)?;
        let mut view = EntryView {
            dn,
            values: Vec::with_capacity(self.names.len() + 1),
        };
        for attr in attrs {
            let PL::C(attr) = &attr.payload else {
                return Err(bad());
            };
            let (name, vals) = octets_then_list(attr).ok_or_else(bad)?;
            let vals = vals.iter().map(|v| match &v.payload {
                PL::P(v) => Ok(&v[..]),
                PL::C(_) => Err(bad()),
            });
            self.add(&mut view, name, vals)?;
        }
        Ok(view)
    }

    /// [`Resolved::view`] from the encoding of a `SearchResultEntry` (the
    /// whole element), as it came from the server.
    pub fn view_ber<'a>(&self, entry: &'a [u8]) -> Result<EntryView<'a>, MapError> {
        let bad = |_| MapError(MALFORMED.into());
        let (tag, contents) = Elements::new(entry).expect().map_err(bad)?;
        if u64::from(tag & !(CONSTRUCTED | CLASS)) != SEARCH_RESULT_ENTRY || tag & CONSTRUCTED == 0
        {
            return Err(MapError(MALFORMED.into()));
        }
        let mut parts = Elements::new(contents);
        let (dn_tag, dn) = parts.expect().map_err(bad)?;
        let (attrs_tag, attrs) = parts.expect().map_err(bad)?;
        if dn_tag & CONSTRUCTED != 0 || attrs_tag & CONSTRUCTED == 0 {
            return Err(MapError(MALFORMED.into()));
        }
        // Elements after the two are ignored, as `view` ignores them, but
        // they must be well-formed, as ldap3 requires (found by fuzzing).
        ber::check_all(parts.rest()).map_err(bad)?;
        let mut view = EntryView {
            dn,
            values: Vec::with_capacity(self.names.len() + 1),
        };
        let mut attrs = Elements::new(attrs);
        while let Some((tag, attr)) = attrs.next().map_err(bad)? {
            let mut attr = Elements::new(attr);
            let (name_tag, name) = attr.expect().map_err(bad)?;
            let (vals_tag, vals) = attr.expect().map_err(bad)?;
            if tag & CONSTRUCTED == 0 || name_tag & CONSTRUCTED != 0 || vals_tag & CONSTRUCTED == 0
            {
                return Err(MapError(MALFORMED.into()));
            }
            // The values of attributes the mapping does not read are
            // skipped, but must be well-formed too.
            ber::check_all(attr.rest()).map_err(bad)?;
            ber::check_all(vals).map_err(bad)?;
            let mut vals = Elements::new(vals);
            let vals = std::iter::from_fn(move || match vals.next() {
                Ok(Some((t, v))) if t & CONSTRUCTED == 0 => Some(Ok(v)),
                Ok(None) => None,
                _ => Some(Err(MapError(MALFORMED.into()))),
            });
            self.add(&mut view, name, vals)?;
        }
        Ok(view)
    }

    /// Add one attribute's values to `view` if the mapping reads it. An
    /// attribute with a value that is not UTF-8 is binary (ldap3's
    /// `SearchEntry` keeps it apart) and not read.
    fn add<'a>(
        &self,
        view: &mut EntryView<'a>,
        name: &[u8],
        vals: impl Iterator<Item = Result<&'a [u8], MapError>> + Clone,
    ) -> Result<(), MapError> {
        let Some(slot) = self.slot(name) else {
            return Ok(());
        };
        let mut text = true;
        for v in vals.clone() {
            text &= std::str::from_utf8(v?).is_ok();
        }
        if text {
            // Checked above: every value is there and UTF-8.
            view.set(
                slot,
                vals.filter_map(|v| v.ok().and_then(|v| std::str::from_utf8(v).ok())),
            );
        }
        Ok(())
    }

    /// The values the mapping needs from an attribute map (ldap3's
    /// `SearchEntry::attrs`).
    pub fn view_attrs<'a>(&self, attrs: &'a HashMap<String, Vec<String>>) -> EntryView<'a> {
        let mut view = EntryView::default();
        for (name, vals) in attrs {
            if let Some(slot) = self.slot(name.as_bytes()) {
                view.set(slot, vals.iter().map(String::as_str));
            }
        }
        view
    }

    /// The entry's `entryUUID` as sent (textual).
    pub fn entry_uuid<'a>(&self, e: &EntryView<'a>) -> Option<&'a str> {
        e.first(Some(self.uuid))
    }

    /// Map an entry's values.
    pub fn map(&self, e: &EntryView<'_>, normalizer: &Normalizer) -> Result<EntryData, MapError> {
        let m = &self.mapping;
        let Some(addr) = e.first(Some(self.address)) else {
            return Ok(EntryData::default());
        };
        let login = fold(normalizer, addr)
            .ok_or_else(|| MapError(format!("{}: {addr:?} is not an address", m.address)))?;
        let num = |what: &str, v: Option<&str>| -> Result<Option<u32>, MapError> {
            v.map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| MapError(format!("{what} {v:?} is not a number")))
            })
            .transpose()
        };
        let quota = m.quota_of(
            e.first(self.quota),
            e.first(self.quota_message_count),
            e.first(self.quota_rule),
        )?;
        let enabled = match e.first(self.enabled) {
            None => true,
            Some(v)
                if ["true", "1", "yes"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                true
            }
            Some(v)
                if ["false", "0", "no"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                false
            }
            Some(other) => {
                return Err(MapError(format!(
                    "enabled flag {:?} is not TRUE/FALSE",
                    other.to_ascii_lowercase()
                )));
            }
        };
        let user = UserSpec {
            password: e.first(self.password).map(str::to_string),
            uid: num("uid", e.first(self.uid))?.or(m.default_uid),
            gid: num("gid", e.first(self.gid))?.or(m.default_gid),
            home: e.first(self.home).map(str::to_string),
            mail: e.first(self.mail).map(str::to_string),
            quota,
            quota_grace: None,
            quota_rules: Vec::new(),
            enabled,
            extra: Vec::new(),
            // Set by the index, which knows the entry's UUID.
            origin: None,
            login,
        };
        let mut aliases: Vec<String> = Vec::new();
        for &slot in &self.aliases {
            for a in e.all(slot) {
                match fold(normalizer, a) {
                    Some(n) if n != user.login && !aliases.contains(&n) => aliases.push(n),
                    Some(_) => {}
                    None => {
                        tracing::warn!(login = %user.login, alias = %a, "alias is not an address; skipped")
                    }
                }
            }
        }
        Ok(EntryData {
            user: Some(user),
            aliases,
        })
    }
}

/// The folded full form of an address, as [`Normalizer::address`] gives it;
/// an address already in that form (nearly all that LDAP holds) is only
/// copied.
fn fold(normalizer: &Normalizer, key: &str) -> Option<String> {
    if normalizer.is_normal_form(key) {
        Some(key.to_string())
    } else {
        normalizer.address(key).map(|a| a.full())
    }
}

/// The first two elements of a SEQUENCE when they are an OCTET STRING and
/// a SEQUENCE/SET: an entry's `objectName, attributes` and an attribute's
/// `type, vals`.
fn octets_then_list(parts: &[StructureTag]) -> Option<(&Vec<u8>, &Vec<StructureTag>)> {
    match (&parts.first()?.payload, &parts.get(1)?.payload) {
        (PL::P(octets), PL::C(list)) => Some((octets, list)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn default_mapping() {
        let m = Mapping::default();
        let e = m
            .map(
                &attrs(&[
                    ("Mail", &["Jane@Example.org"]),
                    (
                        "mailLocalAddress",
                        &["jd@example.org", "jane@example.org", "JD@example.org"],
                    ),
                    ("userPassword", &["{SSHA}xyz"]),
                    ("mailQuotaBytes", &["1048576"]),
                    ("mailEnabled", &["FALSE"]),
                    ("uidNumber", &["5000"]),
                ]),
                &Normalizer::default(),
            )
            .unwrap();
        let u = e.user.unwrap();
        assert_eq!(u.login, "jane@example.org");
        assert_eq!(u.password.as_deref(), Some("{SSHA}xyz"));
        assert_eq!(
            u.quota,
            Some(QuotaLimit {
                storage: Some(1 << 20),
                messages: None
            })
        );
        assert!(!u.enabled);
        assert_eq!(u.uid, Some(5000));
        assert_eq!(e.aliases, ["jd@example.org"]);
    }

    #[test]
    fn limits_in_either_dovecot_spelling() {
        let m = Mapping {
            quota_message_count: Some("mailQuotaMessages".into()),
            quota_rule: Some("mailQuota".into()),
            default_quota: QuotaLimit {
                storage: Some(10 << 30),
                messages: Some(1000),
            },
            ..Mapping::default()
        };
        let n = Normalizer::default();
        let quota = |pairs: &[(&str, &[&str])]| {
            let mut a = vec![("mail", &["a@x.org"][..])];
            a.extend_from_slice(pairs);
            m.map(&attrs(&a), &n).map(|e| e.user.unwrap().quota)
        };
        let lim = |s: Option<u64>, m: Option<u64>| {
            Some(QuotaLimit {
                storage: s,
                messages: m,
            })
        };
        assert_eq!(quota(&[]).unwrap(), None, "no attribute: the default");
        // 2.4's spelling: what is not named keeps the default.
        assert_eq!(
            quota(&[("mailQuotaBytes", &["2M"])]).unwrap(),
            lim(Some(2 << 20), Some(1000))
        );
        assert_eq!(
            quota(&[("mailQuotaMessages", &["50"])]).unwrap(),
            lim(Some(10 << 30), Some(50))
        );
        assert_eq!(
            quota(&[
                ("mailQuotaBytes", &["unlimited"]),
                ("mailQuotaMessages", &["0"])
            ])
            .unwrap(),
            lim(None, None)
        );
        // 2.3's spelling replaces the default rule whole.
        assert_eq!(
            quota(&[("mailQuota", &["*:storage=1G"])]).unwrap(),
            lim(Some(1 << 30), None)
        );
        // Both, agreeing.
        assert_eq!(
            quota(&[
                ("mailQuota", &["*:storage=1G:messages=9"]),
                ("mailQuotaBytes", &["1073741824"]),
                ("mailQuotaMessages", &["9"])
            ])
            .unwrap(),
            lim(Some(1 << 30), Some(9))
        );
        // Both, disagreeing: an error naming both attributes.
        let e = quota(&[
            ("mailQuota", &["*:storage=1G"]),
            ("mailQuotaBytes", &["2M"]),
        ])
        .unwrap_err();
        assert!(
            e.0.contains("mailQuotaBytes=2M conflicts with mailQuota=*:storage=1G"),
            "{e}"
        );
        assert!(quota(&[("mailQuotaMessages", &["lots"])]).is_err());
        assert!(m.attributes().contains(&"mailQuota".to_string()));
        assert!(m.attributes().contains(&"mailQuotaMessages".to_string()));
    }

    #[test]
    fn entries_without_address_contribute_nothing_and_bad_values_are_errors() {
        let m = Mapping::default();
        let n = Normalizer::default();
        assert_eq!(
            m.map(&attrs(&[("cn", &["x"])]), &n).unwrap(),
            EntryData::default()
        );
        assert!(m.map(&attrs(&[("mail", &["nodomain"])]), &n).is_err());
        assert!(
            m.map(
                &attrs(&[("mail", &["a@x.org"]), ("mailQuotaBytes", &["lots"])]),
                &n
            )
            .is_err()
        );
        assert!(
            m.map(
                &attrs(&[("mail", &["a@x.org"]), ("mailEnabled", &["maybe"])]),
                &n
            )
            .is_err()
        );
        assert!(m.attributes().contains(&"entryUUID".to_string()));
    }

    /// `Mapping::map` as it was before `Resolved`: the reference the BER
    /// path is checked against.
    fn reference_map(
        m: &Mapping,
        attrs: &HashMap<String, Vec<String>>,
        normalizer: &Normalizer,
    ) -> Result<EntryData, MapError> {
        let lower: HashMap<String, &Vec<String>> = attrs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let get = |name: &str| lower.get(&name.to_ascii_lowercase()).copied();
        let first = |name: &Option<String>| {
            name.as_deref()
                .and_then(get)
                .and_then(|v| v.first())
                .map(String::as_str)
        };
        let Some(addr) = get(&m.address).and_then(|v| v.first()) else {
            return Ok(EntryData::default());
        };
        let login = normalizer
            .address(addr)
            .ok_or_else(|| MapError(format!("{}: {addr:?} is not an address", m.address)))?
            .full();
        let num = |what: &str, v: Option<&str>| -> Result<Option<u32>, MapError> {
            v.map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| MapError(format!("{what} {v:?} is not a number")))
            })
            .transpose()
        };
        let quota = m.quota_of(
            first(&m.quota),
            first(&m.quota_message_count),
            first(&m.quota_rule),
        )?;
        let enabled = match first(&m.enabled).map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => {
                return Err(MapError(format!(
                    "enabled flag {other:?} is not TRUE/FALSE"
                )));
            }
        };
        let user = UserSpec {
            login: login.clone(),
            password: first(&m.password).map(str::to_string),
            uid: num("uid", first(&m.uid))?.or(m.default_uid),
            gid: num("gid", first(&m.gid))?.or(m.default_gid),
            home: first(&m.home).map(str::to_string),
            mail: first(&m.mail).map(str::to_string),
            quota,
            quota_grace: None,
            quota_rules: Vec::new(),
            enabled,
            extra: Vec::new(),
            origin: None,
        };
        let mut aliases = Vec::new();
        for attr in &m.aliases {
            for a in get(attr).into_iter().flatten() {
                if let Some(n) = normalizer.address(a)
                    && n.full() != login
                    && !aliases.contains(&n.full())
                {
                    aliases.push(n.full())
                }
            }
        }
        Ok(EntryData {
            user: Some(user),
            aliases,
        })
    }

    /// An entry's attributes and their values, for tests.
    type Attrs<'a> = Vec<(&'a str, Vec<Vec<u8>>)>;

    /// A `SearchResultEntry` BER tree as ldap3 hands it over.
    fn entry_tag(dn: &str, attrs: &[(&str, Vec<Vec<u8>>)]) -> StructureTag {
        use ldap3::asn1::TagClass;
        let prim = |b: &[u8]| StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(b.to_vec()),
        };
        let cons = |id, inner| StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::C(inner),
        };
        let attrs = attrs
            .iter()
            .map(|(name, vals)| {
                cons(
                    16,
                    vec![
                        prim(name.as_bytes()),
                        cons(17, vals.iter().map(|v| prim(v)).collect()),
                    ],
                )
            })
            .collect();
        StructureTag {
            class: TagClass::Application,
            id: SEARCH_RESULT_ENTRY,
            payload: PL::C(vec![prim(dn.as_bytes()), cons(16, attrs)]),
        }
    }

    /// Map a BER entry both ways: straight from the tree, and through
    /// ldap3's `SearchEntry` and the reference; they must agree.
    fn both_ways(
        m: &Mapping,
        n: &Normalizer,
        tag: &StructureTag,
    ) -> (Result<EntryData, MapError>, Option<String>) {
        let r = m.resolve();
        let view = r.view(tag).unwrap();
        assert_eq!(
            r.view_ber(&encode(tag)).unwrap(),
            view,
            "read in place alike"
        );
        let fast = r.map(&view, n);
        let uuid = r.entry_uuid(&view).map(str::to_string);
        let se = ldap3::SearchEntry::construct(ldap3::ResultEntry::new(tag.clone()));
        let slow = reference_map(m, &se.attrs, n);
        let slow_uuid = se
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("entryUUID"))
            .and_then(|(_, v)| v.first())
            .cloned();
        assert_eq!(fast, slow, "{se:?}");
        assert_eq!(uuid, slow_uuid);
        assert_eq!(m.map(&se.attrs, n), slow, "Mapping::map agrees too");
        assert_eq!(view.dn(), se.dn);
        (fast, uuid)
    }

    /// A BER tree's encoding, as the server sends it.
    fn encode(tag: &StructureTag) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        ldap3::asn1::write::encode_into(&mut out, tag.clone()).unwrap();
        out.to_vec()
    }

    fn vals(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn ber_entries_map_like_search_entries() {
        let m = Mapping::default();
        let n = Normalizer::default();
        let tag = entry_tag(
            "uid=jane,ou=people,dc=example,dc=org",
            &[
                ("objectClass", vals(&["inetOrgPerson", "mailAccount"])),
                ("MAIL", vals(&["Jane+Tag@Example.org"])),
                (
                    "mailLocalAddress",
                    vals(&["jd@example.org", "JANE+tag@example.org", "JD@Example.org"]),
                ),
                ("userpassword", vec![b"{SSHA}xyz".to_vec()]),
                ("mailQuotaBytes", vals(&["10M"])),
                ("mailEnabled", vals(&["Yes"])),
                ("gidNumber", vals(&[" 100 "])),
                ("entryUUID", vals(&["4d1b2c3a-0000-1111-2222-0123456789ab"])),
            ],
        );
        let (e, uuid) = both_ways(&m, &n, &tag);
        let e = e.unwrap();
        let u = e.user.as_ref().unwrap();
        assert_eq!(u.login, "jane+tag@example.org");
        assert_eq!(u.password.as_deref(), Some("{SSHA}xyz"));
        assert_eq!(u.gid, Some(100));
        assert!(u.enabled);
        assert_eq!(e.aliases, ["jd@example.org"]);
        assert_eq!(
            uuid.as_deref(),
            Some("4d1b2c3a-0000-1111-2222-0123456789ab")
        );
    }

    #[test]
    fn ber_edge_cases_map_like_search_entries() {
        let n = Normalizer::default();
        // One attribute in two roles; a role named in another case.
        let m = Mapping {
            aliases: vec!["mail".into(), "MailLocalAddress".into()],
            mail: Some("homeDirectory".into()),
            ..Mapping::default()
        };
        let uuid = vals(&["4d1b2c3a-0000-1111-2222-0123456789ab"]);
        let cases: Vec<Attrs> = vec![
            // Not a mailbox.
            vec![("cn", vals(&["x"])), ("entryUUID", uuid.clone())],
            // Bad values.
            vec![("mail", vals(&["nodomain"]))],
            vec![
                ("mail", vals(&["a@x.org"])),
                ("mailQuotaBytes", vals(&["lots"])),
            ],
            vec![
                ("mail", vals(&["a@x.org"])),
                ("mailEnabled", vals(&["Maybe"])),
            ],
            vec![("mail", vals(&["a@x.org"])), ("uidNumber", vals(&["-1"]))],
            // Several addresses in the address attribute: the first is the
            // login, the others aliases (the alias list names it too).
            vec![
                ("mail", vals(&["a@x.org", "B@X.org", "a@x.org", "bad"])),
                ("homeDirectory", vals(&["/h/a", "/h/b"])),
                ("mailEnabled", vals(&["0"])),
                ("mailQuotaBytes", vals(&["0"])),
            ],
            // A binary (non-UTF-8) value makes the whole attribute binary.
            vec![
                ("mail", vals(&["a@x.org"])),
                ("userPassword", vec![vec![0xff, 0xfe], b"ok".to_vec()]),
                ("mailLocalAddress", vec![b"c@x.org".to_vec(), vec![0xc3]]),
            ],
            vec![("mail", vec![vec![0xff]]), ("entryUUID", uuid.clone())],
            // The same attribute twice: the later one counts.
            vec![
                ("mail", vals(&["first@x.org"])),
                ("mail", vals(&["second@x.org"])),
                ("entryUUID", vals(&["not-a-uuid"])),
            ],
            // An attribute with no values.
            vec![
                ("mail", vals(&[])),
                ("mailLocalAddress", vals(&["c@x.org"])),
            ],
            // Quoted, folded and dotted forms take the general path.
            vec![
                ("mail", vals(&["\"John\"@Example.ORG."])),
                (
                    "mailLocalAddress",
                    vals(&["+x@example.org", "a b@x.org", "J@例え.jp"]),
                ),
            ],
        ];
        for attrs in &cases {
            let _ = both_ways(&m, &n, &entry_tag("cn=x", attrs));
        }
        let (e, _) = both_ways(&m, &n, &entry_tag("cn=x", &cases[5]));
        let e = e.unwrap();
        assert_eq!(e.aliases, ["b@x.org"]);
        assert_eq!(e.user.unwrap().mail.as_deref(), Some("/h/a"));
        let (e, _) = both_ways(&m, &n, &entry_tag("cn=x", &cases[6]));
        let e = e.unwrap();
        assert_eq!(e.user.unwrap().password, None);
        assert!(e.aliases.is_empty());
        let (e, _) = both_ways(&m, &n, &entry_tag("cn=x", &cases[8]));
        assert_eq!(e.unwrap().login(), Some("second@x.org"));
    }

    #[test]
    fn malformed_ber_is_an_error_not_a_panic() {
        use ldap3::asn1::TagClass;
        let r = Mapping::default().resolve();
        let p = |id| StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::P(vec![]),
        };
        let c = |id, inner| StructureTag {
            class: TagClass::Application,
            id,
            payload: PL::C(inner),
        };
        for tag in [
            p(4),
            c(5, vec![]),
            c(4, vec![]),
            c(4, vec![p(4)]),
            c(4, vec![p(4), p(16)]),
            c(4, vec![p(4), c(16, vec![p(16)])]),
            c(4, vec![p(4), c(16, vec![c(16, vec![p(4)])])]),
            c(4, vec![p(4), c(16, vec![c(16, vec![p(4), p(17)])])]),
        ] {
            assert_eq!(r.view(&tag).unwrap_err().0, MALFORMED, "{tag:?}");
            assert_eq!(
                r.view_ber(&encode(&tag)).unwrap_err().0,
                MALFORMED,
                "{tag:?}"
            );
        }
        // Cut short anywhere: an error, never a panic or a wrong read.
        let good = encode(&entry_tag(
            "cn=x",
            &[
                ("mail", vals(&["a@x.org"])),
                ("mailLocalAddress", vals(&["b@x.org"])),
            ],
        ));
        assert!(r.view_ber(&good).is_ok());
        for cut in 0..good.len() {
            assert!(r.view_ber(&good[..cut]).is_err(), "{cut}");
        }
        // A value that is itself constructed, in an attribute the mapping
        // reads.
        let bad = entry_tag("cn=x", &[("mail", vals(&["a@x.org"]))]);
        let PL::C(mut parts) = bad.payload else {
            unreachable!()
        };
        let PL::C(attrs) = &mut parts[1].payload else {
            unreachable!()
        };
        let PL::C(attr) = &mut attrs[0].payload else {
            unreachable!()
        };
        attr[1] = c(17, vec![c(4, vec![])]);
        let bad = StructureTag {
            payload: PL::C(parts),
            ..bad
        };
        assert!(r.view(&bad).is_err());
        assert!(r.view_ber(&encode(&bad)).is_err());
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/ldap_entry.rs`): bytes after
    /// an entry's two elements that are not BER. The in-place reader took
    /// the entry, ldap3 (the live sync's decoder) refuses it.
    #[test]
    fn fuzz_regression_trailing_garbage_in_entry() {
        let r = Mapping::default().resolve();
        let crash: &[u8] = b"\x64\x29\x04\x04cn?x\x31\x00ail1\x04\x04\x02\xff\x00\x00\x00\x00a@[.\xfe0\x11\x04\x04MAIL1\x09\x04or\x07a@xg.org";
        assert!(ldap3::asn1::parse_tag(crash).is_err());
        assert_eq!(r.view_ber(crash).unwrap_err().0, MALFORMED);
        // The same within an attribute, and a malformed element nested in a
        // well-formed constructed one.
        let attr_tail: &[u8] = b"\x64\x0f\x04\x00\x30\x0b\x30\x09\x04\x04mail\x31\x00\x05\x09";
        assert!(ldap3::asn1::parse_tag(attr_tail).is_err());
        assert_eq!(r.view_ber(attr_tail).unwrap_err().0, MALFORMED);
        let nested: &[u8] = b"\x64\x08\x04\x00\x30\x00\x30\x02\x04\x05";
        assert!(ldap3::asn1::parse_tag(nested).is_err());
        assert_eq!(r.view_ber(nested).unwrap_err().0, MALFORMED);
        // Well-formed extra elements are still ignored, as ldap3's tree
        // reader ignores them.
        // Malformed values of an attribute the mapping does not read.
        let unread: &[u8] = b"\x64\x14\x04\x00\x30\x10\x30\x0e\x04\x05other\x31\x05\x04\x02hi\x04";
        assert!(ldap3::asn1::parse_tag(unread).is_err());
        assert_eq!(r.view_ber(unread).unwrap_err().0, MALFORMED);
        let extra: &[u8] = b"\x64\x0a\x04\x00\x30\x00\x30\x04\x04\x02hi";
        let (_, tag) = ldap3::asn1::parse_tag(extra).unwrap();
        assert_eq!(r.view_ber(extra).unwrap(), r.view(&tag).unwrap());
    }

    proptest::proptest! {
        /// Random entries: attribute names in any case (one attribute per
        /// name: with two names differing only in case, ldap3's map makes
        /// the old way depend on hash order), values valid, odd or binary.
        #[test]
        fn random_ber_entries_map_like_search_entries(
            picks in proptest::collection::vec(
                (0usize..NAMES.len(), proptest::collection::vec(0usize..VALUES.len(), 0..4), proptest::bool::ANY),
                0..10,
            )
        ) {
            let m = Mapping {
                quota_message_count: Some("mailQuotaMessages".into()),
                quota_rule: Some("mailQuotaRule".into()),
                ..Mapping::default()
            };
            let n = Normalizer::default();
            let mut seen = Vec::new();
            let mut attrs = Vec::new();
            for (name, values, upper) in picks {
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                let name = if upper { NAMES[name].to_ascii_uppercase() } else { NAMES[name].to_string() };
                let values: Vec<Vec<u8>> = values.into_iter().map(|v| VALUES[v].to_vec()).collect();
                attrs.push((name, values));
            }
            let attrs: Vec<(&str, Vec<Vec<u8>>)> =
                attrs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let _ = both_ways(&m, &n, &entry_tag("uid=x,dc=x", &attrs));
        }
    }

    const NAMES: [&str; 13] = [
        "mail",
        "mailLocalAddress",
        "userPassword",
        "mailQuotaBytes",
        "mailQuotaMessages",
        "mailQuotaRule",
        "mailEnabled",
        "uidNumber",
        "gidNumber",
        "homeDirectory",
        "entryUUID",
        "cn",
        "objectClass",
    ];

    const VALUES: [&[u8]; 19] = [
        b"*:storage=10G:messages=5",
        b"*:storage=0",
        b"unlimited",
        b"a@x.org",
        b"A@X.ORG",
        b"b+ext@x.org",
        b"c@x.org.",
        b"\"q\"@x.org",
        b"nodomain",
        b"",
        b"5000",
        b" 7 ",
        b"10G",
        b"TRUE",
        b"no",
        b"{SSHA}h",
        b"4d1b2c3a-0000-1111-2222-0123456789ab",
        b"\xff\xfe",
        b"d@x.org",
    ];
}

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
//! | `mailQuotaBytes` | the user's storage limit in bytes |
//! | `mailEnabled` | `FALSE` disables logins (mail is still delivered) |
//! | `uidNumber`, `gidNumber`, `homeDirectory` | uid, gid, home when present |
//!
//! An entry without the address attribute is not a mailbox and contributes
//! nothing (it may still be returned by a broad filter).

use std::collections::HashMap;

use ramdir_core::UserSpec;
use ramdir_core::address::Normalizer;
use ramdir_core::quota::{QuotaLimit, parse_size};

/// Which attributes give what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The mailbox address (login).
    pub address: String,
    /// Further addresses that deliver to the mailbox.
    pub aliases: Vec<String>,
    /// Password hash.
    pub password: Option<String>,
    /// Storage limit: bytes, or a size such as `10G`.
    pub quota: Option<String>,
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
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            address: "mail".into(),
            aliases: vec!["mailLocalAddress".into()],
            password: Some("userPassword".into()),
            quota: Some("mailQuotaBytes".into()),
            enabled: Some("mailEnabled".into()),
            uid: Some("uidNumber".into()),
            gid: Some("gidNumber".into()),
            home: Some("homeDirectory".into()),
            mail: None,
            default_uid: None,
            default_gid: None,
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
    /// Every attribute to request in searches.
    pub fn attributes(&self) -> Vec<String> {
        let mut v = vec![self.address.clone()];
        v.extend(self.aliases.iter().cloned());
        for a in [
            &self.password,
            &self.quota,
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
        let Some(addr) = get(&self.address).and_then(|v| v.first()) else {
            return Ok(EntryData::default());
        };
        let login = normalizer
            .address(addr)
            .ok_or_else(|| MapError(format!("{}: {addr:?} is not an address", self.address)))?
            .full();
        let num = |what: &str, v: Option<&str>| -> Result<Option<u32>, MapError> {
            v.map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| MapError(format!("{what} {v:?} is not a number")))
            })
            .transpose()
        };
        let quota = match first(&self.quota) {
            None => None,
            Some(q) => {
                let bytes = parse_size(q).map_err(|e| MapError(e.to_string()))?;
                Some(QuotaLimit {
                    storage: (bytes > 0).then_some(bytes),
                    messages: None,
                })
            }
        };
        let enabled = match first(&self.enabled).map(str::to_ascii_lowercase).as_deref() {
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
            password: first(&self.password).map(str::to_string),
            uid: num("uid", first(&self.uid))?.or(self.default_uid),
            gid: num("gid", first(&self.gid))?.or(self.default_gid),
            home: first(&self.home).map(str::to_string),
            mail: first(&self.mail).map(str::to_string),
            quota,
            quota_rules: Vec::new(),
            enabled,
            extra: Vec::new(),
            // Set by the index, which knows the entry's UUID.
            origin: None,
        };
        let mut aliases = Vec::new();
        for attr in &self.aliases {
            for a in get(attr).into_iter().flatten() {
                match normalizer.address(a) {
                    Some(n) if n.full() != login && !aliases.contains(&n.full()) => {
                        aliases.push(n.full())
                    }
                    Some(_) => {}
                    None => tracing::warn!(%login, alias = %a, "alias is not an address; skipped"),
                }
            }
        }
        Ok(EntryData {
            user: Some(user),
            aliases,
        })
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
}

//! The directory's data model: settings that shape lookups, and users.
//!
//! Users are stored packed (one allocation per user besides its key) because
//! the directory must hold millions of them in a few hundred megabytes; the
//! [`User`] view borrows from the packed bytes.

use std::fmt;

use crate::address::Normalizer;
use crate::quota::{QuotaLimit, QuotaRule, UserQuota};

/// Settings that shape every lookup; part of each snapshot so a reload that
/// changes them is atomic with the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Case folding and extension splitting.
    pub normalizer: Normalizer,
    /// Re-append an unmatched `+ext` to local alias targets, as Postfix's
    /// `propagate_unmatched_extensions` (default `canonical, virtual`) does.
    pub propagate_extension: bool,
    /// A user's address also logs in as itself, and an alias may be used as
    /// sender by the mailboxes it delivers to (`senders` table).
    pub implicit_sender_logins: bool,
    /// Limit for users that set none (`default_quota`, 10G).
    pub default_quota: QuotaLimit,
    /// Folder rules for every user (`Trash:storage=+500M`, …).
    pub quota_rules: Vec<QuotaRule>,
    /// Template for `home` (`%d` domain, `%n` local part, `%u` address);
    /// a user whose home equals it stores none.
    pub home_template: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            normalizer: Normalizer::default(),
            propagate_extension: true,
            implicit_sender_logins: true,
            default_quota: QuotaLimit {
                storage: Some(10 << 30),
                messages: None,
            },
            quota_rules: vec![
                QuotaRule::parse("Trash:storage=+500M").expect("valid built-in rule"),
                QuotaRule::parse("Junk:storage=+500M").expect("valid built-in rule"),
            ],
            home_template: None,
        }
    }
}

impl Settings {
    /// Expand the home template for `login` (`local@domain`).
    pub fn expand_home(&self, login: &str) -> Option<String> {
        let t = self.home_template.as_deref()?;
        let mut out = String::with_capacity(t.len() + 2 * login.len());
        expand_template(t, login, |p| out.push_str(p));
        Some(out)
    }
}

/// Expand a home template (`%d` domain, `%n` local part, `%u` address) for
/// `login`, handing the pieces to `f`. One pass: a value is never expanded
/// again (a local part holding `%u` stays as it is); other `%` stay.
fn expand_template(template: &str, login: &str, mut f: impl FnMut(&str)) {
    let (n, d) = login.rsplit_once('@').unwrap_or((login, ""));
    let mut rest = template;
    while let Some(i) = rest.find('%') {
        f(&rest[..i]);
        let v = match rest.as_bytes().get(i + 1) {
            Some(b'd') => d,
            Some(b'n') => n,
            Some(b'u') => login,
            _ => {
                f("%");
                rest = &rest[i + 1..];
                continue;
            }
        };
        f(v);
        rest = &rest[i + 2..];
    }
    f(rest);
}

/// Whether `template` expanded for `login` is exactly `value`, compared
/// piece by piece (a load compares every user's home; building each
/// expansion would cost an allocation per user).
fn template_gives(template: &str, login: &str, value: &str) -> bool {
    let mut rest = value.as_bytes();
    let mut same = true;
    expand_template(template, login, |p| {
        same = same && rest.starts_with(p.as_bytes());
        if same {
            rest = &rest[p.len()..];
        }
    });
    same && rest.is_empty()
}

/// A user's home directory: stored with the user, or the settings'
/// template for its login, expanded only when it is written (a userdb
/// lookup writes it once; building a `String` per lookup showed in the
/// dict benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home<'a> {
    /// The user's own home.
    Own(&'a str),
    /// `template` expanded for `login`.
    Template {
        /// The `home_template` setting.
        template: &'a str,
        /// The user's login.
        login: &'a str,
    },
}

impl Home<'_> {
    /// The home in pieces, in order (one piece for [`Home::Own`]).
    pub fn pieces(&self, f: impl FnMut(&str)) {
        let mut f = f;
        match *self {
            Home::Own(h) => f(h),
            Home::Template { template, login } => expand_template(template, login, f),
        }
    }
}

impl fmt::Display for Home<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut r = Ok(());
        self.pieces(|p| {
            if r.is_ok() {
                r = f.write_str(p);
            }
        });
        r
    }
}

/// A user as sources produce it (owned, easy to build).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserSpec {
    /// Canonical login, `local@domain`, already folded.
    pub login: String,
    /// Password hash with its `{SCHEME}` prefix.
    pub password: Option<String>,
    /// System uid for mail files.
    pub uid: Option<u32>,
    /// System gid for mail files.
    pub gid: Option<u32>,
    /// Home directory, if it differs from the template.
    pub home: Option<String>,
    /// Dovecot `mail` location, if set.
    pub mail: Option<String>,
    /// Own limit; `None` uses the default.
    pub quota: Option<QuotaLimit>,
    /// Own delivery grace in bytes (`quota_storage_grace`); `None` uses the
    /// configured one.
    pub quota_grace: Option<u64>,
    /// Own folder rules (`quota_rule2…`); empty uses the defaults.
    pub quota_rules: Vec<QuotaRule>,
    /// Whether the user may log in. A disabled user still receives mail.
    pub enabled: bool,
    /// Other passdb/userdb fields, as the source gave them
    /// (`userdb_foo=bar` is kept as `("userdb_foo", "bar")`).
    pub extra: Vec<(String, String)>,
    /// The source entry this user came from (an LDAP entryUUID), so that a
    /// source withdrawing an entry only removes what that entry still owns.
    pub origin: Option<[u8; 16]>,
}

/// `Debug` for a user type that never shows its secrets: the password
/// as `<redacted>` and only the names of the extra fields (they may hold
/// credentials too). One body for [`UserSpec`] and [`User`], whose fields
/// have the same names.
macro_rules! redacted_debug {
    ($ty:ty, $name:literal) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($name)
                    .field("login", &self.login)
                    .field("password", &self.password.as_ref().map(|_| "<redacted>"))
                    .field("uid", &self.uid)
                    .field("gid", &self.gid)
                    .field("home", &self.home)
                    .field("mail", &self.mail)
                    .field("quota", &self.quota)
                    .field("quota_grace", &self.quota_grace)
                    .field("quota_rules", &self.quota_rules)
                    .field("enabled", &self.enabled)
                    .field(
                        "extra",
                        &self.extra.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                    )
                    .finish()
            }
        }
    };
}

redacted_debug!(UserSpec, "UserSpec");

const F_ENABLED: u8 = 1;
const F_UID: u8 = 2;
const F_GID: u8 = 4;
const F_STORAGE: u8 = 8;
const F_MESSAGES: u8 = 16;
const F_OWN_QUOTA: u8 = 32;
const F_ORIGIN: u8 = 64;
const F_GRACE: u8 = 128;
/// Without [`F_OWN_QUOTA`] (where [`F_STORAGE`] is otherwise never set):
/// the user's own limit equals the default it was packed with, so nothing
/// is stored for it. A directory rebuilt with another default repacks its
/// users from [`User::to_spec`], which gives this limit back as the user's
/// own, so it is never mistaken for "follows the default".
const F_OWN_DEFAULT: u8 = F_STORAGE;

/// A user packed into one byte string (the login is the table key).
///
/// Layout: flags, then the present numbers as LEB128 varints, then
/// length-prefixed strings: password, home, mail, the folder rules and the
/// extra fields. What the settings give (a home equal to the template, a
/// limit equal to the default) is not stored. The bytes are one exact-size
/// allocation (built in a reused buffer, then copied once), so a million
/// users leave no half-used blocks behind in the allocator. Sizes are bounded by the sources (lines of a file, LDAP
/// attributes), and a corrupt buffer can only come from a bug here, so
/// decoding treats it as a broken invariant.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedUser(Box<[u8]>);

impl fmt::Debug for PackedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedUser({} bytes)", self.0.len())
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> u64 {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = self.buf[self.pos];
            self.pos += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }
    fn str(&mut self) -> &'a str {
        let len = self.varint() as usize;
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        // Only `PackedUser::pack` writes these bytes, always from `&str`.
        std::str::from_utf8(s).expect("packed user strings are UTF-8")
    }
    fn opt_str(&mut self) -> Option<&'a str> {
        let s = self.str();
        (!s.is_empty()).then_some(s)
    }
}

impl PackedUser {
    /// Pack a user. The home is dropped when it equals the template's.
    pub fn pack(spec: &UserSpec, settings: &Settings) -> PackedUser {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| {
            let mut out = b.borrow_mut();
            out.clear();
            Self::pack_into(spec, settings, &mut out);
            PackedUser(Box::from(&out[..]))
        })
    }

    fn pack_into(spec: &UserSpec, settings: &Settings, out: &mut Vec<u8>) {
        let own_default = spec.quota == Some(settings.default_quota);
        let quota = spec.quota.filter(|_| !own_default);
        let q = quota.unwrap_or_default();
        let mut flags = 0;
        if spec.enabled {
            flags |= F_ENABLED;
        }
        if spec.uid.is_some() {
            flags |= F_UID;
        }
        if spec.gid.is_some() {
            flags |= F_GID;
        }
        if quota.is_some() {
            flags |= F_OWN_QUOTA;
            if q.storage.is_some() {
                flags |= F_STORAGE;
            }
            if q.messages.is_some() {
                flags |= F_MESSAGES;
            }
        } else if own_default {
            flags |= F_OWN_DEFAULT;
        }
        if spec.origin.is_some() {
            flags |= F_ORIGIN;
        }
        if spec.quota_grace.is_some() {
            flags |= F_GRACE;
        }
        out.push(flags);
        if let Some(o) = &spec.origin {
            out.extend_from_slice(o);
        }
        for n in [
            spec.uid.map(u64::from),
            spec.gid.map(u64::from),
            q.storage,
            q.messages,
            spec.quota_grace,
        ]
        .into_iter()
        .flatten()
        {
            put_varint(out, n);
        }
        put_str(out, spec.password.as_deref().unwrap_or(""));
        let home = match (&spec.home, settings.home_template.as_deref()) {
            (Some(h), Some(t)) if template_gives(t, &spec.login, h) => "",
            (Some(h), _) => h.as_str(),
            (None, _) => "",
        };
        put_str(out, home);
        put_str(out, spec.mail.as_deref().unwrap_or(""));
        put_varint(out, spec.quota_rules.len() as u64);
        for r in &spec.quota_rules {
            put_str(out, &r.to_dovecot());
        }
        put_varint(out, spec.extra.len() as u64);
        for (k, v) in &spec.extra {
            put_str(out, k);
            put_str(out, v);
        }
    }

    /// Bytes used by the packed form (for memory statistics).
    pub fn packed_len(&self) -> usize {
        self.0.len()
    }

    /// The effective limit and own grace alone: what an SMTP-time check
    /// needs, without building the whole [`User`].
    pub fn quota(&self, settings: &Settings) -> UserQuota {
        let flags = self.0[0];
        if flags & (F_OWN_QUOTA | F_GRACE) == 0 {
            return UserQuota {
                limit: settings.default_quota,
                grace: None,
            };
        }
        let mut r = Reader {
            buf: &self.0,
            pos: if flags & F_ORIGIN != 0 { 17 } else { 1 },
        };
        if flags & F_UID != 0 {
            r.varint();
        }
        if flags & F_GID != 0 {
            r.varint();
        }
        let own = flags & F_OWN_QUOTA != 0;
        let storage = (own && flags & F_STORAGE != 0).then(|| r.varint());
        let messages = (own && flags & F_MESSAGES != 0).then(|| r.varint());
        let grace = (flags & F_GRACE != 0).then(|| r.varint());
        UserQuota {
            limit: if flags & F_OWN_QUOTA != 0 {
                QuotaLimit { storage, messages }
            } else {
                settings.default_quota
            },
            grace,
        }
    }

    /// Unpack into a borrowed view.
    pub fn view<'a>(&'a self, login: &'a str, settings: &'a Settings) -> User<'a> {
        let flags = self.0[0];
        let mut r = Reader {
            buf: &self.0,
            pos: 1,
        };
        let origin = (flags & F_ORIGIN != 0).then(|| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&self.0[1..17]);
            r.pos = 17;
            o
        });
        let uid = (flags & F_UID != 0).then(|| r.varint() as u32);
        let gid = (flags & F_GID != 0).then(|| r.varint() as u32);
        let own = flags & F_OWN_QUOTA != 0;
        let storage = (own && flags & F_STORAGE != 0).then(|| r.varint());
        let messages = (own && flags & F_MESSAGES != 0).then(|| r.varint());
        let quota_grace = (flags & F_GRACE != 0).then(|| r.varint());
        let password = r.opt_str();
        let home = r.opt_str().map(Home::Own).or_else(|| {
            settings
                .home_template
                .as_deref()
                .map(|template| Home::Template { template, login })
        });
        let mail = r.opt_str();
        let nrules = r.varint() as usize;
        let own_rules: Vec<&str> = (0..nrules).map(|_| r.str()).collect();
        let nextra = r.varint() as usize;
        let extra = (0..nextra).map(|_| (r.str(), r.str())).collect();
        let (quota, own_quota) = if own {
            (QuotaLimit { storage, messages }, true)
        } else {
            (settings.default_quota, flags & F_OWN_DEFAULT != 0)
        };
        let quota_rules = if own_rules.is_empty() {
            QuotaRules::Default(&settings.quota_rules)
        } else {
            QuotaRules::Own(own_rules)
        };
        User {
            login,
            password,
            uid,
            gid,
            home,
            mail,
            quota,
            own_quota,
            quota_grace,
            quota_rules,
            enabled: flags & F_ENABLED != 0,
            extra,
            origin,
        }
    }
}

/// A user as lookups see it, borrowing from the snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct User<'a> {
    /// Canonical login (`local@domain`).
    pub login: &'a str,
    /// Password hash with `{SCHEME}`.
    pub password: Option<&'a str>,
    /// uid for mail files.
    pub uid: Option<u32>,
    /// gid for mail files.
    pub gid: Option<u32>,
    /// Home: the user's own, else the template's expansion.
    pub home: Option<Home<'a>>,
    /// Dovecot `mail` location.
    pub mail: Option<&'a str>,
    /// Effective limit (own or default).
    pub quota: QuotaLimit,
    /// Whether the limit is the user's own rather than the default.
    pub own_quota: bool,
    /// Own delivery grace in bytes, if any.
    pub quota_grace: Option<u64>,
    /// Effective folder rules in Dovecot syntax (own or default).
    pub quota_rules: QuotaRules<'a>,
    /// May log in.
    pub enabled: bool,
    /// Other fields from the source.
    pub extra: Vec<(&'a str, &'a str)>,
    /// The source entry this user came from.
    pub origin: Option<[u8; 16]>,
}

/// A user's effective folder rules: their own, or the settings' defaults
/// (borrowed, so a lookup of a user without own rules copies nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaRules<'a> {
    /// The user's own rules, in Dovecot syntax.
    Own(Vec<&'a str>),
    /// The defaults of [`Settings::quota_rules`].
    Default(&'a [QuotaRule]),
}

impl<'a> QuotaRules<'a> {
    /// The rules in Dovecot syntax, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (own, default): (&[&'a str], &'a [QuotaRule]) = match self {
            QuotaRules::Own(v) => (v, &[]),
            QuotaRules::Default(d) => (&[], d),
        };
        own.iter()
            .copied()
            .chain(default.iter().map(QuotaRule::as_dovecot))
    }

    /// The rules as owned strings (for display and tests).
    pub fn to_vec(&self) -> Vec<&'a str> {
        self.iter().collect()
    }
}

impl User<'_> {
    /// Back to the owned form (to carry a user into a rebuilt directory).
    /// Values equal to the settings' defaults stay defaults.
    pub fn to_spec(&self, settings: &Settings) -> UserSpec {
        let default_rules: Vec<&str> = settings
            .quota_rules
            .iter()
            .map(QuotaRule::as_dovecot)
            .collect();
        let quota_rules = if self.quota_rules.to_vec() == default_rules {
            Vec::new()
        } else {
            self.quota_rules
                .iter()
                .filter_map(|r| QuotaRule::parse(r).ok())
                .collect()
        };
        UserSpec {
            login: self.login.to_string(),
            password: self.password.map(str::to_string),
            uid: self.uid,
            gid: self.gid,
            home: self.home.map(|h| h.to_string()),
            mail: self.mail.map(str::to_string),
            quota: self.own_quota.then_some(self.quota),
            quota_grace: self.quota_grace,
            quota_rules,
            enabled: self.enabled,
            extra: self
                .extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            origin: self.origin,
        }
    }
}

redacted_debug!(User<'_>, "User");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_template_expands_in_one_pass() {
        let s = Settings {
            home_template: Some("/var/vmail/%d/%n".into()),
            ..Default::default()
        };
        assert_eq!(s.expand_home("a@x.org").unwrap(), "/var/vmail/x.org/a");
        let s = Settings {
            home_template: Some("/h/%u/%%/%x/%".into()),
            ..Default::default()
        };
        // A value is not expanded again; unknown escapes stay.
        assert_eq!(s.expand_home("p%n@x").unwrap(), "/h/p%n@x/%%/%x/%");
        assert_eq!(Settings::default().expand_home("a@x"), None);
        for (t, login, v, want) in [
            ("/var/vmail/%d/%n", "a@x.org", "/var/vmail/x.org/a", true),
            ("/var/vmail/%d/%n", "a@x.org", "/var/vmail/x.org/ab", false),
            ("/var/vmail/%d/%n", "a@x.org", "/var/vmail/x.org/", false),
            ("/h/%u/%%/%x/%", "p%n@x", "/h/p%n@x/%%/%x/%", true),
            ("", "a@x", "", true),
        ] {
            assert_eq!(template_gives(t, login, v), want, "{t} {login} {v}");
        }
    }

    #[test]
    fn pack_round_trips_and_uses_defaults() {
        let settings = Settings {
            home_template: Some("/var/vmail/%d/%n".into()),
            ..Settings::default()
        };
        let spec = UserSpec {
            login: "a@x.org".into(),
            password: Some("{SHA512-CRYPT}$6$abc".into()),
            uid: Some(5000),
            gid: Some(5000),
            home: Some("/var/vmail/x.org/a".into()),
            mail: None,
            quota: None,
            quota_grace: None,
            quota_rules: vec![],
            enabled: true,
            extra: vec![("userdb_foo".into(), "bar".into())],
            origin: None,
        };
        let packed = PackedUser::pack(&spec, &settings);
        let u = packed.view("a@x.org", &settings);
        assert_eq!(u.password, Some("{SHA512-CRYPT}$6$abc"));
        assert_eq!((u.uid, u.gid), (Some(5000), Some(5000)));
        assert_eq!(
            u.home.map(|h| h.to_string()).as_deref(),
            Some("/var/vmail/x.org/a")
        );
        assert_eq!(u.quota.storage, Some(10 << 30));
        assert_eq!(packed.quota(&settings).limit, u.quota);
        assert!(!u.own_quota);
        assert_eq!(
            u.quota_rules.to_vec(),
            ["Trash:storage=+524288000B", "Junk:storage=+524288000B"]
        );
        assert!(u.enabled);
        assert_eq!(u.extra, [("userdb_foo", "bar")]);
        // The home equal to the template is not stored.
        assert!(packed.packed_len() < 60, "{}", packed.packed_len());
        // Neither form shows the hash or an extra field's value.
        for shown in [format!("{spec:?}"), format!("{u:?}")] {
            assert!(
                shown.contains("a@x.org") && shown.contains("<redacted>"),
                "{shown}"
            );
            assert!(
                !shown.contains("$6$abc") && !shown.contains("bar"),
                "{shown}"
            );
        }
    }

    #[test]
    fn own_quota_and_rules_are_kept() {
        let settings = Settings::default();
        let spec = UserSpec {
            login: "b@x.org".into(),
            quota: Some(QuotaLimit {
                storage: Some(1 << 20),
                messages: Some(9),
            }),
            quota_rules: vec![QuotaRule::parse("Trash:storage=+1G").unwrap()],
            home: Some("/h".into()),
            ..UserSpec::default()
        };
        let packed = PackedUser::pack(&spec, &settings);
        let u = packed.view("b@x.org", &settings);
        assert_eq!(
            u.quota,
            QuotaLimit {
                storage: Some(1 << 20),
                messages: Some(9)
            }
        );
        assert!(u.own_quota);
        assert_eq!(packed.quota(&settings).limit, u.quota);
        assert_eq!(u.quota_rules.to_vec(), ["Trash:storage=+1073741824B"]);
        assert_eq!(u.home, Some(Home::Own("/h")));
        assert!(!u.enabled);
        assert_eq!(u.password, None);
    }

    #[test]
    fn to_spec_round_trips() {
        let settings = Settings {
            home_template: Some("/m/%d/%n".into()),
            ..Settings::default()
        };
        for spec in [
            UserSpec {
                login: "a@x.org".into(),
                home: Some("/m/x.org/a".into()),
                enabled: true,
                ..Default::default()
            },
            // A grace of its own, with the default limit.
            UserSpec {
                login: "g@x.org".into(),
                quota_grace: Some(0),
                uid: Some(7),
                ..Default::default()
            },
            UserSpec {
                login: "b@x.org".into(),
                password: Some("{PLAIN}b".into()),
                uid: Some(1),
                gid: Some(2),
                home: Some("/elsewhere".into()),
                mail: Some("maildir:~/M".into()),
                quota: Some(QuotaLimit {
                    storage: Some(5),
                    messages: Some(6),
                }),
                quota_grace: Some(3 << 20),
                quota_rules: vec![QuotaRule::parse("Trash:storage=+1G").unwrap()],
                enabled: false,
                extra: vec![("k".into(), "v".into())],
                origin: Some([9u8; 16]),
            },
        ] {
            let packed = PackedUser::pack(&spec, &settings);
            let view = packed.view(&spec.login, &settings);
            assert_eq!(
                packed.quota(&settings),
                UserQuota {
                    limit: view.quota,
                    grace: spec.quota_grace
                }
            );
            assert_eq!(view.quota_grace, spec.quota_grace);
            let back = view.to_spec(&settings);
            assert_eq!(PackedUser::pack(&back, &settings), packed, "{spec:?}");
        }
    }

    #[test]
    fn a_limit_equal_to_the_default_is_stored_as_nothing_but_stays_own() {
        let settings = Settings::default();
        let spec = UserSpec {
            login: "d@x.org".into(),
            quota: Some(settings.default_quota),
            quota_grace: Some(7),
            ..UserSpec::default()
        };
        let packed = PackedUser::pack(&spec, &settings);
        let plain = PackedUser::pack(
            &UserSpec {
                quota: None,
                ..spec.clone()
            },
            &settings,
        );
        assert_eq!(packed.packed_len(), plain.packed_len());
        let u = packed.view("d@x.org", &settings);
        assert!(u.own_quota);
        assert_eq!(u.quota, settings.default_quota);
        assert_eq!(u.quota_grace, Some(7));
        assert_eq!(
            packed.quota(&settings),
            UserQuota {
                limit: settings.default_quota,
                grace: Some(7)
            }
        );
        // Carried into a directory with another default, the user keeps
        // the limit it had.
        let other = Settings {
            default_quota: QuotaLimit {
                storage: Some(1 << 20),
                messages: None,
            },
            ..Settings::default()
        };
        let moved = PackedUser::pack(&u.to_spec(&settings), &other);
        assert_eq!(moved.view("d@x.org", &other).quota, settings.default_quota);
        assert_eq!(
            plain.view("d@x.org", &settings).to_spec(&settings).quota,
            None
        );
    }

    #[test]
    fn debug_output_never_shows_password() {
        let spec = UserSpec {
            login: "c@x.org".into(),
            password: Some("{PLAIN}secret".into()),
            ..UserSpec::default()
        };
        assert!(!format!("{spec:?}").contains("secret"));
        let settings = Settings::default();
        let packed = PackedUser::pack(&spec, &settings);
        assert!(!format!("{:?}", packed.view("c@x.org", &settings)).contains("secret"));
    }
}

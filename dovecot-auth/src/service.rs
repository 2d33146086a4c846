//! Dict service: command + directory snapshot (+ quota usage store) →
//! replies. Pure apart from reading the usage store; commits are handed back
//! to the server, which performs them durably and then replies.
//!
//! The **auth** dict answers
//! - `shared/passdb/<user>`: flat JSON `{"password":"{SCHEME}…", …passdb
//!   extras}`. A disabled user is unknown to passdb (`N`): the login fails
//!   exactly like a wrong password, so accounts cannot be told apart.
//! - `shared/userdb/<user>`: flat JSON with `uid`, `gid`, `home`, `mail` when
//!   set, the user's limit and folder rules, plus `userdb_*` extras (prefix
//!   removed). Disabled users keep their userdb (`disabled_userdb`), so mail
//!   already queued is delivered.
//!
//! The limit is written in the names the asking Dovecot enforces, told by
//! the protocol major of the connection's hello (see [`Spelling`]): major 3
//! (Dovecot 2.3) gets `quota_rule` and `quota_rule2…`; major 4 (Dovecot 2.4,
//! or the Lua bridge, which says `H4`) gets `quota_storage_size`,
//! `quota_message_count` and each folder rule as settings of its mailbox
//! (`namespace/<ns>/mailbox/<box>/quota_storage_extra`, …; a folder whose
//! name holds `/` or `=` cannot be named so and is left out). 2.4 ignores
//! `quota_rule*` without a word, and 2.3 ignores the 2.4 names, so one
//! client never gets both: each gets exactly the limit the policy service
//! and the milter enforce. A user's own grace goes as `quota_grace` (2.3)
//! or `quota_storage_grace` (2.4).
//! - iteration of `shared/userdb/` (and `shared/passdb/`): one row per user,
//!   direct children only (Dovecot asserts every row starts with the path,
//!   and a deeper key would show up as a user; protocols.md G16).
//!
//! The **quota** dict answers `priv/quota/storage` (bytes) and
//! `priv/quota/messages` per user, and commits `S`/`U`/`A` to them. An
//! increment of a missing counter answers `N` so Dovecot recalculates
//! (G14).
//!
//! The one mapping to protocol answers: found → `O`, unknown or foreign key
//! → `N`, store or directory trouble → `F` (Dovecot then tempfails).

use std::collections::HashMap;

use ramdir_core::fallback::KeyKind;
use ramdir_core::lookup::{Class, LookupError, TargetKind};
use ramdir_core::model::QuotaRules;
use ramdir_core::quota::{QuotaRule, Setting, v24_folder_key};
use ramdir_core::usage::{Op, StoreError, Txn, UsageStore};
use ramdir_core::{Directory, User};

use crate::codec::{Command, CommitResult, ITER_EXACT_KEY, ITER_RECURSE, MAJORS, Reply};

/// Most transactions one connection may hold open. Dovecot opens one at a
/// time per dict user in practice; the bound only stops a client from
/// growing memory without limit.
pub const MAX_OPEN_TXNS: usize = 128;

/// Most changes in one transaction (a quota update sends two to four).
pub const MAX_TXN_OPS: usize = 1024;

/// Prefix of auth keys (the dict client prepends `shared/` to `*_key`).
const PASSDB: &str = "shared/passdb/";
const USERDB: &str = "shared/userdb/";
/// Quota keys that ramdir stores, and their store names.
const QUOTA_KEYS: [(&str, &str); 2] = [
    ("priv/quota/storage", "quota/storage"),
    ("priv/quota/messages", "quota/messages"),
];

/// Service settings (`[dict]` in ramdir.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The namespace whose mailboxes the folder rules name, for Dovecot
    /// 2.4 (`namespace/<this>/mailbox/Trash/…`; Debian's and the upstream
    /// example configuration call it `inbox`).
    pub quota_namespace: String,
    /// Dict name of the auth dict (after the last `:` of the URI).
    pub auth_dict: String,
    /// Dict name of the quota dict.
    pub quota_dict: String,
    /// An alias that delivers to exactly one local mailbox may log in as it.
    pub alias_logins: bool,
    /// Disabled users still have a userdb entry (mail keeps being delivered).
    pub disabled_userdb: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            quota_namespace: "inbox".into(),
            auth_dict: "auth".into(),
            quota_dict: "quota".into(),
            alias_logins: false,
            disabled_userdb: true,
        }
    }
}

/// Which dict a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dict {
    /// passdb/userdb.
    Auth,
    /// Quota usage.
    Quota,
}

/// What the server must do next.
#[derive(Debug)]
pub enum Step {
    /// Send this one reply (a lookup's; no allocation for the list).
    One(Reply),
    /// Send these replies (possibly none).
    Reply(Vec<Reply>),
    /// Stream the rows of an iteration, then [`Reply::IterEnd`].
    Iterate(IterPlan),
    /// Commit durably, then send [`Reply::Commit`] with the outcome.
    Commit {
        /// Transaction id.
        id: u32,
        /// Prefix the reply with `A`.
        async_reply: bool,
        /// The changes.
        txn: Txn,
    },
    /// Protocol violation: log it and close.
    Close(String),
}

/// An iteration to stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterPlan {
    /// Key prefix of each row (`shared/userdb/`).
    pub prefix: String,
    /// Row limit (0: none).
    pub max_rows: u64,
}

impl IterPlan {
    /// The rows, from one snapshot.
    pub fn rows<'a>(&'a self, dir: &'a Directory) -> impl Iterator<Item = Reply> + 'a {
        let limit = if self.max_rows == 0 {
            usize::MAX
        } else {
            self.max_rows as usize
        };
        dir.logins().take(limit).map(|l| Reply::Row {
            key: format!("{}{l}", self.prefix),
            value: String::new(),
        })
    }
}

#[derive(Debug)]
struct Open {
    user: String,
    ops: Vec<Op>,
    error: Option<String>,
}

/// Which names a userdb answer gives the limits in, chosen per connection
/// by its hello's protocol major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spelling {
    /// Dovecot 2.3 (protocol major 3): `quota_rule`, `quota_rule2…`.
    #[default]
    V23,
    /// Dovecot 2.4 (protocol major 4): `quota_storage_size`,
    /// `quota_message_count`, `namespace/…/mailbox/…/quota_*`.
    V24,
}

impl Spelling {
    /// The spelling for a hello's protocol major.
    pub fn for_major(major: u32) -> Spelling {
        if major >= 4 {
            Spelling::V24
        } else {
            Spelling::V23
        }
    }
}

/// Per-connection state: the hello and open transactions. Dropped with the
/// connection, which rolls back whatever was not committed.
#[derive(Debug, Default)]
pub struct Session {
    dict: Option<Dict>,
    /// From the hello's major: how userdb answers spell the limits.
    spelling: Spelling,
    hello_user: String,
    txns: HashMap<u32, Open>,
    /// The buffer auth answers are written into, handed back after each
    /// reply ([`Session::recycle`]) so a lookup allocates nothing.
    json: String,
}

/// Store failures become `F`; the message is what Dovecot logs.
fn store_fail(e: StoreError) -> Reply {
    Reply::Fail(e.to_string())
}

/// Directory errors (an ambiguous login) become `F` too: Dovecot
/// tempfails the login instead of calling the user unknown.
fn lookup_fail(e: LookupError) -> Reply {
    Reply::Fail(e.to_string())
}

impl Session {
    /// A new connection's state.
    pub fn new() -> Session {
        Session::default()
    }

    /// Take back a reply's buffer once it has been sent, for the next
    /// answer to reuse.
    pub fn recycle(&mut self, reply: Reply) {
        if let Reply::Json(s) = reply
            && s.capacity() > self.json.capacity()
        {
            self.json = s;
        }
    }

    /// The dict chosen by the hello, once received.
    pub fn dict(&self) -> Option<Dict> {
        self.dict
    }

    /// How this connection's userdb answers spell the limits (from the
    /// hello; [`Spelling::V23`] before it).
    pub fn spelling(&self) -> Spelling {
        self.spelling
    }

    /// Handle one command.
    pub fn handle(
        &mut self,
        cmd: Command<'_>,
        dir: &Directory,
        usage: Option<&UsageStore>,
        settings: &Settings,
    ) -> Step {
        let Some(dict) = self.dict else {
            return self.hello(cmd, usage, settings);
        };
        match cmd {
            Command::Hello { .. } => Step::Close("second hello".into()),
            Command::Lookup { key, user } => Step::One(match dict {
                Dict::Auth => auth_lookup(&key, dir, settings, self.spelling, &mut self.json),
                Dict::Quota => {
                    let user = if user.is_empty() {
                        &self.hello_user
                    } else {
                        &*user
                    };
                    quota_lookup(&key, user, usage)
                }
            }),
            Command::Iterate {
                flags,
                max_rows,
                path,
                ..
            } => {
                if dict != Dict::Auth || (path != PASSDB && path != USERDB) {
                    // Nothing else is iterable; an empty result, not an error.
                    return Step::Reply(vec![Reply::IterEnd]);
                }
                let _ = flags & ITER_RECURSE; // no deeper keys exist under these paths
                // EXACT_KEY on a prefix path names no user.
                if flags & ITER_EXACT_KEY != 0 {
                    return Step::Reply(vec![Reply::IterEnd]);
                }
                Step::Iterate(IterPlan {
                    prefix: path.into_owned(),
                    max_rows,
                })
            }
            Command::Begin { id, user, .. } => {
                if self.txns.contains_key(&id) {
                    return Step::Close(format!("transaction {id} begun twice"));
                }
                if self.txns.len() >= MAX_OPEN_TXNS {
                    return Step::Close(format!("more than {MAX_OPEN_TXNS} open transactions"));
                }
                let user = if user.is_empty() {
                    self.hello_user.clone()
                } else {
                    user.to_lowercase()
                };
                self.txns.insert(
                    id,
                    Open {
                        user,
                        ops: Vec::new(),
                        error: None,
                    },
                );
                Step::Reply(vec![])
            }
            Command::Set { id, key, value } => {
                self.change(id, dict, &key, |k| match value.parse() {
                    Ok(v) => Ok(Op::Set(k, v)),
                    Err(_) => Err(format!("value {value:?} of {key} is not a number")),
                })
            }
            Command::Unset { id, key } => self.change(id, dict, &key, |k| Ok(Op::Unset(k))),
            Command::AtomicInc { id, key, diff } => {
                self.change(id, dict, &key, |k| Ok(Op::Inc(k, diff)))
            }
            // Values are never logged here: nothing to hide, nothing to do.
            Command::Timestamp { id, .. } | Command::HideLogValues { id, .. } => {
                match self.txns.contains_key(&id) {
                    true => Step::Reply(vec![]),
                    false => Step::Close(format!("unknown transaction {id}")),
                }
            }
            Command::Rollback { id } => {
                self.txns.remove(&id);
                Step::Reply(vec![])
            }
            Command::Commit { id, async_reply } => {
                let reply = |result| {
                    Step::Reply(vec![Reply::Commit {
                        id,
                        async_reply,
                        result,
                    }])
                };
                // A commit without changes was never begun (B is lazy).
                let Some(open) = self.txns.remove(&id) else {
                    return reply(CommitResult::Ok);
                };
                if let Some(e) = open.error {
                    return reply(CommitResult::Fail(e));
                }
                if open.ops.is_empty() {
                    return reply(CommitResult::Ok);
                }
                if usage.is_none() {
                    return reply(CommitResult::Fail("quota store is not configured".into()));
                }
                Step::Commit {
                    id,
                    async_reply,
                    txn: Txn {
                        user: open.user,
                        ops: open.ops,
                    },
                }
            }
        }
    }

    fn hello(&mut self, cmd: Command<'_>, usage: Option<&UsageStore>, settings: &Settings) -> Step {
        let Command::Hello {
            major, user, dict, ..
        } = cmd
        else {
            return Step::Close("command before hello".into());
        };
        if !MAJORS.contains(&major) {
            return Step::Close(format!("unsupported protocol major {major}"));
        }
        self.dict = if dict == settings.auth_dict {
            Some(Dict::Auth)
        } else if dict == settings.quota_dict && usage.is_some() {
            Some(Dict::Quota)
        } else {
            return Step::Close(format!("unknown dict {dict:?}"));
        };
        self.hello_user = user.to_lowercase();
        self.spelling = Spelling::for_major(major);
        Step::Reply(vec![])
    }

    fn change(
        &mut self,
        id: u32,
        dict: Dict,
        key: &str,
        op: impl FnOnce(String) -> Result<Op, String>,
    ) -> Step {
        let Some(open) = self.txns.get_mut(&id) else {
            return Step::Close(format!("unknown transaction {id}"));
        };
        if open.error.is_some() {
            return Step::Reply(vec![]);
        }
        let stored = QUOTA_KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.to_string());
        match (dict, stored) {
            (Dict::Quota, Some(k)) if open.ops.len() < MAX_TXN_OPS => match op(k) {
                Ok(op) => open.ops.push(op),
                Err(e) => open.error = Some(e),
            },
            (Dict::Quota, Some(_)) => open.error = Some(format!("more than {MAX_TXN_OPS} changes")),
            // Writes to anything else fail the commit: the auth dict is
            // read-only and ramdir keeps no other keys.
            _ => open.error = Some(format!("{key} cannot be written here")),
        }
        Step::Reply(vec![])
    }
}

/// An auth lookup that missed in a snapshot that is not authoritative (an
/// LDAP source still loading, or its sync lost) may be wrong: the user to
/// ask the source about, if any.
pub fn source_question(
    dir: &Directory,
    cmd: &Command<'_>,
    reply: &Reply,
) -> Option<(KeyKind, String)> {
    if dir.authoritative() || *reply != Reply::NotFound {
        return None;
    }
    let Command::Lookup { key, .. } = cmd else {
        return None;
    };
    let name = key
        .strip_prefix(PASSDB)
        .or_else(|| key.strip_prefix(USERDB))?;
    dir.settings().normalizer.address(name)?;
    Some((KeyKind::Address, name.to_string()))
}

/// The reply when the source could not settle a miss: a failure, so
/// Dovecot tempfails instead of calling the user unknown.
pub fn source_unavailable(dir: &Directory, error: Option<&str>) -> Reply {
    match (error, dir.meta().note.as_deref()) {
        (Some(e), _) => Reply::Fail(format!("directory source unavailable: {e}")),
        (None, Some(note)) => Reply::Fail(format!("directory not authoritative: {note}")),
        (None, None) => Reply::Fail("directory not authoritative".into()),
    }
}

fn quota_lookup(key: &str, user: &str, usage: Option<&UsageStore>) -> Reply {
    let Some((_, stored)) = QUOTA_KEYS.iter().find(|(k, _)| *k == key) else {
        return Reply::NotFound;
    };
    let Some(store) = usage else {
        return Reply::Fail("quota store is not configured".into());
    };
    match store.get(&user.to_lowercase(), stored) {
        Ok(Some(v)) => Reply::Value(v.to_string()),
        Ok(None) => Reply::NotFound,
        Err(e) => store_fail(e),
    }
}

/// Resolve an auth username to a user: the exact (folded) login, or with
/// `alias_logins` an alias that delivers to exactly one local mailbox. A
/// name claimed by several directory entries is an error (never one of
/// them: that would serve one user's password under another's login).
fn auth_user<'d>(
    dir: &'d Directory,
    name: &str,
    settings: &Settings,
) -> Result<Option<User<'d>>, LookupError> {
    // Dovecot asks with the login as stored almost always: no copy then.
    if dir.settings().normalizer.is_normal_form(name)
        && let Some(u) = dir.user(name)
    {
        return Ok(Some(u));
    }
    let Some(addr) = dir.settings().normalizer.address(name) else {
        return Ok(None);
    };
    let full = addr.full();
    if let Some(u) = dir.user(&full) {
        return Ok(Some(u));
    }
    dir.check_ambiguous(&full)?;
    if !settings.alias_logins || addr.extension.is_some() {
        return Ok(None);
    }
    match dir.classify(name).1 {
        Class::Alias { .. } => {}
        Class::Ambiguous { key, claims } => {
            return Err(LookupError::Ambiguous {
                address: key,
                claims,
            });
        }
        _ => return Ok(None),
    }
    let r = match dir.resolve(name) {
        Ok(r) => r,
        Err(e @ LookupError::Ambiguous { .. }) => return Err(e),
        // A broken alias (a loop) names no login.
        Err(_) => return Ok(None),
    };
    Ok(match r.targets.as_slice() {
        [t] => match &t.kind {
            TargetKind::Mailbox(login) => dir.user(login),
            _ => None,
        },
        _ => None,
    })
}

/// An auth-dict lookup. The JSON is written into `buf` (a buffer the
/// session reuses; see [`Session::recycle`]).
fn auth_lookup(
    key: &str,
    dir: &Directory,
    settings: &Settings,
    spelling: Spelling,
    buf: &mut String,
) -> Reply {
    if let Some(name) = key.strip_prefix(PASSDB) {
        return match auth_user(dir, name, settings) {
            Ok(Some(u)) if u.enabled => {
                passdb_json(&u, name, buf);
                Reply::Json(std::mem::take(buf))
            }
            Ok(_) => Reply::NotFound,
            Err(e) => lookup_fail(e),
        };
    }
    if let Some(name) = key.strip_prefix(USERDB) {
        return match auth_user(dir, name, settings) {
            Ok(Some(u)) if u.enabled || settings.disabled_userdb => {
                userdb_json(&u, name, spelling, &settings.quota_namespace, buf);
                Reply::Json(std::mem::take(buf))
            }
            Ok(_) => Reply::NotFound,
            Err(e) => lookup_fail(e),
        };
    }
    Reply::NotFound
}

/// The auth dict's answer for `name`: the passdb object when `passdb`,
/// else the userdb object in `spelling`; `Ok(None)` for an unknown (or,
/// for passdb, disabled) user, `Err` when the directory cannot answer. The
/// one place the dict and the snapshot files of `libauthdb_ramdir.so`
/// (`ramdir::dovecot_map`) take their answers from.
pub fn auth_answer(
    dir: &Directory,
    name: &str,
    settings: &Settings,
    passdb: bool,
    spelling: Spelling,
    buf: &mut String,
) -> Result<Option<String>, String> {
    let key = format!("{}{name}", if passdb { PASSDB } else { USERDB });
    match auth_lookup(&key, dir, settings, spelling, buf) {
        Reply::Json(j) => Ok(Some(j)),
        Reply::NotFound => Ok(None),
        Reply::Fail(e) => Err(e),
        _ => Err("unexpected auth reply".into()),
    }
}

/// A flat JSON object written field by field into a reused buffer: the
/// auth dict's answers have a handful of string and number fields, and
/// building a `serde_json` map (or even formatting with `write!`) for each
/// lookup cost more than the lookup itself (dict benchmark).
struct JsonObject<'b>(&'b mut String);

impl<'b> JsonObject<'b> {
    fn new(buf: &'b mut String) -> JsonObject<'b> {
        buf.clear();
        buf.push('{');
        JsonObject(buf)
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        json_string(k, self.0);
        self.0.push(':');
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        json_string(v, self.0);
    }

    fn num(&mut self, k: &str, v: u32) {
        self.key(k);
        push_u64(self.0, v.into());
    }

    fn finish(self) {
        self.0.push('}');
    }
}

/// Decimal digits of `n` (no formatting machinery).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// A JSON string literal, escaped as serde_json does (`"`, `\\` and
/// control characters; everything else verbatim UTF-8).
fn json_string(v: &str, out: &mut String) {
    out.push('"');
    json_escaped(v, out);
    out.push('"');
}

/// The inside of a JSON string literal (see [`json_string`]).
fn json_escaped(v: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, c) in v.bytes().enumerate() {
        let esc = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&v[start..i]);
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&v[start..]);
}

fn passdb_json(u: &User<'_>, asked: &str, buf: &mut String) {
    let mut m = JsonObject::new(buf);
    match u.password {
        Some(p) => m.str("password", p),
        // No hash: nobody can log in with a password (but the entry exists).
        None => m.str("nologin", "y"),
    };
    if u.login != asked {
        m.str("user", u.login);
    }
    for (k, v) in &u.extra {
        if !k.starts_with("userdb_") {
            m.str(k, v);
        }
    }
    m.finish();
}

fn userdb_json(u: &User<'_>, asked: &str, spelling: Spelling, namespace: &str, buf: &mut String) {
    let mut m = JsonObject::new(buf);
    if u.login != asked {
        m.str("user", u.login);
    }
    if let Some(uid) = u.uid {
        m.num("uid", uid);
    }
    if let Some(gid) = u.gid {
        m.num("gid", gid);
    }
    if let Some(h) = &u.home {
        m.key("home");
        m.0.push('"');
        h.pieces(|p| json_escaped(p, m.0));
        m.0.push('"');
    }
    if let Some(mail) = u.mail {
        m.str("mail", mail);
    }
    match spelling {
        Spelling::V23 => quota_v23(u, &mut m),
        Spelling::V24 => quota_v24(u, namespace, &mut m),
    }
    for (k, v) in &u.extra {
        if let Some(k) = k.strip_prefix("userdb_") {
            m.str(k, v);
        }
    }
    m.finish();
}

/// The limit and folder rules for Dovecot 2.3: `quota_rule` (as
/// `QuotaLimit::to_rule`, written in place; digits need no escape;
/// `storage=0` means no limit) and `quota_rule2…`.
fn quota_v23(u: &User<'_>, m: &mut JsonObject<'_>) {
    m.key("quota_rule");
    m.0.push_str("\"*");
    match (u.quota.storage, u.quota.messages) {
        (None, None) => m.0.push_str(":storage=0"),
        (storage, messages) => {
            if let Some(s) = storage {
                m.0.push_str(":storage=");
                push_u64(m.0, s);
                m.0.push('B');
            }
            if let Some(n) = messages {
                m.0.push_str(":messages=");
                push_u64(m.0, n);
            }
        }
    }
    m.0.push('"');
    if let Some(g) = u.quota_grace {
        m.key("quota_grace");
        m.0.push('"');
        push_u64(m.0, g);
        m.0.push_str("B\"");
    }
    for (i, r) in u.quota_rules.iter().enumerate() {
        // `quota_rule2`, `quota_rule3`, …: a key that needs no escape.
        m.0.push_str(",\"quota_rule");
        push_u64(m.0, i as u64 + 2);
        m.0.push_str("\":");
        json_string(r, m.0);
    }
}

/// The limit and folder rules for Dovecot 2.4: both resources always
/// (`0` is no limit; an absent field would leave Dovecot's global setting
/// in force, which ramdir's checks do not know), then each folder rule as
/// settings of its mailbox in `namespace`.
fn quota_v24(u: &User<'_>, namespace: &str, m: &mut JsonObject<'_>) {
    m.key("quota_storage_size");
    m.0.push('"');
    match u.quota.storage {
        Some(s) => {
            push_u64(m.0, s);
            m.0.push('B');
        }
        None => m.0.push('0'),
    }
    m.0.push('"');
    m.key("quota_message_count");
    m.0.push('"');
    push_u64(m.0, u.quota.messages.unwrap_or(0));
    m.0.push('"');
    if let Some(g) = u.quota_grace {
        m.key("quota_storage_grace");
        m.0.push('"');
        push_u64(m.0, g);
        m.0.push_str("B\"");
    }
    let mut rule = |r: &QuotaRule| {
        r.v24_settings(u.quota, |name, value| {
            // A folder 2.4 cannot name per user is left to dovecot.conf
            // (docs/dovecot.md); it never changes the INBOX limit that the
            // SMTP-time checks use.
            let Some(key) = v24_folder_key(namespace, &r.mailbox, name) else {
                return;
            };
            m.key(&key);
            m.0.push('"');
            match value {
                Setting::Bytes(n) => {
                    push_u64(m.0, n);
                    m.0.push('B');
                }
                Setting::Number(n) => push_u64(m.0, n),
                Setting::Yes => m.0.push_str("yes"),
            }
            m.0.push('"');
        })
    };
    match &u.quota_rules {
        QuotaRules::Default(rules) => rules.iter().for_each(&mut rule),
        // Stored as 2.3 rules that ramdir itself rendered: they parse.
        QuotaRules::Own(rules) => rules
            .iter()
            .filter_map(|r| QuotaRule::parse(r).ok())
            .for_each(|r| rule(&r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::UserSpec;
    use ramdir_core::quota::{QuotaLimit, QuotaRule};

    fn directory() -> Directory {
        let mut d = Directory::new(ramdir_core::Settings {
            home_template: Some("/var/vmail/%d/%n".into()),
            ..Default::default()
        });
        d.insert_user(&UserSpec {
            login: "alice@x.org".into(),
            password: Some("{SSHA}abc".into()),
            uid: Some(5000),
            gid: Some(5000),
            enabled: true,
            extra: vec![
                ("allow_nets".into(), "127.0.0.0/8".into()),
                ("userdb_acl".into(), "x".into()),
            ],
            ..Default::default()
        });
        d.insert_user(&UserSpec {
            login: "bob@x.org".into(),
            password: Some("{PLAIN}b".into()),
            quota: Some(QuotaLimit {
                storage: Some(1 << 20),
                messages: Some(10),
            }),
            mail: Some("maildir:~/M".into()),
            enabled: false,
            ..Default::default()
        });
        d.set_alias("info@x.org", vec!["alice@x.org".into()]);
        d.set_alias("team@x.org", vec!["alice@x.org".into(), "bob@x.org".into()]);
        d
    }

    fn run(
        s: &mut Session,
        d: &Directory,
        u: Option<&UsageStore>,
        set: &Settings,
        line: &str,
    ) -> Step {
        s.handle(crate::codec::Command::parse(line).unwrap(), d, u, set)
    }

    fn replies(step: Step) -> Vec<Reply> {
        match step {
            Step::One(r) => vec![r],
            Step::Reply(r) => r,
            other => panic!("expected replies, got {other:?}"),
        }
    }

    fn value(step: Step) -> serde_json::Value {
        match replies(step).as_slice() {
            [Reply::Value(v) | Reply::Json(v)] => serde_json::from_str(v).unwrap(),
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn json_strings_are_escaped_as_serde_json_does() {
        for v in [
            "",
            "plain",
            "{SSHA}a/b+c=",
            "quote\" back\\ slash",
            "ctl\u{0}\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}",
            "ünï €",
        ] {
            let mut mine = String::new();
            json_string(v, &mut mine);
            assert_eq!(mine, serde_json::to_string(v).unwrap(), "{v:?}");
        }
        let mut buf = String::from("stale");
        let mut m = JsonObject::new(&mut buf);
        m.str("a", "x");
        m.num("b", 7);
        m.num("c", 4_294_967_295);
        m.num("d", 0);
        m.finish();
        assert_eq!(buf, r#"{"a":"x","b":7,"c":4294967295,"d":0}"#);
    }

    #[test]
    fn auth_lookups() {
        let d = directory();
        let set = Settings::default();
        let mut s = Session::new();
        assert!(replies(run(&mut s, &d, None, &set, "H3\t2\t0\t\tauth")).is_empty());
        let p = value(run(
            &mut s,
            &d,
            None,
            &set,
            "Lshared/passdb/alice@x.org\talice@x.org",
        ));
        assert_eq!(
            p,
            serde_json::json!({"password": "{SSHA}abc", "allow_nets": "127.0.0.0/8"})
        );
        let u = value(run(
            &mut s,
            &d,
            None,
            &set,
            "Lshared/userdb/alice@x.org\talice@x.org",
        ));
        assert_eq!(
            u,
            serde_json::json!({"uid": 5000, "gid": 5000, "home": "/var/vmail/x.org/alice",
                "quota_rule": "*:storage=10737418240B",
                "quota_rule2": "Trash:storage=+524288000B", "quota_rule3": "Junk:storage=+524288000B",
                "acl": "x"})
        );
        // Case is folded; disabled users fail passdb but keep userdb.
        assert!(matches!(
            value(run(&mut s, &d, None, &set, "Lshared/passdb/ALICE@x.org\ta")),
            serde_json::Value::Object(_)
        ));
        assert_eq!(
            replies(run(
                &mut s,
                &d,
                None,
                &set,
                "Lshared/passdb/bob@x.org\tbob@x.org"
            )),
            [Reply::NotFound]
        );
        let b = value(run(
            &mut s,
            &d,
            None,
            &set,
            "Lshared/userdb/bob@x.org\tbob@x.org",
        ));
        assert_eq!(b["quota_rule"], "*:storage=1048576B:messages=10");
        assert_eq!(b["mail"], "maildir:~/M");
        // Aliases are not logins by default; unknown, foreign, odd keys: N.
        for key in [
            "shared/passdb/info@x.org",
            "shared/userdb/nobody@x.org",
            "shared/userdb/alice@x.org/quota",
            "shared/other/alice@x.org",
            "priv/quota/storage",
            "shared/passdb/",
            "shared/passdb/[1.2.3.4]",
        ] {
            assert_eq!(
                replies(run(&mut s, &d, None, &set, &format!("L{key}\tu"))),
                [Reply::NotFound],
                "{key}"
            );
        }
    }

    #[test]
    fn userdb_spells_limits_for_the_version_that_asks() {
        let mut d = directory();
        d.insert_user(&UserSpec {
            login: "carol@x.org".into(),
            quota: Some(QuotaLimit {
                storage: None,
                messages: Some(7),
            }),
            quota_rules: vec![
                QuotaRule::parse("Deleted Messages:storage=+1M").unwrap(),
                QuotaRule::parse("Spam:ignore").unwrap(),
                QuotaRule::parse("Small:storage=50%:messages=+3").unwrap(),
                QuotaRule::parse("Archive/2024:ignore").unwrap(),
            ],
            quota_grace: Some(1 << 20),
            enabled: true,
            extra: vec![("userdb_quota_mailbox_count".into(), "9".into())],
            ..Default::default()
        });
        let set = Settings::default();
        let lookup = |hello: &str, user: &str| {
            let mut s = Session::new();
            run(&mut s, &d, None, &set, hello);
            value(run(
                &mut s,
                &d,
                None,
                &set,
                &format!("Lshared/userdb/{user}\t{user}"),
            ))
        };
        // Dovecot 2.4 (and the Lua bridge): 2.4's names only.
        let a = lookup("H4\t0\t0\t\tauth", "alice@x.org");
        assert_eq!(
            a,
            serde_json::json!({"uid": 5000, "gid": 5000, "home": "/var/vmail/x.org/alice",
                "quota_storage_size": "10737418240B", "quota_message_count": "0",
                "namespace/inbox/mailbox/Trash/quota_storage_extra": "524288000B",
                "namespace/inbox/mailbox/Junk/quota_storage_extra": "524288000B",
                "acl": "x"})
        );
        let b = lookup("H4\t0\t0\t\tauth", "bob@x.org");
        assert_eq!(b["quota_storage_size"], "1048576B");
        assert_eq!(b["quota_message_count"], "10");
        let c = lookup("H4\t0\t0\t\tauth", "carol@x.org");
        assert_eq!(
            c,
            serde_json::json!({"home": "/var/vmail/x.org/carol",
                "quota_storage_size": "0", "quota_message_count": "7",
                "quota_storage_grace": "1048576B",
                "namespace/inbox/mailbox/Deleted Messages/quota_storage_extra": "1048576B",
                "namespace/inbox/mailbox/Spam/quota_ignore": "yes",
                "namespace/inbox/mailbox/Small/quota_storage_percentage": "50",
                "namespace/inbox/mailbox/Small/quota_message_count": "10",
                "quota_mailbox_count": "9"})
        );
        // Dovecot 2.3: 2.3's names only, as before.
        let c = lookup("H3\t2\t0\t\tauth", "carol@x.org");
        assert_eq!(
            c,
            serde_json::json!({"home": "/var/vmail/x.org/carol",
                "quota_rule": "*:messages=7",
                "quota_grace": "1048576B",
                "quota_rule2": "Deleted Messages:storage=+1048576B",
                "quota_rule3": "Spam:ignore",
                "quota_rule4": "Small:storage=50%:messages=+3",
                "quota_rule5": "Archive/2024:ignore",
                "quota_mailbox_count": "9"})
        );
        // Never both sets to one client.
        for (hello, foreign) in [
            ("H4\t0\t0\t\tauth", "quota_rule"),
            ("H3\t2\t0\t\tauth", "quota_storage"),
            ("H3\t2\t0\t\tauth", "namespace/"),
        ] {
            for user in ["alice@x.org", "bob@x.org", "carol@x.org"] {
                let v = lookup(hello, user);
                let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                assert!(
                    !keys.iter().any(|k| k.starts_with(foreign)),
                    "{hello} {user}: {keys:?}"
                );
            }
        }
        // Another namespace name.
        let set = Settings {
            quota_namespace: "main ns".into(),
            ..Settings::default()
        };
        let mut s = Session::new();
        run(&mut s, &d, None, &set, "H4\t0\t0\t\tauth");
        assert_eq!(s.spelling(), Spelling::V24);
        let a = value(run(&mut s, &d, None, &set, "Lshared/userdb/alice@x.org\tx"));
        assert_eq!(
            a["namespace/main ns/mailbox/Trash/quota_storage_extra"],
            "524288000B"
        );
    }

    #[test]
    fn alias_logins_when_configured_and_unambiguous() {
        let d = directory();
        let set = Settings {
            alias_logins: true,
            ..Settings::default()
        };
        let mut s = Session::new();
        run(&mut s, &d, None, &set, "H3\t2\t0\t\tauth");
        let p = value(run(
            &mut s,
            &d,
            None,
            &set,
            "Lshared/passdb/info@x.org\tinfo@x.org",
        ));
        assert_eq!(p["user"], "alice@x.org");
        assert_eq!(
            replies(run(&mut s, &d, None, &set, "Lshared/passdb/team@x.org\tx")),
            [Reply::NotFound]
        );
    }

    #[test]
    fn an_ambiguous_login_fails_and_never_serves_a_password() {
        let mut d = directory();
        d.set_ambiguous("dup@x.org", 2);
        d.set_alias("dupalias@x.org", vec!["dup@x.org".into()]);
        for alias_logins in [false, true] {
            let set = Settings {
                alias_logins,
                ..Settings::default()
            };
            let mut s = Session::new();
            run(&mut s, &d, None, &set, "H3\t2\t0\t\tauth");
            let mut keys = vec!["passdb/dup@x.org", "userdb/dup@x.org", "passdb/DUP@x.org"];
            if alias_logins {
                keys.push("passdb/dupalias@x.org");
            }
            for key in keys {
                let line = format!("Lshared/{key}\tdup@x.org");
                match replies(run(&mut s, &d, None, &set, &line)).as_slice() {
                    [Reply::Fail(e)] => assert!(e.contains("claimed by 2"), "{e}"),
                    other => panic!("{key}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn iteration_lists_direct_children_only() {
        let d = directory();
        let set = Settings::default();
        let mut s = Session::new();
        run(&mut s, &d, None, &set, "H3\t2\t0\t\tauth");
        let Step::Iterate(plan) = run(&mut s, &d, None, &set, "I8\t0\tshared/userdb/\t") else {
            panic!()
        };
        let mut rows: Vec<String> = plan
            .rows(&d)
            .map(|r| match r {
                Reply::Row { key, value } => {
                    assert!(value.is_empty());
                    key
                }
                other => panic!("{other:?}"),
            })
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            ["shared/userdb/alice@x.org", "shared/userdb/bob@x.org"]
        );
        let Step::Iterate(plan) = run(&mut s, &d, None, &set, "I0\t1\tshared/userdb/\t") else {
            panic!()
        };
        assert_eq!(plan.rows(&d).count(), 1);
        assert_eq!(
            replies(run(&mut s, &d, None, &set, "I0\t0\tshared/\t")),
            [Reply::IterEnd]
        );
    }

    #[test]
    fn protocol_violations_close() {
        let d = directory();
        let set = Settings::default();
        for (first, second) in [
            ("Lshared/passdb/a\ta", None),
            ("H2\t0\t0\t\tauth", None),
            ("H3\t2\t0\t\tnosuch", None),
            ("H3\t2\t0\t\tquota", None), // no store configured
            ("H3\t2\t0\t\tauth", Some("H3\t2\t0\t\tauth")),
            ("H3\t2\t0\t\tauth", Some("S9\tk\tv")),
        ] {
            let mut s = Session::new();
            let step = run(&mut s, &d, None, &set, first);
            let step = match second {
                Some(l) => {
                    assert!(matches!(step, Step::Reply(_)));
                    run(&mut s, &d, None, &set, l)
                }
                None => step,
            };
            assert!(
                matches!(step, Step::Close(_)),
                "{first} / {second:?}: {step:?}"
            );
        }
        // Major 4 (Dovecot 2.4) is accepted.
        let mut s = Session::new();
        assert!(matches!(
            run(&mut s, &d, None, &set, "H4\t0\t0\t\tauth"),
            Step::Reply(_)
        ));
    }

    /// Dovecot 2.4's `quota_clone` (protocol 4): absolute `S` of both
    /// counters inside `B…C`, sometimes with `V`. The commit reaches the
    /// store, and the very next read (the policy's and milter's, through
    /// the same caches) sees the new values, both ways.
    #[test]
    fn quota_clone_updates_reach_the_smtp_time_check_at_once() {
        use ramdir_core::check::{Grace, Usage, UsageSource, Verdict, check_recipient};
        let mut d = Directory::new(ramdir_core::Settings::default());
        d.insert_user(&UserSpec {
            login: "alice@example.org".into(),
            quota: Some(QuotaLimit {
                storage: Some(1000),
                messages: Some(5),
            }),
            enabled: true,
            ..Default::default()
        });
        d.add_domain("example.org");
        let set = Settings::default();
        let tmp = tempfile::tempdir().unwrap();
        let store = UsageStore::open(&tmp.path().join("q")).unwrap();
        let u = Some(&store);
        let grace = Grace::Bytes(0);
        // Untracked: accepted, and now cached as untracked in this thread
        // and in the shared cache.
        assert_eq!(store.usage("alice@example.org").unwrap(), Usage::default());
        assert_eq!(
            check_recipient(&d, &store, grace, "alice@example.org", 10),
            Verdict::Accept
        );
        let mut s = Session::new();
        let clone = |s: &mut Session, id: u32, storage: i64, messages: i64, hide: bool| {
            assert!(
                replies(run(s, &d, u, &set, &format!("B{id}\talice@example.org\t0"))).is_empty()
            );
            if hide {
                assert!(replies(run(s, &d, u, &set, &format!("V{id}\tyes"))).is_empty());
            }
            for (k, v) in [("storage", storage), ("messages", messages)] {
                let line = format!("S{id}\tpriv/quota/{k}\t{v}");
                assert!(replies(run(s, &d, u, &set, &line)).is_empty());
            }
            let Step::Commit {
                id: got,
                async_reply: false,
                txn,
            } = run(s, &d, u, &set, &format!("C{id}"))
            else {
                panic!("no commit")
            };
            assert_eq!(got, id);
            store.commit_batch(&[txn]).unwrap()
        };
        assert!(replies(run(&mut s, &d, u, &set, "H4\t0\t0\t\tquota")).is_empty());
        // A delivery: 995 bytes in 4 messages. 5 bytes left, no grace.
        assert_eq!(
            clone(&mut s, 1, 995, 4, false),
            [ramdir_core::usage::CommitOutcome::Ok]
        );
        assert_eq!(
            store.peek("alice@example.org"),
            None,
            "the commit emptied this thread's copy"
        );
        assert_eq!(
            store.usage("alice@example.org").unwrap(),
            Usage {
                storage: Some(995),
                messages: Some(4)
            }
        );
        assert_eq!(
            check_recipient(&d, &store, grace, "alice@example.org", 5),
            Verdict::Accept
        );
        assert!(matches!(
            check_recipient(&d, &store, grace, "alice@example.org", 6),
            Verdict::OverQuota { .. }
        ));
        // The fifth message reaches the message limit.
        clone(&mut s, 2, 996, 5, true);
        assert!(matches!(
            check_recipient(&d, &store, grace, "alice@example.org", 1),
            Verdict::OverQuota { .. }
        ));
        // An expunge writes lower absolute values: accepted again at once.
        clone(&mut s, 3, 100, 1, false);
        assert_eq!(
            check_recipient(&d, &store, grace, "alice@example.org", 900),
            Verdict::Accept
        );
        assert_eq!(
            replies(run(
                &mut s,
                &d,
                u,
                &set,
                "Lpriv/quota/storage\talice@example.org"
            )),
            [Reply::Value("100".into())]
        );
        // V on a transaction never begun breaks the protocol, as T does.
        assert!(matches!(run(&mut s, &d, u, &set, "V9\tno"), Step::Close(_)));
    }

    #[test]
    fn quota_dict_transactions() {
        let d = directory();
        let set = Settings::default();
        let tmp = tempfile::tempdir().unwrap();
        let store = UsageStore::open(&tmp.path().join("q")).unwrap();
        let u = Some(&store);
        let mut s = Session::new();
        run(&mut s, &d, u, &set, "H3\t2\t0\t\tquota");
        assert_eq!(
            replies(run(&mut s, &d, u, &set, "Lpriv/quota/storage\talice@x.org")),
            [Reply::NotFound]
        );
        // Increment on missing counters: the commit goes to the store, which says N.
        assert!(replies(run(&mut s, &d, u, &set, "B1\talice@x.org")).is_empty());
        run(&mut s, &d, u, &set, "A1\tpriv/quota/storage\t100");
        let Step::Commit {
            id: 1,
            async_reply: false,
            txn,
        } = run(&mut s, &d, u, &set, "C1")
        else {
            panic!()
        };
        assert_eq!(
            store.commit_batch(&[txn]).unwrap(),
            [ramdir_core::usage::CommitOutcome::NotFound]
        );
        // Recalculation writes absolute values (quota_clone does the same).
        run(&mut s, &d, u, &set, "B2\tAlice@x.org");
        run(&mut s, &d, u, &set, "U2\tpriv/quota/storage");
        run(&mut s, &d, u, &set, "S2\tpriv/quota/storage\t2048");
        run(&mut s, &d, u, &set, "S2\tpriv/quota/messages\t2");
        run(&mut s, &d, u, &set, "T2\t1700000000\t0");
        let Step::Commit { txn, .. } = run(&mut s, &d, u, &set, "C2") else {
            panic!()
        };
        store.commit_batch(&[txn]).unwrap();
        assert_eq!(
            replies(run(&mut s, &d, u, &set, "Lpriv/quota/storage\talice@x.org")),
            [Reply::Value("2048".into())]
        );
        assert_eq!(
            replies(run(
                &mut s,
                &d,
                u,
                &set,
                "Lpriv/quota/messages\talice@x.org"
            )),
            [Reply::Value("2".into())]
        );
        // Bad value, foreign key: the commit fails with F, nothing written.
        run(&mut s, &d, u, &set, "B3\talice@x.org");
        run(&mut s, &d, u, &set, "S3\tpriv/quota/storage\tlots");
        assert!(matches!(
            replies(run(&mut s, &d, u, &set, "C3")).as_slice(),
            [Reply::Commit {
                id: 3,
                result: CommitResult::Fail(_),
                ..
            }]
        ));
        run(&mut s, &d, u, &set, "B4\talice@x.org");
        run(&mut s, &d, u, &set, "S4\tshared/whatever\t1");
        assert!(matches!(
            replies(run(&mut s, &d, u, &set, "D4")).as_slice(),
            [Reply::Commit {
                id: 4,
                async_reply: true,
                result: CommitResult::Fail(_)
            }]
        ));
        // Rollback drops; commit of an unknown (never begun) id is an empty commit.
        run(&mut s, &d, u, &set, "B5\talice@x.org");
        run(&mut s, &d, u, &set, "A5\tpriv/quota/storage\t1");
        run(&mut s, &d, u, &set, "R5");
        assert_eq!(
            replies(run(&mut s, &d, u, &set, "C5")),
            [Reply::Commit {
                id: 5,
                async_reply: false,
                result: CommitResult::Ok
            }]
        );
        assert_eq!(
            store.get("alice@x.org", "quota/storage").unwrap(),
            Some(2048)
        );
        // Unknown priv keys are not found.
        assert_eq!(
            replies(run(&mut s, &d, u, &set, "Lpriv/other\talice@x.org")),
            [Reply::NotFound]
        );
    }
}

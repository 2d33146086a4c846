//! The SMTP-time quota decision, shared by the policy service and the
//! milter.
//!
//! It mirrors what Dovecot will decide at LMTP time, so that mail accepted
//! during SMTP is not refused (and bounced) later. The truth is Dovecot
//! 2.3.19 `src/plugins/quota/quota.c` (`quota_transaction_set_limits`,
//! `quota_default_test_alloc`) and `quota-util.c`
//! (`quota_transaction_is_over`, `quota_root_parse_grace`), and for 2.4.1
//! the same functions (`quota_is_over` is unchanged; the limits come from
//! `quota_root_get_rule_limits`, the grace from `quota_storage_grace`):
//! - delivery goes to INBOX, whose limit is the user's main rule (folder
//!   rules such as `Trash:+500M` do not apply to it); usage is the total of
//!   all folders;
//! - bytes: with usage `u` and limit `l`, a message of `s > 0` bytes fits iff
//!   `u < l` and `s ≤ (l − u) + grace`; `s = 0` fits iff `u ≤ l`;
//! - messages: a new message fits iff `count < count limit`;
//! - the grace applies to LDA/LMTP deliveries only. Dovecot 2.3's
//!   `quota_grace` (default 10%) is a percentage of the user's limit or a
//!   size; Dovecot 2.4's `quota_storage_grace` is a size only (default
//!   10M). ramdir's `[quota] grace` takes either form and must equal
//!   Dovecot's setting; a user's own grace from the directory
//!   (`quota_storage_grace`/`quota_grace` userdb fields, sent to Dovecot
//!   too) replaces it for that user;
//! - a limit of 0 means unlimited;
//! - an unknown size counts as 1 byte, as Dovecot's `quota-status` does.
//!
//! Recipients are resolved through aliases and catch-alls first. An address
//! is refused only when **every** local mailbox it reaches is over quota;
//! a remote target never blocks, and neither does a mailbox whose usage is
//! not tracked yet (Dovecot creates the counters on first use, or on 2.4
//! `quota_clone` writes them at the user's first change; LMTP still
//! enforces the quota), so a new user can always receive mail, with one
//! exception that is Dovecot's own: a message larger than the limit plus
//! the grace cannot fit even an empty mailbox, so it is refused whatever
//! the usage.

use std::fmt;

use crate::directory::Directory;
use crate::lookup::{Class, TargetKind};
use crate::quota::{QuotaLimit, UserQuota};
use crate::usage::{StoreError, UsageStore};

/// Dovecot's delivery grace: 2.3's `quota_grace`, 2.4's
/// `quota_storage_grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// Percent of the user's limit (`10%`, Dovecot 2.3's default; 2.4 has
    /// no percentage).
    Percent(u32),
    /// Absolute bytes (Dovecot 2.4's only form; its default is 10M).
    Bytes(u64),
}

impl Grace {
    /// Dovecot 2.4's default `quota_storage_grace` (`quota-settings.c`).
    pub const DOVECOT_24_DEFAULT: Grace = Grace::Bytes(10 << 20);

    /// The grace for a user: their own if the directory gives one, else
    /// this (configured) one.
    pub fn for_user(self, q: &UserQuota) -> Grace {
        q.grace.map_or(self, Grace::Bytes)
    }
}

impl Default for Grace {
    fn default() -> Self {
        Grace::Percent(10)
    }
}

impl Grace {
    /// Grace in bytes for a user whose limit is `limit` bytes.
    pub fn bytes(self, limit: u64) -> u64 {
        match self {
            // Dovecot computes `limit * percent / 100` in 64-bit integers.
            Grace::Percent(p) => limit.saturating_mul(u64::from(p)) / 100,
            Grace::Bytes(b) => b,
        }
    }
}

/// A mailbox's current usage; `None` where no counter exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes.
    pub storage: Option<i64>,
    /// Messages.
    pub messages: Option<i64>,
}

/// Where usage comes from (the durable store, or a table in tests).
pub trait UsageSource {
    /// Usage of `login`.
    fn usage(&self, login: &str) -> Result<Usage, StoreError>;

    /// Usage of `login` if it is at hand without any I/O or shared lock,
    /// else `None` (then ask [`UsageSource::usage`]). Lets a check start
    /// reading usage before the directory lookup has finished.
    fn peek(&self, login: &str) -> Option<Usage> {
        let _ = login;
        None
    }

    /// Whether the usage of `login` may be out of date (shared usage whose
    /// source has not been heard from lately). An over-quota decision on
    /// stale usage only defers ([`Verdict::OverQuotaStale`]), never
    /// refuses permanently.
    fn stale(&self, login: &str) -> bool {
        let _ = login;
        false
    }
}

impl UsageSource for UsageStore {
    fn usage(&self, login: &str) -> Result<Usage, StoreError> {
        let [storage, messages] = self.counters(login)?;
        Ok(Usage { storage, messages })
    }

    fn peek(&self, login: &str) -> Option<Usage> {
        let [storage, messages] = self.local_counters(login)?;
        Some(Usage { storage, messages })
    }
}

/// Whether one more message of `size` bytes fits, as Dovecot decides at
/// delivery. Untracked usage fits, unless the message alone is too large:
/// real usage is never below 0, and at 0 Dovecot takes at most the limit
/// plus the grace.
pub fn fits(limit: QuotaLimit, usage: Usage, grace: Grace, size: u64) -> bool {
    if let (Some(l), Some(m)) = (limit.messages.filter(|l| *l > 0), usage.messages)
        && m.max(0) as u64 >= l
    {
        return false;
    }
    let Some(l) = limit.storage.filter(|l| *l > 0) else {
        return true;
    };
    let Some(u) = usage.storage else {
        return size <= l.saturating_add(grace.bytes(l));
    };
    let u = u.max(0) as u64;
    if size == 0 {
        return u <= l;
    }
    u < l && size <= (l - u).saturating_add(grace.bytes(l))
}

/// The decision for one recipient or one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliverable as far as quota goes.
    Accept,
    /// Every local mailbox reached is over quota.
    OverQuota {
        /// The full mailboxes.
        mailboxes: Vec<String>,
    },
    /// Every local mailbox reached is over quota, but the usage of at least
    /// one of them is stale (shared usage out of touch): defer, never
    /// refuse permanently on data that may be old.
    OverQuotaStale {
        /// The full mailboxes.
        mailboxes: Vec<String>,
    },
    /// Not an address of ours (or not known): not ours to decide.
    NotOurs,
    /// The check could not be made (store or directory trouble).
    Trouble(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::OverQuota { mailboxes } => write!(f, "over quota: {}", mailboxes.join(", ")),
            Verdict::OverQuotaStale { mailboxes } => write!(
                f,
                "over quota by stale shared usage: {}",
                mailboxes.join(", ")
            ),
            Verdict::NotOurs => f.write_str("not ours"),
            Verdict::Trouble(e) => write!(f, "cannot check: {e}"),
        }
    }
}

/// What resolving a recipient gave: the local mailboxes it reaches, or that
/// it cannot be blocked (a remote target) or is not ours.
enum Reach {
    Mailboxes(Vec<String>),
    Unblockable,
    NotOurs,
}

fn reach(dir: &Directory, rcpt: &str) -> Result<Reach, String> {
    let (_, class) = dir.classify(rcpt);
    if matches!(class, Class::Foreign | Class::UnknownLocal) {
        return Ok(Reach::NotOurs);
    }
    let r = dir.resolve(rcpt).map_err(|e| e.to_string())?;
    let mut boxes = Vec::new();
    for t in r.targets {
        match t.kind {
            TargetKind::Mailbox(login) => {
                if !boxes.contains(&login) {
                    boxes.push(login);
                }
            }
            // Remote or unknown local targets: delivery is not ours to
            // refuse by quota.
            TargetKind::Remote | TargetKind::UnknownLocal => return Ok(Reach::Unblockable),
        }
    }
    Ok(if boxes.is_empty() {
        Reach::Unblockable
    } else {
        Reach::Mailboxes(boxes)
    })
}

/// Check one recipient for a message of `size` bytes (0: unknown, counted
/// as 1 byte).
pub fn check_recipient(
    dir: &Directory,
    usage: &dyn UsageSource,
    grace: Grace,
    rcpt: &str,
    size: u64,
) -> Verdict {
    check_message(dir, usage, grace, &[rcpt], size)
}

/// Check a message for all its recipients: refused only when every local
/// mailbox of every recipient is over quota (an unknown or remote recipient
/// makes it deliverable somewhere, so it is accepted).
pub fn check_message(
    dir: &Directory,
    usage: &dyn UsageSource,
    grace: Grace,
    rcpts: &[&str],
    size: u64,
) -> Verdict {
    let size = size.max(1);
    let mut full = Vec::new();
    let mut any_ours = false;
    for rcpt in rcpts {
        // Read first, so that its memory reads overlap the directory's
        // (each is a chain of cache misses on a large directory); used only
        // when the recipient turns out to be that very mailbox.
        let early = usage.peek(rcpt);
        // Most recipients are a mailbox named as stored: decided without
        // resolving (the same answer `reach` gives, without its copies).
        if let Some((login, q)) = dir.direct_mailbox_quota(rcpt) {
            any_ours = true;
            let u = match early.map_or_else(|| usage.usage(login), Ok) {
                Ok(u) => u,
                Err(e) => return Verdict::Trouble(e.to_string()),
            };
            if fits(q.limit, u, grace.for_user(&q), size) {
                return Verdict::Accept;
            }
            if !full.iter().any(|f: &String| f == login) {
                full.push(login.to_string());
            }
            continue;
        }
        match reach(dir, rcpt) {
            Err(e) => return Verdict::Trouble(e),
            Ok(Reach::NotOurs) => {
                if rcpts.len() > 1 {
                    // Someone else's recipient: the message goes there.
                    return Verdict::Accept;
                }
            }
            Ok(Reach::Unblockable) => return Verdict::Accept,
            Ok(Reach::Mailboxes(boxes)) => {
                any_ours = true;
                for login in boxes {
                    let Some((_, q)) = dir.user_key_quota(&login) else {
                        return Verdict::Accept;
                    };
                    let u = match usage.usage(&login) {
                        Ok(u) => u,
                        Err(e) => return Verdict::Trouble(e.to_string()),
                    };
                    if fits(q.limit, u, grace.for_user(&q), size) {
                        return Verdict::Accept;
                    }
                    if !full.contains(&login) {
                        full.push(login);
                    }
                }
            }
        }
    }
    if !any_ours {
        return Verdict::NotOurs;
    }
    if full.iter().any(|login| usage.stale(login)) {
        return Verdict::OverQuotaStale { mailboxes: full };
    }
    Verdict::OverQuota { mailboxes: full }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Settings, UserSpec};
    use std::collections::HashMap;

    const L: u64 = 1000;

    fn lim(storage: u64) -> QuotaLimit {
        QuotaLimit {
            storage: Some(storage),
            messages: None,
        }
    }

    fn used(b: i64) -> Usage {
        Usage {
            storage: Some(b),
            messages: None,
        }
    }

    #[test]
    fn dovecot_grace_boundaries() {
        let g = Grace::Percent(10); // 100 bytes of grace on a 1000-byte limit
        let cases = [
            // (usage, size, fits)
            (0, 1, true),
            (0, 1100, true),
            (0, 1101, false),
            (900, 200, true), // 100 left + 100 grace
            (900, 201, false),
            (999, 101, true),
            (999, 102, false),
            (1000, 1, false), // at the limit: nothing fits
            (1000, 0, true),  // size 0 only needs usage <= limit
            (1001, 0, false),
            (5000, 1, false),
            (-50, 1150, false), // negative usage counts as 0
            (-50, 1100, true),
        ];
        for (u, size, want) in cases {
            assert_eq!(
                fits(lim(L), used(u), g, size),
                want,
                "usage {u} size {size}"
            );
        }
        assert!(fits(lim(L), used(900), Grace::Bytes(0), 100));
        assert!(!fits(lim(L), used(900), Grace::Bytes(0), 101));
        assert!(fits(lim(L), used(900), Grace::Bytes(500), 600));
    }

    #[test]
    fn unlimited_untracked_and_message_limits() {
        let g = Grace::default();
        assert!(fits(QuotaLimit::default(), used(1 << 40), g, 1 << 30));
        assert!(fits(lim(0), used(1 << 40), g, 10));
        assert!(
            fits(lim(L), Usage::default(), g, 1100),
            "untracked usage fits"
        );
        assert!(
            !fits(lim(L), Usage::default(), g, 1101),
            "but not a message that no mailbox of this limit takes"
        );
        assert!(!fits(lim(L), Usage::default(), Grace::Bytes(0), 1001));
        let ml = QuotaLimit {
            storage: None,
            messages: Some(10),
        };
        assert!(fits(
            ml,
            Usage {
                storage: None,
                messages: Some(9)
            },
            g,
            1
        ));
        assert!(!fits(
            ml,
            Usage {
                storage: None,
                messages: Some(10)
            },
            g,
            1
        ));
    }

    struct Table(HashMap<String, Usage>);
    impl UsageSource for Table {
        fn usage(&self, login: &str) -> Result<Usage, StoreError> {
            if login == "broken@x.org" {
                return Err(StoreError::Db("disk on fire".into()));
            }
            Ok(self.0.get(login).copied().unwrap_or_default())
        }
    }

    fn setup() -> (Directory, Table) {
        let mut d = Directory::new(Settings::default());
        for (login, limit) in [
            ("full@x.org", L),
            ("free@x.org", L),
            ("full2@x.org", L),
            ("broken@x.org", L),
        ] {
            d.insert_user(&UserSpec {
                login: login.into(),
                quota: Some(lim(limit)),
                ..Default::default()
            });
        }
        let a = |d: &mut Directory, k: &str, t: &[&str]| {
            d.set_alias(k, t.iter().map(|s| s.to_string()).collect())
        };
        a(&mut d, "alias-full@x.org", &["full@x.org"]);
        a(&mut d, "mixed@x.org", &["full@x.org", "free@x.org"]);
        a(&mut d, "both-full@x.org", &["full@x.org", "full2@x.org"]);
        a(
            &mut d,
            "with-remote@x.org",
            &["full@x.org", "someone@remote.test"],
        );
        a(&mut d, "@catch.x.org", &["full@x.org"]);
        let usage = Table(
            [
                ("full@x.org", used(1000)),
                ("full2@x.org", used(2000)),
                ("free@x.org", used(10)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        (d, usage)
    }

    /// Peeks answer "full" for every key: only a recipient that is that
    /// very mailbox may use its peek.
    struct PeeksFull(Table);
    impl UsageSource for PeeksFull {
        fn usage(&self, login: &str) -> Result<Usage, StoreError> {
            self.0.usage(login)
        }
        fn peek(&self, _: &str) -> Option<Usage> {
            Some(used(1000))
        }
    }

    #[test]
    fn a_peek_counts_only_for_the_mailbox_itself() {
        let (mut d, u) = setup();
        let u = PeeksFull(u);
        let g = Grace::default();
        // An alias of a free mailbox: the alias key's peek is not used.
        d.set_alias("to-free@x.org", vec!["free@x.org".into()]);
        assert_eq!(
            check_recipient(&d, &u, g, "to-free@x.org", 10),
            Verdict::Accept
        );
        // The mailbox itself: its peek is its usage.
        assert!(matches!(
            check_recipient(&d, &u, g, "free@x.org", 10),
            Verdict::OverQuota { .. }
        ));
    }

    #[test]
    fn an_alias_named_like_a_mailbox_takes_precedence_on_the_fast_path() {
        let (mut d, u) = setup();
        let g = Grace::default();
        // The mailbox itself is full, but mail to that exact key goes to
        // the alias's target (classify's order: exact alias first).
        assert!(matches!(
            check_recipient(&d, &u, g, "full@x.org", 10),
            Verdict::OverQuota { .. }
        ));
        d.set_alias("full@x.org", vec!["free@x.org".into()]);
        assert_eq!(
            check_recipient(&d, &u, g, "full@x.org", 10),
            Verdict::Accept
        );
        // Not in normal form: the same answers through `reach`.
        assert_eq!(
            check_recipient(&d, &u, g, "Full@X.org", 10),
            Verdict::Accept
        );
        assert!(matches!(
            check_recipient(&d, &u, g, "FULL2@x.org", 10),
            Verdict::OverQuota { .. }
        ));
    }

    #[test]
    fn an_ambiguous_recipient_cannot_be_checked() {
        let (mut d, u) = setup();
        let g = Grace::default();
        d.set_ambiguous("dup@x.org", 2);
        d.set_ambiguous("dup@catch.x.org", 3);
        d.set_alias("to-dup@x.org", vec!["dup@x.org".into()]);
        for rcpt in [
            "dup@x.org",
            "Dup@x.org",
            "dup+tag@x.org",
            "to-dup@x.org",
            "dup@catch.x.org",
        ] {
            assert!(
                matches!(
                    check_recipient(&d, &u, g, rcpt, 1),
                    Verdict::Trouble(e) if e.contains("claimed by")
                ),
                "{rcpt}"
            );
        }
        assert!(matches!(
            check_message(&d, &u, g, &["free@x.org", "dup@x.org"], 1),
            Verdict::Accept
        ));
    }

    #[test]
    fn recipients_resolve_through_aliases_and_catch_alls() {
        let (d, u) = setup();
        let g = Grace::default();
        let over = |m: &[&str]| Verdict::OverQuota {
            mailboxes: m.iter().map(|s| s.to_string()).collect(),
        };
        let cases: Vec<(&str, u64, Verdict)> = vec![
            ("free@x.org", 100, Verdict::Accept),
            ("free+tag@x.org", 100, Verdict::Accept),
            ("FULL@X.org", 0, over(&["full@x.org"])), // unknown size counts as 1 byte
            ("full+tag@x.org", 1, over(&["full@x.org"])),
            ("alias-full@x.org", 1, over(&["full@x.org"])),
            ("mixed@x.org", 1, Verdict::Accept),
            ("both-full@x.org", 1, over(&["full@x.org", "full2@x.org"])),
            ("with-remote@x.org", 1, Verdict::Accept),
            ("anyone@catch.x.org", 1, over(&["full@x.org"])),
            ("nobody@x.org", 1, Verdict::NotOurs),
            ("someone@remote.test", 1, Verdict::NotOurs),
            ("[1.2.3.4]", 1, Verdict::NotOurs),
            (
                "broken@x.org",
                1,
                Verdict::Trouble("quota store: disk on fire".into()),
            ),
        ];
        for (rcpt, size, want) in cases {
            assert_eq!(check_recipient(&d, &u, g, rcpt, size), want, "{rcpt}");
        }
    }

    #[test]
    fn whole_message_is_refused_only_when_every_recipient_is_full() {
        let (d, u) = setup();
        let g = Grace::default();
        assert!(matches!(
            check_message(&d, &u, g, &["full@x.org", "full2@x.org"], 10),
            Verdict::OverQuota { .. }
        ));
        assert_eq!(
            check_message(&d, &u, g, &["full@x.org", "free@x.org"], 10),
            Verdict::Accept
        );
        assert_eq!(
            check_message(&d, &u, g, &["full@x.org", "x@remote.test"], 10),
            Verdict::Accept
        );
        // free has 990 left + 100 grace.
        assert_eq!(
            check_message(&d, &u, g, &["full@x.org", "free@x.org"], 1090),
            Verdict::Accept
        );
        assert!(matches!(
            check_message(&d, &u, g, &["full@x.org", "free@x.org"], 1091),
            Verdict::OverQuota { .. }
        ));
    }

    #[test]
    fn dovecot_24_grace_is_a_size() {
        // quota_storage_grace = 10M (2.4's default) on a 1G limit, where
        // 2.3's 10% would have been about 102M.
        let g = Grace::DOVECOT_24_DEFAULT;
        let l = lim(1 << 30);
        let u = used((1 << 30) - 1);
        assert!(fits(l, u, g, 1 + (10 << 20)));
        assert!(!fits(l, u, g, 2 + (10 << 20)));
        assert!(!fits(l, used(1 << 30), g, 1));
        assert!(fits(l, used(1 << 30), g, 0));
        let near = used((1 << 30) - (1 << 20));
        assert!(fits(l, near, Grace::Percent(10), 50 << 20));
        assert!(!fits(l, near, g, 50 << 20));
    }

    #[test]
    fn a_users_own_grace_replaces_the_configured_one() {
        let mut d = Directory::new(Settings::default());
        for (login, grace) in [("strict@x.org", Some(0)), ("lenient@x.org", Some(500))] {
            d.insert_user(&UserSpec {
                login: login.into(),
                quota: Some(lim(L)),
                quota_grace: grace,
                ..Default::default()
            });
        }
        // Own grace, default limit.
        d.insert_user(&UserSpec {
            login: "dflt@x.org".into(),
            quota_grace: Some(7),
            ..Default::default()
        });
        d.set_alias("to-strict@x.org", vec!["strict@x.org".into()]);
        let usage = Table(
            [
                ("strict@x.org", used(900)),
                ("lenient@x.org", used(900)),
                ("dflt@x.org", used((10 << 30) - 1)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
        let g = Grace::Percent(10); // 100 bytes on these limits
        let ok = |r: &str, size| check_recipient(&d, &usage, g, r, size) == Verdict::Accept;
        assert!(ok("strict@x.org", 100));
        assert!(!ok("strict@x.org", 101), "own grace 0");
        assert!(!ok("to-strict@x.org", 101), "through an alias too");
        assert!(ok("lenient@x.org", 600));
        assert!(!ok("lenient@x.org", 601));
        assert!(ok("dflt@x.org", 8));
        assert!(!ok("dflt@x.org", 9));
    }
}

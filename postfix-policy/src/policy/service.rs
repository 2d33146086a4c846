//! Policy service: request + directory snapshot + usage → action.
//!
//! - `protocol_state=RCPT`: check the recipient with the `size` hint (the
//!   client's `SIZE=`, or 0 = unknown, counted as 1 byte). Fine → `DUNNO`
//!   and the recipient is remembered under the transaction's `instance`;
//!   over quota → the configured reply (default `452 4.2.2 Mailbox full`).
//! - `protocol_state=END-OF-MESSAGE`: `size` is now the real size, but
//!   `recipient` is empty with several recipients (protocols.md G7), so the
//!   remembered recipients are checked; the message is refused only when
//!   every one of them would be over quota (a reject here hits all
//!   recipients). The transaction is then forgotten.
//! - Unknown recipients are `DUNNO`: Postfix's own maps decide those.
//! - Any other state: `DUNNO`.
//!
//! [`to_action`] is the one place verdicts become actions. There is no `OK`
//! (it is a permit, G9); trouble is `DEFER_IF_PERMIT`.
//!
//! The 452/552 choice (G10): `452 4.2.2` makes the sending MTA retry, so a
//! user who frees space or buys more gets the mail later; `552 5.2.2` is
//! final (Postfix's own smtp client treats a 552 RCPT reply as permanent).
//! The default is the temporary one: a full mailbox is usually a passing
//! state, and a later bounce comes from the sender's MTA, not from us.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ramdir_core::Directory;
use ramdir_core::check::{Grace, UsageSource, Verdict, check_message, check_recipient};

use super::codec::{Action, PolicyRequest};

/// Most transactions remembered at once. Each smtpd process runs one SMTP
/// session at a time (`default_process_limit` 100 per service), so this is
/// far above any real load; past it new transactions are not remembered
/// and their END-OF-MESSAGE check answers `DUNNO` (LMTP still enforces).
pub const MAX_TRACKED: usize = 100_000;

/// Most recipients remembered per transaction, as Postfix's
/// `smtpd_recipient_limit` (1000).
pub const MAX_RCPTS: usize = 1000;

/// A transaction not seen for this long is forgotten. smtpd allows 300 s
/// between commands (`smtpd_timeout`), and DATA of a large message takes a
/// while; an hour covers any live transaction.
pub const INSTANCE_TTL: Duration = Duration::from_secs(3600);

/// How often expired transactions are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Service settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Dovecot's `quota_grace`, mirrored.
    pub grace: Grace,
    /// Reply for an over-quota recipient or message (`4NN …` / `5NN …`).
    pub over_quota: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace: Grace::default(),
            over_quota: DEFAULT_OVER_QUOTA.into(),
        }
    }
}

/// The default over-quota reply (temporary; see the module docs).
pub const DEFAULT_OVER_QUOTA: &str = "452 4.2.2 Mailbox full";

/// The reply for a recipient over quota by shared usage that is stale
/// (another host's usage, not heard from lately) when the configured
/// over-quota reply is permanent: usage that may be old only defers.
pub const STALE_OVER_QUOTA: &str = "452 4.2.2 Mailbox full (shared quota usage is out of date)";

/// Whether `s` is a usable over-quota reply: `4NN` or `5NN`, a space, an
/// RFC 3463 code of the same class, then text.
pub fn valid_reply(s: &str) -> bool {
    let mut parts = s.splitn(3, ' ');
    let (Some(code), Some(ext), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let class = code.as_bytes().first().copied();
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_digit())
        && matches!(class, Some(b'4' | b'5'))
        && ext.split('.').count() == 3
        && ext
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && ext.as_bytes().first().copied() == class
        && !text.trim().is_empty()
        && !s.chars().any(char::is_control)
}

/// A transaction's accepted recipients, one per line in one buffer: a
/// `String` per recipient and a new `Vec` per transaction were most of the
/// policy service's allocations (a recipient is one line of a request, so it
/// never holds a newline).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Recipients {
    lines: String,
    count: usize,
}

impl Recipients {
    fn clear(&mut self) {
        self.lines.clear();
        self.count = 0;
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.lines.split_terminator('\n')
    }

    /// Add `rcpt` unless it is there already or [`MAX_RCPTS`] are.
    fn add(&mut self, rcpt: &str) {
        if self.count < MAX_RCPTS && !self.iter().any(|r| r == rcpt) {
            self.lines.push_str(rcpt);
            self.lines.push('\n');
            self.count += 1;
        }
    }
}

#[derive(Debug)]
struct Tracked {
    rcpts: Recipients,
    touched: Instant,
}

/// Transactions handed over by connections that closed before their
/// END-OF-MESSAGE: Postfix may reconnect mid-transaction (max idle/TTL).
/// Shared by all connections, but used only at such a hand-over and when a
/// connection starts a transaction while some are held: a connection keeps
/// its own current transaction itself ([`Transactions`]).
#[derive(Debug, Default)]
pub struct Tracker {
    map: Mutex<HashMap<String, Tracked>>,
    /// The map's length, set under its lock; zero lets `take` skip the lock.
    held: AtomicUsize,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Run `f` on the map under its lock, then publish its length.
    fn with_map<R>(&self, f: impl FnOnce(&mut HashMap<String, Tracked>) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut map);
        self.held.store(map.len(), Ordering::Relaxed);
        r
    }

    /// Take over a transaction from a connection that closed before its
    /// END-OF-MESSAGE.
    fn adopt(&self, instance: String, tracked: Tracked) {
        self.with_map(|map| {
            if map.len() < MAX_TRACKED {
                map.insert(instance, tracked);
            }
        });
    }

    /// Forget transactions not seen for [`INSTANCE_TTL`] (run on a timer by
    /// the server).
    pub fn sweep(&self, now: Instant) {
        self.with_map(|map| map.retain(|_, t| now.duration_since(t.touched) < INSTANCE_TTL));
    }

    fn take(&self, instance: &str, now: Instant) -> Option<Tracked> {
        // Almost always nothing is held (connections keep their own
        // transaction): a read of a counter no request writes, not a lock.
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let t = self.with_map(|map| map.remove(instance))?;
        (now.duration_since(t.touched) < INSTANCE_TTL).then_some(t)
    }

    /// Transactions currently remembered (for stats and tests).
    pub fn len(&self) -> usize {
        self.with_map(|map| map.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection's transaction tracking. An smtpd process runs one SMTP
/// session at a time over its own policy connection, so a connection has
/// at most one live transaction: it is kept here, with no shared lock per
/// RCPT (the shared tracker's locks bounced between the CPUs on every
/// request in the policy benchmark). A RCPT of another `instance` means
/// the previous transaction ended (END-OF-MESSAGE came, or the client
/// aborted it) and replaces it. A transaction still open when the
/// connection closes goes to the shared [`Tracker`], where its
/// END-OF-MESSAGE on a new connection finds it.
#[derive(Debug)]
pub struct Transactions<S: Deref<Target = Tracker>> {
    /// The shared tracker: borrowed, or an `Arc` a connection owns.
    shared: S,
    /// Whether `instance` and `tracked` hold a live transaction; the
    /// buffers are kept when it ends, for the next one.
    live: bool,
    instance: String,
    tracked: Tracked,
}

impl<S: Deref<Target = Tracker>> Transactions<S> {
    /// A new connection's tracking, backed by the shared tracker.
    pub fn new(shared: S) -> Transactions<S> {
        Transactions {
            shared,
            live: false,
            instance: String::new(),
            tracked: Tracked {
                rcpts: Recipients::default(),
                touched: Instant::now(),
            },
        }
    }

    fn is_current(&self, instance: &str) -> bool {
        self.live && self.instance == instance
    }

    fn remember(&mut self, instance: &str, rcpt: &str, now: Instant) {
        if !self.is_current(instance) {
            match self.shared.take(instance, now) {
                // Continue a transaction handed over by a closed connection.
                Some(t) => self.tracked = t,
                None => self.tracked.rcpts.clear(),
            }
            self.instance.clear();
            self.instance.push_str(instance);
            self.live = true;
        }
        self.tracked.touched = now;
        self.tracked.rcpts.add(rcpt);
    }

    /// End the transaction `instance` and return its recipients (`None`
    /// when it is unknown or expired).
    fn take(&mut self, instance: &str, now: Instant) -> Option<Cow<'_, Recipients>> {
        if self.is_current(instance) {
            self.live = false;
            let t = &self.tracked;
            return (now.duration_since(t.touched) < INSTANCE_TTL)
                .then_some(Cow::Borrowed(&t.rcpts));
        }
        self.shared.take(instance, now).map(|t| Cow::Owned(t.rcpts))
    }

    /// Whether this connection and the shared tracker hold nothing.
    pub fn is_empty(&self) -> bool {
        !self.live && self.shared.is_empty()
    }
}

impl<S: Deref<Target = Tracker>> Drop for Transactions<S> {
    fn drop(&mut self) {
        if self.live && self.tracked.touched.elapsed() < INSTANCE_TTL {
            let tracked = Tracked {
                rcpts: std::mem::take(&mut self.tracked.rcpts),
                touched: self.tracked.touched,
            };
            self.shared
                .adopt(std::mem::take(&mut self.instance), tracked);
        }
    }
}

/// The one mapping from verdicts to policy actions.
pub fn to_action(verdict: &Verdict, settings: &Settings) -> Action {
    match verdict {
        Verdict::Accept | Verdict::NotOurs => Action::Dunno,
        Verdict::OverQuota { .. } => Action::Reply(settings.over_quota.clone()),
        // Never a permanent refusal on usage that may be old.
        Verdict::OverQuotaStale { .. } if settings.over_quota.starts_with('4') => {
            Action::Reply(settings.over_quota.clone())
        }
        Verdict::OverQuotaStale { .. } => Action::Reply(STALE_OVER_QUOTA.into()),
        Verdict::Trouble(e) => Action::DeferIfPermit(format!("quota check failed: {e}")),
    }
}

/// The attributes the decision reads, found in one pass over the request
/// (first occurrence wins, as [`PolicyRequest::get`]).
#[derive(Default)]
struct Attrs<'r> {
    protocol_state: Option<&'r str>,
    recipient: Option<&'r str>,
    recipient_count: Option<&'r str>,
    instance: Option<&'r str>,
    size: Option<&'r str>,
}

impl<'r> Attrs<'r> {
    fn of(req: &'r PolicyRequest<'_>) -> Attrs<'r> {
        let mut a = Attrs::default();
        let mut found = 0;
        for (n, v) in &req.attrs {
            // Length and first byte first: most of Postfix's 29 names are
            // told apart without comparing them (a string compare per name
            // showed in the benchmark's profile).
            let slot = match (n.len(), n.as_bytes().first().copied().unwrap_or(0)) {
                (14, b'p') if n == "protocol_state" => &mut a.protocol_state,
                (9, b'r') if n == "recipient" => &mut a.recipient,
                (15, b'r') if n == "recipient_count" => &mut a.recipient_count,
                (8, b'i') if n == "instance" => &mut a.instance,
                (4, b's') if n == "size" => &mut a.size,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(&**v);
                found += 1;
                if found == 5 {
                    break;
                }
            }
        }
        a
    }
}

/// Decide one request.
pub fn decide(
    req: &PolicyRequest<'_>,
    dir: &Directory,
    usage: &dyn UsageSource,
    tracker: &mut Transactions<impl Deref<Target = Tracker>>,
    settings: &Settings,
    now: Instant,
) -> Action {
    let a = Attrs::of(req);
    let size: u64 = a.size.and_then(|s| s.parse().ok()).unwrap_or(0);
    let instance = a.instance.unwrap_or("");
    match a.protocol_state.unwrap_or("") {
        "RCPT" => {
            let Some(rcpt) = a.recipient.filter(|r| !r.is_empty()) else {
                return Action::Dunno;
            };
            let verdict = check_recipient(dir, usage, settings.grace, rcpt, size);
            if matches!(verdict, Verdict::Accept | Verdict::NotOurs) && !instance.is_empty() {
                tracker.remember(instance, rcpt, now);
            }
            tracing::debug!(%rcpt, size, %verdict, "policy RCPT");
            to_action(&verdict, settings)
        }
        "END-OF-MESSAGE" => {
            let tracked = if instance.is_empty() {
                None
            } else {
                tracker.take(instance, now)
            };
            let rcpts: Vec<&str> = match &tracked {
                Some(r) if r.count > 0 => r.iter().collect(),
                _ => match a.recipient.filter(|r| !r.is_empty()) {
                    Some(r) => vec![r],
                    // Recipients we never saw: not ours to refuse.
                    None => return Action::Dunno,
                },
            };
            let count: usize = a.recipient_count.and_then(|c| c.parse().ok()).unwrap_or(0);
            if count > rcpts.len() {
                // Postfix accepted recipients we did not see at RCPT (the
                // service is not in smtpd_recipient_restrictions?): we
                // cannot know that all of them are full.
                return Action::Dunno;
            }
            let verdict = check_message(dir, usage, settings.grace, &rcpts, size);
            tracing::debug!(rcpts = rcpts.len(), size, %verdict, "policy END-OF-MESSAGE");
            to_action(&verdict, settings)
        }
        _ => Action::Dunno,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramdir_core::UserSpec;
    use ramdir_core::check::Usage;
    use ramdir_core::quota::QuotaLimit;
    use ramdir_core::usage::StoreError;

    struct Fixed;
    impl UsageSource for Fixed {
        fn usage(&self, login: &str) -> Result<Usage, StoreError> {
            let storage = match login {
                "full@x.org" => 1000,
                "near@x.org" => 900,
                "broken@x.org" => return Err(StoreError::Db("gone".into())),
                _ => 0,
            };
            Ok(Usage {
                storage: Some(storage),
                messages: None,
            })
        }
    }

    fn dir() -> Directory {
        let mut d = Directory::new(ramdir_core::Settings::default());
        for u in ["full@x.org", "near@x.org", "free@x.org", "broken@x.org"] {
            d.insert_user(&UserSpec {
                login: u.into(),
                quota: Some(QuotaLimit {
                    storage: Some(1000),
                    messages: None,
                }),
                ..Default::default()
            });
        }
        d.set_alias("alias@x.org", vec!["full@x.org".into()]);
        d
    }

    fn req(
        state: &str,
        instance: &str,
        rcpt: &str,
        size: u64,
        count: usize,
    ) -> PolicyRequest<'static> {
        let mut attrs = vec![
            ("request".into(), "smtpd_access_policy".into()),
            ("protocol_state".into(), state.to_string().into()),
            ("recipient".into(), rcpt.to_string().into()),
            ("instance".into(), instance.to_string().into()),
            ("size".into(), size.to_string().into()),
        ];
        if count > 0 {
            attrs.push(("recipient_count".into(), count.to_string().into()));
        }
        PolicyRequest { attrs }
    }

    const FULL: &str = "452 4.2.2 Mailbox full";

    #[test]
    fn rcpt_decisions() {
        let (d, shared, s, now) = (dir(), Tracker::new(), Settings::default(), Instant::now());
        let mut t = Transactions::new(&shared);
        let cases = [
            ("free@x.org", 0, Action::Dunno),
            ("free@x.org", 1100, Action::Dunno),
            ("free@x.org", 1101, Action::Reply(FULL.into())),
            ("near@x.org", 200, Action::Dunno),
            ("near@x.org", 201, Action::Reply(FULL.into())),
            ("full@x.org", 0, Action::Reply(FULL.into())),
            ("alias@x.org", 5000, Action::Reply(FULL.into())),
            ("Full+tag@X.ORG", 1, Action::Reply(FULL.into())),
            ("nobody@x.org", 1, Action::Dunno),
            ("a@remote.test", 1, Action::Dunno),
            ("", 1, Action::Dunno),
            (
                "broken@x.org",
                1,
                Action::DeferIfPermit("quota check failed: quota store: gone".into()),
            ),
        ];
        for (rcpt, size, want) in cases {
            assert_eq!(
                decide(
                    &req("RCPT", "i1", rcpt, size, 0),
                    &d,
                    &Fixed,
                    &mut t,
                    &s,
                    now
                ),
                want,
                "{rcpt} {size}"
            );
        }
        for state in ["CONNECT", "MAIL", "DATA", "VRFY", ""] {
            assert_eq!(
                decide(
                    &req(state, "i2", "full@x.org", 1, 0),
                    &d,
                    &Fixed,
                    &mut t,
                    &s,
                    now
                ),
                Action::Dunno
            );
        }
    }

    #[test]
    fn end_of_message_uses_the_remembered_recipients() {
        let (d, shared, s, now) = (dir(), Tracker::new(), Settings::default(), Instant::now());
        let mut t = Transactions::new(&shared);
        // Two recipients accepted at RCPT without SIZE; 150 bytes at EOM:
        // near has 100 left + 100 grace, free has plenty → accept.
        for r in ["near@x.org", "free@x.org"] {
            assert_eq!(
                decide(&req("RCPT", "m1", r, 0, 0), &d, &Fixed, &mut t, &s, now),
                Action::Dunno
            );
        }
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "m1", "", 150, 2),
                &d,
                &Fixed,
                &mut t,
                &s,
                now
            ),
            Action::Dunno
        );
        assert!(t.is_empty(), "transaction forgotten after EOM");

        // Only near: 201 bytes at EOM → refused, with no bounce.
        decide(
            &req("RCPT", "m2", "near@x.org", 0, 0),
            &d,
            &Fixed,
            &mut t,
            &s,
            now,
        );
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "m2", "near@x.org", 201, 1),
                &d,
                &Fixed,
                &mut t,
                &s,
                now
            ),
            Action::Reply(FULL.into())
        );
        // near (100 left) and an empty near2 (1000 + 100 grace): 5000 bytes
        // fit neither → refused; 1000 bytes fit near2 → accepted.
        let mut d2 = dir();
        d2.insert_user(&UserSpec {
            login: "near2@x.org".into(),
            quota: Some(QuotaLimit {
                storage: Some(1000),
                messages: None,
            }),
            ..Default::default()
        });
        for (inst, size, want) in [
            ("m3", 5000, Action::Reply(FULL.into())),
            ("m4", 1000, Action::Dunno),
        ] {
            decide(
                &req("RCPT", inst, "near@x.org", 0, 0),
                &d2,
                &Fixed,
                &mut t,
                &s,
                now,
            );
            decide(
                &req("RCPT", inst, "near2@x.org", 0, 0),
                &d2,
                &Fixed,
                &mut t,
                &s,
                now,
            );
            assert_eq!(
                decide(
                    &req("END-OF-MESSAGE", inst, "", size, 2),
                    &d2,
                    &Fixed,
                    &mut t,
                    &s,
                    now
                ),
                want
            );
        }
    }

    #[test]
    fn a_transaction_survives_a_reconnect() {
        let (d, shared, s, now) = (dir(), Tracker::new(), Settings::default(), Instant::now());
        {
            let mut a = Transactions::new(&shared);
            for r in ["near@x.org", "free@x.org"] {
                decide(&req("RCPT", "r1", r, 0, 0), &d, &Fixed, &mut a, &s, now);
            }
            // A transaction the client gave up: replaced by the next one.
            decide(
                &req("RCPT", "r0", "near@x.org", 0, 0),
                &d,
                &Fixed,
                &mut a,
                &s,
                now,
            );
            decide(
                &req("RCPT", "r1", "near@x.org", 0, 0),
                &d,
                &Fixed,
                &mut a,
                &s,
                now,
            );
            assert_eq!(shared.len(), 0, "nothing shared while connected");
        }
        assert_eq!(shared.len(), 1, "handed over when the connection closed");
        // The new connection continues r1 and ends it: near alone would be
        // refused 5000 bytes, but free was remembered too.
        let mut b = Transactions::new(&shared);
        decide(
            &req("RCPT", "r1", "near@x.org", 0, 0),
            &d,
            &Fixed,
            &mut b,
            &s,
            now,
        );
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "r1", "", 5000, 2),
                &d,
                &Fixed,
                &mut b,
                &s,
                now
            ),
            Action::Dunno
        );
        assert!(b.is_empty());
        // Without free: the same size is refused at EOM.
        decide(
            &req("RCPT", "r2", "near@x.org", 0, 0),
            &d,
            &Fixed,
            &mut b,
            &s,
            now,
        );
        drop(b);
        let mut c = Transactions::new(&shared);
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "r2", "", 5000, 1),
                &d,
                &Fixed,
                &mut c,
                &s,
                now
            ),
            Action::Reply(FULL.into())
        );
        assert!(c.is_empty());
        assert_eq!(shared.held.load(Ordering::Relaxed), 0, "the count follows");
    }

    #[test]
    fn end_of_message_without_knowledge_is_dunno() {
        let (d, shared, s, now) = (dir(), Tracker::new(), Settings::default(), Instant::now());
        let mut t = Transactions::new(&shared);
        // Never seen, several recipients: cannot know.
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "zz", "", 1 << 30, 3),
                &d,
                &Fixed,
                &mut t,
                &s,
                now
            ),
            Action::Dunno
        );
        // Never seen but a single recipient is named: decide on it.
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "zz", "full@x.org", 10, 1),
                &d,
                &Fixed,
                &mut t,
                &s,
                now
            ),
            Action::Reply(FULL.into())
        );
        // Saw one of two accepted recipients: cannot know the other.
        decide(
            &req("RCPT", "y", "full@x.org", 0, 0),
            &d,
            &Fixed,
            &mut t,
            &s,
            now,
        );
        assert_eq!(
            decide(
                &req("END-OF-MESSAGE", "y", "", 10, 2),
                &d,
                &Fixed,
                &mut t,
                &s,
                now
            ),
            Action::Dunno
        );
    }

    #[test]
    fn tracker_expires_and_is_bounded() {
        let t = Tracker::new();
        let start = Instant::now();
        let hand_over = |instance: &str, at: Instant| {
            let mut rcpts = Recipients::default();
            rcpts.add("r@x.org");
            let tracked = Tracked { rcpts, touched: at };
            t.adopt(instance.into(), tracked);
        };
        hand_over("a", start);
        assert!(
            t.take("a", start + INSTANCE_TTL).is_none(),
            "expired at EOM"
        );
        hand_over("b", start);
        hand_over("c", start + INSTANCE_TTL + SWEEP_EVERY);
        t.sweep(start + INSTANCE_TTL + SWEEP_EVERY);
        assert_eq!(t.len(), 1, "b swept");
        t.sweep(start + 3 * INSTANCE_TTL);
        assert!(t.is_empty(), "the timer sweep forgets c");
        assert_eq!(t.held.load(Ordering::Relaxed), 0, "the count follows");
        // A connection remembers at most MAX_RCPTS recipients.
        let mut c = Transactions::new(&t);
        for i in 0..MAX_RCPTS + 10 {
            c.remember("d", &format!("r{i}@x.org"), start);
        }
        let kept = c.take("d", start).unwrap();
        assert_eq!(kept.count, MAX_RCPTS);
        assert_eq!(kept.iter().count(), MAX_RCPTS);
        assert_eq!(kept.iter().next(), Some("r0@x.org"));
    }

    #[test]
    fn reply_validation() {
        for ok in [
            "452 4.2.2 Mailbox full",
            "552 5.2.2 Mailbox is full",
            "450 4.2.2 Try later",
        ] {
            assert!(valid_reply(ok), "{ok}");
        }
        for bad in [
            "OK",
            "DUNNO",
            "452 Mailbox full",
            "452 5.2.2 mixed classes",
            "252 2.0.0 no",
            "45 4.2.2 x",
            "452 4.2.2 ",
            "452 4.2.2 a\nb",
        ] {
            assert!(!valid_reply(bad), "{bad}");
        }
    }

    #[test]
    fn stale_over_quota_never_refuses_permanently() {
        let v = Verdict::OverQuotaStale {
            mailboxes: vec!["a@x.org".into()],
        };
        let permanent = Settings {
            over_quota: "552 5.2.2 Mailbox full".into(),
            ..Settings::default()
        };
        assert_eq!(
            to_action(&v, &permanent),
            Action::Reply(STALE_OVER_QUOTA.into())
        );
        assert!(valid_reply(STALE_OVER_QUOTA) && STALE_OVER_QUOTA.starts_with('4'));
        let temporary = Settings::default();
        assert_eq!(
            to_action(&v, &temporary),
            Action::Reply(temporary.over_quota.clone())
        );
    }
}

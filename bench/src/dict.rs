//! The Dovecot dict proxy protocol for the load tool, with the project's
//! codec (`ramdir_dovecot::codec`):
//!
//! - [`DictAnswer`]: the `dict-ceiling` server's protocol. Commands are
//!   parsed in place with `Command::parse_bytes`, as ramdir's server does; every `L` gets one constant `O<json>`
//!   reply encoded with `Reply::encode` (by default a userdb answer of the
//!   size ramdir gives for a generated user), `H` and the transaction
//!   commands get nothing, as in the protocol.
//! - [`DictTarget`]: the `dict` load client. Each connection sends `H` once
//!   (as Dovecot's client does with `idle_msecs`), then one `L` at a time,
//!   pre-encoded with `Command::encode`.
//! - [`fill_quota`]: `quota-fill`, which writes usage counters for a set of
//!   users through the quota dict (`B`, `S`, `S`, `C` per user), so that
//!   SMTP-time checks find usage as they would on a live system.
//!
//! The codec has no reply decoder (a server never reads replies), so the
//! client reads reply lines with [`take_reply`]: a line up to LF, classified
//! by its first byte (`O`/`M` found, `N` not found, `F` failed).

use std::path::PathBuf;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use ramdir_dovecot::codec::{self, Command, CommitResult, Reply};

use crate::ceiling::Answer;
use crate::client::{Kind, Outcome, Stream, Target, connect_hello, read_reply};
use crate::keys::{KeyPattern, KeySet, XorShift};

/// Default key pattern of the `dict` client: userdb lookups of the users
/// `gen-passwd` writes.
pub const DEFAULT_DICT_PATTERN: &str = "shared/userdb/user%07d@domain%d.test";

/// The ceiling's default value: what ramdir answers for
/// `shared/userdb/user0000003@domain3.test` of a `gen-passwd` directory
/// (187 bytes).
pub const DEFAULT_DICT_REPLY: &str = concat!(
    "{\"uid\":5000,\"gid\":5000,\"home\":\"/var/vmail/domain3.test/user0000003\",",
    "\"quota_rule\":\"*:storage=524288000B\",\"quota_rule2\":\"Trash:storage=+524288000B\",",
    "\"quota_rule3\":\"Junk:storage=+524288000B\"}"
);

/// Longest reply line the client accepts before it gives up on the server.
const MAX_REPLY: usize = 1 << 20;

/// The dict ceiling's protocol: a constant value for every lookup.
#[derive(Debug, Clone)]
pub struct DictAnswer(pub Reply);

impl DictAnswer {
    /// Answer every lookup with `value`: as JSON, sent without an escape
    /// pass as ramdir sends its userdb answers, unless it holds a byte the
    /// dict must escape.
    pub fn new(value: String) -> DictAnswer {
        let plain = !value
            .bytes()
            .any(|b| matches!(b, 0 | 1 | b'\t' | b'\r' | b'\n'));
        DictAnswer(if plain {
            Reply::Json(value)
        } else {
            Reply::Value(value)
        })
    }
}

impl Answer for DictAnswer {
    // As ramdir's dict server (`dovecot-auth/src/server.rs`).
    const READ_BUF: usize = 1024;
    const WRITE_BUF: usize = 1024;

    fn step(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ()> {
        // Parsed in place, as ramdir's server does.
        let n = match codec::frame(buf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            Err(_) => return Err(()),
        };
        match Command::parse_bytes(&buf[..n]) {
            Ok(Command::Lookup { key, user }) => {
                std::hint::black_box((&key, &user));
                self.0.encode(out);
            }
            // Answered as a real server would, though the load never
            // sends them: a commit succeeds, an iteration is empty.
            Ok(Command::Commit { id, async_reply }) => Reply::Commit {
                id,
                async_reply,
                result: CommitResult::Ok,
            }
            .encode(out),
            Ok(Command::Iterate { .. }) => Reply::IterEnd.encode(out),
            // Hello and transaction commands get no reply.
            Ok(_) => {}
            Err(_) => return Err(()),
        }
        buf.advance(n + 1);
        Ok(true)
    }
}

/// A reply line's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    /// How it counts.
    pub outcome: Outcome,
    /// The line without its LF, as sent (still escaped).
    pub line: Vec<u8>,
}

/// Take one reply line off the front of `buf`; `Ok(None)`: need more.
/// `O…`/`M…` count as found, `N` as not found, `F…` as failed, anything
/// else (an empty line, async `*`/`+` forms ramdir never sends) as other.
pub fn take_reply(buf: &mut BytesMut) -> Result<Option<ReplyLine>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_REPLY {
            return Err(format!("reply line longer than {MAX_REPLY} bytes"));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl).to_vec();
    buf.advance(1);
    let outcome = match line.first() {
        Some(b'O' | b'M') => Outcome::Ok,
        Some(b'N') => Outcome::NotFound,
        Some(b'F') => Outcome::Temp,
        _ => Outcome::Other,
    };
    Ok(Some(ReplyLine { outcome, line }))
}

/// The username Dovecot sends with a key: what follows the last `/`
/// (`shared/userdb/a@x.org` → `a@x.org`).
pub fn user_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The `H` line of a dict client for dict `dict`, as Dovecot 2.3 sends it
/// (major 3, minor 2, value type 0, empty user).
pub fn hello(dict: &str) -> BytesMut {
    let mut b = BytesMut::new();
    Command::Hello {
        major: 3,
        minor: 2,
        value_type: 0,
        user: String::new().into(),
        dict: dict.to_string().into(),
    }
    .encode(&mut b);
    b
}

/// The `L` line for `key` (with its user).
pub fn lookup_line(key: &str, out: &mut BytesMut) {
    Command::Lookup {
        key: key.to_string().into(),
        user: user_of(key).to_string().into(),
    }
    .encode(out);
}

/// The `dict` load: `L` lookups of pre-encoded keys after one `H`.
pub struct DictTarget {
    /// The server's socket.
    pub socket: PathBuf,
    /// Dict name sent in `H`.
    pub dict: String,
    /// Pre-encoded `H` line.
    pub hello: BytesMut,
    /// Pre-encoded `L` lines.
    pub keys: KeySet,
}

impl DictTarget {
    /// Lookups of items `0..count` of `pattern` in dict `dict`.
    pub fn new(
        socket: PathBuf,
        dict: &str,
        pattern: &KeyPattern,
        domains: u64,
        count: u64,
    ) -> DictTarget {
        DictTarget {
            socket,
            dict: dict.to_string(),
            hello: hello(dict),
            keys: KeySet::build(pattern, domains, count, 80, lookup_line),
        }
    }
}

impl Target for DictTarget {
    type Conn = (Stream, BytesMut);

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn kind(&self) -> Kind {
        Kind {
            map: self.dict.clone(),
            what: format!("dict {}", self.dict),
            labels: ["O (found)", "N (not found)", "F (failed)", "other"],
        }
    }

    async fn connect(&self, _id: usize) -> Result<Self::Conn, String> {
        connect_hello(&self.socket, &self.hello).await
    }

    async fn call(&self, conn: &mut Self::Conn, i: usize) -> Result<Outcome, String> {
        let (stream, buf) = conn;
        stream
            .write_all(self.keys.request(i))
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(stream, buf, |b| Ok(take_reply(b)?.map(|r| r.outcome))).await
    }
}

/// What `quota-fill` writes.
#[derive(Debug, Clone)]
pub struct FillOptions {
    /// The quota dict's socket.
    pub socket: PathBuf,
    /// Dict name (ramdir's `[dict] quota_dict`).
    pub dict: String,
    /// Users: items `0..count` of `pattern` over `domains`.
    pub pattern: KeyPattern,
    /// Domains of the pattern.
    pub domains: u64,
    /// Number of users.
    pub count: u64,
    /// Usage is uniform in `0..=max_bytes` (seeded).
    pub max_bytes: u64,
    /// Concurrent connections (each commit waits for the store's fsync;
    /// concurrent commits share one).
    pub connections: usize,
    /// Seed.
    pub seed: u64,
}

/// The counters of user `i`: (storage bytes, messages). Deterministic in
/// `seed`, so a bench can tell which users it made full.
pub fn usage_of(seed: u64, i: u64, max_bytes: u64) -> (u64, u64) {
    let mut r = XorShift::new(seed, i);
    let bytes = r.below(max_bytes.saturating_add(1));
    // About 50 KB per message.
    (bytes, bytes / 50_000)
}

/// The lines of one user's transaction: `B`, `S` storage, `S` messages, `C`.
fn fill_lines(id: u32, user: &str, bytes: u64, messages: u64, out: &mut BytesMut) {
    let user = user.to_string();
    Command::Begin {
        id,
        user: user.clone().into(),
        expire_secs: None,
    }
    .encode(out);
    Command::Set {
        id,
        key: "priv/quota/storage".into(),
        value: bytes.to_string().into(),
    }
    .encode(out);
    Command::Set {
        id,
        key: "priv/quota/messages".into(),
        value: messages.to_string().into(),
    }
    .encode(out);
    Command::Commit {
        id,
        async_reply: false,
    }
    .encode(out);
}

/// `quota-fill`: set every user's usage counters; prints what it did.
pub fn fill_quota(o: &FillOptions) -> Result<(), String> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let conns = o.connections.max(1);
    let failed = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let mut tasks = Vec::new();
                for c in 0..conns {
                    let o = o.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        fill_connection(&o, c, conns).await
                    }));
                }
                let mut failed = 0u64;
                for t in tasks {
                    failed += t.await.map_err(|e| e.to_string())??;
                }
                Ok::<u64, String>(failed)
            })
            .await
    })?;
    println!(
        "set usage of {} users through dict {} in {:.2} s ({} commits not answered O)",
        o.count,
        o.dict,
        started.elapsed().as_secs_f64(),
        failed
    );
    if failed > 0 {
        return Err(format!("{failed} commits failed"));
    }
    Ok(())
}

/// One connection's share (users `c`, `c + n`, …), one transaction at a
/// time; returns the commits not answered `O`.
async fn fill_connection(o: &FillOptions, c: usize, n: usize) -> Result<u64, String> {
    let (mut s, mut buf) = connect_hello(&o.socket, &hello(&o.dict)).await?;
    let mut out = BytesMut::with_capacity(512);
    let mut failed = 0;
    let mut id = 0u32;
    for i in (c as u64..o.count).step_by(n) {
        id += 1;
        let user = o.pattern.render_string(i, o.domains);
        let (bytes, messages) = usage_of(o.seed, i, o.max_bytes);
        out.clear();
        fill_lines(id, &user, bytes, messages, &mut out);
        s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
        let r = read_reply(&mut s, &mut buf, take_reply).await?;
        if r.outcome != Outcome::Ok {
            failed += 1;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_are_classified_and_split() {
        let mut b = BytesMut::from(&b"O{\"uid\":5000}\nN\nFstore down\nMa\tb\n\nOpart"[..]);
        let mut got = Vec::new();
        while let Some(r) = take_reply(&mut b).unwrap() {
            got.push(r.outcome);
        }
        assert_eq!(
            got,
            [
                Outcome::Ok,
                Outcome::NotFound,
                Outcome::Temp,
                Outcome::Ok,
                Outcome::Other
            ]
        );
        assert_eq!(&b[..], b"Opart");
        let mut huge = BytesMut::from(&vec![b'O'; MAX_REPLY + 1][..]);
        assert!(take_reply(&mut huge).is_err());
    }

    #[test]
    fn requests_are_what_dovecot_sends_and_the_ceiling_answers() {
        assert_eq!(&hello("auth")[..], b"H3\t2\t0\t\tauth\n");
        let p = KeyPattern::parse(DEFAULT_DICT_PATTERN).unwrap();
        let t = DictTarget::new(PathBuf::from("/x"), "auth", &p, 100, 5);
        assert_eq!(
            t.keys.request(3),
            b"Lshared/userdb/user0000003@domain3.test\tuser0000003@domain3.test\n"
        );
        // The ceiling reads them with the codec: nothing for H, the
        // constant value for L.
        let mut answer = DictAnswer::new(DEFAULT_DICT_REPLY.into());
        let mut buf = hello("auth");
        buf.extend_from_slice(t.keys.request(3));
        let mut out = BytesMut::new();
        assert_eq!(answer.step(&mut buf, &mut out), Ok(true));
        assert!(out.is_empty());
        assert_eq!(answer.step(&mut buf, &mut out), Ok(true));
        assert_eq!(out.len(), 1 + DEFAULT_DICT_REPLY.len() + 1);
        assert_eq!(take_reply(&mut out).unwrap().unwrap().outcome, Outcome::Ok);
        assert_eq!(answer.step(&mut buf, &mut out), Ok(false));
        let mut bad = BytesMut::from(&b"Q\n"[..]);
        assert_eq!(answer.step(&mut bad, &mut out), Err(()));
    }

    #[test]
    fn fill_transactions_decode_and_usage_is_deterministic() {
        let mut out = BytesMut::new();
        fill_lines(7, "a@x.test", 1234, 5, &mut out);
        let mut cmds = Vec::new();
        while let Some(c) = Command::decode(&mut out).unwrap() {
            cmds.push(c);
        }
        assert_eq!(cmds.len(), 4);
        assert_eq!(
            cmds[1],
            Command::Set {
                id: 7,
                key: "priv/quota/storage".into(),
                value: "1234".into()
            }
        );
        assert_eq!(usage_of(1, 42, 1000), usage_of(1, 42, 1000));
        assert!(usage_of(1, 42, 1000).0 <= 1000);
        assert_eq!(usage_of(1, 42, 0), (0, 0));
        assert_eq!(user_of("shared/userdb/a@x.org"), "a@x.org");
        assert_eq!(user_of("plain"), "plain");
    }
}

//! The full load's paged search over a connection of its own, read in place.
//!
//! Why: ldap3 decodes every message into a tree of small heap allocations
//! and then clones the tree (ldap3 0.12 `protocol.rs`, `decode_inner`);
//! at a million entries that costs ramdir as much CPU as slapd spends
//! serving them. Here the bytes of a page of entries are kept as they were
//! read, and the full load's builder reads each entry out of them in place
//! ([`crate::mapping::Resolved::view_ber`]).
//!
//! Only plain transports are read this way, `ldapi://` and `ldap://`
//! without StartTLS (a replica next to ramdir, the usual setup for a large
//! directory); with TLS, [`connect`] says `None` and the full load goes
//! through ldap3. The sync, the fallback and the `contextCSN` read always
//! use ldap3.
//!
//! The protocol spoken is the little a paged search needs (RFC 4511 bind
//! and search, RFC 2696 paging): requests are encoded with ldap3's ASN.1
//! types, responses read with [`crate::ber`].

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use ldap3::asn1::{
    ASNTag, Boolean, Enumerated, Integer, OctetString, Sequence, Tag, TagClass, write,
};
use ldap3::controls::{PagedResults, RawControl};
use tokio::sync::mpsc;

use crate::ber::{self, Elements};
use crate::conn::{LdapError, read_password, scope};
use crate::settings::{Bind, Settings};

/// Largest LDAP message accepted: bounds the buffer a broken server can
/// make ramdir allocate. An entry with the mapped attributes is a few
/// hundred bytes; 64 MiB leaves room for one with a hundred thousand
/// addresses.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Room made in the read buffer before each read: a few hundred entries,
/// so a page takes a few reads, not thousands.
const READ_CHUNK: usize = 256 << 10;
/// A read that brought less than this means ramdir reads as fast as the
/// server writes; then it waits [`PACE`] before reading again.
const PACE_BYTES: usize = 64 << 10;
/// How long to let the server write before the next read when keeping up.
/// Reading each entry as soon as it is written costs ramdir a wake-up and a
/// read per entry, and slapd a wake-up of the reader per entry written:
/// together about as much CPU as the rest of the load. 200 µs is some 50
/// entries at slapd's pace, and the most a page's end can wait to be read.
const PACE: Duration = Duration::from_micros(200);
/// How often a read waiting for the server checks whether the load was
/// stopped (the search itself has no time limit, as with ldap3).
const STOP_POLL: Duration = Duration::from_secs(1);
/// Entries received before they are handed over as one [`Page`]: about
/// one LDAP page's worth, so the hand-over costs little per entry.
const PAGE_ENTRIES: usize = 1000;
/// OID of the paged results control (RFC 2696).
const PAGED_RESULTS_OID: &[u8] = b"1.2.840.113556.1.4.319";

/// Identifier bytes (RFC 4511 4.2-4.5).
const MESSAGE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const ENUMERATED: u8 = 0x0a;
const BIND_RESPONSE: u8 = 0x61;
const SEARCH_RESULT_ENTRY: u8 = 0x64;
const SEARCH_RESULT_DONE: u8 = 0x65;
const SEARCH_RESULT_REFERENCE: u8 = 0x73;
const CONTROLS: u8 = 0xa0;

/// Received entries: the bytes they arrived in, and where each
/// `SearchResultEntry` element is in them.
#[derive(Debug, Default)]
pub struct Page {
    /// Bytes as read from the connection.
    pub bytes: Vec<u8>,
    /// Each entry's element, in the order received.
    pub entries: Vec<Range<usize>>,
}

impl Page {
    /// The entries' elements, in order.
    pub fn entries(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|r| &self.bytes[r.clone()])
    }
}

/// The connection, read and written with blocking calls: the search runs
/// on a thread of its own.
#[derive(Debug)]
enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => s.set_write_timeout(Some(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bound connection for one paged search.
#[derive(Debug)]
pub struct Conn {
    io: Stream,
    /// What has been read and not yet handed over: `buf[..end]`.
    buf: Vec<u8>,
    end: usize,
    /// Start of the first message in `buf` not yet taken.
    pos: usize,
    last_id: u32,
}

/// Why a read brought nothing.
enum Fill {
    /// Nothing yet (the read timed out): try again.
    Again,
    /// The connection failed or was closed.
    Failed(LdapError),
}

/// One message taken from the buffer.
struct Message {
    id: u64,
    /// The protocolOp's identifier byte.
    op: u8,
    /// The protocolOp element, in `Conn::buf`.
    op_range: Range<usize>,
    /// The contents of the controls, in `Conn::buf`.
    controls: Option<Range<usize>>,
}

fn malformed(_: ber::Malformed) -> LdapError {
    LdapError::Protocol("malformed LDAP message".into())
}

fn io(e: std::io::Error) -> LdapError {
    LdapError::Ldap(e.into())
}

/// Connect to `url` and bind as `s` says, if the URL is a plain transport
/// (`ldapi://`, `ldap://` without StartTLS); `None` otherwise.
pub async fn connect(s: &Settings, url: &str) -> Result<Option<Conn>, LdapError> {
    // A URL ldap3 rejects is reported by ldap3.
    let Ok(url) = url::Url::parse(url) else {
        return Ok(None);
    };
    let stream = match url.scheme() {
        "ldapi" => {
            // As ldap3 does: the host is the percent-encoded socket path.
            let path = url.host_str().unwrap_or("");
            if path.is_empty() || path.contains(':') {
                return Ok(None);
            }
            let path = percent_encoding::percent_decode_str(path)
                .decode_utf8_lossy()
                .into_owned();
            let s = timed(s.timeout, tokio::net::UnixStream::connect(path)).await?;
            Stream::Unix(s.into_std().map_err(io)?)
        }
        "ldap" if !s.starttls => {
            let host = match url.host_str() {
                None | Some("") => "localhost",
                Some(h) => h,
            };
            let addr = format!("{host}:{}", url.port().unwrap_or(389));
            let s = timed(s.timeout, tokio::net::TcpStream::connect(addr)).await?;
            s.set_nodelay(true).map_err(io)?;
            Stream::Tcp(s.into_std().map_err(io)?)
        }
        _ => return Ok(None),
    };
    let mut conn = Conn {
        io: stream,
        buf: Vec::new(),
        end: 0,
        pos: 0,
        last_id: 0,
    };
    let (bind, limit) = (s.bind.clone(), s.timeout);
    let bound = tokio::task::spawn_blocking(move || {
        conn.setup(limit)?;
        conn.bind(&bind)?;
        conn.io.set_read_timeout(STOP_POLL).map_err(io)?;
        Ok(conn)
    })
    .await;
    match bound {
        Ok(r) => r.map(Some),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Connecting, with the connect timeout.
async fn timed<T>(
    limit: Duration,
    connecting: impl Future<Output = std::io::Result<T>>,
) -> Result<T, LdapError> {
    tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| LdapError::Timeout("connect"))?
        .map_err(io)
}

impl Conn {
    /// Blocking reads and writes, each limited to `limit` (bind); the
    /// search's reads are then only limited to [`STOP_POLL`].
    fn setup(&mut self, limit: Duration) -> Result<(), LdapError> {
        let blocking = match &self.io {
            Stream::Unix(s) => s.set_nonblocking(false),
            Stream::Tcp(s) => s.set_nonblocking(false),
        };
        blocking.map_err(io)?;
        self.io.set_read_timeout(limit).map_err(io)?;
        self.io.set_write_timeout(limit).map_err(io)
    }

    fn bind(&mut self, bind: &Bind) -> Result<(), LdapError> {
        let auth = match bind {
            Bind::Anonymous => return Ok(()),
            Bind::Simple { dn, password_file } => {
                let pw = read_password(password_file)?;
                vec![
                    Tag::OctetString(OctetString {
                        inner: dn.as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    Tag::OctetString(OctetString {
                        id: 0,
                        class: TagClass::Context,
                        inner: pw.into_bytes(),
                    }),
                ]
            }
            // As ldap3's `sasl_external_bind`: an empty authzId.
            Bind::SaslExternal => vec![
                Tag::OctetString(OctetString::default()),
                Tag::Sequence(Sequence {
                    id: 3,
                    class: TagClass::Context,
                    inner: vec![
                        Tag::OctetString(OctetString {
                            inner: b"EXTERNAL".to_vec(),
                            ..Default::default()
                        }),
                        Tag::OctetString(OctetString::default()),
                    ],
                }),
            ],
        };
        let mut inner = vec![Tag::Integer(Integer {
            inner: 3,
            ..Default::default()
        })];
        inner.extend(auth);
        let req = Tag::Sequence(Sequence {
            id: 0,
            class: TagClass::Application,
            inner,
        });
        let id = self.send(req, None)?;
        let m = loop {
            match self.message()? {
                Some(m) => break m,
                None => match self.fill() {
                    Err(Fill::Again) => return Err(LdapError::Timeout("bind")),
                    Err(Fill::Failed(e)) => return Err(e),
                    Ok(_) => {}
                },
            }
        };
        if m.id != id || m.op != BIND_RESPONSE {
            return Err(LdapError::Protocol("unexpected answer to bind".into()));
        }
        let (rc, text) = self.result(&m)?;
        self.discard();
        LdapError::ensure_success("bind", rc, text)
    }

    /// Search with paged results as the full load does, handing the
    /// entries over in order, a [`Page`] at a time; `progress` is told the
    /// count after each entry. Returns how many entries there were. Blocks;
    /// stops early, without an error, if `tx` is closed, and with one once
    /// `stop` is set.
    pub fn paged_search<B: From<Page>>(
        mut self,
        s: &Settings,
        tx: &mpsc::Sender<B>,
        stop: &AtomicBool,
        progress: impl Fn(u64),
    ) -> Result<u64, LdapError> {
        let filter = ldap3::parse_filter(&s.filter)
            .map_err(|()| LdapError::Ldap(ldap3::LdapError::FilterParsing))?;
        let attrs = s.mapping.attributes();
        let mut cookie = Vec::new();
        let mut entries = Vec::new();
        let mut n = 0u64;
        loop {
            let req = search_request(s, filter.clone(), &attrs);
            let control = RawControl::from(PagedResults {
                size: s.page_size,
                cookie: std::mem::take(&mut cookie),
            });
            let id = self.send(req, Some(vec![control]))?;
            let done = loop {
                let Some(m) = self.message()? else {
                    if entries.len() >= PAGE_ENTRIES && !self.hand_over(&mut entries, tx) {
                        return Ok(n);
                    }
                    if entries.is_empty() {
                        self.discard();
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Err(LdapError::Timeout("full load (stopped)"));
                    }
                    match self.fill() {
                        Ok(got) if got < PACE_BYTES => std::thread::sleep(PACE),
                        Ok(_) => {}
                        // Nothing for STOP_POLL: check `stop` and read on.
                        Err(Fill::Again) => {}
                        Err(Fill::Failed(e)) => return Err(e),
                    }
                    continue;
                };
                if m.id != id {
                    // Message id 0 is an unsolicited notification: the
                    // server is closing the connection.
                    return Err(LdapError::Protocol(format!(
                        "unexpected message id {} during the full load",
                        m.id
                    )));
                }
                match m.op {
                    SEARCH_RESULT_ENTRY => {
                        entries.push(m.op_range.clone());
                        n += 1;
                        progress(n);
                    }
                    SEARCH_RESULT_REFERENCE => {}
                    SEARCH_RESULT_DONE => break m,
                    _ => {
                        return Err(LdapError::Protocol("unexpected message in a search".into()));
                    }
                }
            };
            let (rc, text) = self.result(&done)?;
            LdapError::ensure_success("full load search", rc, text)?;
            cookie = self.paged_cookie(&done)?;
            if cookie.is_empty() {
                break;
            }
        }
        if !entries.is_empty() {
            self.hand_over(&mut entries, tx);
        }
        // Polite, not needed: the server ends the connection either way.
        let unbind = Tag::Sequence(Sequence {
            id: 2,
            class: TagClass::Application,
            inner: vec![],
        });
        let _ = self.send(unbind, None);
        Ok(n)
    }

    /// Hand the entries received so far over as a page; keeps the bytes of
    /// any message after them. Returns false if the receiver is gone.
    fn hand_over<B: From<Page>>(
        &mut self,
        entries: &mut Vec<Range<usize>>,
        tx: &mpsc::Sender<B>,
    ) -> bool {
        let mut rest = vec![0; READ_CHUNK.max(self.end - self.pos)];
        rest[..self.end - self.pos].copy_from_slice(&self.buf[self.pos..self.end]);
        let mut bytes = std::mem::replace(&mut self.buf, rest);
        bytes.truncate(self.pos);
        self.end -= self.pos;
        self.pos = 0;
        let page = Page {
            bytes,
            entries: std::mem::take(entries),
        };
        tx.blocking_send(page.into()).is_ok()
    }

    /// Forget the messages taken so far.
    fn discard(&mut self) {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
    }

    /// Read more; returns how much came.
    fn fill(&mut self) -> Result<usize, Fill> {
        // `buf` is kept initialised (zeroed as it grows: no `unsafe`), and
        // read into from `end`.
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        match self.io.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(Fill::Failed(io(std::io::ErrorKind::UnexpectedEof.into()))),
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Err(Fill::Again)
            }
            Err(e) => Err(Fill::Failed(io(e))),
        }
    }

    /// Encode and send a request; returns its message id.
    fn send(&mut self, op: Tag, controls: Option<Vec<RawControl>>) -> Result<u64, LdapError> {
        self.last_id += 1;
        let mut msg = vec![
            Tag::Integer(Integer {
                inner: i64::from(self.last_id),
                ..Default::default()
            }),
            op,
        ];
        if let Some(controls) = controls {
            msg.push(Tag::Sequence(Sequence {
                id: 0,
                class: TagClass::Context,
                inner: controls.into_iter().map(control).collect(),
            }));
        }
        let msg = Tag::Sequence(Sequence {
            inner: msg,
            ..Default::default()
        })
        .into_structure();
        let mut out = BytesMut::new();
        write::encode_into(&mut out, msg).map_err(io)?;
        self.io.write_all(&out).map_err(io)?;
        Ok(u64::from(self.last_id))
    }

    /// Take the next complete message from the buffer, if there is one.
    fn message(&mut self) -> Result<Option<Message>, LdapError> {
        let b = &self.buf[self.pos..self.end];
        let Some((tag, hdr, len)) = ber::header(b).map_err(malformed)? else {
            return Ok(None);
        };
        if tag != MESSAGE {
            return Err(malformed(ber::Malformed));
        }
        if len > MAX_MESSAGE {
            return Err(LdapError::Protocol(format!(
                "an LDAP message of {len} bytes (at most {MAX_MESSAGE} are accepted)"
            )));
        }
        if b.len() < hdr + len {
            return Ok(None);
        }
        let start = self.pos + hdr;
        let end = start + len;
        let mut parts = Elements::new(&self.buf[start..end]);
        let (t, id) = parts.expect().map_err(malformed)?;
        if t != INTEGER {
            return Err(malformed(ber::Malformed));
        }
        let id = ber::uint(id).map_err(malformed)?;
        let op_start = end - parts.rest().len();
        let (op, _) = parts.expect().map_err(malformed)?;
        let op_end = end - parts.rest().len();
        let controls = match parts.next().map_err(malformed)? {
            Some((CONTROLS, c)) => {
                let c_end = end - parts.rest().len();
                Some(c_end - c.len()..c_end)
            }
            _ => None,
        };
        self.pos = end;
        Ok(Some(Message {
            id,
            op,
            op_range: op_start..op_end,
            controls,
        }))
    }

    /// An LDAPResult's code and diagnostic message (RFC 4511 4.1.9).
    fn result(&self, m: &Message) -> Result<(u32, String), LdapError> {
        let (_, contents) = Elements::new(&self.buf[m.op_range.clone()])
            .expect()
            .map_err(malformed)?;
        let mut parts = Elements::new(contents);
        let (t, rc) = parts.expect().map_err(malformed)?;
        let (_, _matched) = parts.expect().map_err(malformed)?;
        let (_, text) = parts.expect().map_err(malformed)?;
        if t != ENUMERATED {
            return Err(malformed(ber::Malformed));
        }
        let rc = u32::try_from(ber::uint(rc).map_err(malformed)?)
            .map_err(|_| malformed(ber::Malformed))?;
        Ok((rc, String::from_utf8_lossy(text).into_owned()))
    }

    /// The paged results cookie of a search's end; empty when there are
    /// no more pages (or the server does not page).
    fn paged_cookie(&self, m: &Message) -> Result<Vec<u8>, LdapError> {
        let Some(r) = m.controls.clone() else {
            return Ok(Vec::new());
        };
        let mut controls = Elements::new(&self.buf[r]);
        while let Some((_, c)) = controls.next().map_err(malformed)? {
            let mut parts = Elements::new(c);
            let (_, oid) = parts.expect().map_err(malformed)?;
            if oid != PAGED_RESULTS_OID {
                continue;
            }
            // criticality BOOLEAN DEFAULT FALSE, then the value.
            let mut value = parts.expect().map_err(malformed)?;
            if value.0 == 0x01 {
                value = parts.expect().map_err(malformed)?;
            }
            let (_, seq) = Elements::new(value.1).expect().map_err(malformed)?;
            let mut seq = Elements::new(seq);
            let _size = seq.expect().map_err(malformed)?;
            let (_, cookie) = seq.expect().map_err(malformed)?;
            return Ok(cookie.to_vec());
        }
        Ok(Vec::new())
    }
}

/// A control as ldap3 encodes it (`controls_impl::build_tag`).
fn control(rc: RawControl) -> Tag {
    let mut seq = vec![Tag::OctetString(OctetString {
        inner: rc.ctype.into_bytes(),
        ..Default::default()
    })];
    if rc.crit {
        seq.push(Tag::Boolean(Boolean {
            inner: true,
            ..Default::default()
        }));
    }
    if let Some(val) = rc.val {
        seq.push(Tag::OctetString(OctetString {
            inner: val,
            ..Default::default()
        }));
    }
    Tag::Sequence(Sequence {
        inner: seq,
        ..Default::default()
    })
}

/// The search request ldap3 sends for the same search (ldap3 0.12
/// `search.rs`, `start_inner`, default options).
fn search_request(s: &Settings, filter: Tag, attrs: &[String]) -> Tag {
    let int = |inner| {
        Tag::Integer(Integer {
            inner,
            ..Default::default()
        })
    };
    let enumerated = |inner| {
        Tag::Enumerated(Enumerated {
            inner,
            ..Default::default()
        })
    };
    Tag::Sequence(Sequence {
        id: 3,
        class: TagClass::Application,
        inner: vec![
            Tag::OctetString(OctetString {
                inner: s.base.as_bytes().to_vec(),
                ..Default::default()
            }),
            enumerated(scope(s.scope) as i64),
            // derefAliases: never.
            enumerated(0),
            // sizeLimit, timeLimit: none.
            int(0),
            int(0),
            Tag::Boolean(Boolean {
                inner: false,
                ..Default::default()
            }),
            filter,
            Tag::Sequence(Sequence {
                inner: attrs
                    .iter()
                    .map(|a| {
                        Tag::OctetString(OctetString {
                            inner: a.as_bytes().to_vec(),
                            ..Default::default()
                        })
                    })
                    .collect(),
                ..Default::default()
            }),
        ],
    })
}

/// A request or a scripted reply, encoded (tests).
#[cfg(test)]
fn encode(t: Tag) -> Vec<u8> {
    let mut out = BytesMut::new();
    write::encode_into(&mut out, t.into_structure()).unwrap();
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server side that answers from a script of raw messages, one reply
    /// per request read; returns what it was sent.
    fn answer(
        mut server: std::os::unix::net::UnixStream,
        replies: Vec<Vec<u8>>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            for r in replies {
                let mut b = [0u8; 4096];
                let n = server.read(&mut b).unwrap();
                got.extend_from_slice(&b[..n]);
                server.write_all(&r).unwrap();
            }
            got
        })
    }

    /// A client connection and its server side.
    fn pair() -> (Conn, std::os::unix::net::UnixStream) {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut c = Conn {
            io: Stream::Unix(client),
            buf: Vec::new(),
            end: 0,
            pos: 0,
            last_id: 0,
        };
        c.setup(Duration::from_secs(5)).unwrap();
        (c, server)
    }

    fn no_stop() -> AtomicBool {
        AtomicBool::new(false)
    }

    fn message(id: i64, op: Tag, controls: Option<Tag>) -> Vec<u8> {
        let mut inner = vec![
            Tag::Integer(Integer {
                inner: id,
                ..Default::default()
            }),
            op,
        ];
        inner.extend(controls);
        encode(Tag::Sequence(Sequence {
            inner,
            ..Default::default()
        }))
    }

    fn done(rc: i64, text: &str) -> Tag {
        Tag::Sequence(Sequence {
            id: 5,
            class: TagClass::Application,
            inner: vec![
                Tag::Enumerated(Enumerated {
                    inner: rc,
                    ..Default::default()
                }),
                Tag::OctetString(OctetString::default()),
                Tag::OctetString(OctetString {
                    inner: text.as_bytes().to_vec(),
                    ..Default::default()
                }),
            ],
        })
    }

    fn paged(cookie: &[u8]) -> Tag {
        Tag::Sequence(Sequence {
            id: 0,
            class: TagClass::Context,
            inner: vec![control(RawControl::from(PagedResults {
                size: 0,
                cookie: cookie.to_vec(),
            }))],
        })
    }

    fn entry(i: usize) -> Tag {
        let attr = |k: &str, v: &str| {
            Tag::Sequence(Sequence {
                inner: vec![
                    Tag::OctetString(OctetString {
                        inner: k.as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    Tag::Set(ldap3::asn1::Set {
                        inner: vec![Tag::OctetString(OctetString {
                            inner: v.as_bytes().to_vec(),
                            ..Default::default()
                        })],
                        ..Default::default()
                    }),
                ],
                ..Default::default()
            })
        };
        Tag::Sequence(Sequence {
            id: 4,
            class: TagClass::Application,
            inner: vec![
                Tag::OctetString(OctetString {
                    inner: format!("uid=u{i},dc=x").into_bytes(),
                    ..Default::default()
                }),
                Tag::Sequence(Sequence {
                    inner: vec![attr("mail", &format!("u{i}@x.org")), attr("cn", "x")],
                    ..Default::default()
                }),
            ],
        })
    }

    #[test]
    fn pages_are_followed_and_entries_handed_over_in_order() {
        let (conn, server) = pair();
        let s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        // Page 1: two entries and a reference; page 2: one entry, the end.
        let mut p1 = message(1, entry(0), None);
        p1.extend(message(1, entry(1), None));
        p1.extend(message(
            1,
            Tag::Sequence(Sequence {
                id: 19,
                class: TagClass::Application,
                inner: vec![],
            }),
            None,
        ));
        p1.extend(message(1, done(0, ""), Some(paged(b"c1"))));
        let mut p2 = message(2, entry(2), None);
        p2.extend(message(2, done(0, ""), Some(paged(b""))));
        let server = answer(server, vec![p1, p2]);
        let (tx, mut rx) = mpsc::channel::<Page>(10);
        let n = conn.paged_search(&s, &tx, &no_stop(), |_| {}).unwrap();
        assert_eq!(n, 3);
        let sent = server.join().unwrap();
        // The second request carried the first page's cookie.
        assert!(sent.windows(2).any(|w| w == b"c1"));
        drop(tx);
        let r = s.mapping.resolve();
        let mut logins = Vec::new();
        while let Some(page) = rx.blocking_recv() {
            for e in page.entries() {
                let v = r.view_ber(e).unwrap();
                let d = r.map(&v, &Default::default()).unwrap();
                logins.push(d.login().unwrap().to_string());
            }
        }
        assert_eq!(logins, ["u0@x.org", "u1@x.org", "u2@x.org"]);
    }

    #[test]
    fn many_entries_arrive_in_several_pages_in_order() {
        let (conn, server) = pair();
        let s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        // More than one read's worth.
        let count = PAGE_ENTRIES * 6 + 7;
        let mut reply: Vec<u8> = (0..count)
            .flat_map(|i| message(1, entry(i), None))
            .collect();
        reply.extend(message(1, done(0, ""), None));
        let server = answer(server, vec![reply]);
        let (tx, mut rx) = mpsc::channel::<Page>(100);
        assert_eq!(
            conn.paged_search(&s, &tx, &no_stop(), |_| {}).unwrap(),
            count as u64
        );
        server.join().unwrap();
        drop(tx);
        let r = s.mapping.resolve();
        let mut i = 0;
        let mut pages = 0;
        while let Some(page) = rx.blocking_recv() {
            pages += 1;
            for e in page.entries() {
                let d = r.map(&r.view_ber(e).unwrap(), &Default::default()).unwrap();
                assert_eq!(d.login().unwrap(), format!("u{i}@x.org"));
                i += 1;
            }
        }
        assert_eq!(i, count);
        assert!(pages > 1);
    }

    #[test]
    fn a_failed_search_is_an_error() {
        let (conn, server) = pair();
        let s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        let mut p1 = message(1, entry(0), None);
        p1.extend(message(1, done(32, "no such object"), None));
        let _server = answer(server, vec![p1]);
        let (tx, _rx) = mpsc::channel::<Page>(10);
        match conn.paged_search(&s, &tx, &no_stop(), |_| {}) {
            Err(LdapError::Result { rc: 32, text, .. }) => assert_eq!(text, "no such object"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_or_garbled_connection_is_an_error() {
        let s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        let (tx, _rx) = mpsc::channel::<Page>(10);
        let run = |reply: Vec<u8>| {
            let (conn, server) = pair();
            let server = answer(server, vec![reply]);
            let r = conn.paged_search(&s, &tx, &no_stop(), |_| {});
            server.join().unwrap();
            r
        };
        assert!(matches!(
            run(message(1, entry(0), None)),
            Err(LdapError::Ldap(_))
        ));
        assert!(matches!(run(vec![0x31, 0x00]), Err(LdapError::Protocol(_))));
        assert!(matches!(
            run(vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff]),
            Err(LdapError::Protocol(_))
        ));
        assert!(matches!(
            run(message(7, entry(0), None)),
            Err(LdapError::Protocol(_))
        ));
    }

    #[test]
    fn a_stopped_load_ends_while_the_server_is_silent() {
        let (conn, server) = pair();
        conn.io.set_read_timeout(Duration::from_millis(10)).unwrap();
        let s = Settings::new("ldap://127.0.0.1:1", "dc=x");
        let (tx, _rx) = mpsc::channel::<Page>(10);
        let stop = AtomicBool::new(true);
        assert!(matches!(
            conn.paged_search(&s, &tx, &stop, |_| {}),
            Err(LdapError::Timeout(_))
        ));
        drop(server);
    }

    #[test]
    fn binds_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let ok = message(
            1,
            Tag::Sequence(Sequence {
                id: 1,
                class: TagClass::Application,
                inner: match done(0, "") {
                    Tag::Sequence(s) => s.inner,
                    _ => unreachable!(),
                },
            }),
            None,
        );
        let (mut conn, server) = pair();
        let server = answer(server, vec![ok]);
        conn.bind(&Bind::Simple {
            dn: "cn=svc,dc=x".into(),
            password_file: pw,
        })
        .unwrap();
        let sent = server.join().unwrap();
        assert!(sent.windows(6).any(|w| w == b"secret"));
        let (mut conn, server) = pair();
        let server = answer(
            server,
            vec![message(1, done(49, "invalid credentials"), None)],
        );
        assert!(matches!(
            conn.bind(&Bind::SaslExternal),
            Err(LdapError::Protocol(_))
        ));
        let sent = server.join().unwrap();
        assert!(sent.windows(8).any(|w| w == b"EXTERNAL"));
    }

    #[test]
    fn requests_match_what_ldap3_sends() {
        // ldap3's own encoding of the paged results control value.
        let rc = RawControl::from(PagedResults {
            size: 1000,
            cookie: b"ab".to_vec(),
        });
        assert_eq!(rc.ctype.as_bytes(), PAGED_RESULTS_OID);
        assert!(!rc.crit);
        let bytes = encode(control(rc));
        let (_, c) = Elements::new(&bytes).expect().unwrap();
        let mut parts = Elements::new(c);
        assert_eq!(parts.expect().unwrap().1, PAGED_RESULTS_OID);
        assert_eq!(parts.expect().unwrap().0, 0x04);
    }
}

//! Dovecot's auth-master protocol, userdb side, for the load tool: what
//! LMTP (and `doveadm user`) send to the `auth-userdb` socket. The truth is
//! Dovecot's `src/lib-auth-client/auth-master.c` (client; 2.3:
//! `src/lib-auth/auth-master.c`) and `src/auth/auth-master-connection.c`
//! (server):
//!
//! ```text
//! server: VERSION\t1\t<minor>\n  SPID\t<pid>\n        on connect
//! client: VERSION\t1\t0\n                             once
//! client: USER\t<id>\t<user>\tservice=lmtp\n          one at a time
//! server: USER\t<id>\t<user>\t<field>...\n | NOTFOUND\t<id>\n | FAIL\t<id>[\treason=…]\n
//! ```
//!
//! Fields are tab-escaped as in the dict protocol (`\x01` escapes), so the
//! request's user is escaped with `ramdir_dovecot::codec::escape`. The
//! server does not require request ids to be unique, and each connection
//! has one request in flight, so every request carries id 1 and is
//! encoded once up front like the other targets'; a reply with another id
//! is an error.
//!
//! Nothing here is ramdir's: this drives Dovecot's auth process, whatever
//! its passdb/userdb (Lua → ramdir, dict → ramdir, passwd-file).

use std::path::PathBuf;

use bytes::{Buf, BytesMut};
use ramdir_dovecot::codec::escape;

use crate::client::{Kind, Outcome, Stream, Target, connect_hello, read_reply};
use crate::keys::{KeyPattern, KeySet};

/// Default user pattern: the users `gen-passwd` writes.
pub const DEFAULT_AUTH_PATTERN: &str = "user%07d@domain%d.test";

/// Request id of every request (one in flight per connection).
const ID: &str = "1";

/// Longest reply line accepted before the server is given up on (a userdb
/// reply is a few hundred bytes).
const MAX_REPLY: usize = 64 * 1024;

/// Major version of the auth-master protocol in Dovecot 2.3 and 2.4
/// (`AUTH_MASTER_PROTOCOL_MAJOR_VERSION`).
const MAJOR: &str = "1";

/// The client's handshake line.
const HANDSHAKE: &[u8] = b"VERSION\t1\t0\n";

/// The `USER` request for `user` as LMTP sends it.
pub fn user_line(user: &str, service: &str, out: &mut BytesMut) {
    let mut s = String::with_capacity(32 + user.len());
    s.push_str("USER\t");
    s.push_str(ID);
    s.push('\t');
    escape(user, &mut s);
    s.push_str("\tservice=");
    escape(service, &mut s);
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
}

/// Take one line (without its LF) off the front of `buf`; `Ok(None)`: need
/// more.
fn take_line(buf: &mut BytesMut) -> Result<Option<Vec<u8>>, String> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_REPLY {
            return Err(format!("reply line longer than {MAX_REPLY} bytes"));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl).to_vec();
    buf.advance(1);
    Ok(Some(line))
}

/// Classify one reply line: `USER` found, `NOTFOUND` not found, `FAIL`
/// failed; anything else, or a reply to another id, is an error.
pub fn classify(line: &[u8]) -> Result<Outcome, String> {
    let mut f = line.split(|&b| b == b'\t');
    let word = f.next().unwrap_or_default();
    let id = f.next().unwrap_or_default();
    let outcome = match word {
        b"USER" => Outcome::Ok,
        b"NOTFOUND" => Outcome::NotFound,
        b"FAIL" => Outcome::Temp,
        _ => {
            return Err(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&line[..line.len().min(60)])
            ));
        }
    };
    if id != ID.as_bytes() {
        return Err(format!(
            "reply to request {:?}, expected {ID}",
            String::from_utf8_lossy(id)
        ));
    }
    Ok(outcome)
}

/// The `auth` load: userdb lookups through an auth-userdb socket.
pub struct AuthTarget {
    /// The auth-userdb (or auth-master) socket.
    pub socket: PathBuf,
    /// Pre-encoded `USER` lines.
    pub keys: KeySet,
}

impl AuthTarget {
    /// Lookups of users `0..count` of `pattern` for `service`.
    pub fn new(
        socket: PathBuf,
        pattern: &KeyPattern,
        domains: u64,
        count: u64,
        service: &str,
    ) -> AuthTarget {
        AuthTarget {
            socket,
            keys: KeySet::build(pattern, domains, count, 56, |user, buf| {
                user_line(user, service, buf)
            }),
        }
    }
}

impl Target for AuthTarget {
    type Conn = (Stream, BytesMut);

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn kind(&self) -> Kind {
        Kind {
            map: "userdb".into(),
            what: "auth-master userdb".into(),
            labels: ["USER (found)", "NOTFOUND", "FAIL", "other"],
        }
    }

    async fn connect(&self, _id: usize) -> Result<Self::Conn, String> {
        let (mut s, mut buf) = connect_hello(&self.socket, HANDSHAKE).await?;
        // The server's VERSION and SPID lines.
        let version = read_reply(&mut s, &mut buf, take_line).await?;
        let mut v = version.split(|&b| b == b'\t');
        if v.next() != Some(b"VERSION") || v.next() != Some(MAJOR.as_bytes()) {
            return Err(format!(
                "not an auth-master {MAJOR}.x socket: {:?}",
                String::from_utf8_lossy(&version)
            ));
        }
        let spid = read_reply(&mut s, &mut buf, take_line).await?;
        if !spid.starts_with(b"SPID\t") {
            return Err(format!(
                "expected SPID, got {:?}",
                String::from_utf8_lossy(&spid)
            ));
        }
        Ok((s, buf))
    }

    async fn call(&self, conn: &mut Self::Conn, i: usize) -> Result<Outcome, String> {
        let (stream, buf) = conn;
        stream
            .write_all(self.keys.request(i))
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(stream, buf, |b| match take_line(b)? {
            Some(line) => classify(&line).map(Some),
            None => Ok(None),
        })
        .await
    }
}

/// The auth-client protocol (what imap-login speaks to the auth
/// process; Dovecot's `src/lib-auth/auth-client-interface.h` and
/// `src/auth/auth-request-handler.c`):
///
/// ```text
/// client: VERSION\t1\t2\n  CPID\t<pid>\n
/// server: VERSION\t1\t2\n  MECH\t…\n…  SPID\t…\n CUID\t…\n COOKIE\t…\n DONE\n
/// client: AUTH\t<id>\tPLAIN\tservice=imap\tsecured\tno-penalty\tresp=<base64 \0user\0password>\n
/// server: OK\t<id>\tuser=…\n | FAIL\t<id>\t…\n
/// ```
///
/// Ids must be unique on a connection (a successful request stays known
/// to the server for a while), so each connection counts up.
pub struct PlainTarget {
    /// The auth-client socket.
    pub socket: PathBuf,
    /// Pre-encoded request tails (`\tPLAIN\t…\n`, after the id).
    pub keys: KeySet,
}

/// Base64 (standard alphabet, padded).
fn base64(data: &[u8], out: &mut String) {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(char::from(B64[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// The request tail for `user` logging in with its own address as the
/// password (`gen-passwd --plain-passwords`).
pub fn plain_tail(user: &str, service: &str, out: &mut BytesMut) {
    let mut resp = Vec::with_capacity(2 * user.len() + 2);
    resp.push(0);
    resp.extend_from_slice(user.as_bytes());
    resp.push(0);
    resp.extend_from_slice(user.as_bytes());
    let mut s = String::with_capacity(64 + 2 * user.len());
    s.push_str("\tPLAIN\tservice=");
    escape(service, &mut s);
    s.push_str("\tsecured\tno-penalty\tresp=");
    base64(&resp, &mut s);
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
}

/// Classify an auth-client reply to request `id`.
pub fn classify_plain(line: &[u8], id: u64) -> Result<Outcome, String> {
    let mut f = line.split(|&b| b == b'\t');
    let word = f.next().unwrap_or_default();
    let got = f.next().unwrap_or_default();
    let outcome = match word {
        b"OK" => Outcome::Ok,
        b"FAIL" if line.windows(9).any(|w| w == b"temp_fail") => Outcome::Temp,
        b"FAIL" => Outcome::NotFound,
        _ => {
            return Err(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&line[..line.len().min(60)])
            ));
        }
    };
    if got != id.to_string().as_bytes() {
        return Err(format!(
            "reply to request {:?}, expected {id}",
            String::from_utf8_lossy(got)
        ));
    }
    Ok(outcome)
}

impl PlainTarget {
    /// Logins of users `0..count` of `pattern` for `service`.
    pub fn new(
        socket: PathBuf,
        pattern: &KeyPattern,
        domains: u64,
        count: u64,
        service: &str,
    ) -> PlainTarget {
        PlainTarget {
            socket,
            keys: KeySet::build(pattern, domains, count, 120, |user, buf| {
                plain_tail(user, service, buf)
            }),
        }
    }
}

impl Target for PlainTarget {
    type Conn = (Stream, BytesMut, u64);

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn kind(&self) -> Kind {
        Kind {
            map: "passdb".into(),
            what: "auth-client PLAIN".into(),
            labels: ["OK", "FAIL", "FAIL temp", "other"],
        }
    }

    async fn connect(&self, _id: usize) -> Result<Self::Conn, String> {
        let hello = format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id());
        let (mut s, mut buf) = connect_hello(&self.socket, hello.as_bytes()).await?;
        loop {
            let line = read_reply(&mut s, &mut buf, take_line).await?;
            if line == b"DONE" {
                break;
            }
        }
        Ok((s, buf, 0))
    }

    async fn call(&self, conn: &mut Self::Conn, i: usize) -> Result<Outcome, String> {
        let (stream, buf, next) = conn;
        *next += 1;
        let id = *next;
        let mut req = format!("AUTH\t{id}").into_bytes();
        req.extend_from_slice(self.keys.request(i));
        stream
            .write_all(&req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(stream, buf, |b| match take_line(b)? {
            Some(line) => classify_plain(&line, id).map(Some),
            None => Ok(None),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_what_lmtp_sends() {
        let p = KeyPattern::parse(DEFAULT_AUTH_PATTERN).unwrap();
        let t = AuthTarget::new(PathBuf::from("/x"), &p, 100, 5, "lmtp");
        assert_eq!(
            t.keys.request(3),
            b"USER\t1\tuser0000003@domain3.test\tservice=lmtp\n"
        );
        // A user name cannot add fields or lines.
        let mut out = BytesMut::new();
        user_line("a\tb\nc", "lmtp", &mut out);
        assert_eq!(&out[..], b"USER\t1\ta\x01tb\x01nc\tservice=lmtp\n");
    }

    #[test]
    fn replies_are_classified_by_word_and_checked_by_id() {
        let ok = b"USER\t1\tuser0000003@domain3.test\tuid=5000\tgid=5000\thome=/h";
        assert_eq!(classify(ok), Ok(Outcome::Ok));
        assert_eq!(classify(b"NOTFOUND\t1"), Ok(Outcome::NotFound));
        assert_eq!(classify(b"FAIL\t1"), Ok(Outcome::Temp));
        assert_eq!(classify(b"FAIL\t1\treason=x"), Ok(Outcome::Temp));
        assert!(classify(b"USER\t2\tx").is_err());
        assert!(classify(b"NOTFOUND").is_err());
        assert!(classify(b"").is_err());
        assert!(classify(b"VERSION\t1\t0").is_err());
    }

    #[test]
    fn plain_logins_are_what_imap_login_sends() {
        let mut out = BytesMut::new();
        plain_tail("a@b", "imap", &mut out);
        // base64("\0a@b\0a@b")
        assert_eq!(
            &out[..],
            b"\tPLAIN\tservice=imap\tsecured\tno-penalty\tresp=AGFAYgBhQGI=\n"
        );
        assert_eq!(classify_plain(b"OK\t7\tuser=a@b", 7), Ok(Outcome::Ok));
        assert_eq!(
            classify_plain(b"FAIL\t7\tuser=a@b", 7),
            Ok(Outcome::NotFound)
        );
        assert_eq!(
            classify_plain(b"FAIL\t7\tcode=temp_fail", 7),
            Ok(Outcome::Temp)
        );
        assert!(classify_plain(b"OK\t8", 7).is_err());
        assert!(classify_plain(b"CONT\t7\t", 7).is_err());
    }

    #[test]
    fn lines_split_at_any_byte() {
        let all = b"NOTFOUND\t1\nUSER\t1\tu\tuid=1\n";
        for cut in 0..all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(l) = take_line(&mut buf).unwrap() {
                got.push(l);
            }
            buf.extend_from_slice(&all[cut..]);
            while let Some(l) = take_line(&mut buf).unwrap() {
                got.push(l);
            }
            assert_eq!(got, [&b"NOTFOUND\t1"[..], &b"USER\t1\tu\tuid=1"[..]]);
        }
        let mut huge = BytesMut::from(&vec![b'U'; MAX_REPLY + 1][..]);
        assert!(take_line(&mut huge).is_err());
    }
}

//! Netstring framing and socketmap messages. Pure: no I/O.
//!
//! Netstring (`src/util/netstring.c`): `<decimal length>:<payload>,`. Only
//! ASCII digits before `:` (leading zeros allowed), and the `,` is required.
//! A request payload is `<map name> <key>`, split at the **first** space
//! only, because keys may contain spaces (`src/util/dict_sockmap.c` builds
//! it as `"%s %s"`). A reply payload is `<status> <data>`.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

/// Longest key Postfix sends: `DICT_SOCKMAP_DEF_MAX_QUERY` (10000) in
/// `src/util/dict_sockmap.c`; a longer query is "not found" on its side.
pub const MAX_QUERY: usize = 10_000;

/// Longest map name accepted. Map names are table names from `main.cf`;
/// anything longer is not a Postfix client.
pub const MAX_MAP_NAME: usize = 100;

/// Largest request payload: map name, the space, the key.
pub const MAX_REQUEST: usize = MAX_MAP_NAME + 1 + MAX_QUERY;

/// Largest reply payload Postfix reads: `DICT_SOCKMAP_DEF_MAX_REPLY`
/// (100000) in `src/util/dict_sockmap.c`.
pub const MAX_REPLY: usize = 100_000;

/// Most digits in a length prefix. Leading zeros are legal, so the number of
/// digits must be bounded on its own; 20 covers any `u64` and a few zeros.
const MAX_LEN_DIGITS: usize = 20;

/// Why bytes are not a valid netstring or message. Each one ends the
/// connection: after a framing error the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A byte other than a digit before `:`, an empty length, or a missing
    /// `,` after the payload.
    Format(String),
    /// The announced length exceeds the limit.
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit that applies.
        max: usize,
    },
    /// A request payload without the space between map name and key, or
    /// with an empty or oversized map name.
    BadRequest(String),
    /// A reply payload whose status word is unknown.
    BadReply(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Format(s) => write!(f, "malformed netstring: {s}"),
            CodecError::TooLarge { len, max } => {
                write!(f, "netstring length {len} exceeds the limit of {max}")
            }
            CodecError::BadRequest(s) => write!(f, "malformed socketmap request: {s}"),
            CodecError::BadReply(s) => write!(f, "malformed socketmap reply: {s}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Check for one complete netstring at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the payload's range and
/// the total frame length.
fn check(buf: &[u8], max: usize) -> Result<Option<(std::ops::Range<usize>, usize)>, CodecError> {
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b'0'..=b'9' => {
                if i >= MAX_LEN_DIGITS {
                    return Err(CodecError::Format("length prefix too long".into()));
                }
                len = len * 10 + u64::from(b - b'0');
                if len > max as u64 {
                    return Err(CodecError::TooLarge { len, max });
                }
            }
            b':' if i > 0 => break,
            b':' => return Err(CodecError::Format("empty length".into())),
            other => {
                return Err(CodecError::Format(format!(
                    "unexpected byte 0x{other:02x} in length"
                )));
            }
        }
        i += 1;
    }
    let start = i + 1;
    let end = start + len as usize;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some((start..end, end + 1))),
        Some(other) => Err(CodecError::Format(format!(
            "expected ',' after payload, got 0x{other:02x}"
        ))),
    }
}

/// Decimal digits of `n` without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: usize) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// Append `payload` as a netstring.
pub fn encode_netstring(payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 12);
    out.put_slice(payload.len().to_string().as_bytes());
    out.put_u8(b':');
    out.put_slice(payload);
    out.put_u8(b',');
}

/// A lookup request. Map name and key are bytes: Postfix sends whatever the
/// client gave it, and a key that is not UTF-8 is "not found", not an error
/// of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Table name (`domains`, `mailboxes`, `aliases`, `senders`).
    pub map: Vec<u8>,
    /// The key, as sent.
    pub key: Vec<u8>,
}

impl Request {
    /// A request for `key` in `map`.
    pub fn new(map: &str, key: &str) -> Request {
        Request {
            map: map.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }
    }

    /// Take one request off the front of `buf`; `Ok(None)` = need more data.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Request>, CodecError> {
        Request::decode_with(buf, |map, key| Request {
            map: map.to_vec(),
            key: key.to_vec(),
        })
    }

    /// Take one request off the front of `buf` and hand its map name and key
    /// to `f` without copying them (the server's hot path).
    pub fn decode_with<R>(
        buf: &mut BytesMut,
        f: impl FnOnce(&[u8], &[u8]) -> R,
    ) -> Result<Option<R>, CodecError> {
        let Some((range, total)) = check(buf, MAX_REQUEST)? else {
            return Ok(None);
        };
        let payload = &buf[range];
        let Some(sp) = payload.iter().position(|&b| b == b' ') else {
            return Err(CodecError::BadRequest(
                "no space between map name and key".into(),
            ));
        };
        if sp == 0 {
            return Err(CodecError::BadRequest("empty map name".into()));
        }
        if sp > MAX_MAP_NAME {
            return Err(CodecError::BadRequest(format!(
                "map name longer than {MAX_MAP_NAME}"
            )));
        }
        let r = f(&payload[..sp], &payload[sp + 1..]);
        buf.advance(total);
        Ok(Some(r))
    }

    /// Append the request's netstring.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = Vec::with_capacity(self.map.len() + 1 + self.key.len());
        p.extend_from_slice(&self.map);
        p.push(b' ');
        p.extend_from_slice(&self.key);
        encode_netstring(&p, out);
    }
}

/// A reply, in Postfix's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK <data>`: found. Never with empty data (Postfix treats an empty
    /// result as a configuration error, `src/global/maps.c`).
    Ok(String),
    /// `NOTFOUND `: not found, no error.
    NotFound,
    /// `TEMP <reason>`: try again later (`DICT_ERR_RETRY`).
    Temp(String),
    /// `TIMEOUT <reason>`: try again later (`DICT_ERR_RETRY`).
    Timeout(String),
    /// `PERM <reason>`: configuration error (`DICT_ERR_CONFIG`).
    Perm(String),
}

impl Reply {
    /// The reply payload (without netstring framing).
    pub fn payload(&self) -> String {
        match self {
            Reply::Ok(d) => format!("OK {d}"),
            Reply::NotFound => "NOTFOUND ".to_string(),
            Reply::Temp(r) => format!("TEMP {r}"),
            Reply::Timeout(r) => format!("TIMEOUT {r}"),
            Reply::Perm(r) => format!("PERM {r}"),
        }
    }

    /// Append the reply's netstring (written in place: this is on every
    /// request's path).
    pub fn encode(&self, out: &mut BytesMut) {
        let (word, data): (&[u8], &str) = match self {
            Reply::Ok(d) => (b"OK ", d),
            Reply::NotFound => (b"NOTFOUND ", ""),
            Reply::Temp(r) => (b"TEMP ", r),
            Reply::Timeout(r) => (b"TIMEOUT ", r),
            Reply::Perm(r) => (b"PERM ", r),
        };
        encode_reply(word, data, out);
    }

    /// Append `OK <data>` without building a [`Reply`] (the hot path of a
    /// found key).
    pub fn encode_ok(data: &str, out: &mut BytesMut) {
        encode_reply(b"OK ", data, out);
    }
}

fn encode_reply(word: &[u8], data: &str, out: &mut BytesMut) {
    {
        let len = word.len() + data.len();
        let mut digits = itoa_buf(len);
        out.reserve(len + 22);
        out.put_slice(digits.as_bytes_mut());
        out.put_u8(b':');
        out.put_slice(word);
        out.put_slice(data.as_bytes());
        out.put_u8(b',');
    }
}

impl Reply {
    /// Take one reply off the front of `buf` (for clients: `ramdir query
    /// --socket`, the load tool); `Ok(None)` = need more data.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        let Some((range, total)) = check(buf, MAX_REPLY)? else {
            return Ok(None);
        };
        let payload = String::from_utf8_lossy(&buf[range]).into_owned();
        buf.advance(total);
        let (word, rest) = payload.split_once(' ').unwrap_or((payload.as_str(), ""));
        let rest = rest.to_string();
        Ok(Some(match word {
            "OK" => Reply::Ok(rest),
            "NOTFOUND" => Reply::NotFound,
            "TEMP" => Reply::Temp(rest),
            "TIMEOUT" => Reply::Timeout(rest),
            "PERM" => Reply::Perm(rest),
            _ => return Err(CodecError::BadReply(format!("unknown status {word:?}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Result<Vec<Request>, CodecError>;

    /// Decode `input` whole and split at every byte boundary; each way must
    /// give the same requests (or the same error).
    fn decode_all(input: &[u8]) -> Result<Vec<Request>, CodecError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = Request::decode(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    fn decode_split(input: &[u8], at: usize) -> Result<Vec<Request>, CodecError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&input[..at], &input[at..]] {
            buf.extend_from_slice(part);
            while let Some(r) = Request::decode(&mut buf)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn check_every_split(input: &[u8], want: &Result<Vec<Request>, CodecError>) {
        assert_eq!(&decode_all(input), want, "whole");
        for at in 0..=input.len() {
            assert_eq!(&decode_split(input, at), want, "split at {at}");
        }
        // One byte at a time.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut err = None;
        for &b in input {
            buf.extend_from_slice(&[b]);
            match Request::decode(&mut buf) {
                Ok(Some(r)) => got.push(r),
                Ok(None) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        match err {
            Some(e) => assert_eq!(Err(e), *want, "bytewise"),
            None => assert_eq!(Ok(got), *want, "bytewise"),
        }
    }

    #[test]
    fn requests_decode_exactly_at_every_split() {
        let cases: Vec<(&[u8], Decoded)> = vec![
            (
                b"23:mailboxes a@example.org,",
                Ok(vec![Request::new("mailboxes", "a@example.org")]),
            ),
            (
                b"0023:mailboxes a@example.org,",
                Ok(vec![Request::new("mailboxes", "a@example.org")]),
            ),
            (b"8:domains ,", Ok(vec![Request::new("domains", "")])),
            (
                b"19:aliases \"a b\"@x.org,",
                Ok(vec![Request::new("aliases", "\"a b\"@x.org")]),
            ),
            (
                b"9:domains x,9:domains y,",
                Ok(vec![
                    Request::new("domains", "x"),
                    Request::new("domains", "y"),
                ]),
            ),
            (b"", Ok(vec![])),
            (
                b"3:abc,",
                Err(CodecError::BadRequest(
                    "no space between map name and key".into(),
                )),
            ),
            (
                b"2: x,",
                Err(CodecError::BadRequest("empty map name".into())),
            ),
            (
                b"x:abc,",
                Err(CodecError::Format("unexpected byte 0x78 in length".into())),
            ),
            (b":abc,", Err(CodecError::Format("empty length".into()))),
            (
                b"3:a b;",
                Err(CodecError::Format(
                    "expected ',' after payload, got 0x3b".into(),
                )),
            ),
            (
                b"-1:a,",
                Err(CodecError::Format("unexpected byte 0x2d in length".into())),
            ),
            (
                b"99999999:",
                Err(CodecError::TooLarge {
                    len: 99999,
                    max: MAX_REQUEST,
                }),
            ),
        ];
        for (input, want) in &cases {
            check_every_split(input, want);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let mut buf = BytesMut::from(&b"10102:"[..]);
        assert_eq!(
            Request::decode(&mut buf),
            Err(CodecError::TooLarge {
                len: 10102,
                max: MAX_REQUEST
            })
        );
        // The largest allowed request is fine.
        let key = "k".repeat(MAX_QUERY);
        let name = "m".repeat(MAX_MAP_NAME);
        let mut buf = BytesMut::new();
        Request::new(&name, &key).encode(&mut buf);
        assert_eq!(
            Request::decode(&mut buf).unwrap().unwrap().key.len(),
            MAX_QUERY
        );
    }

    #[test]
    fn endless_zeros_in_length_are_refused() {
        let mut buf = BytesMut::from(&[b'0'; 64][..]);
        assert!(matches!(
            Request::decode(&mut buf),
            Err(CodecError::Format(_))
        ));
    }

    #[test]
    fn non_utf8_key_is_delivered_as_bytes() {
        let mut buf = BytesMut::from(&b"10:domains \xff\xfe,"[..]);
        let r = Request::decode(&mut buf).unwrap().unwrap();
        assert_eq!(r.key, b"\xff\xfe");
    }

    #[test]
    fn replies_encode_exactly() {
        let cases = [
            (Reply::Ok("a@x.org".into()), &b"10:OK a@x.org,"[..]),
            (Reply::NotFound, b"9:NOTFOUND ,"),
            (Reply::Temp("alias loop".into()), b"15:TEMP alias loop,"),
            (Reply::Timeout("slow".into()), b"12:TIMEOUT slow,"),
            (Reply::Perm("bad".into()), b"8:PERM bad,"),
        ];
        for (reply, bytes) in cases {
            let mut out = BytesMut::new();
            reply.encode(&mut out);
            assert_eq!(&out[..], bytes);
            // And back, at every split.
            for at in 0..=bytes.len() {
                let mut buf = BytesMut::from(&bytes[..at]);
                let first = Reply::decode(&mut buf).unwrap();
                buf.extend_from_slice(&bytes[at..]);
                let got = match first {
                    Some(r) => r,
                    None => Reply::decode(&mut buf).unwrap().unwrap(),
                };
                assert_eq!(got, reply);
            }
        }
        let mut bad = BytesMut::from(&b"5:WHAT?,"[..]);
        assert!(matches!(
            Reply::decode(&mut bad),
            Err(CodecError::BadReply(_))
        ));
        let mut bare_notfound = BytesMut::from(&b"8:NOTFOUND,"[..]);
        assert_eq!(
            Reply::decode(&mut bare_notfound).unwrap(),
            Some(Reply::NotFound)
        );
    }

    proptest::proptest! {
        #[test]
        fn request_round_trips(map in "[a-z_]{1,20}", key in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let req = Request { map: map.into_bytes(), key };
            let mut buf = BytesMut::new();
            req.encode(&mut buf);
            req.encode(&mut buf);
            proptest::prop_assert_eq!(Request::decode(&mut buf).unwrap(), Some(req.clone()));
            proptest::prop_assert_eq!(Request::decode(&mut buf).unwrap(), Some(req));
            proptest::prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Request::decode(&mut buf) {}
        }
    }
}

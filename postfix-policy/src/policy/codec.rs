//! Policy protocol codec. Pure: no I/O.
//!
//! A request is `name=value` lines ended by an empty line. Names hold no `=`,
//! NUL or LF; values no NUL or LF (`src/util/attr_scan_plain.c`). The reply
//! is `action=<value>\n\n`; Postfix skips extra reply attributes.

use std::borrow::Cow;
use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

/// Longest name or value: Postfix's `4 * line_length_limit` (2048 by
/// default), the bound `attr_scan_plain` puts on each.
pub const MAX_FIELD: usize = 4 * 2048;

/// Most attributes in one request. Postfix 3.7 sends 29; the bound only
/// stops a client from growing one request without end.
pub const MAX_ATTRIBUTES: usize = 256;

/// Why bytes are not a valid request; each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A line without `=`.
    NoEquals,
    /// An empty attribute name.
    EmptyName,
    /// A name or value longer than [`MAX_FIELD`].
    FieldTooLong,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    TooManyAttributes,
    /// A NUL byte, or a line that is not UTF-8.
    BadBytes,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::NoEquals => f.write_str("attribute line without '='"),
            CodecError::EmptyName => f.write_str("empty attribute name"),
            CodecError::FieldTooLong => write!(f, "attribute longer than {MAX_FIELD} bytes"),
            CodecError::TooManyAttributes => write!(f, "more than {MAX_ATTRIBUTES} attributes"),
            CodecError::BadBytes => f.write_str("NUL or invalid UTF-8 in request"),
        }
    }
}

impl std::error::Error for CodecError {}

/// One attribute: `(name, value)`.
pub type Attr<'a> = (Cow<'a, str>, Cow<'a, str>);

/// One policy request: its attributes in order. Parsed in place, the names
/// and values borrow from the read buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest<'a> {
    /// `(name, value)` pairs as sent.
    pub attrs: Vec<Attr<'a>>,
}

/// Attributes Postfix 3.7 sends (29), rounded up: one allocation per request.
const TYPICAL_ATTRIBUTES: usize = 32;

impl PolicyRequest<'_> {
    /// The first value of `name` (Postfix sends each once; the first wins,
    /// as in Dovecot's quota-status).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &**v)
    }

    /// Take one request off the front of `buf` as an owned value;
    /// `Ok(None)` = need more data. (The server parses in place instead.)
    pub fn decode(buf: &mut BytesMut) -> Result<Option<PolicyRequest<'static>>, CodecError> {
        let Some((req, used)) = PolicyRequest::parse(buf)? else {
            return Ok(None);
        };
        let req = req.into_owned();
        buf.advance(used);
        Ok(Some(req))
    }

    /// The same request owning its attributes.
    pub fn into_owned(self) -> PolicyRequest<'static> {
        PolicyRequest {
            attrs: self
                .attrs
                .into_iter()
                .map(|(n, v)| (Cow::Owned(n.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
        }
    }

    /// Parse the first request in `buf` in place: the request and how many
    /// bytes it took, or `Ok(None)` = need more data.
    ///
    /// Nothing is consumed until the whole request has arrived, so a request
    /// split anywhere decodes the same; each line is checked as soon as it
    /// is complete, so an oversized field is refused early.
    pub fn parse(buf: &[u8]) -> Result<Option<(PolicyRequest<'_>, usize)>, CodecError> {
        PolicyRequest::parse_into(buf, Vec::new())
    }

    /// [`PolicyRequest::parse`] into `spare`, an empty vector whose
    /// allocation is reused (see [`PolicyRequest::recycle`]).
    pub fn parse_into<'a>(
        buf: &'a [u8],
        spare: Vec<Attr<'a>>,
    ) -> Result<Option<(PolicyRequest<'a>, usize)>, CodecError> {
        let mut attrs = spare;
        attrs.clear();
        attrs.reserve(TYPICAL_ATTRIBUTES);
        // A whole request ends at its empty line. Checked whole, it needs one
        // UTF-8 pass and one NUL search instead of a few per line (which
        // showed in the benchmark's profile); a request with a bad byte, or
        // one still arriving, goes line by line, so every error is the one
        // the line-by-line reading finds first.
        let used = if buf.first() == Some(&b'\n') {
            Some(1)
        } else {
            memchr::memmem::find(buf, b"\n\n").map(|i| i + 2)
        };
        let text = used.and_then(|used| {
            let body = &buf[..used - 1];
            match memchr::memchr(0, body) {
                None => std::str::from_utf8(body).ok(),
                Some(_) => None,
            }
        });
        let (Some(used), Some(text)) = (used, text) else {
            return parse_lines(buf, attrs);
        };
        // Split with `memchr` on the bytes (a `char` pattern's searcher
        // showed in the profile); `=` and LF are ASCII, so every piece is
        // on a character boundary of `text`.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', text.as_bytes()) {
            let line = &text[start..nl];
            start = nl + 1;
            let eq = memchr::memchr(b'=', line.as_bytes()).ok_or(CodecError::NoEquals)?;
            let (name, value) = (&line[..eq], &line[eq + 1..]);
            check_attr(name.as_bytes(), value.as_bytes(), attrs.len())?;
            attrs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
        }
        Ok(Some((PolicyRequest { attrs }, used)))
    }

    /// The attribute vector, emptied, to parse the next request into (one
    /// allocation per connection instead of one per request).
    pub fn recycle(self) -> Vec<Attr<'static>> {
        let mut attrs = self.attrs;
        attrs.clear();
        // Empty, so nothing is mapped: collecting in place keeps the
        // allocation and only changes the borrowed lifetime.
        attrs
            .into_iter()
            .map(|_| unreachable!("the vector was emptied"))
            .collect()
    }

    /// The request's bytes (for tests and the load tool).
    pub fn encode(&self, out: &mut BytesMut) {
        for (n, v) in &self.attrs {
            out.put_slice(n.as_bytes());
            out.put_u8(b'=');
            out.put_slice(v.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
    }
}

/// The checks every attribute line gets once split at its `=`, in the order
/// the line-by-line reading makes them; `count` attributes came before it.
fn check_attr(name: &[u8], value: &[u8], count: usize) -> Result<(), CodecError> {
    if name.is_empty() {
        return Err(CodecError::EmptyName);
    }
    if name.len() > MAX_FIELD || value.len() > MAX_FIELD {
        return Err(CodecError::FieldTooLong);
    }
    if count >= MAX_ATTRIBUTES {
        return Err(CodecError::TooManyAttributes);
    }
    Ok(())
}

/// Parse line by line: a request still arriving (each complete line is
/// checked, so limits hold before the request ends) or one with a bad byte.
fn parse_lines<'a>(
    buf: &'a [u8],
    mut attrs: Vec<Attr<'a>>,
) -> Result<Option<(PolicyRequest<'a>, usize)>, CodecError> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            // An unfinished line may not exceed name + '=' + value.
            if rest.len() > 2 * MAX_FIELD + 1 {
                return Err(CodecError::FieldTooLong);
            }
            return Ok(None);
        };
        let line = &rest[..nl];
        pos += nl + 1;
        if line.is_empty() {
            return Ok(Some((PolicyRequest { attrs }, pos)));
        }
        if memchr::memchr(0, line).is_some() {
            return Err(CodecError::BadBytes);
        }
        let eq = memchr::memchr(b'=', line).ok_or(CodecError::NoEquals)?;
        let (name, value) = (&line[..eq], &line[eq + 1..]);
        check_attr(name, value, attrs.len())?;
        let name = std::str::from_utf8(name).map_err(|_| CodecError::BadBytes)?;
        let value = std::str::from_utf8(value).map_err(|_| CodecError::BadBytes)?;
        attrs.push((Cow::Borrowed(name), Cow::Borrowed(value)));
    }
}

/// An action, in Postfix's `access(5)` words. There is deliberately no `OK`:
/// in `smtpd_recipient_restrictions` it would end the evaluation as a permit
/// (an open relay if placed badly); "fine" is `DUNNO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `DUNNO`: no opinion, go on with the next restriction.
    Dunno,
    /// `DEFER_IF_PERMIT <text>`: temporary failure unless rejected anyway.
    DeferIfPermit(String),
    /// `4NN …` or `5NN …`: a reply with its own code (checked when
    /// configured).
    Reply(String),
}

impl Action {
    /// The reply's bytes: `action=…\n\n`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(b"action=");
        match self {
            Action::Dunno => out.put_slice(b"DUNNO"),
            Action::DeferIfPermit(t) => {
                out.put_slice(b"DEFER_IF_PERMIT ");
                out.put_slice(clean(t).as_bytes());
            }
            Action::Reply(t) => out.put_slice(clean(t).as_bytes()),
        }
        out.put_slice(b"\n\n");
    }

    /// Read a reply (for tests and the load tool); `Ok(None)` = need more.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<String>, CodecError> {
        match PolicyRequest::decode(buf)? {
            Some(r) => Ok(Some(r.get("action").unwrap_or("").to_string())),
            None => Ok(None),
        }
    }
}

/// Reply text must stay on one line.
fn clean(t: &str) -> String {
    t.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Result<Vec<PolicyRequest<'static>>, CodecError>;

    fn req(pairs: &[(&str, &str)]) -> PolicyRequest<'static> {
        PolicyRequest {
            attrs: pairs
                .iter()
                .map(|(a, b)| (a.to_string().into(), b.to_string().into()))
                .collect(),
        }
    }

    fn pieces(parts: &[&[u8]]) -> Decoded {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in parts {
            buf.extend_from_slice(p);
            while let Some(r) = PolicyRequest::decode(&mut buf)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn check(input: &[u8], want: &Decoded) {
        assert_eq!(&pieces(&[input]), want, "whole");
        for at in 0..=input.len() {
            assert_eq!(&pieces(&[&input[..at], &input[at..]]), want, "split {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(&pieces(&bytes), want, "bytewise");
    }

    #[test]
    fn requests_decode_exactly_at_every_split() {
        let cases: Vec<(&[u8], Decoded)> =
            vec![
            (
                b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=a@x.org\nsize=0\n\n",
                Ok(vec![req(&[
                    ("request", "smtpd_access_policy"),
                    ("protocol_state", "RCPT"),
                    ("recipient", "a@x.org"),
                    ("size", "0"),
                ])]),
            ),
            (b"a=\nb==c\n\n", Ok(vec![req(&[("a", ""), ("b", "=c")])])),
            (b"\n", Ok(vec![req(&[])])),
            (b"a=1\n\nb=2\n\n", Ok(vec![req(&[("a", "1")]), req(&[("b", "2")])])),
            (b"a=1\n", Ok(vec![])),
            (b"novalue\n\n", Err(CodecError::NoEquals)),
            (b"=x\n\n", Err(CodecError::EmptyName)),
            (b"a=\0\n\n", Err(CodecError::BadBytes)),
            (b"a=\xff\n\n", Err(CodecError::BadBytes)),
        ];
        for (input, want) in &cases {
            check(input, want);
        }
    }

    #[test]
    fn limits_are_enforced_early() {
        let mut long = b"a=".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_FIELD + 1));
        long.extend_from_slice(b"\n\n");
        assert_eq!(pieces(&[&long]), Err(CodecError::FieldTooLong));
        // Without a newline at all, refused once past the longest line.
        let endless = vec![b'x'; 2 * MAX_FIELD + 2];
        assert_eq!(pieces(&[&endless]), Err(CodecError::FieldTooLong));
        let many: Vec<u8> = (0..=MAX_ATTRIBUTES)
            .flat_map(|i| format!("a{i}=1\n").into_bytes())
            .collect();
        assert_eq!(pieces(&[&many, b"\n"]), Err(CodecError::TooManyAttributes));
        // The longest legal field is fine.
        let mut ok = b"a=".to_vec();
        ok.extend(std::iter::repeat_n(b'x', MAX_FIELD));
        ok.extend_from_slice(b"\n\n");
        assert!(pieces(&[&ok]).is_ok());
    }

    #[test]
    fn first_occurrence_wins() {
        assert_eq!(req(&[("a", "1"), ("a", "2")]).get("a"), Some("1"));
        assert_eq!(req(&[]).get("a"), None);
    }

    #[test]
    fn actions_encode_exactly() {
        let cases = [
            (Action::Dunno, &b"action=DUNNO\n\n"[..]),
            (
                Action::DeferIfPermit("quota store down".into()),
                b"action=DEFER_IF_PERMIT quota store down\n\n",
            ),
            (
                Action::Reply("452 4.2.2 Mailbox full".into()),
                b"action=452 4.2.2 Mailbox full\n\n",
            ),
            (Action::Reply("452 x\ny".into()), b"action=452 x y\n\n"),
        ];
        for (a, bytes) in cases {
            let mut out = BytesMut::new();
            a.encode(&mut out);
            assert_eq!(&out[..], bytes);
            let mut back = out.clone();
            assert!(Action::decode(&mut back).unwrap().is_some());
        }
    }

    #[test]
    fn recycled_attributes_keep_their_allocation() {
        let mut spare = Vec::new();
        let mut cap = 0;
        for round in 0..3 {
            let input = format!("a=1\nb={round}\n\n");
            let (r, used) = PolicyRequest::parse_into(input.as_bytes(), spare)
                .unwrap()
                .unwrap();
            assert_eq!(used, input.len());
            assert_eq!(r.get("b"), Some(&*round.to_string()));
            spare = r.recycle();
            assert!(spare.is_empty());
            if round > 0 {
                assert_eq!(spare.capacity(), cap, "reused");
            }
            cap = spare.capacity();
        }
    }

    proptest::proptest! {
        /// The whole-request reading gives what the line-by-line reading
        /// gives, requests and errors alike.
        #[test]
        fn whole_request_reading_matches_line_by_line(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'=', b'\n', 0u8, 0xc3, 0xa9, 0xff]),
                0..40,
            )
        ) {
            let fast = PolicyRequest::parse(&bytes);
            let slow = parse_lines(&bytes, Vec::new());
            proptest::prop_assert_eq!(fast, slow);
        }

        #[test]
        fn round_trips(pairs in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,40}"), 0..30)) {
            let r = PolicyRequest { attrs: pairs.into_iter().map(|(a, b)| (a.into(), b.into())).collect() };
            let mut buf = BytesMut::new();
            r.encode(&mut buf);
            proptest::prop_assert_eq!(PolicyRequest::decode(&mut buf).unwrap(), Some(r));
            proptest::prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = PolicyRequest::decode(&mut buf) {}
        }
    }
}

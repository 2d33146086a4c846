//! Dict proxy protocol codec. Pure: no I/O.
//!
//! Lines end with LF; a line is a one-letter command followed directly by
//! TAB-separated fields, each escaped with `\x01` (`\x01` → `\x011`,
//! NUL → `\x010`, TAB → `\x01t`, CR → `\x01r`, LF → `\x01n`; Dovecot
//! `src/lib/strescape.c`). Commands (`src/lib-dict/dict-client.h`):
//!
//! ```text
//! H<major>\t<minor>\t<value_type>\t<user>\t<dict name>   hello, no reply
//! L<key>\t<user>                                       lookup
//! I<flags>\t<max_rows>\t<path>\t<user>                 iterate
//! B<id>\t<user>   S<id>\t<key>\t<value>   U<id>\t<key>   no reply
//! A<id>\t<key>\t<diff>   T<id>\t<secs>\t<nsecs>   R<id>  no reply
//! C<id>   D<id>                                       commit (D: async)
//! ```
//!
//! Replies: lookup `O<value>` / `M<values>` / `N` / `F<error>`; iterate rows
//! `O<key>\t<value>` ended by an empty line (or `F<error>`); commit
//! `O<id>` / `N<id>` / `F<id>\t<error>` / `W<id>\t<error>`, prefixed with `A`
//! for `D`. Replies are sent in command order, without async ids: the
//! client matches a reply without `+` to its oldest pending command.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

/// Longest command line accepted: Dovecot's clients never send longer
/// (`DICT_CLIENT_MAX_LINE_LENGTH`, 64 KiB, `src/lib-dict/dict-client.h`).
pub const MAX_LINE: usize = 64 * 1024;

/// Protocol majors understood: 3 (Dovecot 2.3) and 4 (2.4, "otherwise
/// compatible" per its developer docs).
pub const MAJORS: [u32; 2] = [3, 4];

/// Iterate flag: recurse into children (`DICT_ITERATE_FLAG_RECURSE`).
pub const ITER_RECURSE: u32 = 0x01;
/// Iterate flag: values are not needed (`DICT_ITERATE_FLAG_NO_VALUE`).
pub const ITER_NO_VALUE: u32 = 0x08;
/// Iterate flag: only the exact key (`DICT_ITERATE_FLAG_EXACT_KEY`).
pub const ITER_EXACT_KEY: u32 = 0x10;

/// Why a line is not a valid command; each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// No LF within [`MAX_LINE`] bytes.
    LineTooLong,
    /// Not UTF-8.
    NotUtf8,
    /// Empty line where a command was expected.
    Empty,
    /// A command letter ramdir does not know.
    UnknownCommand(char),
    /// Wrong number of fields, or a field that must be a number is not.
    BadArgs(char, String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::LineTooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            CodecError::NotUtf8 => f.write_str("line is not UTF-8"),
            CodecError::Empty => f.write_str("empty command line"),
            CodecError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            CodecError::BadArgs(c, why) => write!(f, "bad arguments for {c:?}: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// A command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `H`: protocol version and which dict.
    Hello {
        /// Protocol major.
        major: u32,
        /// Protocol minor.
        minor: u32,
        /// Value type (always 0, string, in 2.3).
        value_type: u32,
        /// Username (empty in 2.3; 2.2-era clients put it here).
        user: String,
        /// Dict name from the URI (`…:auth`).
        dict: String,
    },
    /// `L`: look a key up.
    Lookup {
        /// Key (`shared/…` or `priv/…`).
        key: String,
        /// User the `priv/` keys belong to.
        user: String,
    },
    /// `I`: iterate keys under a path.
    Iterate {
        /// `ITER_*` flags.
        flags: u32,
        /// Row limit (0: none).
        max_rows: u64,
        /// Path prefix.
        path: String,
        /// User.
        user: String,
    },
    /// `B`: begin a transaction.
    Begin {
        /// Transaction id (per connection).
        id: u32,
        /// User.
        user: String,
    },
    /// `S`: set a key.
    Set {
        /// Transaction id.
        id: u32,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// `U`: unset a key.
    Unset {
        /// Transaction id.
        id: u32,
        /// Key.
        key: String,
    },
    /// `A`: add to a counter.
    AtomicInc {
        /// Transaction id.
        id: u32,
        /// Key.
        key: String,
        /// Signed difference.
        diff: i64,
    },
    /// `T`: transaction timestamp (accepted, unused).
    Timestamp {
        /// Transaction id.
        id: u32,
        /// Seconds.
        secs: i64,
        /// Nanoseconds.
        nsecs: u32,
    },
    /// `R`: roll back.
    Rollback {
        /// Transaction id.
        id: u32,
    },
    /// `C` (`async_reply: false`) or `D` (`true`): commit.
    Commit {
        /// Transaction id.
        id: u32,
        /// Whether the reply is prefixed with `A`.
        async_reply: bool,
    },
}

/// Escape one field.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\0' => out.push_str("\x010"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
}

/// Unescape one field (an escape before an unknown letter yields the letter;
/// a trailing `\x01` is dropped, as Dovecot's `str_tabunescape` does).
pub fn unescape(s: &str) -> String {
    if !s.contains('\x01') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match it.next() {
            None => break,
            Some('0') => out.push('\0'),
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
        }
    }
    out
}

/// Take one complete line (without its LF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > MAX_LINE => Err(CodecError::LineTooLong),
        Some(i) => {
            let line = buf.split_to(i);
            buf.advance(1);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(CodecError::LineTooLong),
        None => Ok(None),
    }
}

impl Command {
    /// Take one command off the front of `buf`; `Ok(None)` = need more data.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        let Some(line) = take_line(buf)? else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&line).map_err(|_| CodecError::NotUtf8)?;
        Command::parse(line).map(Some)
    }

    /// Parse one line (without LF).
    pub fn parse(line: &str) -> Result<Command, CodecError> {
        let mut chars = line.chars();
        let cmd = chars.next().ok_or(CodecError::Empty)?;
        let rest = chars.as_str();
        let fields: Vec<String> = rest.split('\t').map(unescape).collect();
        let bad = |why: &str| CodecError::BadArgs(cmd, why.to_string());
        let want = |n: usize| -> Result<(), CodecError> {
            if fields.len() < n {
                Err(bad(&format!("want {n} fields, got {}", fields.len())))
            } else {
                Ok(())
            }
        };
        let num = |i: usize| -> Result<u32, CodecError> {
            fields[i]
                .parse()
                .map_err(|_| bad(&format!("field {} is not a number", i + 1)))
        };
        Ok(match cmd {
            'H' => {
                want(5)?;
                Command::Hello {
                    major: num(0)?,
                    minor: num(1)?,
                    value_type: num(2)?,
                    user: fields[3].clone(),
                    dict: fields[4].clone(),
                }
            }
            'L' => {
                want(1)?;
                Command::Lookup {
                    key: fields[0].clone(),
                    user: fields.get(1).cloned().unwrap_or_default(),
                }
            }
            'I' => {
                want(3)?;
                Command::Iterate {
                    flags: num(0)?,
                    max_rows: fields[1]
                        .parse()
                        .map_err(|_| bad("max_rows is not a number"))?,
                    path: fields[2].clone(),
                    user: fields.get(3).cloned().unwrap_or_default(),
                }
            }
            'B' => {
                want(1)?;
                Command::Begin {
                    id: num(0)?,
                    user: fields.get(1).cloned().unwrap_or_default(),
                }
            }
            'S' => {
                want(3)?;
                Command::Set {
                    id: num(0)?,
                    key: fields[1].clone(),
                    value: fields[2].clone(),
                }
            }
            'U' => {
                want(2)?;
                Command::Unset {
                    id: num(0)?,
                    key: fields[1].clone(),
                }
            }
            'A' => {
                want(3)?;
                Command::AtomicInc {
                    id: num(0)?,
                    key: fields[1].clone(),
                    diff: fields[2].parse().map_err(|_| bad("diff is not a number"))?,
                }
            }
            'T' => {
                want(3)?;
                Command::Timestamp {
                    id: num(0)?,
                    secs: fields[1].parse().map_err(|_| bad("secs is not a number"))?,
                    nsecs: num(2)?,
                }
            }
            'R' => Command::Rollback { id: num(0)? },
            'C' => Command::Commit {
                id: num(0)?,
                async_reply: false,
            },
            'D' => Command::Commit {
                id: num(0)?,
                async_reply: true,
            },
            other => return Err(CodecError::UnknownCommand(other)),
        })
    }

    /// The command's line with its LF (for tests and the load tool).
    pub fn encode(&self, out: &mut BytesMut) {
        let mut s = String::new();
        let f = |s: &mut String, v: &str| {
            s.push('\t');
            escape(v, s);
        };
        match self {
            Command::Hello {
                major,
                minor,
                value_type,
                user,
                dict,
            } => {
                s.push_str(&format!("H{major}\t{minor}\t{value_type}"));
                f(&mut s, user);
                f(&mut s, dict);
            }
            Command::Lookup { key, user } => {
                s.push('L');
                escape(key, &mut s);
                f(&mut s, user);
            }
            Command::Iterate {
                flags,
                max_rows,
                path,
                user,
            } => {
                s.push_str(&format!("I{flags}\t{max_rows}"));
                f(&mut s, path);
                f(&mut s, user);
            }
            Command::Begin { id, user } => {
                s.push_str(&format!("B{id}"));
                f(&mut s, user);
            }
            Command::Set { id, key, value } => {
                s.push_str(&format!("S{id}"));
                f(&mut s, key);
                f(&mut s, value);
            }
            Command::Unset { id, key } => {
                s.push_str(&format!("U{id}"));
                f(&mut s, key);
            }
            Command::AtomicInc { id, key, diff } => {
                s.push_str(&format!("A{id}"));
                f(&mut s, key);
                s.push_str(&format!("\t{diff}"));
            }
            Command::Timestamp { id, secs, nsecs } => {
                s.push_str(&format!("T{id}\t{secs}\t{nsecs}"))
            }
            Command::Rollback { id } => s.push_str(&format!("R{id}")),
            Command::Commit {
                id,
                async_reply: false,
            } => s.push_str(&format!("C{id}")),
            Command::Commit {
                id,
                async_reply: true,
            } => s.push_str(&format!("D{id}")),
        }
        s.push('\n');
        out.put_slice(s.as_bytes());
    }
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitResult {
    /// `O`: committed.
    Ok,
    /// `N`: an atomic increment found no counter.
    NotFound,
    /// `F`: failed, nothing written.
    Fail(String),
    /// `W`: the write may or may not have happened.
    WriteUncertain(String),
}

/// A reply to the client (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Lookup found a value.
    Value(String),
    /// Lookup found nothing.
    NotFound,
    /// Lookup or iteration failed.
    Fail(String),
    /// One iteration row.
    Row {
        /// Key.
        key: String,
        /// Value (empty with `ITER_NO_VALUE`).
        value: String,
    },
    /// End of an iteration (empty line).
    IterEnd,
    /// Result of commit `id`.
    Commit {
        /// Transaction id.
        id: u32,
        /// Prefix with `A` (reply to `D`).
        async_reply: bool,
        /// Result.
        result: CommitResult,
    },
}

impl Reply {
    /// Append the reply's line with its LF.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut s = String::new();
        match self {
            Reply::Value(v) => {
                s.push('O');
                escape(v, &mut s);
            }
            Reply::NotFound => s.push('N'),
            Reply::Fail(e) => {
                s.push('F');
                escape(e, &mut s);
            }
            Reply::Row { key, value } => {
                s.push('O');
                escape(key, &mut s);
                // The client needs a value field even when it asked for none.
                s.push('\t');
                escape(value, &mut s);
            }
            Reply::IterEnd => {}
            Reply::Commit {
                id,
                async_reply,
                result,
            } => {
                if *async_reply {
                    s.push('A');
                }
                match result {
                    CommitResult::Ok => s.push_str(&format!("O{id}")),
                    CommitResult::NotFound => s.push_str(&format!("N{id}")),
                    CommitResult::Fail(e) => {
                        s.push_str(&format!("F{id}\t"));
                        escape(e, &mut s);
                    }
                    CommitResult::WriteUncertain(e) => {
                        s.push_str(&format!("W{id}\t"));
                        escape(e, &mut s);
                    }
                }
            }
        }
        s.push('\n');
        out.put_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Result<Vec<Command>, CodecError>;

    fn decode_pieces(pieces: &[&[u8]]) -> Decoded {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            while let Some(c) = Command::decode(&mut buf)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn check(input: &[u8], want: &Decoded) {
        assert_eq!(&decode_pieces(&[input]), want, "whole {input:?}");
        for at in 0..=input.len() {
            assert_eq!(
                &decode_pieces(&[&input[..at], &input[at..]]),
                want,
                "split {at}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(&decode_pieces(&bytes), want, "bytewise");
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn every_command_decodes_exactly_at_every_split() {
        let cases: Vec<(&[u8], Decoded)> = vec![
            (
                b"H3\t2\t0\t\tauth\n",
                Ok(vec![Command::Hello {
                    major: 3,
                    minor: 2,
                    value_type: 0,
                    user: s(""),
                    dict: s("auth"),
                }]),
            ),
            (
                b"Lshared/passdb/a@x.org\ta@x.org\n",
                Ok(vec![Command::Lookup {
                    key: s("shared/passdb/a@x.org"),
                    user: s("a@x.org"),
                }]),
            ),
            (
                b"I8\t0\tshared/userdb/\t\n",
                Ok(vec![Command::Iterate {
                    flags: 8,
                    max_rows: 0,
                    path: s("shared/userdb/"),
                    user: s(""),
                }]),
            ),
            (
                b"B1\ta@x.org\n",
                Ok(vec![Command::Begin {
                    id: 1,
                    user: s("a@x.org"),
                }]),
            ),
            (
                b"S1\tpriv/quota/storage\t100\n",
                Ok(vec![Command::Set {
                    id: 1,
                    key: s("priv/quota/storage"),
                    value: s("100"),
                }]),
            ),
            (
                b"U1\tpriv/quota/storage\n",
                Ok(vec![Command::Unset {
                    id: 1,
                    key: s("priv/quota/storage"),
                }]),
            ),
            (
                b"A1\tpriv/quota/storage\t-512\n",
                Ok(vec![Command::AtomicInc {
                    id: 1,
                    key: s("priv/quota/storage"),
                    diff: -512,
                }]),
            ),
            (
                b"T1\t1700000000\t5\n",
                Ok(vec![Command::Timestamp {
                    id: 1,
                    secs: 1_700_000_000,
                    nsecs: 5,
                }]),
            ),
            (b"R7\n", Ok(vec![Command::Rollback { id: 7 }])),
            (
                b"C7\nD8\n",
                Ok(vec![
                    Command::Commit {
                        id: 7,
                        async_reply: false,
                    },
                    Command::Commit {
                        id: 8,
                        async_reply: true,
                    },
                ]),
            ),
            // Escapes are undone after splitting on TAB.
            (
                b"Lshared/x\x01ty\x01n\x011\x010\x01r\ta\n",
                Ok(vec![Command::Lookup {
                    key: s("shared/x\ty\n\x01\0\r"),
                    user: s("a"),
                }]),
            ),
            (b"Q1\n", Err(CodecError::UnknownCommand('Q'))),
            (b"\n", Err(CodecError::Empty)),
            (
                b"Bx\n",
                Err(CodecError::BadArgs('B', s("field 1 is not a number"))),
            ),
            (
                b"H3\t2\n",
                Err(CodecError::BadArgs('H', s("want 5 fields, got 2"))),
            ),
            (
                b"A1\tk\tlots\n",
                Err(CodecError::BadArgs('A', s("diff is not a number"))),
            ),
            (b"L\xff\n", Err(CodecError::NotUtf8)),
            (b"Lpartial", Ok(vec![])),
        ];
        for (input, want) in &cases {
            check(input, want);
        }
    }

    #[test]
    fn overlong_line_is_refused_before_its_end_arrives() {
        let mut buf = BytesMut::from(&vec![b'L'; MAX_LINE + 1][..]);
        assert_eq!(Command::decode(&mut buf), Err(CodecError::LineTooLong));
        let mut line = vec![b'L'; MAX_LINE];
        line.push(b'\n');
        let mut buf = BytesMut::from(&line[..]);
        assert!(Command::decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn replies_encode_exactly() {
        let cases = [
            (Reply::Value(s("{\"uid\":5000}")), &b"O{\"uid\":5000}\n"[..]),
            (Reply::Value(s("a\tb\nc\x01")), b"Oa\x01tb\x01nc\x011\n"),
            (Reply::NotFound, b"N\n"),
            (Reply::Fail(s("store down")), b"Fstore down\n"),
            (
                Reply::Row {
                    key: s("shared/userdb/a@x.org"),
                    value: s(""),
                },
                b"Oshared/userdb/a@x.org\t\n",
            ),
            (Reply::IterEnd, b"\n"),
            (
                Reply::Commit {
                    id: 3,
                    async_reply: false,
                    result: CommitResult::Ok,
                },
                b"O3\n",
            ),
            (
                Reply::Commit {
                    id: 3,
                    async_reply: false,
                    result: CommitResult::NotFound,
                },
                b"N3\n",
            ),
            (
                Reply::Commit {
                    id: 3,
                    async_reply: true,
                    result: CommitResult::Ok,
                },
                b"AO3\n",
            ),
            (
                Reply::Commit {
                    id: 4,
                    async_reply: false,
                    result: CommitResult::Fail(s("disk\tfull")),
                },
                b"F4\tdisk\x01tfull\n",
            ),
            (
                Reply::Commit {
                    id: 4,
                    async_reply: false,
                    result: CommitResult::WriteUncertain(s("x")),
                },
                b"W4\tx\n",
            ),
        ];
        for (reply, bytes) in cases {
            let mut out = BytesMut::new();
            reply.encode(&mut out);
            assert_eq!(&out[..], bytes, "{reply:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn escape_round_trips(v in "\\PC*|[\\x00-\\x02\\t\\r\\n a]{0,20}") {
            let mut e = String::new();
            escape(&v, &mut e);
            proptest::prop_assert!(!e.contains(['\t', '\n', '\r', '\0']));
            proptest::prop_assert_eq!(unescape(&e), v);
        }

        #[test]
        fn commands_round_trip(key in "[ -~\\t\\n\\x01]{0,40}", user in "[a-z@.\\t]{0,20}", id in 0u32..1000, diff in proptest::num::i64::ANY) {
            for cmd in [
                Command::Lookup { key: key.clone(), user: user.clone() },
                Command::Begin { id, user: user.clone() },
                Command::AtomicInc { id, key: key.clone(), diff },
                Command::Set { id, key: key.clone(), value: user.clone() },
            ] {
                let mut buf = BytesMut::new();
                cmd.encode(&mut buf);
                proptest::prop_assert_eq!(Command::decode(&mut buf).unwrap(), Some(cmd));
                proptest::prop_assert!(buf.is_empty());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Command::decode(&mut buf) {}
        }
    }
}

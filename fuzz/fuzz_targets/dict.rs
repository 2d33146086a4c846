//! Dovecot dict proxy commands (`ramdir_dovecot::codec`), protocol 3
//! (Dovecot 2.3) and 4 (2.4: `B` with an expiry, `V`) alike.
//!
//! References: the whole input decodes as the input fed in pieces (every
//! byte a split point for short inputs); every decoded command encodes to
//! a line that decodes to the same command; `unescape` undoes `escape`,
//! and `put_escaped` writes what `escape` does.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ramdir_dovecot::codec::{CodecError, Command, escape, put_escaped, unescape};
use ramdir_fuzz::{split, whole};

/// Decode lines until more data is needed. A bad line is reported and
/// dropped by `decode` (the server closes the connection on it; here the
/// following lines are decoded too, to go on fuzzing the framing).
fn drain(
    buf: &mut BytesMut,
    out: &mut Vec<Result<Command<'static>, CodecError>>,
) -> Option<CodecError> {
    loop {
        let before = buf.len();
        match Command::decode(buf) {
            Ok(Some(m)) => out.push(Ok(m)),
            Ok(None) => return None,
            Err(e) if buf.len() < before => out.push(Err(e)),
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = whole(data, drain);
    let s = split(data, drain);
    assert_eq!(w, s, "whole and split differ");
    for c in w.0.iter().flatten() {
        let mut b = BytesMut::new();
        c.encode(&mut b);
        let again = Command::decode(&mut b).expect("re-encoded command decodes");
        assert_eq!(again.as_ref(), Some(c), "{b:?}");
        assert!(b.is_empty());
    }
    let text = String::from_utf8_lossy(data);
    let mut e = String::new();
    escape(&text, &mut e);
    assert_eq!(unescape(&e), text);
    let mut p = BytesMut::new();
    put_escaped(&text, &mut p);
    assert_eq!(&p[..], e.as_bytes());
    assert!(!e.contains(['\t', '\n', '\r', '\0']));
});

//! Socketmap netstrings (`ramdir_postfix::socketmap::codec`): requests as
//! the server reads them, replies as the query tool reads them.
//!
//! References: decoding the input whole equals decoding it fed in pieces
//! (every byte a split point for short inputs), errors included; every
//! decoded message encodes to bytes that decode to the same message; a
//! reply's encoding is its payload as a netstring.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ramdir_fuzz::{split, whole};
use ramdir_postfix::socketmap::codec::{CodecError, Reply, Request, encode_netstring};

/// A drain for [`whole`] and [`split`]: decode messages with `dec` off
/// `buf` until it needs more data or fails.
fn drain<T>(
    dec: fn(&mut BytesMut) -> Result<Option<T>, CodecError>,
) -> impl FnMut(&mut BytesMut, &mut Vec<T>) -> Option<CodecError> {
    move |buf, out| loop {
        match dec(buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = whole(data, drain(Request::decode));
    let s = split(data, drain(Request::decode));
    assert_eq!(w, s, "requests: whole and split differ");
    for r in &w.0 {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        let again = Request::decode(&mut b).expect("re-encoded request decodes");
        assert_eq!(again.as_ref(), Some(r));
        assert!(b.is_empty());
    }

    let w = whole(data, drain(Reply::decode));
    let s = split(data, drain(Reply::decode));
    assert_eq!(w, s, "replies: whole and split differ");
    for r in &w.0 {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        let mut p = BytesMut::new();
        encode_netstring(r.payload().as_bytes(), &mut p);
        assert_eq!(b, p, "encode and payload agree");
        let again = Reply::decode(&mut b).expect("re-encoded reply decodes");
        assert_eq!(again.as_ref(), Some(r));
    }
});

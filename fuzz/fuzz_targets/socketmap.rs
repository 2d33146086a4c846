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
use ramdir_fuzz::chunks;
use ramdir_postfix::socketmap::codec::{CodecError, Reply, Request, encode_netstring};

type Decoded<T> = (Vec<T>, Option<CodecError>, usize);

/// Decode messages off `buf` until it needs more data or fails.
fn drain<T>(
    buf: &mut BytesMut,
    out: &mut Vec<T>,
    dec: fn(&mut BytesMut) -> Result<Option<T>, CodecError>,
) -> Option<CodecError> {
    loop {
        match dec(buf) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn whole<T>(data: &[u8], dec: fn(&mut BytesMut) -> Result<Option<T>, CodecError>) -> Decoded<T> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    let err = drain(&mut buf, &mut out, dec);
    (out, err, buf.len())
}

fn split<T>(data: &[u8], dec: fn(&mut BytesMut) -> Result<Option<T>, CodecError>) -> Decoded<T> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for n in chunks(data) {
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        if let Some(e) = drain(&mut buf, &mut out, dec) {
            // The rest was never read by the server: count it as left over.
            return (out, Some(e), buf.len() + data.len() - pos);
        }
    }
    (out, None, buf.len())
}

fuzz_target!(|data: &[u8]| {
    let w = whole(data, Request::decode);
    let s = split(data, Request::decode);
    assert_eq!(w, s, "requests: whole and split differ");
    for r in &w.0 {
        let mut b = BytesMut::new();
        r.encode(&mut b);
        let again = Request::decode(&mut b).expect("re-encoded request decodes");
        assert_eq!(again.as_ref(), Some(r));
        assert!(b.is_empty());
    }

    let w = whole(data, Reply::decode);
    let s = split(data, Reply::decode);
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

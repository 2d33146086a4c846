//! Reading BER (the subset LDAP uses, RFC 4511 5.1) in place, from bytes.
//!
//! Why: the full load reads a million entries; ldap3 turns each into a
//! tree of small heap allocations. Read here, an entry is a slice of the
//! page it arrived in, and its values are sub-slices of it.
//!
//! LDAP's BER is definite-length only, and every tag it uses has a number
//! below 31 (one identifier byte); anything else is malformed here.

/// Bit of an identifier byte marking a constructed element.
pub const CONSTRUCTED: u8 = 0x20;
/// Identifier bits that hold the tag number; all ones means a longer tag.
const TAG_NUMBER: u8 = 0x1f;
/// Most length bytes in a long-form length: four give 4 GiB, more than any
/// message ramdir accepts ([`crate::bulk::MAX_MESSAGE`]).
const MAX_LENGTH_BYTES: usize = 4;

/// The bytes are not BER as LDAP uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed BER")
    }
}

/// The start of an element: its identifier byte, how many bytes its
/// identifier and length take, and how long its contents are. `Ok(None)`
/// when `b` is too short to tell yet.
pub fn header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, Malformed> {
    let (Some(&tag), Some(&first)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if tag & TAG_NUMBER == TAG_NUMBER {
        return Err(Malformed);
    }
    if first < 0x80 {
        return Ok(Some((tag, 2, usize::from(first))));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > MAX_LENGTH_BYTES {
        // 0x80 is the indefinite form, which LDAP forbids.
        return Err(Malformed);
    }
    let Some(bytes) = b.get(2..2 + n) else {
        return Ok(None);
    };
    let len = bytes.iter().fold(0usize, |l, &x| l << 8 | usize::from(x));
    Ok(Some((tag, 2 + n, len)))
}

/// The elements of a constructed element's contents, one after another.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    rest: &'a [u8],
}

impl<'a> Elements<'a> {
    /// The elements in `contents`.
    pub fn new(contents: &'a [u8]) -> Elements<'a> {
        Elements { rest: contents }
    }

    /// The next element: its identifier byte and its contents.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<(u8, &'a [u8])>, Malformed> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (tag, hdr, len) = header(self.rest)?.ok_or(Malformed)?;
        let end = hdr.checked_add(len).ok_or(Malformed)?;
        let contents = self.rest.get(hdr..end).ok_or(Malformed)?;
        self.rest = &self.rest[end..];
        Ok(Some((tag, contents)))
    }

    /// What is left after the elements taken so far.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// The next element, which must be there.
    pub fn expect(&mut self) -> Result<(u8, &'a [u8]), Malformed> {
        self.next()?.ok_or(Malformed)
    }
}

/// Check that `b` is a run of well-formed elements, and so, recursively,
/// is the contents of every constructed one. For the elements a reader
/// skips (those after the ones it knows): ldap3's decoder, which reads
/// every message of the live sync, refuses the whole message when any of
/// them is malformed, so the full load must too. Iterative, so deep nesting
/// cannot overflow the stack.
pub fn check_all(b: &[u8]) -> Result<(), Malformed> {
    let mut todo = vec![b];
    while let Some(b) = todo.pop() {
        let mut e = Elements::new(b);
        while let Some((tag, contents)) = e.next()? {
            if tag & CONSTRUCTED != 0 {
                todo.push(contents);
            }
        }
    }
    Ok(())
}

/// A non-negative INTEGER or ENUMERATED's contents (result codes, message
/// ids, sizes).
pub fn uint(contents: &[u8]) -> Result<u64, Malformed> {
    if contents.is_empty() || contents.len() > 8 || contents[0] & 0x80 != 0 {
        return Err(Malformed);
    }
    Ok(contents.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_elements() {
        assert_eq!(header(&[0x30]), Ok(None));
        assert_eq!(header(&[0x30, 0x03, 1]), Ok(Some((0x30, 2, 3))));
        assert_eq!(header(&[0x30, 0x82, 0x01]), Ok(None));
        assert_eq!(header(&[0x30, 0x82, 0x01, 0x00]), Ok(Some((0x30, 4, 256))));
        assert_eq!(header(&[0x30, 0x80]), Err(Malformed));
        assert_eq!(header(&[0x30, 0x85, 1, 1, 1, 1, 1]), Err(Malformed));
        assert_eq!(header(&[0x1f, 0x01]), Err(Malformed));
        let b = [0x04, 0x02, b'h', b'i', 0x31, 0x00];
        let mut e = Elements::new(&b);
        assert_eq!(e.next(), Ok(Some((0x04, &b"hi"[..]))));
        assert_eq!(e.expect(), Ok((0x31, &b""[..])));
        assert_eq!(e.next(), Ok(None));
        assert_eq!(Elements::new(&[0x04, 0x05, 1]).next(), Err(Malformed));
        assert_eq!(uint(&[0x01, 0x00]), Ok(256));
        assert_eq!(uint(&[]), Err(Malformed));
        assert_eq!(uint(&[0xff]), Err(Malformed));
    }
}

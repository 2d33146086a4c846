//! Key generation: the `printf`-like address pattern shared by `gen-passwd`
//! and `socketmap`, a deterministic pseudo-random generator, and the
//! pre-encoded request set the client sends from.

use std::io::BufRead;
use std::path::Path;

use bytes::BytesMut;
use ramdir_postfix::socketmap::codec::Request;

/// Default address pattern: user number, then domain number.
pub const DEFAULT_PATTERN: &str = "user%07d@domain%d.test";

/// One piece of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Copied as is.
    Literal(String),
    /// A number: `%d`, `%7d` (space padded) or `%07d` (zero padded).
    Number { width: usize, zero: bool },
}

/// An address pattern such as `user%07d@domain%d.test`.
///
/// The first `%d` is the item number `i`, the second (if any) is its domain
/// number `i % domains`; `%%` is a literal `%`. `gen-passwd` and the
/// `socketmap` client use the same rule, so a pattern and a domain count
/// name the same addresses on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pieces: Vec<Piece>,
}

impl KeyPattern {
    /// Parse a pattern; at most two numbers.
    pub fn parse(s: &str) -> Result<KeyPattern, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        let mut numbers = 0;
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                lit.push('%');
                continue;
            }
            let mut spec = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                spec.push(d);
                chars.next();
            }
            if chars.next() != Some('d') {
                return Err(format!(
                    "pattern {s:?}: only %d, %Nd, %0Nd and %% are understood"
                ));
            }
            numbers += 1;
            if numbers > 2 {
                return Err(format!("pattern {s:?}: at most two numbers (item, domain)"));
            }
            if !lit.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Number {
                zero: spec.starts_with('0'),
                width: spec.parse().unwrap_or(0),
            });
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(KeyPattern { pieces })
    }

    /// Append the key of item `i` (domain `i % domains`) to `out`.
    pub fn render_into(&self, i: u64, domains: u64, out: &mut Vec<u8>) {
        let mut values = [i, i % domains.max(1)].into_iter();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Number { width, zero } => {
                    let v = values.next().unwrap_or(0);
                    let mut digits = [0u8; 20];
                    let mut n = v;
                    let mut len = 0;
                    loop {
                        digits[len] = b'0' + (n % 10) as u8;
                        len += 1;
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    let pad = if *zero { b'0' } else { b' ' };
                    out.extend(std::iter::repeat_n(pad, width.saturating_sub(len)));
                    out.extend(digits[..len].iter().rev());
                }
            }
        }
    }

    /// The key of item `i` as a string.
    pub fn render_string(&self, i: u64, domains: u64) -> String {
        let mut v = Vec::with_capacity(48);
        self.render_into(i, domains, &mut v);
        String::from_utf8(v).expect("pattern and digits are UTF-8")
    }
}

/// xorshift64* (Vigna): fast, deterministic, good enough to spread keys.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for stream `stream` of run `seed`; distinct streams give
    /// unrelated sequences.
    pub fn new(seed: u64, stream: u64) -> XorShift {
        // SplitMix64 of the inputs, so nearby seeds do not correlate and the
        // state is never zero.
        let mut z = seed
            .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (multiply-shift; `n` > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Every request the client may send, encoded once up front with the
/// socketmap codec into one buffer, so sending costs no formatting and no
/// allocation.
#[derive(Debug)]
pub struct KeySet {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl KeySet {
    /// Requests for `keys` in `map`.
    pub fn from_keys<'a>(map: &str, keys: impl Iterator<Item = &'a str>) -> KeySet {
        let mut set = KeySet {
            bytes: Vec::new(),
            ends: Vec::new(),
        };
        let mut buf = BytesMut::with_capacity(256);
        for k in keys {
            set.push(map, k, &mut buf);
        }
        set
    }

    fn push(&mut self, map: &str, key: &str, buf: &mut BytesMut) {
        buf.clear();
        Request::new(map, key).encode(buf);
        self.bytes.extend_from_slice(buf);
        self.ends.push(self.bytes.len());
    }

    /// Requests for items `0..count` of `pattern`.
    pub fn from_pattern(map: &str, pattern: &KeyPattern, domains: u64, count: u64) -> KeySet {
        KeySet::build(pattern, domains, count, 48, |key, buf| {
            Request::new(map, key).encode(buf);
        })
    }

    /// Requests of any protocol for items `0..count` of `pattern`:
    /// `encode(key, buf)` appends the request for one rendered key to an
    /// empty `buf` (with that protocol's codec); `typical` is a size hint in
    /// bytes per request.
    pub fn build(
        pattern: &KeyPattern,
        domains: u64,
        count: u64,
        typical: usize,
        mut encode: impl FnMut(&str, &mut BytesMut),
    ) -> KeySet {
        let mut set = KeySet {
            bytes: Vec::with_capacity(count as usize * typical),
            ends: Vec::with_capacity(count as usize),
        };
        let mut buf = BytesMut::with_capacity(1024);
        let mut key = Vec::with_capacity(64);
        for i in 0..count {
            key.clear();
            pattern.render_into(i, domains, &mut key);
            buf.clear();
            encode(
                std::str::from_utf8(&key).expect("pattern is UTF-8"),
                &mut buf,
            );
            set.bytes.extend_from_slice(&buf);
            set.ends.push(set.bytes.len());
        }
        set
    }

    /// Requests for the keys in a file, one per line (blank lines and `#`
    /// comments skipped).
    pub fn from_file(map: &str, path: &Path) -> std::io::Result<KeySet> {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut lines = Vec::new();
        for line in file.lines() {
            let line = line?;
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                lines.push(t.to_string());
            }
        }
        Ok(KeySet::from_keys(map, lines.iter().map(String::as_str)))
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The encoded request number `i`.
    #[inline]
    pub fn request(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_renders_item_and_domain() {
        let p = KeyPattern::parse(DEFAULT_PATTERN).unwrap();
        assert_eq!(p.render_string(0, 100), "user0000000@domain0.test");
        assert_eq!(p.render_string(1234, 100), "user0001234@domain34.test");
        assert_eq!(p.render_string(12_345_678, 1), "user12345678@domain0.test");
        let q = KeyPattern::parse("%%x%3d-%d%%").unwrap();
        assert_eq!(q.render_string(7, 5), "%x  7-2%");
        assert_eq!(
            KeyPattern::parse("plain").unwrap().render_string(9, 3),
            "plain"
        );
        assert!(KeyPattern::parse("%s").is_err());
        assert!(KeyPattern::parse("%d%d%d").is_err());
    }

    #[test]
    fn keyset_holds_codec_encoded_requests() {
        let p = KeyPattern::parse("u%d@d%d.test").unwrap();
        let set = KeySet::from_pattern("mailboxes", &p, 3, 5);
        assert_eq!(set.len(), 5);
        assert_eq!(set.request(0), b"20:mailboxes u0@d0.test,");
        assert_eq!(set.request(4), b"20:mailboxes u4@d1.test,");
        let mut buf = BytesMut::from(set.request(2));
        let req = Request::decode(&mut buf).unwrap().unwrap();
        assert_eq!(req, Request::new("mailboxes", "u2@d2.test"));
    }

    #[test]
    fn xorshift_is_deterministic_and_spreads() {
        let mut a = XorShift::new(42, 0);
        let mut b = XorShift::new(42, 0);
        let mut c = XorShift::new(42, 1);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        // Roughly uniform over 10 buckets.
        let mut hits = [0u32; 10];
        for _ in 0..100_000 {
            hits[a.below(10) as usize] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }
}

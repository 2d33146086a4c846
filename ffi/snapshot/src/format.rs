//! The snapshot file layout, and the pure code that reads it from bytes.
//!
//! Every number is little-endian. A table file is:
//!
//! ```text
//! 0    header (HEADER_LEN = 128 bytes)
//!        0 magic "RAMDIRSN"       8 version u32        12 file kind u32 (0 base, 1 delta)
//!       16 generation u64        24 base generation u64 (a base names itself)
//!       32 file length u64       40 bucket count u64 (a power of two)
//!       48 buckets offset u64    56 data offset u64     64 data length u64
//!       72 flags u64             80 delimiter offset u64 (in data)   88 delimiter length u64
//!       96 entries u64          104 reserved (16 bytes)
//!      120 FNV-1a 64 of bytes 0..120
//! buckets  (bucket count + 1) × u32: where each bucket's records start in
//!          data, in units of 8 bytes (the last one: where records end)
//! data     records grouped by bucket, each 8-aligned:
//!            kind u8, flags u8 (1 = removed), key length u16, value length u32,
//!            hash u64, key, NUL, value (list items separated by NUL), NUL
//!          then the recipient delimiter
//! ```
//!
//! A key's records are in bucket `hash & (buckets - 1)`, where `hash` is
//! [`hash`] of the record kind and the key. Why buckets rather than an
//! open-addressing slot array: the bucket index (4 bytes per two records,
//! 2 MB at a million) stays in the CPU caches, and a bucket's records are
//! contiguous, so a lookup costs about one miss to memory where a slot
//! array plus records (or cdb's hash table plus records) costs two.
//!
//! The file is treated as hostile: every offset and length is checked
//! against the file before use, a bucket scan advances at least one record
//! head per step and stops at the bucket's end, and text is validated as
//! UTF-8 on use; any violation is a [`FormatError`], which readers turn into
//! "temporary failure", never into "not found" and never into a panic.

use std::fmt;

/// First bytes of a table file.
pub const MAGIC: [u8; 8] = *b"RAMDIRSN";
/// Format version; a reader refuses any other. Any change to the layout or
/// to [`hash`] must change it (a reader that hashed differently would miss).
pub const VERSION: u32 = 2;
/// Size of the table file header.
pub const HEADER_LEN: usize = 128;
/// First bytes of the control file.
pub const CONTROL_MAGIC: [u8; 8] = *b"RAMDIRCT";
/// Size of the control file: one page, never truncated or replaced while
/// the daemon runs (a reader maps it for the life of its process).
pub const CONTROL_LEN: usize = 4096;
/// Offset of the control word (`generation << 8 | state`) in the control
/// file: 8-aligned, so it is one atomic load.
pub const CONTROL_WORD: usize = 16;
/// Control state: the published generation answers.
pub const STATE_OK: u64 = 0;
/// Control state: every lookup fails temporarily (Postfix defers).
pub const STATE_UNAVAILABLE: u64 = 1;

/// Header flag: a miss is a real "not found".
pub const FLAG_AUTHORITATIVE: u64 = 1;
/// Header flag: `Settings::normalizer.fold_local_part`.
pub const FLAG_FOLD_LOCAL_PART: u64 = 2;
/// Header flag: `Settings::propagate_extension`.
pub const FLAG_PROPAGATE_EXTENSION: u64 = 4;
/// Header flag: `Settings::implicit_sender_logins`.
pub const FLAG_IMPLICIT_SENDER_LOGINS: u64 = 8;

/// Record flag: the key was removed since the base (delta files only).
pub const RECORD_REMOVED: u8 = 1;
/// Fixed part of a record.
const RECORD_HEAD: usize = 16;
/// Records per bucket, on average (at least this many buckets' worth).
const BUCKET_LOAD: usize = 2;

/// The name of the file that holds generation `generation`.
pub fn file_name(generation: u64) -> String {
    format!("snap-{generation:016x}")
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A user login (value empty).
    User = 1,
    /// An alias key (`a@x` or `@x`) and its targets.
    Alias = 2,
    /// A sender-login key and its logins.
    Sender = 3,
    /// A domain that is ours (value empty).
    Domain = 4,
    /// An address several source entries claim; the value is the claim
    /// count in decimal. Every lookup reaching it fails temporarily.
    Ambiguous = 5,
}

/// Whether a table file stands alone or amends a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Every entry of the directory.
    Base,
    /// The entries changed since its base, removals included.
    Delta,
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than its header or than the header says.
    Truncated,
    /// Not a snapshot file, or another version.
    BadMagic,
    /// The header checksum does not match.
    BadChecksum,
    /// An offset or length points outside the file, or a text is not UTF-8.
    Corrupt(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Truncated => f.write_str("snapshot file truncated"),
            FormatError::BadMagic => f.write_str("not a ramdir snapshot file of this version"),
            FormatError::BadChecksum => f.write_str("snapshot header checksum mismatch"),
            FormatError::Corrupt(what) => write!(f, "corrupt snapshot file: {what}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The slot hash: stable across processes, builds and versions (it is part
/// of the file format). Eight bytes per multiply, then a finaliser so the
/// low bits that pick a slot depend on every input byte.
pub fn hash(kind: Kind, key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (kind as u64) ^ (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// FNV-1a 64 of the header bytes it protects.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A parsed, checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Base or delta.
    pub kind: FileKind,
    /// This file's generation.
    pub generation: u64,
    /// The base this file applies to (itself for a base).
    pub base_generation: u64,
    /// Total length.
    pub file_len: u64,
    /// Number of buckets (a power of two).
    pub bucket_count: u64,
    /// Where the bucket index starts.
    pub buckets_off: u64,
    /// Where the records start.
    pub data_off: u64,
    /// Length of the record area.
    pub data_len: u64,
    /// `FLAG_*`.
    pub flags: u64,
    /// The recipient delimiter characters, in data.
    pub delim_off: u64,
    /// Their length.
    pub delim_len: u64,
    /// Number of records.
    pub entries: u64,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

impl Header {
    /// Encode (the writer's side).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let kind: u32 = match self.kind {
            FileKind::Base => 0,
            FileKind::Delta => 1,
        };
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        let fields = [
            self.generation,
            self.base_generation,
            self.file_len,
            self.bucket_count,
            self.buckets_off,
            self.data_off,
            self.data_len,
            self.flags,
            self.delim_off,
            self.delim_len,
            self.entries,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let sum = checksum(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decode and check against the whole file.
    pub fn parse(file: &[u8]) -> Result<Header, FormatError> {
        if file.len() < HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        let b = &file[..HEADER_LEN];
        if b[0..8] != MAGIC || u32_at(b, 8) != VERSION {
            return Err(FormatError::BadMagic);
        }
        if checksum(&b[..120]) != u64_at(b, 120) {
            return Err(FormatError::BadChecksum);
        }
        let kind = match u32_at(b, 12) {
            0 => FileKind::Base,
            1 => FileKind::Delta,
            _ => return Err(FormatError::Corrupt("file kind")),
        };
        let f = |i: usize| u64_at(b, 16 + 8 * i);
        let h = Header {
            kind,
            generation: f(0),
            base_generation: f(1),
            file_len: f(2),
            bucket_count: f(3),
            buckets_off: f(4),
            data_off: f(5),
            data_len: f(6),
            flags: f(7),
            delim_off: f(8),
            delim_len: f(9),
            entries: f(10),
        };
        let len = file.len() as u64;
        if h.file_len != len {
            return Err(if h.file_len > len {
                FormatError::Truncated
            } else {
                FormatError::Corrupt("file longer than its header says")
            });
        }
        if h.bucket_count == 0 || !h.bucket_count.is_power_of_two() {
            return Err(FormatError::Corrupt("bucket count"));
        }
        let buckets_end = h
            .bucket_count
            .checked_add(1)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(h.buckets_off))
            .ok_or(FormatError::Corrupt("buckets"))?;
        if h.buckets_off < HEADER_LEN as u64
            || !h.buckets_off.is_multiple_of(8)
            || buckets_end > len
        {
            return Err(FormatError::Corrupt("buckets"));
        }
        let data_end = h
            .data_off
            .checked_add(h.data_len)
            .ok_or(FormatError::Corrupt("data"))?;
        if h.data_off < buckets_end || !h.data_off.is_multiple_of(8) || data_end > len {
            return Err(FormatError::Corrupt("data"));
        }
        let delim_end = h
            .delim_off
            .checked_add(h.delim_len)
            .ok_or(FormatError::Corrupt("delimiter"))?;
        if delim_end > h.data_len {
            return Err(FormatError::Corrupt("delimiter"));
        }
        if h.kind == FileKind::Base && h.base_generation != h.generation {
            return Err(FormatError::Corrupt("base generation"));
        }
        Ok(h)
    }
}

/// One record found by [`TableFile::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Removed since the base (delta files only).
    pub removed: bool,
    /// The key.
    pub key: &'a str,
    /// The key followed by its NUL (what a C caller can be handed).
    pub key_nul: &'a [u8],
    /// The value; list items separated by NUL.
    pub value: &'a str,
}

/// A checked table file over its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TableFile<'a> {
    bytes: &'a [u8],
    header: Header,
}

impl<'a> TableFile<'a> {
    /// Check the header of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<TableFile<'a>, FormatError> {
        let header = Header::parse(bytes)?;
        Ok(TableFile { bytes, header })
    }

    /// A file whose header was checked before (by [`TableFile::parse`] on
    /// the same bytes).
    pub fn with_header(bytes: &'a [u8], header: Header) -> TableFile<'a> {
        TableFile { bytes, header }
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn data(&self) -> &'a [u8] {
        let h = &self.header;
        // Checked by Header::parse against this file's length.
        self.bytes
            .get(h.data_off as usize..(h.data_off + h.data_len) as usize)
            .unwrap_or(&[])
    }

    /// The recipient delimiter characters.
    pub fn delimiter(&self) -> Result<&'a str, FormatError> {
        let h = &self.header;
        let b = self
            .data()
            .get(h.delim_off as usize..(h.delim_off + h.delim_len) as usize)
            .ok_or(FormatError::Corrupt("delimiter"))?;
        std::str::from_utf8(b).map_err(|_| FormatError::Corrupt("delimiter is not UTF-8"))
    }

    /// Where bucket `b`'s records start in data (bytes); `b` may be the
    /// bucket count (the end of the last bucket).
    fn bucket_start(&self, b: u64) -> u64 {
        let off = (self.header.buckets_off + 4 * b) as usize;
        u64::from(u32_at(self.bytes, off)) * 8
    }

    /// The record at `start` in data, and where the next one starts.
    fn record(&self, start: usize) -> Result<(Record<'a>, u64, u8, usize), FormatError> {
        let data = self.data();
        let bad = FormatError::Corrupt("record out of bounds");
        let head = data
            .get(start..start.checked_add(RECORD_HEAD).ok_or(bad.clone())?)
            .ok_or(bad.clone())?;
        let kind = head[0];
        let flags = head[1];
        let key_len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        let value_len = u32_at(head, 4) as usize;
        let h = u64_at(head, 8);
        let key_start = start + RECORD_HEAD;
        let key_end = key_start + key_len;
        let value_start = key_end + 1;
        let value_end = value_start
            .checked_add(value_len)
            .ok_or(FormatError::Corrupt("value length"))?;
        if value_end >= data.len() {
            return Err(bad);
        }
        let next = (value_end + 1).next_multiple_of(8);
        let key_bytes = &data[key_start..key_end];
        let value_bytes = &data[value_start..value_end];
        if data[key_end] != 0 || data[value_end] != 0 {
            return Err(FormatError::Corrupt("missing terminator"));
        }
        // Validated lazily by the caller on a match (see `find`); here only
        // the cheap parts.
        let record = Record {
            removed: flags & RECORD_REMOVED != 0,
            key: std::str::from_utf8(key_bytes).unwrap_or(""),
            key_nul: &data[key_start..=key_end],
            value: std::str::from_utf8(value_bytes)
                .map_err(|_| FormatError::Corrupt("value is not UTF-8"))?,
        };
        Ok((record, h, kind, next))
    }

    /// The record for `key` of `kind`, if the file has one.
    pub fn find(&self, kind: Kind, key: &str) -> Result<Option<Record<'a>>, FormatError> {
        let h = hash(kind, key.as_bytes());
        let b = h & (self.header.bucket_count - 1);
        let start = self.bucket_start(b);
        let end = self.bucket_start(b + 1);
        if start > end || end > self.header.delim_off {
            return Err(FormatError::Corrupt("bucket index"));
        }
        let (mut pos, end) = (start as usize, end as usize);
        // Every step moves past at least one record head, and the scan
        // stops at the bucket's end: a hostile file cannot make it loop.
        while pos < end {
            let data = self.data();
            let head = data
                .get(pos..pos + RECORD_HEAD)
                .ok_or(FormatError::Corrupt("record out of bounds"))?;
            if u64_at(head, 8) == h && head[0] == kind as u8 {
                let (r, _, _, next) = self.record(pos)?;
                if next > end {
                    return Err(FormatError::Corrupt("record crosses its bucket"));
                }
                if r.key_nul[..r.key_nul.len() - 1] == *key.as_bytes() {
                    return Ok(Some(Record {
                        key: std::str::from_utf8(&r.key_nul[..r.key_nul.len() - 1])
                            .map_err(|_| FormatError::Corrupt("key is not UTF-8"))?,
                        ..r
                    }));
                }
                pos = next;
            } else {
                let key_len = usize::from(u16::from_le_bytes([head[2], head[3]]));
                let value_len = u32_at(head, 4) as usize;
                pos = (pos + RECORD_HEAD + key_len + 1 + value_len + 1).next_multiple_of(8);
            }
        }
        if pos != end {
            return Err(FormatError::Corrupt("record crosses its bucket"));
        }
        Ok(None)
    }
}

/// Builds a table file in memory (the writer's side).
#[derive(Debug)]
pub struct Builder {
    data: Vec<u8>,
    /// Each record's hash, start and length in `data`.
    records: Vec<(u64, usize, usize)>,
}

/// Longest key a record can hold (its length is a `u16`); the directory
/// never holds longer keys (`address::MAX_KEY_LEN` is 10,000).
pub const MAX_RECORD_KEY: usize = u16::MAX as usize;

impl Builder {
    /// A builder for about `entries` records.
    pub fn with_capacity(entries: usize, data_bytes: usize) -> Builder {
        Builder {
            data: Vec::with_capacity(data_bytes),
            records: Vec::with_capacity(entries),
        }
    }

    /// Number of records so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of record data so far.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Add one record. A key too long for the format is skipped (and
    /// reported `false`): no lookup could have produced it.
    pub fn add<'v>(
        &mut self,
        kind: Kind,
        key: &str,
        removed: bool,
        values: impl IntoIterator<Item = &'v str>,
    ) -> bool {
        if key.len() > MAX_RECORD_KEY || self.data.len() / 8 >= u32::MAX as usize - 1 {
            return false;
        }
        let h = hash(kind, key.as_bytes());
        let start = self.data.len();
        self.data.push(kind as u8);
        self.data.push(if removed { RECORD_REMOVED } else { 0 });
        self.data
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.data.extend_from_slice(&[0; 4]);
        self.data.extend_from_slice(&h.to_le_bytes());
        self.data.extend_from_slice(key.as_bytes());
        self.data.push(0);
        let value_start = self.data.len();
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.data.push(0);
            }
            // A NUL inside a value would split it; the directory's values
            // come from text lines and LDAP strings that cannot hold one.
            self.data.extend(v.bytes().filter(|&b| b != 0));
        }
        let value_len = (self.data.len() - value_start) as u32;
        self.data[start + 4..start + 8].copy_from_slice(&value_len.to_le_bytes());
        self.data.push(0);
        while !self.data.len().is_multiple_of(8) {
            self.data.push(0);
        }
        self.records.push((h, start, self.data.len() - start));
        true
    }

    /// The finished file: records regrouped by bucket (a counting sort),
    /// the bucket index, the header.
    pub fn finish(
        self,
        kind: FileKind,
        generation: u64,
        base_generation: u64,
        flags: u64,
        delimiter: &str,
    ) -> Vec<u8> {
        let n = self.records.len();
        let bucket_count = (n / BUCKET_LOAD).max(1).next_power_of_two();
        let mask = bucket_count as u64 - 1;
        let mut starts = vec![0usize; bucket_count + 1];
        for &(h, _, len) in &self.records {
            starts[(h & mask) as usize + 1] += len;
        }
        for b in 0..bucket_count {
            starts[b + 1] += starts[b];
        }
        let records_len = starts[bucket_count];
        let mut data = vec![0u8; records_len];
        let mut fill = starts.clone();
        for &(h, start, len) in &self.records {
            let b = (h & mask) as usize;
            data[fill[b]..fill[b] + len].copy_from_slice(&self.data[start..start + len]);
            fill[b] += len;
        }
        let delim_off = data.len() as u64;
        data.extend_from_slice(delimiter.as_bytes());
        while !data.len().is_multiple_of(8) {
            data.push(0);
        }
        let buckets_off = HEADER_LEN as u64;
        let data_off = (buckets_off + 4 * (bucket_count as u64 + 1)).next_multiple_of(8);
        let file_len = data_off + data.len() as u64;
        let header = Header {
            kind,
            generation,
            base_generation,
            file_len,
            bucket_count: bucket_count as u64,
            buckets_off,
            data_off,
            data_len: data.len() as u64,
            flags,
            delim_off,
            delim_len: delimiter.len() as u64,
            entries: n as u64,
        };
        let mut out = Vec::with_capacity(file_len as usize);
        out.extend_from_slice(&header.encode());
        for s in &starts {
            out.extend_from_slice(&((s / 8) as u32).to_le_bytes());
        }
        out.resize(data_off as usize, 0);
        out.extend_from_slice(&data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = Builder::with_capacity(4, 256);
        assert!(b.add(Kind::User, "alice@example.org", false, []));
        assert!(b.add(
            Kind::Alias,
            "info@example.org",
            false,
            ["alice@example.org", "bob@remote.test"]
        ));
        assert!(b.add(Kind::Domain, "example.org", false, []));
        assert!(b.add(Kind::User, "gone@example.org", true, []));
        b.finish(FileKind::Base, 7, 7, FLAG_AUTHORITATIVE, "+-")
    }

    #[test]
    fn a_built_file_reads_back() {
        let bytes = sample();
        let t = TableFile::parse(&bytes).unwrap();
        assert_eq!(t.header().generation, 7);
        assert_eq!(t.header().entries, 4);
        assert_eq!(t.delimiter().unwrap(), "+-");
        let a = t.find(Kind::Alias, "info@example.org").unwrap().unwrap();
        assert_eq!(a.value, "alice@example.org\0bob@remote.test");
        assert!(!a.removed);
        let u = t.find(Kind::User, "alice@example.org").unwrap().unwrap();
        assert_eq!(u.key_nul, b"alice@example.org\0");
        assert_eq!(u.value, "");
        assert!(
            t.find(Kind::User, "gone@example.org")
                .unwrap()
                .unwrap()
                .removed
        );
        // Same key, other kind: not found.
        assert_eq!(t.find(Kind::Alias, "alice@example.org").unwrap(), None);
        assert_eq!(t.find(Kind::User, "nobody@example.org").unwrap(), None);
    }

    #[test]
    fn truncation_and_tampering_are_errors() {
        let bytes = sample();
        for cut in [0, 1, 64, HEADER_LEN, bytes.len() - 1] {
            assert!(TableFile::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut b = bytes.clone();
        b[40] ^= 1; // slot count
        assert_eq!(TableFile::parse(&b).unwrap_err(), FormatError::BadChecksum);
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(TableFile::parse(&b).unwrap_err(), FormatError::BadMagic);
        let mut b = bytes.clone();
        b.push(0);
        assert!(TableFile::parse(&b).is_err());
    }

    #[test]
    fn every_flipped_byte_is_an_error_or_a_clean_answer() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                if let Ok(t) = TableFile::parse(&b) {
                    for (k, key) in [
                        (Kind::User, "alice@example.org"),
                        (Kind::Alias, "info@example.org"),
                        (Kind::Domain, "example.org"),
                        (Kind::User, "x@y"),
                    ] {
                        let _ = t.find(k, key);
                    }
                    let _ = t.delimiter();
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut b in proptest::collection::vec(proptest::num::u8::ANY, 0..600), key in "[a-z@.]{0,20}") {
            // Give half of the cases a valid header so the body is reached.
            if b.len() >= HEADER_LEN && b[0] & 1 == 0 {
                let n = b.len() as u64;
                let h = Header { kind: FileKind::Base, generation: 1, base_generation: 1, file_len: n,
                    bucket_count: 8, buckets_off: 128, data_off: 192.min(n & !7), data_len: n.saturating_sub(192.min(n & !7)),
                    flags: 0, delim_off: 0, delim_len: 0, entries: 0 };
                b[..HEADER_LEN].copy_from_slice(&h.encode());
            }
            if let Ok(t) = TableFile::parse(&b) {
                for kind in [Kind::User, Kind::Alias, Kind::Sender, Kind::Domain] {
                    let _ = t.find(kind, &key);
                }
            }
        }
    }
}

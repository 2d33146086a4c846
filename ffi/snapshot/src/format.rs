//! The snapshot file layout, and the pure code that reads it from bytes.
//!
//! Every number is little-endian. A table file is:
//!
//! ```text
//! 0    header (HEADER_LEN = 128 bytes)
//!        0 magic "RAMDIRSN"       8 version u32        12 file kind u32 (0 base, 1 delta)
//!       16 generation u64        24 base generation u64 (a base names itself)
//!       32 file length u64       40 cell count u64
//!       48 cells offset u64      56 data offset u64     64 data length u64
//!       72 flags u64             80 delimiter offset u64 (in data)   88 delimiter length u64
//!       96 entries u64          104 reserved (16 bytes)
//!      120 FNV-1a 64 of bytes 0..120
//! cells  cell count × 64 bytes (64-aligned: one cache line each):
//!          0 kind u8 (0: empty)   1 flags u8 (1 removed, 2 long key)
//!          2 key length u16       4 value length u32
//!          8 tag u32 (low half of the hash)   12 value offset u32 (in data, × 8)
//!         16 the key and a NUL (up to 47 bytes), or for a long key its
//!            offset u32 (in data, × 8)
//! data   values (list items separated by NUL, then a NUL) and long keys (then
//!        a NUL), each 8-aligned; then the recipient delimiter
//! ```
//!
//! A key's cell is found by linear probing from `(hash × cells) >> 64`,
//! where `hash` is [`hash`] of the record kind and the key, until an empty
//! cell. A lookup of a key that fits in its cell (an address nearly always
//! does) reads one cache line, and the value of a mailbox (the login) is the
//! key itself: about one miss to memory per lookup, where an index plus
//! records (or cdb's hash table plus records) costs two. The load factor is
//! at most [`CELL_LOAD`], so a hit reads about two cells on average, and
//! neighbours share the line prefetch.
//!
//! The file is treated as hostile: every offset and length is checked
//! against the file before use, probing is bounded by the cell count, and
//! text is validated as UTF-8 on use; any violation is a [`FormatError`],
//! which readers turn into "temporary failure", never into "not found" and
//! never into a panic.

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
/// Cell flag: the key is in data (longer than [`INLINE_KEY`]).
const CELL_LONG_KEY: u8 = 2;
/// Size of a cell: one cache line.
pub const CELL: usize = 64;
/// Longest key kept in its cell (the rest of the line, less the NUL).
pub const INLINE_KEY: usize = CELL - 16 - 1;
/// Most cells in use, as a fraction (numerator / 4): 3/4.
pub const CELL_LOAD: usize = 3;

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
    /// Dovecot passdb fields of an enabled login (`ffi/dovecot`): the
    /// value is `name, value, name, value…`, NUL-separated, starting with
    /// `password` (`{SCHEME}hash`) or `nologin`.
    Passdb = 6,
    /// Dovecot 2.3 userdb fields of a login (`quota_rule*` spelling), as
    /// for [`Kind::Passdb`].
    Userdb23 = 7,
    /// Dovecot 2.4 userdb fields of a login (`quota_storage_size` spelling).
    Userdb24 = 8,
    /// An address that may log in as the one login it delivers to
    /// (`alias_logins`); the value is that login.
    LoginAlias = 9,
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
    /// Number of cells.
    pub cell_count: u64,
    /// Where the cells start (64-aligned).
    pub cells_off: u64,
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
            self.cell_count,
            self.cells_off,
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
            cell_count: f(3),
            cells_off: f(4),
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
        if h.cell_count == 0 {
            return Err(FormatError::Corrupt("cell count"));
        }
        let cells_end = h
            .cell_count
            .checked_mul(CELL as u64)
            .and_then(|n| n.checked_add(h.cells_off))
            .ok_or(FormatError::Corrupt("cells"))?;
        if h.cells_off < HEADER_LEN as u64
            || !h.cells_off.is_multiple_of(CELL as u64)
            || cells_end > len
        {
            return Err(FormatError::Corrupt("cells"));
        }
        let data_end = h
            .data_off
            .checked_add(h.data_len)
            .ok_or(FormatError::Corrupt("data"))?;
        if h.data_off < cells_end || !h.data_off.is_multiple_of(8) || data_end > len {
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

    /// A NUL-terminated run of `len` bytes at `off` (× 8) in data.
    fn in_data(&self, off: u32, len: usize) -> Result<&'a [u8], FormatError> {
        let start = off as usize * 8;
        let b = self
            .data()
            .get(
                start
                    ..=start
                        .checked_add(len)
                        .ok_or(FormatError::Corrupt("length"))?,
            )
            .ok_or(FormatError::Corrupt("offset outside the data"))?;
        if b[len] != 0 {
            return Err(FormatError::Corrupt("missing terminator"));
        }
        Ok(b)
    }

    /// The record in the (non-empty) cell at byte offset `off`.
    fn cell_record(&self, off: usize) -> Result<Record<'a>, FormatError> {
        let c = &self.bytes[off..off + CELL];
        let flags = c[1];
        let key_len = usize::from(u16::from_le_bytes([c[2], c[3]]));
        let key_nul = if flags & CELL_LONG_KEY == 0 {
            if key_len > INLINE_KEY {
                return Err(FormatError::Corrupt("inline key length"));
            }
            if c[16 + key_len] != 0 {
                return Err(FormatError::Corrupt("missing terminator"));
            }
            &self.bytes[off + 16..=off + 16 + key_len]
        } else {
            self.in_data(u32_at(c, 16), key_len)?
        };
        let key = std::str::from_utf8(&key_nul[..key_len])
            .map_err(|_| FormatError::Corrupt("key is not UTF-8"))?;
        let value_len = u32_at(c, 4) as usize;
        let value = if value_len == 0 {
            ""
        } else {
            let v = self.in_data(u32_at(c, 12), value_len)?;
            std::str::from_utf8(&v[..value_len])
                .map_err(|_| FormatError::Corrupt("value is not UTF-8"))?
        };
        Ok(Record {
            removed: flags & RECORD_REMOVED != 0,
            key,
            key_nul,
            value,
        })
    }

    /// Every record of `kind`, in cell order (Dovecot's user iteration).
    /// Stops at the first record that does not parse.
    pub fn for_each(&self, kind: Kind, mut f: impl FnMut(Record<'a>)) -> Result<(), FormatError> {
        // Bounded by the cell count, which the header check tied to the
        // file's length: a hostile file cannot make this loop.
        for i in 0..self.header.cell_count {
            let off = (self.header.cells_off + i * CELL as u64) as usize;
            if self.bytes[off] == kind as u8 {
                f(self.cell_record(off)?);
            }
        }
        Ok(())
    }

    /// The record for `key` of `kind`, if the file has one.
    pub fn find(&self, kind: Kind, key: &str) -> Result<Option<Record<'a>>, FormatError> {
        let h = hash(kind, key.as_bytes());
        let n = self.header.cell_count;
        let tag = h as u32;
        let mut i = ((u128::from(h) * u128::from(n)) >> 64) as u64;
        // At most every cell once: a hostile file with no empty cell cannot
        // make a lookup loop.
        for _ in 0..n {
            let off = (self.header.cells_off + i * CELL as u64) as usize;
            let c = &self.bytes[off..off + CELL];
            if c[0] == 0 {
                return Ok(None);
            }
            if c[0] == kind as u8 && u32_at(c, 8) == tag {
                let r = self.cell_record(off)?;
                if r.key == key {
                    return Ok(Some(r));
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        Ok(None)
    }
}

/// Builds a table file in memory (the writer's side).
#[derive(Debug)]
pub struct Builder {
    /// Keys and values, as added.
    data: Vec<u8>,
    records: Vec<Pending>,
}

/// One record waiting for [`Builder::finish`]: its hash, kind, flags and
/// where its key and value are in the builder's buffer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    hash: u64,
    kind: Kind,
    removed: bool,
    key: (usize, usize),
    value: (usize, usize),
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
        if key.len() > MAX_RECORD_KEY {
            return false;
        }
        let key_start = self.data.len();
        self.data.extend_from_slice(key.as_bytes());
        let value_start = self.data.len();
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.data.push(0);
            }
            // A NUL inside a value would split it; the directory's values
            // come from text lines and LDAP strings that cannot hold one.
            self.data.extend(v.bytes().filter(|&b| b != 0));
        }
        self.records.push(Pending {
            hash: hash(kind, key.as_bytes()),
            kind,
            removed,
            key: (key_start, key.len()),
            value: (value_start, self.data.len() - value_start),
        });
        true
    }

    /// The finished file.
    pub fn finish(
        self,
        kind: FileKind,
        generation: u64,
        base_generation: u64,
        flags: u64,
        delimiter: &str,
    ) -> Vec<u8> {
        let n = self.records.len();
        let cell_count = (n * 4).div_ceil(CELL_LOAD).max(8);
        let mut cells = vec![0u8; cell_count * CELL];
        let mut data: Vec<u8> = Vec::new();
        // Offsets in data are u32 in units of 8 bytes (32 GiB).
        let mut put = |bytes: &[u8]| -> u32 {
            let off = data.len() / 8;
            data.extend_from_slice(bytes);
            data.push(0);
            while !data.len().is_multiple_of(8) {
                data.push(0);
            }
            off as u32
        };
        for r in &self.records {
            let key = &self.data[r.key.0..r.key.0 + r.key.1];
            let value = &self.data[r.value.0..r.value.0 + r.value.1];
            let mut i = ((u128::from(r.hash) * cell_count as u128) >> 64) as usize;
            while cells[i * CELL] != 0 {
                i = (i + 1) % cell_count;
            }
            let c = &mut cells[i * CELL..(i + 1) * CELL];
            c[0] = r.kind as u8;
            c[1] = if r.removed { RECORD_REMOVED } else { 0 };
            c[2..4].copy_from_slice(&(key.len() as u16).to_le_bytes());
            c[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
            c[8..12].copy_from_slice(&(r.hash as u32).to_le_bytes());
            if !value.is_empty() {
                let off = put(value);
                c[12..16].copy_from_slice(&off.to_le_bytes());
            }
            if key.len() <= INLINE_KEY {
                c[16..16 + key.len()].copy_from_slice(key);
            } else {
                c[1] |= CELL_LONG_KEY;
                let off = put(key);
                c[16..20].copy_from_slice(&off.to_le_bytes());
            }
        }
        let delim_off = data.len() as u64;
        data.extend_from_slice(delimiter.as_bytes());
        while !data.len().is_multiple_of(8) {
            data.push(0);
        }
        let cells_off = (HEADER_LEN as u64).next_multiple_of(CELL as u64);
        let data_off = cells_off + cells.len() as u64;
        let file_len = data_off + data.len() as u64;
        let header = Header {
            kind,
            generation,
            base_generation,
            file_len,
            cell_count: cell_count as u64,
            cells_off,
            data_off,
            data_len: data.len() as u64,
            flags,
            delim_off,
            delim_len: delimiter.len() as u64,
            entries: n as u64,
        };
        let mut out = Vec::with_capacity(file_len as usize);
        out.extend_from_slice(&header.encode());
        out.resize(cells_off as usize, 0);
        out.extend_from_slice(&cells);
        out.extend_from_slice(&data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than a cell holds.
    const LONG: &str = "a-very-long-local-part-that-does-not-fit@a-long-domain.example";

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
        assert!(b.add(Kind::User, LONG, false, []));
        b.finish(FileKind::Base, 7, 7, FLAG_AUTHORITATIVE, "+-")
    }

    #[test]
    fn a_built_file_reads_back() {
        let bytes = sample();
        let t = TableFile::parse(&bytes).unwrap();
        assert_eq!(t.header().generation, 7);
        assert_eq!(t.header().entries, 5);
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
        assert!(LONG.len() > INLINE_KEY);
        let l = t.find(Kind::User, LONG).unwrap().unwrap();
        assert_eq!((l.key, l.key_nul.len()), (LONG, LONG.len() + 1));
        assert_eq!(t.find(Kind::User, &LONG[1..]).unwrap(), None);
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
                    let _ = t.for_each(Kind::User, |_| {});
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
                    cell_count: 1, cells_off: 128, data_off: 192.min(n & !7), data_len: n.saturating_sub(192.min(n & !7)),
                    flags: 0, delim_off: 0, delim_len: 0, entries: 0 };
                b[..HEADER_LEN].copy_from_slice(&h.encode());
            }
            if let Ok(t) = TableFile::parse(&b) {
                for kind in [Kind::User, Kind::Alias, Kind::Sender, Kind::Domain, Kind::Passdb,
                    Kind::Userdb23, Kind::Userdb24, Kind::LoginAlias] {
                    let _ = t.find(kind, &key);
                }
                let _ = t.for_each(Kind::Userdb23, |_| {});
            }
        }
    }
}

//! The writer: how the daemon publishes a directory as snapshot files.
//!
//! Publishing generation `G` writes `.tmp-G`, renames it to `snap-G` (a
//! reader never sees a partial file), then stores `G << 8 | STATE_OK` in the
//! control word (`Release`). A published file is never written again. A
//! file that no longer belongs to the current generation is unlinked
//! [`GRACE`] later: a reader that loaded the old word just before the switch
//! can still open it, and readers that mapped it keep their mapping (the
//! inode lives until they unmap it).
//!
//! A generation is either a **base** (every entry) or a **delta** (every
//! entry changed since the current base, removals as tombstones). Which one
//! is decided per publication: a delta while it stays small
//! ([`Limits`]), a new base otherwise. The delta is computed by
//! [`Directory::diff`], which reads only the table shards edited since the
//! base (see `ramdir_core::table`), so a one-entry change costs a few
//! thousand comparisons and a file of a few hundred bytes at any size.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramdir_core::Directory;
use ramdir_core::directory::Change;

use crate::format::STATE_OK;
use crate::format::{
    Builder, CONTROL_LEN, CONTROL_MAGIC, CONTROL_WORD, FLAG_AUTHORITATIVE, FLAG_FOLD_LOCAL_PART,
    FLAG_IMPLICIT_SENDER_LOGINS, FLAG_PROPAGATE_EXTENSION, FileKind, Header, Kind,
    STATE_UNAVAILABLE, file_name,
};
use crate::map::Mapping;

/// How long a replaced file stays on disk. A reader opens a generation
/// microseconds after it loaded the control word; seconds are ample even on
/// a machine that is swapping.
pub const GRACE: Duration = Duration::from_secs(5);

/// When a delta is replaced by a new base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A delta with more records than this becomes a base.
    pub delta_max_entries: usize,
    /// A delta larger than this (bytes) becomes a base.
    pub delta_max_bytes: usize,
    /// When fewer than this share (1/n) of the tables' shards are still
    /// shared with the base, the diff itself would cost about as much as a
    /// base: write a base without diffing.
    pub min_shared_fraction: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A lookup probes the delta first: keep it small enough to stay
            // in cache and cheap to rewrite (≤ 1 MB per publication).
            delta_max_entries: 8192,
            delta_max_bytes: 512 * 1024,
            min_shared_fraction: 2,
        }
    }
}

/// What one publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The generation now in the control word.
    pub generation: u64,
    /// Base or delta.
    pub kind: FileKind,
    /// Records in the file written.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// The control page, mapped read-write.
#[derive(Debug)]
pub struct Control {
    map: Mapping,
    _file: File,
}

impl Control {
    /// Open `dir/control`, or create it (under a temporary name, then
    /// renamed) when it is missing or not a control page. An existing one is
    /// reused in place: readers that hold it keep seeing new generations.
    pub fn open_or_create(dir: &Path, mode: u32) -> io::Result<Control> {
        let path = dir.join("control");
        if let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) {
            let len = file.metadata()?.len();
            if len == CONTROL_LEN as u64 {
                let map = Mapping::map(file.as_fd(), CONTROL_LEN, true)?;
                if map.bytes()[..8] == CONTROL_MAGIC {
                    return Ok(Control { map, _file: file });
                }
            }
        }
        let tmp = dir.join(".tmp-control");
        let mut page = vec![0u8; CONTROL_LEN];
        page[..8].copy_from_slice(&CONTROL_MAGIC);
        page[8..12].copy_from_slice(&crate::format::VERSION.to_le_bytes());
        write_new(&tmp, &page, mode)?;
        // Replacing a bad control page: Postfix restarts the processes that
        // held the old one (its link count drops to 0).
        fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let map = Mapping::map(file.as_fd(), CONTROL_LEN, true)?;
        Ok(Control { map, _file: file })
    }

    /// The control word.
    pub fn word(&self) -> u64 {
        self.map.load(CONTROL_WORD)
    }

    /// Publish a control word.
    pub fn store(&self, word: u64) {
        self.map.store(CONTROL_WORD, word)
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// The current base and what changed since it.
struct Base {
    generation: u64,
    flags: u64,
    delimiter: String,
    /// The directory published last (base or delta): the next diff starts
    /// here, so it reads only the shards edited since the last publication.
    last: Arc<Directory>,
    /// Every entry changed since the base, with its current value (`None`:
    /// removed). The next delta file is written from it.
    pending: HashMap<(Kind, Box<str>), Option<Values>>,
}

/// An entry's values (alias targets, sender logins; empty for users and
/// domains).
type Values = Box<[Box<str>]>;

/// Builds the records of a map directory that is not Postfix's from one
/// directory (e.g. the Dovecot passdb/userdb files, `ramdir::dovecot_map`).
pub type RecordsFn = Box<dyn Fn(&Directory, &mut Builder) + Send>;

/// What a map directory holds.
pub enum Content {
    /// The Postfix tables; a small change is published as a delta.
    Postfix,
    /// Records built by the caller; every generation is a base, written
    /// with the same control-word, rename and grace rules.
    Records(RecordsFn),
}

/// Publishes directories into one map directory.
pub struct Publisher {
    content: Content,
    path: PathBuf,
    mode: u32,
    control: Control,
    limits: Limits,
    generation: u64,
    base: Option<Base>,
    /// Files of the generation in the control word (top, and its base).
    live: Vec<u64>,
    /// Files replaced, with when.
    retired: VecDeque<(u64, Instant)>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .finish()
    }
}

fn rule_flags(d: &Directory) -> (u64, String) {
    let s = d.settings();
    let mut flags = 0;
    if s.normalizer.fold_local_part {
        flags |= FLAG_FOLD_LOCAL_PART;
    }
    if s.propagate_extension {
        flags |= FLAG_PROPAGATE_EXTENSION;
    }
    if s.implicit_sender_logins {
        flags |= FLAG_IMPLICIT_SENDER_LOGINS;
    }
    (flags, s.normalizer.recipient_delimiter.clone())
}

fn list(l: &[Box<str>]) -> impl Iterator<Item = &str> {
    l.iter().map(|s| &**s)
}

impl Publisher {
    /// Open (creating if needed) the map directory `path`. Files are created
    /// with `mode`. The generation in an existing control page is kept
    /// serving until the first [`Publisher::publish`].
    pub fn open(path: &Path, mode: u32, limits: Limits) -> io::Result<Publisher> {
        Publisher::open_with(path, mode, limits, Content::Postfix)
    }

    /// [`Publisher::open`] for a map directory holding `content`.
    pub fn open_with(
        path: &Path,
        mode: u32,
        limits: Limits,
        content: Content,
    ) -> io::Result<Publisher> {
        fs::create_dir_all(path)?;
        let control = Control::open_or_create(path, mode)?;
        let generation = control.word() >> 8;
        let mut live = Vec::new();
        if generation > 0 {
            live.push(generation);
        }
        if let Ok(bytes) = fs::read(path.join(file_name(generation)))
            && let Ok(h) = Header::parse(&bytes)
        {
            live.push(h.base_generation);
        }
        let mut p = Publisher {
            content,
            path: path.to_path_buf(),
            mode,
            control,
            limits,
            generation,
            base: None,
            live,
            retired: VecDeque::new(),
        };
        let now = Instant::now();
        for entry in fs::read_dir(path)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(".tmp-") && name != ".tmp-control" {
                let _ = fs::remove_file(path.join(name));
            } else if let Some(g) = name
                .strip_prefix("snap-")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                && !p.live.contains(&g)
            {
                p.retired.push_back((g, now));
            }
        }
        Ok(p)
    }

    /// The generation in the control word.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Publish `dir` as the next generation: a delta against the current
    /// base when that is small, a new base otherwise.
    pub fn publish(&mut self, dir: &Arc<Directory>) -> io::Result<Published> {
        let generation = self.generation + 1;
        let (rules, delimiter) = rule_flags(dir);
        let mut flags = rules;
        if dir.authoritative() {
            flags |= FLAG_AUTHORITATIVE;
        }
        let limits = self.limits;
        let delta = match &mut self.base {
            _ if !matches!(self.content, Content::Postfix) => None,
            Some(b) if b.flags == rules && b.delimiter == delimiter => {
                let (shared, total) = b.last.shared_shards(dir);
                if shared * limits.min_shared_fraction >= total {
                    Self::delta(b, dir, limits)
                } else {
                    None
                }
            }
            _ => None,
        };
        let (kind, base_generation, builder) = match delta {
            Some(builder) => (
                FileKind::Delta,
                self.base.as_ref().map_or(generation, |b| b.generation),
                builder,
            ),
            None => (
                FileKind::Base,
                generation,
                match &self.content {
                    Content::Postfix => Self::base_records(dir),
                    Content::Records(f) => {
                        let n = dir.counts().users;
                        let mut b = Builder::with_capacity(n * 3, n * 256);
                        f(dir, &mut b);
                        b
                    }
                },
            ),
        };
        let entries = builder.len() as u64;
        let bytes = builder.finish(kind, generation, base_generation, flags, &delimiter);
        let tmp = self.path.join(format!(".tmp-{generation:016x}"));
        write_new(&tmp, &bytes, self.mode)?;
        fs::rename(&tmp, self.path.join(file_name(generation)))?;
        self.control.store(generation << 8 | STATE_OK);
        self.generation = generation;
        let now = Instant::now();
        let live = if kind == FileKind::Base {
            let postfix = matches!(self.content, Content::Postfix);
            self.base = postfix.then(|| Base {
                generation,
                flags: rules,
                delimiter,
                last: Arc::clone(dir),
                pending: HashMap::new(),
            });
            vec![generation]
        } else {
            vec![generation, base_generation]
        };
        for g in std::mem::replace(&mut self.live, live) {
            if !self.live.contains(&g) {
                self.retired.push_back((g, now));
            }
        }
        Ok(Published {
            generation,
            kind,
            entries,
            bytes: bytes.len() as u64,
        })
    }

    fn base_records(dir: &Directory) -> Builder {
        let c = dir.counts();
        let n = c.users + c.aliases + c.senders + c.domains + c.ambiguous;
        let mut b = Builder::with_capacity(n, n * 48);
        for login in dir.logins() {
            b.add(Kind::User, login, false, []);
        }
        for (k, v) in dir.alias_entries() {
            b.add(Kind::Alias, k, false, list(v));
        }
        for (k, v) in dir.sender_entries() {
            b.add(Kind::Sender, k, false, list(v));
        }
        for d in dir.domains() {
            b.add(Kind::Domain, d, false, []);
        }
        for k in dir.ambiguous_keys() {
            let claims = dir.ambiguous_claims(k).unwrap_or(2).to_string();
            b.add(Kind::Ambiguous, k, false, [claims.as_str()]);
        }
        b
    }

    /// The delta from the base to `dir`, or `None` when it is too large.
    /// Records what changed since the last publication in `base.pending`,
    /// then writes every pending entry.
    fn delta(base: &mut Base, dir: &Arc<Directory>, limits: Limits) -> Option<Builder> {
        let pending = &mut base.pending;
        let mut over = false;
        base.last.diff(dir, |c| {
            if over {
                return;
            }
            let (key, value) = match c {
                Change::User(k, present) => ((Kind::User, k), present.then(Box::default)),
                Change::Alias(k, v) => ((Kind::Alias, k), v.map(Box::from)),
                Change::Sender(k, v) => ((Kind::Sender, k), v.map(Box::from)),
                Change::Domain(k, ours) => ((Kind::Domain, k), ours.then(Box::default)),
                Change::Ambiguous(k, claims) => (
                    (Kind::Ambiguous, k),
                    claims.map(|c| Box::from([Box::from(c.to_string())])),
                ),
            };
            pending.insert((key.0, key.1.into()), value);
            over = pending.len() > limits.delta_max_entries;
        });
        if over {
            return None;
        }
        base.last = Arc::clone(dir);
        let mut b = Builder::with_capacity(pending.len(), pending.len() * 64);
        for ((kind, key), value) in pending.iter() {
            b.add(
                *kind,
                key,
                value.is_none(),
                list(value.as_deref().unwrap_or(&[])),
            );
            if b.data_len() > limits.delta_max_bytes {
                return None;
            }
        }
        Some(b)
    }

    /// Mark the current generation unavailable: every lookup fails
    /// temporarily until the next [`Publisher::publish`].
    pub fn mark_unavailable(&mut self) {
        self.control.store(self.generation << 8 | STATE_UNAVAILABLE);
    }

    /// Unlink the files replaced more than [`GRACE`] ago; returns how many.
    pub fn collect(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(&(g, at)) = self.retired.front() {
            if now.duration_since(at) < GRACE {
                break;
            }
            self.retired.pop_front();
            if !self.live.contains(&g) && fs::remove_file(self.path.join(file_name(g))).is_ok() {
                n += 1;
            }
        }
        n
    }
}

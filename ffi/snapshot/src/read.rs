//! The reader: what an in-process plugin keeps per open table.
//!
//! [`Reader::open`] opens the map directory and its control page once (as
//! root, before Postfix chroots); every lookup then loads the control word
//! once (`Acquire`). While it is unchanged, the lookup touches only mapped
//! memory: no system call. When it changes, the new generation is opened
//! through the kept directory fd (`openat`, so it works inside the chroot)
//! and mapped, and the old mapping is dropped.
//!
//! Every failure is an [`Error`], which the plugin turns into "temporary
//! failure" (Postfix defers): a missing, truncated, corrupt or foreign file,
//! a generation marked unavailable, and a miss while the directory is not
//! authoritative. Only a clean miss in an authoritative generation is "not
//! found".

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ramdir_core::Settings;
use ramdir_core::address::{MAX_KEY_LEN, Normalizer};
use ramdir_core::lookup::{self, Entries};
use ramdir_core::maps::{self, Outcome, Table};

use crate::format::{
    CONTROL_LEN, CONTROL_MAGIC, CONTROL_WORD, FLAG_AUTHORITATIVE, FLAG_FOLD_LOCAL_PART,
    FLAG_IMPLICIT_SENDER_LOGINS, FLAG_PROPAGATE_EXTENSION, FileKind, FormatError, Header, Kind,
    STATE_OK, TableFile, file_name,
};
use crate::map::{Mapping, open_at};

/// How many times a reader re-reads the control word when the generation it
/// named was already replaced and removed before the reader opened it.
const OPEN_RETRIES: usize = 3;

/// Why a lookup has no answer (every one means "try again later").
#[derive(Debug)]
pub enum Error {
    /// The daemon marked the table unavailable.
    Unavailable,
    /// No generation was published yet.
    NotPublished,
    /// A miss while the directory is not authoritative.
    NotAuthoritative,
    /// The control page or a table file is not what it should be.
    Format(String, FormatError),
    /// A file could not be opened or mapped.
    Io(String, io::Error),
    /// The directory data cannot answer (an alias loop, too many targets).
    Lookup(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable => f.write_str("ramdir marked the table unavailable"),
            Error::NotPublished => f.write_str("ramdir has not published the table yet"),
            Error::NotAuthoritative => f.write_str("directory not authoritative"),
            Error::Format(file, e) => write!(f, "{file}: {e}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Lookup(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

/// A lookup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hit<'a> {
    /// A value in the mapped file, NUL included.
    Mapped(&'a [u8]),
    /// A value computed from several records.
    Owned(String),
}

impl Hit<'_> {
    /// The value as text (without the NUL).
    pub fn as_str(&self) -> &str {
        match self {
            Hit::Mapped(b) => std::str::from_utf8(&b[..b.len() - 1]).unwrap_or(""),
            Hit::Owned(s) => s,
        }
    }
}

struct Mapped {
    map: Mapping,
    header: Header,
}

impl Mapped {
    fn open(dir: &OwnedFd, generation: u64) -> Result<Mapped, Error> {
        let name = file_name(generation);
        let fd = open_at(dir.as_fd(), &name).map_err(|e| Error::Io(name.clone(), e))?;
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| Error::Io(name.clone(), e))?
            .len();
        let len = usize::try_from(len)
            .map_err(|_| Error::Format(name.clone(), FormatError::Corrupt("size")))?;
        if len == 0 {
            return Err(Error::Format(name, FormatError::Truncated));
        }
        let map = Mapping::map(file.as_fd(), len, false).map_err(|e| Error::Io(name.clone(), e))?;
        let header = Header::parse(map.bytes()).map_err(|e| Error::Format(name.clone(), e))?;
        if header.generation != generation {
            return Err(Error::Format(
                name,
                FormatError::Corrupt("generation differs from its name"),
            ));
        }
        Ok(Mapped { map, header })
    }

    fn table(&self) -> TableFile<'_> {
        TableFile::with_header(self.map.bytes(), self.header)
    }
}

struct Current {
    generation: u64,
    base: Mapped,
    delta: Option<Mapped>,
    settings: Settings,
    authoritative: bool,
}

/// One open table directory.
pub struct Reader {
    dir: OwnedFd,
    control_fd: OwnedFd,
    control: Mapping,
    current: Option<Current>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("generation", &self.current.as_ref().map(|c| c.generation))
            .finish()
    }
}

impl Reader {
    /// Open the map directory `path` and its control page. Does not need a
    /// published generation yet (lookups fail temporarily until there is).
    pub fn open(path: &Path) -> Result<Reader, Error> {
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::Io(path.display().to_string(), e))?
            .into();
        let control_fd = open_at(dir.as_fd(), "control")
            .map_err(|e| Error::Io(format!("{}/control", path.display()), e))?;
        let name = || format!("{}/control", path.display());
        let file = File::from(control_fd);
        let len = file.metadata().map_err(|e| Error::Io(name(), e))?.len();
        if len < CONTROL_LEN as u64 {
            return Err(Error::Format(name(), FormatError::Truncated));
        }
        let control =
            Mapping::map(file.as_fd(), CONTROL_LEN, false).map_err(|e| Error::Io(name(), e))?;
        if control.bytes()[..8] != CONTROL_MAGIC {
            return Err(Error::Format(name(), FormatError::BadMagic));
        }
        Ok(Reader {
            dir,
            control_fd: file.into(),
            control,
            current: None,
        })
    }

    /// The control file's descriptor (Postfix's `stat_fd`: it restarts a
    /// process whose table file was unlinked).
    pub fn control_fd(&self) -> RawFd {
        self.control_fd.as_raw_fd()
    }

    /// The control file's metadata (owner, mtime for Postfix).
    pub fn control_metadata(&self) -> io::Result<std::fs::Metadata> {
        File::from(self.control_fd.try_clone()?).metadata()
    }

    /// The generation currently mapped, if any.
    pub fn generation(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.generation)
    }

    /// Whether the generation currently mapped is authoritative (a miss is
    /// a real "not found"); `None` before the first generation is mapped.
    pub fn authoritative(&self) -> Option<bool> {
        self.current.as_ref().map(|c| c.authoritative)
    }

    /// Bring the mapping up to the published generation: one atomic load
    /// when nothing changed.
    pub fn refresh(&mut self) -> Result<(), Error> {
        let mut word = self.control.load(CONTROL_WORD);
        for attempt in 0..=OPEN_RETRIES {
            if word & 0xff != STATE_OK {
                return Err(Error::Unavailable);
            }
            let generation = word >> 8;
            if generation == 0 {
                return Err(Error::NotPublished);
            }
            if self.current.as_ref().map(|c| c.generation) == Some(generation) {
                return Ok(());
            }
            match self.load(generation) {
                Ok(c) => {
                    self.current = Some(c);
                    return Ok(());
                }
                // Replaced and removed between our load and our open: the
                // control word names a newer one by now.
                Err(Error::Io(_, e))
                    if e.kind() == io::ErrorKind::NotFound && attempt < OPEN_RETRIES =>
                {
                    word = self.control.load(CONTROL_WORD);
                }
                Err(e) => {
                    // Never serve an older generation once a newer one is
                    // announced: the caller answers "try again".
                    self.current = None;
                    return Err(e);
                }
            }
        }
        Err(Error::NotPublished)
    }

    fn load(&mut self, generation: u64) -> Result<Current, Error> {
        let top = Mapped::open(&self.dir, generation)?;
        let (base, delta) = match top.header.kind {
            FileKind::Base => (top, None),
            FileKind::Delta => {
                let want = top.header.base_generation;
                let reuse = match self.current.take() {
                    Some(c) if c.base.header.generation == want => Some(c.base),
                    _ => None,
                };
                let base = match reuse {
                    Some(b) => b,
                    None => Mapped::open(&self.dir, want)?,
                };
                if base.header.kind != FileKind::Base {
                    return Err(Error::Format(
                        file_name(want),
                        FormatError::Corrupt("a delta's base is not a base"),
                    ));
                }
                (base, Some(top))
            }
        };
        let top_table = delta.as_ref().map_or(base.table(), Mapped::table);
        let name = file_name(generation);
        let flags = top_table.header().flags;
        let delimiter = top_table
            .delimiter()
            .map_err(|e| Error::Format(name.clone(), e))?;
        let base_table = base.table();
        let base_delimiter = base_table
            .delimiter()
            .map_err(|e| Error::Format(file_name(base.header.generation), e))?;
        let rules = FLAG_FOLD_LOCAL_PART | FLAG_PROPAGATE_EXTENSION | FLAG_IMPLICIT_SENDER_LOGINS;
        if base_delimiter != delimiter || base_table.header().flags & rules != flags & rules {
            return Err(Error::Format(
                name,
                FormatError::Corrupt("a delta's settings differ from its base"),
            ));
        }
        let settings = Settings {
            normalizer: Normalizer {
                recipient_delimiter: delimiter.to_string(),
                fold_local_part: flags & FLAG_FOLD_LOCAL_PART != 0,
            },
            propagate_extension: flags & FLAG_PROPAGATE_EXTENSION != 0,
            implicit_sender_logins: flags & FLAG_IMPLICIT_SENDER_LOGINS != 0,
            ..Settings::default()
        };
        Ok(Current {
            generation,
            authoritative: flags & FLAG_AUTHORITATIVE != 0,
            base,
            delta,
            settings,
        })
    }

    /// Look `key` up in `table` with the rules of [`ramdir_core::maps`]:
    /// `Ok(None)` is a real "not found".
    pub fn lookup(&mut self, table: Table, key: &str) -> Result<Option<Hit<'_>>, Error> {
        self.refresh()?;
        let Some(c) = self.current.as_ref() else {
            return Err(Error::NotPublished);
        };
        let view = View {
            base: c.base.table(),
            delta: c.delta.as_ref().map(Mapped::table),
            settings: &c.settings,
            corrupt: Cell::new(None),
        };
        let hit = if key.len() > MAX_KEY_LEN {
            None
        } else if table == Table::Mailboxes {
            // The common hit, without a copy: the login in the mapping is
            // followed by its NUL. Same rule as `maps::lookup`.
            match lookup::mailbox_login(&view, key) {
                Ok(login) => login.map(|login| view.mapped(login)),
                Err(e) => return Err(Error::Lookup(e.to_string())),
            }
        } else {
            match maps::lookup(&view, table, key) {
                Outcome::Found(v) => Outcome::value(&v).map(|s| Some(Hit::Owned(s))),
                Outcome::NotFound => None,
                Outcome::Trouble(e) => return Err(Error::Lookup(e)),
            }
        };
        if let Some(e) = view.corrupt.take() {
            return Err(Error::Format(file_name(c.generation), e));
        }
        match hit {
            Some(Some(h)) => Ok(Some(h)),
            Some(None) => Err(Error::Format(
                file_name(c.generation),
                FormatError::Corrupt("value outside the mapping"),
            )),
            None if !c.authoritative && maps::source_key(&view, table, key).is_some() => {
                Err(Error::NotAuthoritative)
            }
            None => Ok(None),
        }
    }
}

/// A Dovecot passdb or userdb answer ([`Reader::auth_lookup`]): one copy
/// of the record's value out of the mapping (one allocation per lookup),
/// whose items are handed to Dovecot as C strings without further copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAnswer {
    /// The login, when Dovecot asked under another name (another case, a
    /// login alias): Dovecot must continue as this user.
    pub user: Option<String>,
    /// `name\0value\0name\0value\0` (an even number of items, checked).
    raw: Vec<u8>,
}

impl AuthAnswer {
    fn new(user: Option<String>, value: &str) -> Result<AuthAnswer, FormatError> {
        let mut raw = Vec::with_capacity(value.len() + 1);
        raw.extend_from_slice(value.as_bytes());
        raw.push(0);
        let items = if value.is_empty() {
            0
        } else {
            raw.iter().filter(|&&b| b == 0).count()
        };
        if items % 2 != 0 {
            return Err(FormatError::Corrupt("a field without its value"));
        }
        if value.is_empty() {
            raw.clear();
        }
        Ok(AuthAnswer { user, raw })
    }

    /// The fields as C strings, in the order the daemon wrote them.
    pub fn c_fields(&self) -> impl Iterator<Item = (&std::ffi::CStr, &std::ffi::CStr)> {
        let mut items = self
            .raw
            .split_inclusive(|&b| b == 0)
            .filter_map(|item| std::ffi::CStr::from_bytes_with_nul(item).ok());
        std::iter::from_fn(move || Some((items.next()?, items.next()?)))
    }

    /// The fields as text.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.c_fields()
            .map(|(k, v)| (k.to_str().unwrap_or(""), v.to_str().unwrap_or("")))
    }

    /// The value of the field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

impl Reader {
    /// Dovecot's lookup of `name` in the records of `kind`
    /// ([`Kind::Passdb`], [`Kind::Userdb23`], [`Kind::Userdb24`]), with the
    /// rules of ramdir's auth dict (`ramdir_dovecot::service`): the login as
    /// given when it is in normal form, else the normalised address; an
    /// address several entries claim is an error (never one of them); an
    /// alias allowed to log in stands for its login. `Ok(None)` is a real
    /// "unknown user"; a miss while the directory is not authoritative is
    /// [`Error::NotAuthoritative`].
    pub fn auth_lookup(&mut self, kind: Kind, name: &str) -> Result<Option<AuthAnswer>, Error> {
        self.refresh()?;
        let Some(c) = self.current.as_ref() else {
            return Err(Error::NotPublished);
        };
        let view = View {
            base: c.base.table(),
            delta: c.delta.as_ref().map(Mapped::table),
            settings: &c.settings,
            corrupt: Cell::new(None),
        };
        let norm = &c.settings.normalizer;
        let mut found = None;
        let mut user = None;
        if name.len() <= MAX_KEY_LEN {
            if norm.is_normal_form(name) {
                found = view.get(kind, name);
            }
            if found.is_none()
                && let Some(addr) = norm.address(name)
            {
                let full = addr.full();
                found = view.get(kind, &full);
                if found.is_none() {
                    if let Some(claims) = view.ambiguous_claims(&full) {
                        return Err(Error::Lookup(format!(
                            "{full} is claimed by {claims} directory entries"
                        )));
                    }
                    if addr.extension.is_none()
                        && let Some(alias) = view.get(Kind::LoginAlias, &full)
                    {
                        found = view.get(kind, alias.value);
                        user = Some(alias.value.to_string());
                    }
                } else if full != name {
                    user = Some(full);
                }
            }
        }
        if let Some(e) = view.corrupt.take() {
            return Err(Error::Format(file_name(c.generation), e));
        }
        match found {
            Some(r) => Ok(Some(
                AuthAnswer::new(user, r.value)
                    .map_err(|e| Error::Format(file_name(c.generation), e))?,
            )),
            None if !c.authoritative => Err(Error::NotAuthoritative),
            None => Ok(None),
        }
    }

    /// Every key of `kind` in the published generation (Dovecot's userdb
    /// iteration: `doveadm user '*'`, `doveadm -A`).
    pub fn auth_users(&mut self, kind: Kind) -> Result<Vec<String>, Error> {
        self.refresh()?;
        let Some(c) = self.current.as_ref() else {
            return Err(Error::NotPublished);
        };
        let name = || file_name(c.generation);
        let mut users = Vec::new();
        match c.delta.as_ref().map(Mapped::table) {
            None => c
                .base
                .table()
                .for_each(kind, |r| users.push(r.key.to_string()))
                .map_err(|e| Error::Format(name(), e))?,
            Some(d) => {
                let mut changed = Vec::new();
                d.for_each(kind, |r| changed.push((r.key.to_string(), r.removed)))
                    .map_err(|e| Error::Format(name(), e))?;
                let base = c.base.table();
                let mut err = None;
                base.for_each(kind, |r| match d.find(kind, r.key) {
                    Ok(None) => users.push(r.key.to_string()),
                    Ok(Some(_)) => {}
                    Err(e) => err = Some(e),
                })
                .map_err(|e| Error::Format(name(), e))?;
                if let Some(e) = err {
                    return Err(Error::Format(name(), e));
                }
                users.extend(changed.into_iter().filter(|c| !c.1).map(|c| c.0));
            }
        }
        Ok(users)
    }
}

/// A generation as the lookup rules see it: the delta's records first
/// (a removal hides the base's), then the base's.
struct View<'a> {
    base: TableFile<'a>,
    delta: Option<TableFile<'a>>,
    settings: &'a Settings,
    /// The first format error met; the lookup fails when set.
    corrupt: Cell<Option<FormatError>>,
}

impl<'a> View<'a> {
    fn get(&self, kind: Kind, key: &str) -> Option<crate::format::Record<'a>> {
        if let Some(d) = &self.delta {
            match d.find(kind, key) {
                Ok(Some(r)) => return (!r.removed).then_some(r),
                Ok(None) => {}
                Err(e) => {
                    self.corrupt.set(Some(e));
                    return None;
                }
            }
        }
        match self.base.find(kind, key) {
            Ok(r) => r.filter(|r| !r.removed),
            Err(e) => {
                self.corrupt.set(Some(e));
                None
            }
        }
    }

    /// The NUL-terminated bytes of a string that lies in one of the
    /// mappings and is followed there by a NUL (a record's key).
    fn mapped(&self, s: &str) -> Option<Hit<'a>> {
        let files = [Some(self.base), self.delta];
        for f in files.into_iter().flatten() {
            let bytes = f.bytes();
            let start = (s.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize);
            if let Some(start) = start.filter(|&st| st < bytes.len()) {
                let end = start + s.len();
                return bytes
                    .get(start..=end)
                    .filter(|b| b[b.len() - 1] == 0)
                    .map(Hit::Mapped);
            }
        }
        None
    }
}

impl<'a> Entries for View<'a> {
    type List<'b>
        = std::str::Split<'b, char>
    where
        Self: 'b;

    fn settings(&self) -> &Settings {
        self.settings
    }

    fn alias(&self, key: &str) -> Option<Self::List<'_>> {
        self.get(Kind::Alias, key).map(|r| r.value.split('\0'))
    }

    fn user_key(&self, login: &str) -> Option<&str> {
        self.get(Kind::User, login).map(|r| r.key)
    }

    fn has_domain(&self, domain: &str) -> bool {
        self.get(Kind::Domain, domain).is_some()
    }

    fn sender_logins(&self, key: &str) -> Option<Self::List<'_>> {
        self.get(Kind::Sender, key).map(|r| r.value.split('\0'))
    }

    fn ambiguous_claims(&self, key: &str) -> Option<u32> {
        // A count that does not parse is still a claim by several entries.
        self.get(Kind::Ambiguous, key)
            .map(|r| r.value.parse().unwrap_or(2))
    }
}

//! What every Dovecot version's glue shares: the open snapshot directory
//! and the one mapping of reader results to outcomes.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Mutex;

use ramdir_snapshot::format::Kind;
use ramdir_snapshot::{AuthAnswer, Reader};

/// Scheme of a stored password without a `{SCHEME}` prefix (ramdir
/// writes the prefix; a bare hash from a source is taken as `crypt(3)`,
/// as Dovecot's own passwd-file does).
pub const DEFAULT_SCHEME: &str = "CRYPT";

/// A lookup's outcome (the only three Dovecot distinguishes for us).
#[derive(Debug)]
pub enum Outcome {
    /// The user's fields.
    Found(AuthAnswer),
    /// A clean miss in an authoritative generation.
    Unknown,
    /// Anything else: Dovecot tempfails. The text is for its log (never a
    /// password or hash: reader errors name files and states only).
    Failed(String),
}

/// One configured passdb or userdb: the map directory, opened as root at
/// preinit when possible (the auth process drops privileges later; new
/// generations are then opened through the kept directory fd).
#[derive(Debug)]
pub struct Db {
    path: PathBuf,
    reader: Mutex<Option<Reader>>,
}

impl Db {
    /// `args`: the map directory.
    pub fn new(args: &str) -> Db {
        let path = PathBuf::from(args.trim());
        // A directory that is not there yet (ramdir starting after Dovecot)
        // is opened at the first lookup instead; until then lookups fail
        // temporarily.
        let reader = Reader::open(&path).ok();
        Db {
            path,
            reader: Mutex::new(reader),
        }
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, String>,
    ) -> Result<T, String> {
        // The auth process is single-threaded; the lock is never contended.
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(
                Reader::open(&self.path)
                    .map_err(|e| format!("ramdir map {}: {e}", self.path.display()))?,
            );
        }
        let Some(reader) = guard.as_mut() else {
            return Err("ramdir map not open".into());
        };
        f(reader)
    }

    /// Look `name` up in the records of `kind`.
    pub fn lookup(&self, kind: Kind, name: &str) -> Outcome {
        let r = self.with_reader(|r| {
            r.auth_lookup(kind, name)
                .map_err(|e| format!("ramdir map {}: {e}", self.path.display()))
        });
        match r {
            Ok(Some(a)) => Outcome::Found(a),
            Ok(None) => Outcome::Unknown,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Every user (for userdb iteration).
    pub fn users(&self, kind: Kind) -> Result<Vec<CString>, String> {
        self.with_reader(|r| {
            r.auth_users(kind)
                .map_err(|e| format!("ramdir map {}: {e}", self.path.display()))
        })
        .map(|users| {
            users
                .into_iter()
                .filter_map(|u| CString::new(u).ok())
                .collect()
        })
    }
}

/// Split `{SCHEME}hash` into scheme and hash (Dovecot's
/// `password_get_scheme`); no prefix → [`DEFAULT_SCHEME`].
pub fn split_scheme(password: &str) -> (&str, &str) {
    if let Some(rest) = password.strip_prefix('{')
        && let Some(end) = rest.find('}')
    {
        return (&rest[..end], &rest[end + 1..]);
    }
    (DEFAULT_SCHEME, password)
}

/// A C string of `s`; a value with a NUL (the writer never stores one)
/// becomes empty rather than truncated silently into another value.
pub fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

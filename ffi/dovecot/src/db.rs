//! What every Dovecot version's glue shares: the open snapshot directory
//! and the one mapping of reader results to outcomes.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

use ramdir_snapshot::format::Kind;
use ramdir_snapshot::{AuthAnswer, Reader};

/// Scheme of a stored password without a `{SCHEME}` prefix (ramdir
/// writes the prefix; a bare hash from a source is taken as `crypt(3)`,
/// as Dovecot's own passwd-file does).
pub const DEFAULT_SCHEME: &CStr = c"CRYPT";

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

/// Schemes up to this length are copied on the stack
/// ([`split_scheme`]); Dovecot's longest (`SCRAM-SHA-256`,
/// `SHA512-CRYPT.HEX`) have under 20 characters, a longer one goes to the
/// heap.
pub const SCHEME_BUF: usize = 64;

/// Split a stored `{SCHEME}hash` into scheme and hash as Dovecot's
/// `password_get_scheme` does; no prefix → [`DEFAULT_SCHEME`]. No copy of
/// the hash (it is the stored value's own NUL-terminated tail); the scheme
/// is copied into `buf` (one lookup per login: no allocation).
pub fn split_scheme<'a>(
    password: &'a CStr,
    buf: &'a mut [u8; SCHEME_BUF],
) -> (Cow<'a, CStr>, &'a CStr) {
    let bytes = password.to_bytes_with_nul();
    if bytes.first() == Some(&b'{')
        && let Some(end) = bytes.iter().position(|&b| b == b'}')
        && let Ok(hash) = CStr::from_bytes_until_nul(&bytes[end + 1..])
    {
        let scheme = &bytes[1..end];
        if scheme.len() < SCHEME_BUF {
            buf[..scheme.len()].copy_from_slice(scheme);
            buf[scheme.len()] = 0;
            if let Ok(s) = CStr::from_bytes_until_nul(&buf[..]) {
                return (Cow::Borrowed(s), hash);
            }
        }
        return (Cow::Owned(CString::new(scheme).unwrap_or_default()), hash);
    }
    (Cow::Borrowed(DEFAULT_SCHEME), password)
}

/// A C string of `s`; a value with a NUL (the writer never stores one)
/// becomes empty rather than truncated silently into another value.
pub fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

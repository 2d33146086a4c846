//! `postfix-ramdir.so`: ramdir's tables inside Postfix, as the dynamically
//! loaded dictionary type `ramdir`.
//!
//! ```text
//! # /etc/postfix/dynamicmaps.cf.d/ramdir
//! ramdir  postfix-ramdir.so  dict_ramdir_open
//! # main.cf
//! virtual_mailbox_maps = ramdir:/run/ramdir/postfix/mailboxes
//! ```
//!
//! The map name is the daemon's map directory (`[postfix_map] directory`)
//! followed by one of the tables `domains`, `mailboxes`, `aliases`,
//! `senders`. Answers are those of the socketmap table of the same name:
//! both run [`ramdir_core::maps::lookup`], here over the snapshot files the
//! daemon publishes ([`ramdir_snapshot`]).
//!
//! Postfix's truth: `src/util/dict.h`, `dict_open.c` (the lookup contract:
//! the result stays valid until the next call on the same table, `error` is
//! set on every call), `src/global/dynamicmaps.c` (loading), `dict_cdb.c`
//! and `dict_sockmap.c` (how a read-only map fills its `DICT`).
//!
//! Failure mapping (decided in one function, `lookup_result`): a hit is the value; a
//! clean miss is "not found"; anything else — no published generation, a
//! generation marked unavailable, a missing, truncated, corrupt or foreign
//! file, a miss while the directory is not authoritative, an alias loop, a
//! panic — is `DICT_ERR_RETRY`, so Postfix defers and never bounces. No
//! panic crosses into Postfix: every entry point runs in `catch_unwind`.
#![allow(unsafe_code)]

mod dict;

use std::ffi::{CStr, CString, c_char, c_int};
use std::mem::size_of;
use std::os::unix::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr::null;
use std::sync::OnceLock;

use ramdir_core::maps::Table;
use ramdir_snapshot::{Error, Hit, Reader};

use crate::dict::{
    DICT_ERR_NONE, DICT_ERR_RETRY, DICT_FLAG_DEBUG, DICT_FLAG_MULTI_WRITER, DICT_FLAG_PATTERN,
    DICT_OWNER_TRUSTED, DICT_OWNER_UNTRUSTED, Dict, Host,
};

/// Bytes left free after Postfix's `struct DICT` before the plugin's
/// private pointer. Postfix 3.11 appends 16 bytes to `DICT` and its
/// `dict_alloc` writes them; later versions may append more. The private
/// pointer sits at the very end of the allocation, far past them.
const PRIVATE_GAP: usize = 256;
/// What the plugin asks `dict_alloc` for.
const ALLOC_SIZE: usize = size_of::<Dict>() + PRIVATE_GAP + size_of::<*mut State>();
/// Offset of the private pointer in the allocation.
const PRIVATE: usize = ALLOC_SIZE - size_of::<*mut State>();

/// The Postfix helpers, resolved once per process at the first open.
static HOST: OnceLock<Option<Host>> = OnceLock::new();

/// What the plugin keeps per open table, outside `DICT`.
struct State {
    reader: Reader,
    table: Table,
    /// The last computed value, NUL-terminated (valid until the next call).
    value: Vec<u8>,
    /// The last warning logged, so a lasting failure is logged once.
    warned: String,
    name: CString,
}

fn host() -> Option<&'static Host> {
    HOST.get_or_init(Host::resolve).as_ref()
}

fn warn(host: &Host, text: &str) {
    let text = CString::new(text.replace('\0', "?")).unwrap_or_default();
    // SAFETY: `msg_warn` is Postfix's printf-like logger; the format is a
    // literal "%s" and its one argument a NUL-terminated string alive for
    // the call.
    unsafe { (host.msg_warn)(c"%s".as_ptr(), text.as_ptr()) };
}

/// `DICT *dict_ramdir_open(const char *name, int open_flags, int dict_flags)`:
/// the entry point named in `dynamicmaps.cf`.
///
/// # Safety
/// Called by Postfix's `dict_open3` with a NUL-terminated `name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dict_ramdir_open(
    name: *const c_char,
    open_flags: c_int,
    dict_flags: c_int,
) -> *mut Dict {
    let Some(host) = host() else {
        // Not inside a Postfix program: nothing to build a DICT with.
        return std::ptr::null_mut();
    };
    // SAFETY: Postfix passes the map name as a NUL-terminated string that
    // outlives the call (it is also copied by `dict_alloc`).
    let name_c = unsafe { CStr::from_ptr(name) };
    let opened = catch_unwind(AssertUnwindSafe(|| {
        open(host, name_c, open_flags, dict_flags)
    }));
    let reason = match opened {
        Ok(Ok(d)) => return d,
        Ok(Err(reason)) => reason,
        Err(_) => "internal error while opening".to_string(),
    };
    // A surrogate table fails every lookup with DICT_ERR_RETRY: daemons keep
    // running and defer, postmap reports the reason and exits.
    let reason = CString::new(reason.replace('\0', "?")).unwrap_or_default();
    // SAFETY: `dict_surrogate(type, name, open_flags, dict_flags, fmt, ...)`
    // with a literal "%s" format and one NUL-terminated argument; all
    // pointers are alive for the call.
    unsafe {
        (host.dict_surrogate)(
            c"ramdir".as_ptr(),
            name,
            open_flags,
            dict_flags,
            c"%s".as_ptr(),
            reason.as_ptr(),
        )
    }
}

fn open(
    host: &Host,
    name: &CStr,
    open_flags: c_int,
    dict_flags: c_int,
) -> Result<*mut Dict, String> {
    let text = name
        .to_str()
        .map_err(|_| "map name is not UTF-8".to_string())?;
    if open_flags & libc::O_ACCMODE != libc::O_RDONLY {
        return Err(format!("ramdir:{text} map requires O_RDONLY access mode"));
    }
    let (dir, table) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("ramdir:{text}: expected DIRECTORY/TABLE"))?;
    let table = Table::from_name(table.as_bytes()).ok_or_else(|| {
        format!("ramdir:{text}: unknown table {table:?} (domains, mailboxes, aliases, senders)")
    })?;
    let dir = if dir.is_empty() { "/" } else { dir };
    let reader = Reader::open(Path::new(dir)).map_err(|e| format!("open {dir}: {e}"))?;
    let meta = reader
        .control_metadata()
        .map_err(|e| format!("fstat {dir}/control: {e}"))?;
    let state = Box::new(State {
        reader,
        table,
        value: Vec::new(),
        warned: String::new(),
        name: name.to_owned(),
    });
    let stat_fd = state.reader.control_fd();
    // SAFETY: `dict_alloc` returns a zeroed-and-initialised allocation of
    // ALLOC_SIZE bytes whose start is a `DICT` (it aborts the process on
    // allocation failure, never returns NULL). Only layout-B fields are
    // written, and the private pointer at PRIVATE (8-aligned: ALLOC_SIZE and
    // the size of a pointer are multiples of 8) lies inside the allocation
    // and past every field any Postfix version defines.
    unsafe {
        let d = (host.dict_alloc)(c"ramdir".as_ptr(), name.as_ptr(), ALLOC_SIZE as isize);
        (*d).lookup = Some(dict_ramdir_lookup);
        (*d).close = Some(dict_ramdir_close);
        (*d).flags = dict_flags | DICT_FLAG_PATTERN | DICT_FLAG_MULTI_WRITER;
        (*d).stat_fd = stat_fd;
        (*d).mtime = meta.mtime() as libc::time_t;
        (*d).owner.uid = meta.uid();
        (*d).owner.status = if meta.uid() == 0 {
            DICT_OWNER_TRUSTED
        } else {
            DICT_OWNER_UNTRUSTED
        };
        d.cast::<u8>()
            .add(PRIVATE)
            .cast::<*mut State>()
            .write(Box::into_raw(state));
        if (*d).flags & DICT_FLAG_DEBUG != 0 {
            Ok((host.dict_debug)(d))
        } else {
            Ok(d)
        }
    }
}

/// The private state of a `DICT` this plugin built.
///
/// # Safety
/// `d` must be a `DICT` returned by [`open`] and not yet closed.
unsafe fn state<'a>(d: *mut Dict) -> Option<&'a mut State> {
    // SAFETY: per the contract, the allocation holds our pointer at PRIVATE;
    // Postfix calls a table from one thread, so the `&mut` is unique.
    unsafe {
        d.cast::<u8>()
            .add(PRIVATE)
            .cast::<*mut State>()
            .read()
            .as_mut()
    }
}

/// What a lookup comes to, in Postfix's terms: the value pointer and
/// `DICT.error`. The one place the failure mapping is decided.
fn lookup_result(state: &mut State, key: &[u8]) -> (*const c_char, c_int) {
    let State {
        reader,
        table,
        value,
        warned,
        name,
    } = state;
    // A key that is not UTF-8 cannot name anything ramdir holds (the
    // socketmap answers NOTFOUND too).
    let Ok(key) = std::str::from_utf8(key) else {
        return (null(), DICT_ERR_NONE);
    };
    match reader.lookup(*table, key) {
        Ok(Some(Hit::Mapped(b))) => (b.as_ptr().cast(), DICT_ERR_NONE),
        Ok(Some(Hit::Owned(s))) => {
            value.clear();
            value.extend_from_slice(s.as_bytes());
            value.push(0);
            (value.as_ptr().cast(), DICT_ERR_NONE)
        }
        Ok(None) => (null(), DICT_ERR_NONE),
        Err(e) => {
            // "Not authoritative" is a state, not a fault: Postfix's own
            // "lookup error" line per deferred recipient says enough.
            let text = match &e {
                Error::NotAuthoritative => None,
                other => Some(other.to_string()),
            };
            // Log a lasting problem once, not per lookup (Postfix logs each
            // failed lookup itself).
            if let Some(text) = text
                && *warned != text
                && let Some(h) = host()
            {
                warn(h, &format!("ramdir:{}: {text}", name.to_string_lossy()));
                *warned = text;
            }
            (null(), DICT_ERR_RETRY)
        }
    }
}

/// `DICT.lookup`.
unsafe extern "C" fn dict_ramdir_lookup(d: *mut Dict, key: *const c_char) -> *const c_char {
    // SAFETY: Postfix calls lookup with a DICT from `open` and a
    // NUL-terminated key that is alive for the call.
    let (st, key) = unsafe { (state(d), CStr::from_ptr(key).to_bytes()) };
    let Some(st) = st else {
        // SAFETY: `d` is a live DICT (see above).
        unsafe { (*d).error = DICT_ERR_RETRY };
        return null();
    };
    let (value, error) = catch_unwind(AssertUnwindSafe(|| lookup_result(st, key)))
        .unwrap_or((null(), DICT_ERR_RETRY));
    // SAFETY: `d` is a live DICT (see above).
    unsafe { (*d).error = error };
    value
}

/// `DICT.close`: drop the private state, then let Postfix free the rest.
unsafe extern "C" fn dict_ramdir_close(d: *mut Dict) {
    // SAFETY: Postfix calls close once, with a DICT from `open`; the slot is
    // cleared before the state is dropped so no later call can see it.
    let st = unsafe {
        let slot = d.cast::<u8>().add(PRIVATE).cast::<*mut State>();
        let p = slot.read();
        slot.write(std::ptr::null_mut());
        p
    };
    if !st.is_null() {
        // SAFETY: `st` came from `Box::into_raw` in `open` and is dropped
        // exactly once (the slot is now NULL).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(st) })));
    }
    if let Some(h) = host() {
        // SAFETY: `d` was allocated by `dict_alloc`; `dict_free` releases
        // what Postfix allocated in it.
        unsafe { (h.dict_free)(d) };
    }
}

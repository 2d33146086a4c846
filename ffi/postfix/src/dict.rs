//! Postfix's side of the interface, declared by hand (no Postfix header is
//! copied or included).
//!
//! The truth is `src/util/dict.h` and `src/util/dict_alloc.c` of Postfix
//! 3.4–3.10 (layout "B" of docs/notes in-process-plugins §1.6; Debian 12
//! ships 3.7.11, Debian 13 3.10.x). Postfix is EPL-2.0/IPL-1.0; EPL-2.0 §1
//! excludes from "Modified Works" works that contain only declarations,
//! interfaces, types and structures of the Program "solely in each case in
//! order to link to, bind by name, or subclass" it, which is all this file
//! is: a `repr(C)` mirror of `struct DICT`, a few constants, and the
//! signatures of the helpers the plugin calls.
//!
//! Postfix 3.11 appends two fields (`reg_name`, `saved_close`) after
//! `file_b64`, and its `dict_alloc` initialises them: the plugin never
//! keeps anything in the bytes right after the struct (see `crate::PRIVATE`).

use std::ffi::{c_char, c_int, c_void};

/// `DICT_ERR_NONE`: the lookup worked (found or not found).
pub const DICT_ERR_NONE: c_int = 0;
/// `DICT_ERR_RETRY`: soft error, Postfix defers (`451 4.3.0`).
pub const DICT_ERR_RETRY: c_int = -1;

/// `DICT_FLAG_PATTERN`: keys are patterns (no partial-key lookups by
/// Postfix), as `dict_sockmap` sets: the plugin does its own normalisation.
pub const DICT_FLAG_PATTERN: c_int = 1 << 5;
/// `DICT_FLAG_DEBUG`: log every access (`DICT_DEBUG()`).
pub const DICT_FLAG_DEBUG: c_int = 1 << 9;
/// `DICT_FLAG_MULTI_WRITER`: the table changes under readers; Postfix then
/// ignores `mtime` changes of `stat_fd` (it still restarts on unlink).
pub const DICT_FLAG_MULTI_WRITER: c_int = 1 << 18;

/// `DICT_OWNER_TRUSTED` / `DICT_OWNER_UNTRUSTED`.
pub const DICT_OWNER_TRUSTED: c_int = 0;
/// See [`DICT_OWNER_TRUSTED`].
pub const DICT_OWNER_UNTRUSTED: c_int = 1;

/// `DICT_OWNER`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DictOwner {
    /// `DICT_OWNER_*`.
    pub status: c_int,
    /// Owner uid of the table file.
    pub uid: libc::uid_t,
}

/// `const char *(*lookup)(DICT *, const char *)`.
pub type LookupFn = unsafe extern "C" fn(*mut Dict, *const c_char) -> *const c_char;
/// `void (*close)(DICT *)`.
pub type CloseFn = unsafe extern "C" fn(*mut Dict);

/// `struct DICT` (layout B, x86-64 offsets checked below).
#[repr(C)]
#[derive(Debug)]
pub struct Dict {
    /// `char *type`.
    pub type_: *mut c_char,
    /// `char *name`.
    pub name: *mut c_char,
    /// `int flags`.
    pub flags: c_int,
    /// `lookup`.
    pub lookup: Option<LookupFn>,
    /// `update` (unsupported: left to `dict_alloc`'s default).
    pub update: *mut c_void,
    /// `delete`.
    pub delete: *mut c_void,
    /// `sequence`.
    pub sequence: *mut c_void,
    /// `lock`.
    pub lock: *mut c_void,
    /// `close`.
    pub close: Option<CloseFn>,
    /// `int lock_type`.
    pub lock_type: c_int,
    /// `int lock_fd`.
    pub lock_fd: c_int,
    /// `int stat_fd`: change detection.
    pub stat_fd: c_int,
    /// `time_t mtime`: modification time at open.
    pub mtime: libc::time_t,
    /// `VSTRING *fold_buf`.
    pub fold_buf: *mut c_void,
    /// `DICT_OWNER owner`.
    pub owner: DictOwner,
    /// `int error`: set on every lookup.
    pub error: c_int,
    /// `DICT_JMP_BUF *jbuf`.
    pub jbuf: *mut c_void,
    /// `struct DICT_UTF8_BACKUP *utf8_backup`.
    pub utf8_backup: *mut c_void,
    /// `VSTRING *file_buf`.
    pub file_buf: *mut c_void,
    /// `VSTRING *file_b64`.
    pub file_b64: *mut c_void,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(Dict, flags) == 16);
    assert!(offset_of!(Dict, lookup) == 24);
    assert!(offset_of!(Dict, close) == 64);
    assert!(offset_of!(Dict, lock_type) == 72);
    assert!(offset_of!(Dict, stat_fd) == 80);
    assert!(offset_of!(Dict, mtime) == 88);
    assert!(offset_of!(Dict, fold_buf) == 96);
    assert!(offset_of!(Dict, owner) == 104);
    assert!(offset_of!(Dict, error) == 112);
    assert!(offset_of!(Dict, jbuf) == 120);
    assert!(offset_of!(Dict, file_b64) == 144);
    assert!(size_of::<Dict>() == 152);
};

/// `DICT *dict_alloc(const char *type, const char *name, ssize_t size)`.
pub type DictAllocFn = unsafe extern "C" fn(*const c_char, *const c_char, isize) -> *mut Dict;
/// `void dict_free(DICT *)`.
pub type DictFreeFn = unsafe extern "C" fn(*mut Dict);
/// `DICT *dict_debug(DICT *)`.
pub type DictDebugFn = unsafe extern "C" fn(*mut Dict) -> *mut Dict;
/// `DICT *dict_surrogate(const char *type, const char *name, int open_flags,
/// int dict_flags, const char *fmt, ...)`.
pub type DictSurrogateFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    c_int,
    c_int,
    *const c_char,
    ...
) -> *mut Dict;
/// `void msg_warn(const char *fmt, ...)`.
pub type MsgFn = unsafe extern "C" fn(*const c_char, ...);

/// The Postfix helpers the plugin calls, found in the process that loaded
/// it (`libpostfix-util.so` is already mapped in every Postfix program).
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// `dict_alloc`.
    pub dict_alloc: DictAllocFn,
    /// `dict_free`.
    pub dict_free: DictFreeFn,
    /// `dict_debug`.
    pub dict_debug: DictDebugFn,
    /// `dict_surrogate`.
    pub dict_surrogate: DictSurrogateFn,
    /// `msg_warn`.
    pub msg_warn: MsgFn,
}

fn symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads
    // the loaded objects' symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

impl Host {
    /// Resolve the helpers, `None` when not inside a Postfix program.
    pub fn resolve() -> Option<Host> {
        let alloc = symbol(c"dict_alloc")?;
        let free = symbol(c"dict_free")?;
        let debug = symbol(c"dict_debug")?;
        let surrogate = symbol(c"dict_surrogate")?;
        let warn = symbol(c"msg_warn")?;
        // SAFETY: each pointer is the address of the Postfix function of
        // that name, whose C signature is the one declared above (dict.h,
        // msg.h of 3.4–3.12); a function pointer and a data pointer have the
        // same size and representation on every platform Postfix runs on.
        unsafe {
            Some(Host {
                dict_alloc: std::mem::transmute::<*mut c_void, DictAllocFn>(alloc),
                dict_free: std::mem::transmute::<*mut c_void, DictFreeFn>(free),
                dict_debug: std::mem::transmute::<*mut c_void, DictDebugFn>(debug),
                dict_surrogate: std::mem::transmute::<*mut c_void, DictSurrogateFn>(surrogate),
                msg_warn: std::mem::transmute::<*mut c_void, MsgFn>(warn),
            })
        }
    }
}

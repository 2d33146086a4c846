//! The glue between Dovecot's auth interfaces and [`Db`]: the module
//! registers one passdb and one userdb interface named `ramdir`.
//!
//! Dovecot 2.3 (`src/auth/passdb.h`, `userdb.h` @ 2.3.19.1):
//! `preinit(pool, args)` gets the map directory in `args`; logging takes a
//! subsystem string. Dovecot 2.4 (@ 2.4.1): `preinit(pool, event, module_r,
//! error_r)` has no `args` (settings come from the settings framework, and
//! a driver's own setting needs a settings plugin of its own), so the map
//! directory is the environment variable [`MAP_ENV`] (`import_environment`
//! in dovecot.conf), default [`DEFAULT_MAP`]; logging takes an event;
//! `auth_request_db_password_verify` returns the passdb result. Everything
//! else is the same code.
//!
//! A module's state is a `#[repr(C)]` struct whose first field is
//! Dovecot's `passdb_module` / `userdb_module` (as Dovecot's own drivers
//! do), so `request->passdb->passdb` leads back to it. It is allocated once
//! per configured passdb/userdb and lives as long as the process (Dovecot
//! keeps the pointer in its module list until exit).

use std::borrow::Cow;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicPtr, Ordering};

use ramdir_snapshot::AuthAnswer;
use ramdir_snapshot::format::Kind;

use crate::db::{self, Db, Outcome, c};
use crate::sys;

/// The driver name (`driver = ramdir`).
const NAME: &CStr = c"ramdir";
/// Cache key: the user name (Dovecot caches only when `auth_cache_size`
/// is set; the snapshot is already in memory, so the cache only adds TTL
/// staleness to live updates).
const CACHE_KEY: &CStr = c"%u";
/// `default_pass_scheme` (required by Dovecot when a cache key is set).
const PASS_SCHEME: &CStr = c"CRYPT";

/// The userdb records this version reads (its own quota names).
#[cfg(dovecot_abi = "2.3")]
const USERDB: Kind = Kind::Userdb23;
/// The userdb records this version reads (its own quota names).
#[cfg(dovecot_abi = "2.4")]
const USERDB: Kind = Kind::Userdb24;

/// Dovecot 2.4: the environment variable naming the map directory.
#[cfg(dovecot_abi = "2.4")]
pub const MAP_ENV: &str = "RAMDIR_DOVECOT_MAP";
/// Dovecot 2.4: the map directory when [`MAP_ENV`] is not set (the
/// packaged `[dovecot_map] directory`).
#[cfg(dovecot_abi = "2.4")]
pub const DEFAULT_MAP: &str = "/run/ramdir/dovecot";

#[repr(C)]
struct Passdb {
    module: sys::passdb_module,
    db: Db,
}

#[repr(C)]
struct Userdb {
    module: sys::userdb_module,
    db: Db,
}

#[repr(C)]
struct Iter {
    ctx: sys::userdb_iterate_context,
    users: Vec<std::ffi::CString>,
    next: usize,
}

static PASSDB_IFACE: AtomicPtr<sys::passdb_module_interface> = AtomicPtr::new(null_mut());
static USERDB_IFACE: AtomicPtr<sys::userdb_module_interface> = AtomicPtr::new(null_mut());

#[cfg(dovecot_abi = "2.3")]
fn subsystem() -> *const c_char {
    // SAFETY: `auth_default_subsystems` is a 2-byte array exported by the
    // auth binary; AUTH_SUBSYS_DB is its first element's address.
    unsafe { sys::auth_default_subsystems.as_ptr() }
}

/// Log `msg` as an error of this request (`auth_request_log_error`).
///
/// # Safety
/// `request` is a live auth request.
#[cfg(dovecot_abi = "2.3")]
unsafe fn log_error(request: *mut sys::auth_request, msg: &str) {
    let msg = c(msg);
    // SAFETY: a live request, Dovecot's subsystem string, a "%s" format
    // with one C string argument.
    unsafe { sys::auth_request_log_error(request, subsystem(), c"%s".as_ptr(), msg.as_ptr()) }
}

/// Log `msg` as an error on the request's event (`e_error`; the inline
/// `authdb_event()` is not callable, and the request's own event carries
/// the same user and service fields).
///
/// # Safety
/// `request` is a live auth request.
#[cfg(dovecot_abi = "2.4")]
unsafe fn log_error(request: *mut sys::auth_request, msg: &str) {
    let msg = c(msg);
    // SAFETY: a live request and its event; a "%s" format with one C
    // string argument; a static file name.
    unsafe {
        sys::e_error(
            (*request).event,
            c"ramdir".as_ptr(),
            0,
            c"%s".as_ptr(),
            msg.as_ptr(),
        )
    }
}

/// `auth_request_log_unknown_user` as Dovecot's own drivers call it.
///
/// # Safety
/// `request` is a live auth request.
unsafe fn log_unknown(request: *mut sys::auth_request) {
    // SAFETY: live request.
    #[cfg(dovecot_abi = "2.3")]
    unsafe {
        sys::auth_request_log_unknown_user(request, subsystem())
    };
    // SAFETY: live request.
    #[cfg(dovecot_abi = "2.4")]
    unsafe {
        sys::auth_request_db_log_unknown_user(request)
    };
}

/// Dovecot's own password check of `plain` against the stored hash.
///
/// # Safety
/// `request` is a live auth request; `plain` is Dovecot's NUL-terminated
/// password.
unsafe fn verify(
    request: *mut sys::auth_request,
    plain: *const c_char,
    hash: &CStr,
    scheme: &CStr,
) -> sys::passdb_result {
    #[cfg(dovecot_abi = "2.3")]
    {
        // SAFETY: as documented; our strings outlive the call.
        let ok = unsafe {
            sys::auth_request_password_verify(
                request,
                plain,
                hash.as_ptr(),
                scheme.as_ptr(),
                subsystem(),
            )
        };
        if ok > 0 {
            sys::passdb_result_PASSDB_RESULT_OK
        } else {
            sys::passdb_result_PASSDB_RESULT_PASSWORD_MISMATCH
        }
    }
    #[cfg(dovecot_abi = "2.4")]
    {
        // SAFETY: as documented; our strings outlive the call.
        unsafe {
            sys::auth_request_db_password_verify(request, plain, hash.as_ptr(), scheme.as_ptr())
        }
    }
}

/// The name Dovecot asks about (borrowed from the request while it is
/// UTF-8, as Dovecot's names are).
///
/// # Safety
/// `request` is a live auth request.
unsafe fn user_of<'a>(request: *mut sys::auth_request) -> Cow<'a, str> {
    // SAFETY: `fields.user` is NULL or a NUL-terminated string of the
    // request's pool, which outlives this call.
    let p = unsafe { (*request).fields.user };
    if p.is_null() {
        return Cow::Borrowed("");
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(p) }.to_string_lossy()
}

/// # Safety
/// `request` is a live auth request whose passdb is ours.
unsafe fn passdb_of<'a>(request: *mut sys::auth_request) -> &'a Db {
    // SAFETY: Dovecot calls our verify/lookup only for a request whose
    // current passdb is a module our preinit returned (a `Passdb`, whose
    // first field is the `passdb_module`).
    unsafe { &(*((*(*request).passdb).passdb as *const Passdb)).db }
}

/// # Safety
/// `request` is a live auth request whose userdb is ours.
unsafe fn userdb_of<'a>(request: *mut sys::auth_request) -> &'a Db {
    // SAFETY: as in `passdb_of`, for the userdb.
    unsafe { &(*((*(*request).userdb).userdb as *const Userdb)).db }
}

/// The passdb answer's fields into the request; returns the stored
/// password (borrowed from the answer).
///
/// # Safety
/// `request` is a live auth request.
unsafe fn set_passdb_fields(request: *mut sys::auth_request, a: &AuthAnswer) -> Option<&CStr> {
    let mut password = None;
    if let Some(u) = &a.user {
        let v = c(u);
        // SAFETY: live request, NUL-terminated strings Dovecot copies.
        unsafe { sys::auth_request_set_field(request, c"user".as_ptr(), v.as_ptr(), null()) };
    }
    for (k, v) in a.c_fields() {
        if k == c"password" {
            password = Some(v);
        }
        // SAFETY: as above; "password" is stored as `passdb_password`.
        unsafe {
            sys::auth_request_set_field(request, k.as_ptr(), v.as_ptr(), PASS_SCHEME.as_ptr())
        };
    }
    password
}

/// The one mapping of a passdb outcome that is not "found".
fn passdb_result_of(o: &Outcome) -> sys::passdb_result {
    match o {
        Outcome::Found(_) => sys::passdb_result_PASSDB_RESULT_OK,
        Outcome::Unknown => sys::passdb_result_PASSDB_RESULT_USER_UNKNOWN,
        Outcome::Failed(_) => sys::passdb_result_PASSDB_RESULT_INTERNAL_FAILURE,
    }
}

/// The one mapping of a userdb outcome.
fn userdb_result_of(o: &Outcome) -> sys::userdb_result {
    match o {
        Outcome::Found(_) => sys::userdb_result_USERDB_RESULT_OK,
        Outcome::Unknown => sys::userdb_result_USERDB_RESULT_USER_UNKNOWN,
        Outcome::Failed(_) => sys::userdb_result_USERDB_RESULT_INTERNAL_FAILURE,
    }
}

/// Log what is not "found" (the unknown user as Dovecot's drivers do).
///
/// # Safety
/// `request` is a live auth request.
unsafe fn log_outcome(request: *mut sys::auth_request, o: &Outcome) {
    match o {
        Outcome::Found(_) => {}
        // SAFETY: live request.
        Outcome::Unknown => unsafe { log_unknown(request) },
        // SAFETY: live request.
        Outcome::Failed(e) => unsafe { log_error(request, e) },
    }
}

fn new_passdb(args: &str) -> *mut sys::passdb_module {
    // SAFETY: an all-zero passdb_module is what Dovecot's p_new gives its
    // own drivers (NULL pointers, false, 0).
    let mut module: sys::passdb_module = unsafe { std::mem::zeroed() };
    module.default_cache_key = CACHE_KEY.as_ptr();
    module.default_pass_scheme = PASS_SCHEME.as_ptr();
    module.blocking = false;
    Box::into_raw(Box::new(Passdb {
        module,
        db: Db::new(args),
    }))
    .cast::<sys::passdb_module>()
}

fn new_userdb(args: &str) -> *mut sys::userdb_module {
    // SAFETY: all-zero is Dovecot's own p_new initial state.
    let mut module: sys::userdb_module = unsafe { std::mem::zeroed() };
    module.default_cache_key = CACHE_KEY.as_ptr();
    module.blocking = false;
    Box::into_raw(Box::new(Userdb {
        module,
        db: Db::new(args),
    }))
    .cast::<sys::userdb_module>()
}

/// Dovecot 2.3's `args` as text.
#[cfg(dovecot_abi = "2.3")]
fn args_of(args: *const c_char) -> String {
    if args.is_null() {
        return String::new();
    }
    // SAFETY: Dovecot's args string, NUL-terminated.
    unsafe { CStr::from_ptr(args) }
        .to_string_lossy()
        .into_owned()
}

// A panic in a preinit cannot be reported through Dovecot 2.3's preinit:
// abort rather than hand Dovecot a null module (it would crash later).
#[cfg(dovecot_abi = "2.3")]
unsafe extern "C" fn passdb_preinit(
    _pool: sys::pool_t,
    args: *const c_char,
) -> *mut sys::passdb_module {
    catch_unwind(|| new_passdb(&args_of(args))).unwrap_or_else(|_| std::process::abort())
}

#[cfg(dovecot_abi = "2.3")]
unsafe extern "C" fn userdb_preinit(
    _pool: sys::pool_t,
    args: *const c_char,
) -> *mut sys::userdb_module {
    catch_unwind(|| new_userdb(&args_of(args))).unwrap_or_else(|_| std::process::abort())
}

/// Dovecot 2.4: the map directory ([`MAP_ENV`], else [`DEFAULT_MAP`]).
#[cfg(dovecot_abi = "2.4")]
fn map_dir() -> String {
    std::env::var(MAP_ENV).unwrap_or_else(|_| DEFAULT_MAP.to_string())
}

#[cfg(dovecot_abi = "2.4")]
unsafe extern "C" fn passdb_preinit(
    _pool: sys::pool_t,
    _event: *mut sys::event,
    module_r: *mut *mut sys::passdb_module,
    error_r: *mut *const c_char,
) -> c_int {
    // SAFETY: Dovecot's out-pointers, passed on.
    unsafe {
        preinit24(
            || new_passdb(&map_dir()),
            module_r,
            error_r,
            c"ramdir: passdb preinit failed",
        )
    }
}

#[cfg(dovecot_abi = "2.4")]
unsafe extern "C" fn userdb_preinit(
    _pool: sys::pool_t,
    _event: *mut sys::event,
    module_r: *mut *mut sys::userdb_module,
    error_r: *mut *const c_char,
) -> c_int {
    // SAFETY: Dovecot's out-pointers, passed on.
    unsafe {
        preinit24(
            || new_userdb(&map_dir()),
            module_r,
            error_r,
            c"ramdir: userdb preinit failed",
        )
    }
}

/// Dovecot 2.4's preinit contract, for both module kinds: the module
/// through `module_r` and 0, or (on a panic) a static message through
/// `error_r` and -1.
///
/// # Safety
/// `module_r` and `error_r` are Dovecot's valid out-pointers.
#[cfg(dovecot_abi = "2.4")]
unsafe fn preinit24<M>(
    new: impl FnOnce() -> *mut M + std::panic::UnwindSafe,
    module_r: *mut *mut M,
    error_r: *mut *const c_char,
    error: &'static CStr,
) -> c_int {
    match catch_unwind(new) {
        Ok(m) => {
            // SAFETY: Dovecot's out-pointer (the caller's contract).
            unsafe { *module_r = m };
            0
        }
        Err(_) => {
            // SAFETY: Dovecot's out-pointer; a static string.
            unsafe { *error_r = error.as_ptr() };
            -1
        }
    }
}

unsafe extern "C" fn verify_plain(
    request: *mut sys::auth_request,
    password: *const c_char,
    callback: sys::verify_plain_callback_t,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Dovecot passes a live request for our passdb.
        let (db, name) = unsafe { (passdb_of(request), user_of(request)) };
        let o = db.lookup(Kind::Passdb, &name);
        // SAFETY: live request.
        unsafe { log_outcome(request, &o) };
        let Outcome::Found(a) = &o else {
            return passdb_result_of(&o);
        };
        // SAFETY: live request.
        let Some(stored) = (unsafe { set_passdb_fields(request, a) }) else {
            // No password (`nologin`): nobody logs in with one.
            return sys::passdb_result_PASSDB_RESULT_PASSWORD_MISMATCH;
        };
        let mut buf = [0u8; db::SCHEME_BUF];
        let (scheme, hash) = db::split_scheme(stored, &mut buf);
        // SAFETY: live request; the plain password is Dovecot's.
        unsafe { verify(request, password, hash, &scheme) }
    }));
    let result = r.unwrap_or(sys::passdb_result_PASSDB_RESULT_INTERNAL_FAILURE);
    if let Some(cb) = callback {
        // SAFETY: Dovecot's callback with its own request.
        unsafe { cb(result, request) };
    }
}

unsafe extern "C" fn lookup_credentials(
    request: *mut sys::auth_request,
    callback: sys::lookup_credentials_callback_t,
) {
    // Whether Dovecot's helper has been called (with the credentials, from
    // inside the closure, which borrows them from the answer); otherwise
    // it is called below with the result and no credentials.
    let mut answered = false;
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Dovecot passes a live request for our passdb.
        let (db, name) = unsafe { (passdb_of(request), user_of(request)) };
        let o = db.lookup(Kind::Passdb, &name);
        // SAFETY: live request.
        unsafe { log_outcome(request, &o) };
        let Outcome::Found(a) = &o else {
            return passdb_result_of(&o);
        };
        // SAFETY: live request.
        let Some(stored) = (unsafe { set_passdb_fields(request, a) }) else {
            // OK with no credentials: Dovecot's "no password" case.
            return sys::passdb_result_PASSDB_RESULT_OK;
        };
        let mut buf = [0u8; db::SCHEME_BUF];
        let (scheme, hash) = db::split_scheme(stored, &mut buf);
        answered = true;
        // SAFETY: Dovecot's own helper turns the stored password into the
        // wanted scheme (or "scheme not available") and calls `callback`;
        // our strings outlive the call.
        unsafe {
            sys::passdb_handle_credentials(
                sys::passdb_result_PASSDB_RESULT_OK,
                hash.as_ptr(),
                scheme.as_ptr(),
                callback,
                request,
            )
        };
        sys::passdb_result_PASSDB_RESULT_OK
    }));
    if !answered {
        let result = r.unwrap_or(sys::passdb_result_PASSDB_RESULT_INTERNAL_FAILURE);
        // SAFETY: as above; a NULL password with OK is Dovecot's "no
        // credentials" case, with another result its failure.
        unsafe { sys::passdb_handle_credentials(result, null(), null(), callback, request) };
    }
}

unsafe extern "C" fn userdb_lookup(
    request: *mut sys::auth_request,
    callback: sys::userdb_callback_t,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Dovecot passes a live request for our userdb.
        let (db, name) = unsafe { (userdb_of(request), user_of(request)) };
        let o = db.lookup(USERDB, &name);
        // SAFETY: live request.
        unsafe { log_outcome(request, &o) };
        if let Outcome::Found(a) = &o {
            if let Some(u) = &a.user {
                let u = c(u);
                // SAFETY: live request; Dovecot copies both strings.
                unsafe {
                    sys::auth_request_set_userdb_field(request, c"user".as_ptr(), u.as_ptr())
                };
            }
            for (k, v) in a.c_fields() {
                // SAFETY: live request; Dovecot copies both strings.
                unsafe { sys::auth_request_set_userdb_field(request, k.as_ptr(), v.as_ptr()) };
            }
        }
        userdb_result_of(&o)
    }));
    let result = r.unwrap_or(sys::userdb_result_USERDB_RESULT_INTERNAL_FAILURE);
    if let Some(cb) = callback {
        // SAFETY: Dovecot's callback with its own request.
        unsafe { cb(result, request) };
    }
}

unsafe extern "C" fn iterate_init(
    request: *mut sys::auth_request,
    callback: sys::userdb_iter_callback_t,
    context: *mut c_void,
) -> *mut sys::userdb_iterate_context {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Dovecot passes a live request for our userdb.
        let db = unsafe { userdb_of(request) };
        match db.users(USERDB) {
            Ok(users) => (users, false),
            Err(e) => {
                // SAFETY: live request.
                unsafe { log_error(request, &e) };
                (Vec::new(), true)
            }
        }
    }));
    let (users, failed) = r.unwrap_or((Vec::new(), true));
    let iter = Box::new(Iter {
        ctx: sys::userdb_iterate_context {
            auth_request: request,
            callback,
            context,
            failed,
        },
        users,
        next: 0,
    });
    Box::into_raw(iter).cast()
}

unsafe extern "C" fn iterate_next(ctx: *mut sys::userdb_iterate_context) {
    let iter = ctx.cast::<Iter>();
    // SAFETY: `ctx` is an `Iter` from our iterate_init, not yet deinit'ed.
    // No reference into it is held across the callback, which may call
    // iterate_next again (auth-worker-client.c guards that recursion).
    let (user, callback, context) = unsafe {
        let i = &mut *iter;
        let user = match i.users.get(i.next) {
            Some(u) => u.as_ptr(),
            None => null(),
        };
        if !user.is_null() {
            i.next += 1;
        }
        (user, i.ctx.callback, i.ctx.context)
    };
    if let Some(cb) = callback {
        // SAFETY: Dovecot's callback and context; the name lives in the
        // Iter until iterate_deinit (NULL ends the iteration).
        unsafe { cb(user, context) };
    }
}

unsafe extern "C" fn iterate_deinit(ctx: *mut sys::userdb_iterate_context) -> c_int {
    // SAFETY: `ctx` is an `Iter` from our iterate_init; Dovecot calls
    // deinit once.
    let iter = unsafe { Box::from_raw(ctx.cast::<Iter>()) };
    if iter.ctx.failed { -1 } else { 0 }
}

/// Called by Dovecot when it loads the module: register `ramdir` as a
/// passdb and a userdb driver.
///
/// # Safety
/// Called by Dovecot's module loader, once, in the auth process.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn authdb_ramdir_init(_module: *mut c_void) {
    let passdb = Box::into_raw(Box::new(sys::passdb_module_interface {
        name: NAME.as_ptr(),
        preinit: Some(passdb_preinit),
        init: None,
        deinit: None,
        verify_plain: Some(verify_plain),
        lookup_credentials: Some(lookup_credentials),
        set_credentials: None,
    }));
    let userdb = Box::into_raw(Box::new(sys::userdb_module_interface {
        name: NAME.as_ptr(),
        preinit: Some(userdb_preinit),
        init: None,
        deinit: None,
        lookup: Some(userdb_lookup),
        iterate_init: Some(iterate_init),
        iterate_next: Some(iterate_next),
        iterate_deinit: Some(iterate_deinit),
    }));
    PASSDB_IFACE.store(passdb, Ordering::Relaxed);
    USERDB_IFACE.store(userdb, Ordering::Relaxed);
    // SAFETY: Dovecot keeps the interface pointers until deinit; they are
    // leaked boxes, valid until then.
    unsafe {
        sys::passdb_register_module(passdb);
        sys::userdb_register_module(userdb);
    }
}

/// Called by Dovecot at unload: unregister both drivers.
///
/// # Safety
/// Called by Dovecot's module loader after `authdb_ramdir_init`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn authdb_ramdir_deinit() {
    let passdb = PASSDB_IFACE.swap(null_mut(), Ordering::Relaxed);
    let userdb = USERDB_IFACE.swap(null_mut(), Ordering::Relaxed);
    // SAFETY: the pointers registered by init (null when init did not
    // run). The boxes stay leaked: Dovecot may still hold copies of the
    // interface in modules it frees after us.
    unsafe {
        if !passdb.is_null() {
            sys::passdb_unregister_module(passdb);
        }
        if !userdb.is_null() {
            sys::userdb_unregister_module(userdb);
        }
    }
}

//! Memory mappings of snapshot files: the only `unsafe` of the format crate.
//!
//! A mapping is read-only for readers; the daemon maps the control page
//! read-write to store the control word atomically. Files are never
//! truncated while mapped (the daemon writes every table file once, under a
//! temporary name, and never touches it again), so a mapping cannot SIGBUS
//! as long as nobody but the daemon writes in the map directory.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// A `mmap`ed region, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is
// tied to a thread. Shared access is read-only except for the control word,
// which is only touched through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out `&[u8]` and atomic access.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the first `len` bytes of `fd` (`len` > 0, and at most the file's
    /// size as the caller checked with `fstat`).
    pub fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        // Read-only table files are populated at once: one call sets up the
        // page tables instead of a page fault per 64 KiB touched during
        // lookups (the page cache already holds the file; nothing is read).
        let (prot, flags) = if writable {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE)
        };
        // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) of a
        // valid open fd; no existing memory is affected. The result is
        // checked for MAP_FAILED before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` bytes (unmapped only in
        // Drop, which needs `&mut self`). Its contents may change only in
        // the control page, whose changing word is never read through this
        // slice (see `load`/`store`), and table files are never written
        // after they are published.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "word in bounds"
        );
        // SAFETY: in bounds and 8-aligned (checked above; mmap returns a
        // page-aligned address), living as long as `&self`; every access to
        // this word, in every process, is atomic.
        unsafe { &*(self.ptr.cast::<u8>().add(offset).cast::<AtomicU64>()) }
    }

    /// Atomic load (`Acquire`) of the 8-byte word at `offset`.
    pub fn load(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Atomic store (`Release`) of the 8-byte word at `offset` (the mapping
    /// must be writable).
    pub fn store(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Release)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and
        // nobody else unmaps; no borrow of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// `openat(dir, name, O_RDONLY | O_CLOEXEC)`: how a reader opens a new
/// generation after chroot, through the directory fd it kept from open time.
pub fn open_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"))?;
    // SAFETY: `c` is a NUL-terminated string alive for the call; `dir` is an
    // open fd. The result is checked before it is wrapped.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

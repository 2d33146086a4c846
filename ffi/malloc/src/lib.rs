//! glibc malloc settings for the daemon, and what its heap holds.
//!
//! ramdir serves each connection on a thread of its own (`ramdir-conn`),
//! so a busy daemon runs hundreds of threads. glibc's malloc then spreads
//! them over up to 8 arenas per CPU (the default of `M_ARENA_MAX` on 64-bit
//! systems, `malloc/arena.c`), and each arena keeps the memory freed in it
//! for its own threads: the process's footprint becomes the sum of every
//! arena's own high-water mark, which keeps rising for a long time under a
//! steady load as rarer peaks reach each arena in turn. Measured in the
//! soak (docs/reliability.md, "Soak"), 2 CPUs, 500 connections: with the
//! default 16 arenas the malloc heaps' RSS still grew by about
//! 400 KiB/min after 5 minutes while the bytes in use were the same as
//! with 2 arenas, whose heaps stayed flat. [`limit_arenas`] sets the cap;
//! [`heap`] tells the bytes in use from the bytes taken from the system,
//! for `ramdir stats`.
//!
//! This is the daemon's only use of `unsafe` outside the Postfix and
//! Dovecot plugins and the snapshot reader: two calls into glibc through
//! `libc`. On other C libraries (musl) both are no-ops.

// The one reason for this crate: glibc's malloc interface is only reachable
// through `unsafe` FFI calls, which the workspace allows in `ffi/` only.
#![allow(unsafe_code)]

/// Cap malloc's arenas at `n` (at least 1): threads beyond it share the
/// existing ones. Call it before the threads start: arenas already created
/// stay. Returns whether the C library took the setting (false where it is
/// not glibc).
pub fn limit_arenas(n: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n = libc::c_int::try_from(n.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only sets one of malloc's parameters; it takes
        // plain integers, returns 1 when it accepted the value and 0 when
        // it refused it, and is safe to call at any time from any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// What malloc's heap holds, over every arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Bytes in allocations not yet freed (chunks mapped on their own
    /// included).
    pub in_use: u64,
    /// Bytes malloc has taken from the system for them: `in_use` plus the
    /// free memory it keeps in its arenas. The difference is what the
    /// allocator holds, not the program.
    pub from_system: u64,
}

/// The heap now (glibc's `mallinfo2`, which walks every arena under its
/// lock: cheap, but not for a request path). `None` where the C library
/// is not glibc.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` takes no arguments, only reads malloc's
        // state under the arenas' own locks and returns a plain struct by
        // value (glibc ≥ 2.33; Debian 12 has 2.36).
        let m = unsafe { libc::mallinfo2() };
        let mapped = m.hblkhd as u64;
        Some(Heap {
            in_use: m.uordblks as u64 + mapped,
            from_system: m.arena as u64 + mapped,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_counts_a_live_allocation_and_forgets_it_when_freed() {
        let before = heap().expect("glibc");
        assert!(before.in_use <= before.from_system);
        // Larger than the mmap threshold's ceiling, so it is mapped on its
        // own and counted exactly, whatever other test threads allocate
        // meanwhile in small chunks.
        let big = vec![1u8; 64 << 20];
        let during = heap().expect("glibc");
        assert!(
            during.in_use >= before.in_use + (64 << 20) - (8 << 20),
            "{before:?} {during:?}"
        );
        drop(std::hint::black_box(big));
        let after = heap().expect("glibc");
        assert!(
            after.in_use + (32 << 20) < during.in_use,
            "{during:?} {after:?}"
        );
    }

    #[test]
    fn the_arena_cap_is_taken() {
        assert!(limit_arenas(2));
        assert!(limit_arenas(0), "0 is raised to 1, a valid cap");
    }
}

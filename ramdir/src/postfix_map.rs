//! `[postfix_map]`: publishing the directory as snapshot files for the
//! in-process Postfix plugin (`postfix-ramdir.so`, `ffi/postfix`).
//!
//! One thread owns the [`Publisher`]. It looks at the directory's
//! generation every [`POLL`] and publishes when it changed, at most once per
//! [`MIN_INTERVAL`]: a burst of LDAP changes or a reload becomes one
//! generation, and a change is in the files within `POLL + MIN_INTERVAL` plus
//! the write (well under Postfix's one-second budget). The format, the
//! base/delta choice and the cleanup of old files are `ramdir_snapshot`'s.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ramdir_core::DirectoryHandle;
use ramdir_snapshot::{Content, Limits, Publisher};

use crate::config::PostfixMapConfig;
use crate::serve::CmdError;

/// How often the publisher looks at the directory's generation (one atomic
/// load; no work when nothing changed).
pub const POLL: Duration = Duration::from_millis(50);

/// Least time between two publications, so a storm of changes costs a few
/// files per second, not one per change.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Wait after a failed publication before trying again (a full disk must
/// not become a busy loop); the last good generation keeps answering.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The running publisher thread.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    /// The directory generation last published (for metrics).
    pub published: Arc<AtomicU64>,
}

impl Running {
    /// Stop publishing (and mark the tables unavailable if so configured).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn prepare_directory(
    dir: &std::path::Path,
    group: Option<&str>,
    section: &str,
) -> Result<(), CmdError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(g) = group {
        let gid = match g.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => {
                nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("group {g}: {e}"))?
                    .ok_or_else(|| format!("{section} group {g:?}: no such group"))?
                    .gid
            }
        };
        nix::unistd::chown(dir, None, Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        // Set-group-ID: files created here get the directory's group.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2750))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Open the map directory, publish the current directory at once, and
/// start the publisher thread.
pub fn start(cfg: &PostfixMapConfig, handle: Arc<DirectoryHandle>) -> Result<Running, CmdError> {
    start_publisher(
        Map {
            name: "postfix",
            section: "[postfix_map]",
            directory: &cfg.directory,
            group: cfg.group.as_deref(),
            mode: cfg.mode,
            unavailable_on_stop: cfg.unavailable_on_stop,
        },
        Content::Postfix,
        handle,
    )
}

/// One map directory to publish (`[postfix_map]`, `[dovecot_map]`).
pub struct Map<'a> {
    /// For logs and the thread name (`postfix`, `dovecot`).
    pub name: &'static str,
    /// The config section, for errors.
    pub section: &'static str,
    /// The map directory.
    pub directory: &'a std::path::Path,
    /// Group of the directory and its files.
    pub group: Option<&'a str>,
    /// Mode of the files.
    pub mode: u32,
    /// Mark unavailable when ramdir stops.
    pub unavailable_on_stop: bool,
}

/// Open a map directory, publish the current directory at once, and start
/// its publisher thread (the one mechanism for every map directory).
pub fn start_publisher(
    map: Map<'_>,
    content: Content,
    handle: Arc<DirectoryHandle>,
) -> Result<Running, CmdError> {
    let name = map.name;
    prepare_directory(map.directory, map.group, map.section)?;
    let mut publisher = Publisher::open_with(map.directory, map.mode, Limits::default(), content)
        .map_err(|e| format!("{}: {e}", map.directory.display()))?;
    let first = handle.snapshot();
    let p = publisher
        .publish(&first)
        .map_err(|e| format!("{}: publishing: {e}", map.directory.display()))?;
    tracing::info!(
        map = name,
        generation = p.generation,
        entries = p.entries,
        bytes = p.bytes,
        "map published"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let unavailable_on_stop = map.unavailable_on_stop;
    let flag = stop.clone();
    let published = Arc::new(AtomicU64::new(first.meta().generation));
    let shown = published.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ramdir-{name}-map"))
        .spawn(move || {
            run(&mut publisher, &handle, &shown, &flag, name);
            if unavailable_on_stop {
                publisher.mark_unavailable();
                tracing::info!(map = name, "map marked unavailable");
            }
        })?;
    Ok(Running {
        stop,
        thread,
        published,
    })
}

fn run(
    publisher: &mut Publisher,
    handle: &DirectoryHandle,
    shown: &AtomicU64,
    stop: &AtomicBool,
    name: &str,
) {
    let mut published = shown.load(Ordering::Relaxed);
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = Instant::now();
        publisher.collect(now);
        if handle.current().meta().generation == published
            || now.saturating_duration_since(last) < MIN_INTERVAL
        {
            continue;
        }
        let dir = handle.snapshot();
        let started = Instant::now();
        match publisher.publish(&dir) {
            Ok(p) => {
                published = dir.meta().generation;
                shown.store(published, Ordering::Relaxed);
                last = Instant::now();
                tracing::debug!(
                    map = name,
                    generation = p.generation,
                    kind = ?p.kind,
                    entries = p.entries,
                    bytes = p.bytes,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "map published"
                );
            }
            Err(e) => {
                tracing::error!(map = name, error = %e, "cannot publish the map; the last generation keeps answering");
                last = Instant::now() + RETRY_AFTER;
            }
        }
    }
}

/// Where Debian's Postfix takes a relative `.so` name in `dynamicmaps.cf`
/// from (`shlib_directory`).
const SHLIB_DIRECTORY: &str = "/usr/lib/postfix";

/// What `check-config` says about the plugin's registration under
/// Postfix's `meta_directory`: Postfix silently skips a `dynamicmaps.cf`
/// line whose file or `.so` is not owned by root or is group- or
/// world-writable (only a later lookup says "unsupported dictionary type"),
/// so the check names the file and the fix. One line per finding.
pub fn check_plugin(meta: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut cf_files = vec![meta.join("dynamicmaps.cf")];
    if let Ok(rd) = std::fs::read_dir(meta.join("dynamicmaps.cf.d")) {
        let mut more: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        cf_files.extend(more);
    }
    let entry = cf_files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("ramdir")).then(|| (f.clone(), w.next().unwrap_or("").to_string()))
        })
    });
    let Some((cf, so)) = entry else {
        return vec![format!(
            "postfix plugin: no \"ramdir\" line in {}/dynamicmaps.cf or dynamicmaps.cf.d/: \
             Postfix does not know the ramdir: type (docs/postfix-map.md)",
            meta.display()
        )];
    };
    let so = if so.starts_with('/') {
        std::path::PathBuf::from(so)
    } else {
        std::path::Path::new(SHLIB_DIRECTORY).join(so)
    };
    let mut problems = Vec::new();
    for f in [&cf, &so] {
        match std::fs::metadata(f) {
            Err(e) => problems.push(format!("postfix plugin: {}: {e}", f.display())),
            Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => problems.push(format!(
                "postfix plugin: {} is owned by uid {} with mode {:04o}: Postfix ignores the \
                 ramdir type (\"unsupported dictionary type: ramdir\") unless the file is \
                 owned by root and not group- or world-writable: chown root {0}; chmod go-w {0}",
                f.display(),
                m.uid(),
                m.mode() & 0o7777
            )),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        problems.push(format!(
            "postfix plugin: ok ({} → {})",
            cf.display(),
            so.display()
        ));
    }
    problems
}

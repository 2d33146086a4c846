//! `ramdir serve`: load the directory, bind the listeners, then serve until
//! SIGTERM/SIGINT, reloading on SIGHUP and when a source file changes.
//!
//! A reload re-reads the configuration and every source file off the serving
//! path and swaps the new directory in at once; if anything fails the old
//! snapshot stays and one error line says why (file and line). LDAP entries
//! are carried over into the rebuilt directory. Listener, quota store and
//! LDAP settings cannot change without a restart: a reload that changes them
//! says so in a warning.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramdir_core::fallback::Fallback;
use ramdir_core::{Directory, DirectoryHandle};
use ramdir_dovecot::server as dict;
use ramdir_ldap::fallback::LdapFallback;
use ramdir_ldap::source::LdapSource;
use ramdir_postfix::{policy, socketmap};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::listener;
use crate::stats::{self, Counters};

/// Quiet period after the last change event before an automatic reload:
/// lets a writer finish a file (editors and scripts write in bursts).
pub const WATCH_SETTLE: Duration = Duration::from_millis(500);

/// An automatic (file-change) reload that would drop more than this share
/// of users is refused, because a half-written file would otherwise turn
/// into "user unknown" bounces. SIGHUP forces it.
pub const MAX_AUTO_DROP: f64 = 0.5;

/// Below this many users the drop guard does not apply (small directories
/// legitimately halve).
const DROP_GUARD_MIN_USERS: usize = 100;

/// Error type of the binary's commands: a message for the operator.
pub type CmdError = Box<dyn std::error::Error + Send + Sync>;

/// Build a directory from the configuration's files, logging the figures.
pub fn load_directory(config: &Config) -> Result<Directory, CmdError> {
    let started = Instant::now();
    let dir =
        ramdir_core::files::load(&config.directory.sources, config.directory.settings.clone())?;
    let c = dir.counts();
    tracing::info!(
        users = c.users,
        aliases = c.aliases,
        domains = c.domains,
        senders = c.senders,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "directory loaded from files"
    );
    Ok(dir)
}

/// malloc arenas per CPU (glibc's default is 8). Connections run on a
/// thread each, so the daemon has hundreds of threads; with the default,
/// memory freed in one arena is kept for that arena's threads and RSS
/// keeps creeping up under a steady load (the soak, docs/reliability.md:
/// +400 KiB/min after 5 minutes with 16 arenas on 2 CPUs, flat with 2, the
/// bytes in use the same). At most as many threads run at once as there
/// are CPUs, so one arena each keeps lock waits rare.
pub const MALLOC_ARENAS_PER_CPU: usize = 1;

/// The arena cap: [`MALLOC_ARENAS_PER_CPU`] times the CPUs ramdir may use.
fn malloc_arenas() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    MALLOC_ARENAS_PER_CPU * cpus
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    FileChange,
}

/// Run the daemon. Returns when a termination signal has been handled.
/// As root it needs `[server] user` (switched to once the sockets are
/// bound) or `allow_root` (`--allow-root`).
pub fn serve(config: Config, allow_root: bool) -> Result<(), CmdError> {
    let switch_to = crate::privilege::plan(&config, allow_root)?;
    let mail_off = config.socketmap.is_none()
        && config.dict.is_none()
        && config.policy.is_none()
        && config.milter.is_none()
        && config.postfix_map.is_none()
        && config.dovecot_map.is_none();
    if mail_off && config.stats.is_none() && config.metrics.is_none() {
        return Err(format!(
            "{}: nothing to serve: no listener section \
             ([socketmap], [policy], [milter], [dict], [postfix_map], [dovecot_map], [stats]) is configured",
            config.path.display()
        )
        .into());
    }
    if mail_off {
        // The Debian package's shipped configuration: the daemon runs and
        // reports, and answers no mail question until the operator says how.
        tracing::warn!(
            config = %config.path.display(),
            "no mail listener configured ([socketmap], [policy], [milter], [dict], \
             [postfix_map], [dovecot_map]): serving [stats] only"
        );
    }
    if config.dict.is_some() && config.quota.is_none() {
        tracing::warn!("[dict] without [quota]: the quota dict is off (auth dict only)");
    }
    // Before any thread exists: taking the fds clears LISTEN_FDS, and
    // malloc's arena cap applies to arenas not yet created.
    let inherited = listener::Inherited::from_env();
    ramdir_malloc::limit_arenas(malloc_arenas());
    let dir = load_directory(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ramdir")
        .build()?;
    runtime.block_on(run(config, dir, inherited, switch_to))
}

/// Attempts to open the usage store: a `ramdir query`/`explain` run while
/// no daemon was up may hold its lock for a moment.
const STORE_OPEN_TRIES: u32 = 20;

/// Open the usage store, waiting briefly if another process holds it.
async fn open_store(path: &Path) -> Result<ramdir_core::usage::UsageStore, CmdError> {
    let mut tries = 0;
    loop {
        match ramdir_core::usage::UsageStore::open(path) {
            Ok(s) => return Ok(s),
            Err(e) if tries + 1 < STORE_OPEN_TRIES && e.to_string().contains("already open") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("{}: {e}", path.display()).into()),
        }
    }
}

/// A future that completes when `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(
    config: Config,
    dir: Directory,
    mut inherited: listener::Inherited,
    switch_to: Option<crate::privilege::Target>,
) -> Result<(), CmdError> {
    // Before anything answers: a SIGTERM that arrives while listeners are
    // still starting must shut down cleanly (and run the shutdown steps).
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let handle = Arc::new(DirectoryHandle::new(dir));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets: Vec<PathBuf> = Vec::new();
    let counters = Arc::new(Counters::default());

    // The LDAP source: warm start first (serve the last good directory at
    // once), then load and sync in the background.
    let ldap = config
        .ldap
        .clone()
        .map(|s| LdapSource::new(s, handle.clone()));
    let fallback: Option<Arc<dyn Fallback>> = match &ldap {
        Some(src) if src.settings().fallback => Some(Arc::new(LdapFallback::new(src.clone()))),
        _ => None,
    };
    if let Some(src) = &ldap {
        src.warm_start();
    }

    // One usage store for every listener that needs it.
    let store = match &config.quota {
        Some(q) => {
            let store = Arc::new(open_store(&q.store).await?);
            tracing::info!(store = %q.store.display(), "quota usage store open");
            Some(store)
        }
        None => None,
    };
    // Shared usage (`[quota] shared`): the policy service and the milter
    // read the mirror; this host's commits are published.
    let shared = match (
        &store,
        config.quota.as_ref().and_then(|q| q.shared.as_ref()),
    ) {
        (Some(store), Some(cfg)) => {
            Some(crate::shared::start(cfg, store.clone(), stop_rx.clone())?)
        }
        _ => None,
    };
    let usage_source: Option<Arc<dyn ramdir_core::check::UsageSource + Send + Sync>> =
        match (&shared, &store) {
            (Some(sh), _) => Some(sh.mirror.clone()),
            (None, Some(store)) => Some(store.clone()),
            (None, None) => None,
        };

    if let Some(l) = &config.socketmap {
        let listener = listener::open(l, &mut inherited, &mut sockets)?;
        let cfg = socketmap::server::Config {
            max_connections: l.max_connections,
            idle_timeout: l.idle_timeout,
            fallback: fallback.clone(),
        };
        let (h, stats) = (handle.clone(), counters.socketmap.clone());
        let stop = stopped(stop_rx.clone());
        tracing::info!(socket = %l.path.display(), "socketmap listening");
        servers.spawn(async move { socketmap::server::run(listener, h, cfg, stats, stop).await });
    }

    if let (Some(l), Some(usage), Some(q)) = (&config.policy, &usage_source, &config.quota) {
        let listener = listener::open(l, &mut inherited, &mut sockets)?;
        let cfg = policy::server::Config {
            max_connections: l.max_connections,
            idle_timeout: l.idle_timeout,
            settings: policy::service::Settings {
                grace: q.grace,
                over_quota: q.over_quota_reply.clone(),
            },
        };
        let (h, stats) = (handle.clone(), counters.policy.clone());
        let usage = usage.clone();
        let stop = stopped(stop_rx.clone());
        tracing::info!(socket = %l.path.display(), "policy listening");
        servers
            .spawn(async move { policy::server::run(listener, h, usage, cfg, stats, stop).await });
    }

    if let (Some(l), Some(usage), Some(q)) = (&config.milter, &usage_source, &config.quota) {
        let over_quota: ramdir_milter::OverQuotaReply = q
            .over_quota_reply
            .parse()
            .map_err(|e| format!("[quota] over_quota_reply for the milter: {e}"))?;
        let listener = listener::open(l, &mut inherited, &mut sockets)?;
        let cfg = ramdir_milter::Config {
            max_connections: l.max_connections,
            grace: q.grace,
            over_quota,
        };
        let (h, usage, stats) = (handle.clone(), usage.clone(), counters.milter.clone());
        let stop = stopped(stop_rx.clone());
        tracing::info!(socket = %l.path.display(), "milter listening");
        servers
            .spawn(async move { ramdir_milter::run(listener, h, usage, cfg, stats, stop).await });
    }

    if let Some(d) = &config.dict {
        let usage = store.as_ref().map(|store| dict::Usage {
            writer: ramdir_core::usage::Writer::start(store.clone()),
            store: store.clone(),
        });
        let listener = listener::open(&d.listener, &mut inherited, &mut sockets)?;
        let cfg = dict::Config {
            max_connections: d.listener.max_connections,
            idle_timeout: d.listener.idle_timeout,
            settings: d.settings.clone(),
            fallback: fallback.clone(),
        };
        let (h, stats) = (handle.clone(), counters.dict.clone());
        let stop = stopped(stop_rx.clone());
        tracing::info!(socket = %d.listener.path.display(), "dict listening");
        servers.spawn(async move { dict::run(listener, h, usage, cfg, stats, stop).await });
    }

    if let Some(l) = &config.stats {
        let listener = listener::open(l, &mut inherited, &mut sockets)?;
        let (h, c, src) = (handle.clone(), counters.clone(), ldap.clone());
        let stop = stopped(stop_rx.clone());
        tracing::info!(socket = %l.path.display(), "stats listening");
        servers.spawn(async move { stats::run(listener, h, c, src, stop).await });
    }

    let publisher = match &config.postfix_map {
        Some(m) => {
            let p = crate::postfix_map::start(m, handle.clone())?;
            tracing::info!(directory = %m.directory.display(), "postfix map publishing");
            Some(p)
        }
        None => None,
    };

    let dovecot_publisher = match &config.dovecot_map {
        Some(m) => {
            let settings = config
                .dict
                .as_ref()
                .map(|d| d.settings.clone())
                .unwrap_or_default();
            let p = crate::dovecot_map::start(m, settings, handle.clone())?;
            tracing::info!(directory = %m.directory.display(), "dovecot map publishing");
            Some(p)
        }
        None => None,
    };

    if let Some(m) = &config.metrics {
        // Latency sampling costs the hot path a little: only when shown.
        for stats in [
            &counters.socketmap.conn,
            &counters.policy,
            &counters.dict,
            &counters.milter,
        ] {
            stats.latency.enable();
        }
        let listener = tokio::net::TcpListener::bind(m.listen)
            .await
            .map_err(|e| format!("[metrics] listen {}: {e}", m.listen))?;
        let (h, c, src) = (handle.clone(), counters.clone(), ldap.clone());
        let extras = crate::metrics::Extras {
            store: store.clone(),
            map_generation: publisher.as_ref().map(|p| p.published.clone()),
            dovecot_map_generation: dovecot_publisher.as_ref().map(|p| p.published.clone()),
            shared: shared
                .as_ref()
                .map(|sh| (sh.stats.clone(), sh.mirror.clone())),
        };
        let stop = stopped(stop_rx.clone());
        tracing::info!(address = %m.listen, "metrics listening (GET /metrics)");
        if !m.listen.ip().is_loopback() {
            tracing::warn!(
                address = %m.listen,
                "[metrics] listens beyond loopback: anyone who reaches it sees the directory's \
                 sizes and counters; firewall it or use a management network"
            );
        }
        servers.spawn(async move { crate::metrics::run(listener, h, c, src, extras, stop).await });
    }

    // Everything privileged is done: sockets bound, store open, map
    // directories made. The LDAP source (which writes its state_dir) starts
    // after the switch.
    if let Some(t) = &switch_to {
        if let Some(q) = &config.quota {
            let (uid, gid) = t.ids();
            nix::unistd::chown(&q.store, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", q.store.display()))?;
        }
        t.switch()?;
    }
    let ldap_task = ldap.as_ref().map(|src| {
        tracing::info!(url = %src.settings().url, base = %src.settings().base, "LDAP source starting");
        tokio::spawn(src.clone().run(stop_rx.clone()))
    });

    for p in inherited.unused() {
        tracing::warn!(socket = %p.display(), "systemd passed a socket no listener is configured for");
    }
    let supervisor = tokio::spawn(crate::systemd::supervise(
        handle.clone(),
        ldap.clone(),
        stop_rx.clone(),
    ));

    let (change_tx, mut change_rx) = mpsc::channel::<()>(16);
    let mut config = config;
    let mut watcher = start_watcher(&config, change_tx.clone());

    let result = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                crate::systemd::reloading();
                reload(&mut config, &handle, ldap.as_deref(), Trigger::Signal).await;
                crate::systemd::ready(&handle, ldap.as_deref());
                watcher = start_watcher(&config, change_tx.clone());
            }
            Some(()) = change_rx.recv() => {
                // Wait until the files have been quiet for a moment.
                while let Ok(Some(())) =
                    tokio::time::timeout(WATCH_SETTLE, change_rx.recv()).await
                {}
                tracing::info!("source file changed: reloading");
                reload(&mut config, &handle, ldap.as_deref(), Trigger::FileChange).await;
                watcher = start_watcher(&config, change_tx.clone());
            }
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            Some(r) = servers.join_next() => {
                // A listener stopped on its own: it cannot serve any more.
                break match r {
                    Ok(Ok(())) => Err("a listener stopped unexpectedly".into()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(e.into()),
                };
            }
        }
    };
    drop(watcher);
    tracing::info!("shutting down");
    crate::systemd::stopping();
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    while servers.join_next().await.is_some() {}
    if let Some(t) = ldap_task {
        // Lets the LDAP source write its final warm snapshot.
        let _ = t.await;
    }
    if let Some(sh) = shared {
        let st = &sh.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            published = n(&st.published),
            republishes = n(&st.republishes),
            rescans = n(&st.rescans),
            mirror = sh.mirror.len(),
            "shared usage stopping"
        );
        // The publisher sends what is queued before it stops (best effort:
        // whatever it cannot send is republished from redb at the next
        // start).
        for t in sh.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
    for p in [publisher, dovecot_publisher].into_iter().flatten() {
        p.stop();
    }
    for s in &sockets {
        listener::cleanup(s);
    }
    result
}

async fn reload(
    config: &mut Config,
    handle: &Arc<DirectoryHandle>,
    ldap: Option<&LdapSource>,
    trigger: Trigger,
) {
    let path = config.path.clone();
    let old_users = handle.snapshot().counts().users;
    let result = tokio::task::spawn_blocking(move || -> Result<(Config, Directory), CmdError> {
        let cfg = Config::load(&path)?;
        let dir = load_directory(&cfg)?;
        Ok((cfg, dir))
    })
    .await;
    let (new_cfg, dir) = match result {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reload failed; still serving the previous directory");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload task failed; still serving the previous directory");
            return;
        }
    };
    // The guard applies to file-only directories: with LDAP, the rebuilt
    // directory gets the LDAP entries only when it is published.
    let new_users = dir.counts().users;
    if ldap.is_none()
        && trigger == Trigger::FileChange
        && old_users >= DROP_GUARD_MIN_USERS
        && (new_users as f64) < old_users as f64 * (1.0 - MAX_AUTO_DROP)
    {
        tracing::error!(
            old_users,
            new_users,
            "automatic reload refused: too many users would disappear (a half-written file?); \
             still serving the previous directory; send SIGHUP to force"
        );
        return;
    }
    if new_cfg.socketmap != config.socketmap
        || new_cfg.policy != config.policy
        || new_cfg.milter != config.milter
        || new_cfg.dict != config.dict
        || new_cfg.quota != config.quota
        || new_cfg.ldap != config.ldap
        || new_cfg.stats != config.stats
        || new_cfg.postfix_map != config.postfix_map
        || new_cfg.dovecot_map != config.dovecot_map
        || new_cfg.metrics != config.metrics
        || new_cfg.server != config.server
    {
        tracing::warn!(
            "listener, quota store or LDAP settings changed; they take effect after a restart"
        );
    }
    match ldap {
        Some(src) => src.rebuild(dir),
        None => handle.replace(dir),
    }
    // Only the directory part of a new configuration applies without a
    // restart; keep the running listeners' settings.
    config.directory = new_cfg.directory;
    tracing::info!(
        generation = handle.snapshot().meta().generation,
        "reload done"
    );
}

/// What a watched directory reports: a file written and closed, renamed
/// in or out, created, deleted, or its mode or owner changed. Not
/// `IN_MODIFY`: a file written in place is reported once, when closed, and
/// a file that stays open for writing never wakes the watcher. That matters
/// because the quota store (redb) may well sit in the directory of the
/// configuration or of a source file: it writes on every commit and never
/// closes, and with `IN_MODIFY` each commit cost a wake-up of the watcher
/// (about a tenth of the daemon's CPU in the shared-usage benchmark).
const WATCH_MASK: inotify::WatchMask = inotify::WatchMask::CLOSE_WRITE
    .union(inotify::WatchMask::MOVED_TO)
    .union(inotify::WatchMask::MOVED_FROM)
    .union(inotify::WatchMask::CREATE)
    .union(inotify::WatchMask::DELETE)
    .union(inotify::WatchMask::ATTRIB);

/// The running file watcher: stops when dropped.
struct FileWatch(tokio::task::JoinHandle<()>);

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watch the directories holding the source files and the configuration
/// (inotify, [`WATCH_MASK`]); changes to those files (including atomic
/// renames over them) send a reload request. `None` when watching is off
/// or unavailable.
fn start_watcher(config: &Config, tx: mpsc::Sender<()>) -> Option<FileWatch> {
    if !config.directory.watch_files {
        return None;
    }
    let mut files: HashSet<PathBuf> = config
        .directory
        .sources
        .all()
        .map(Path::to_path_buf)
        .collect();
    files.insert(config.path.clone());
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let unavailable = |e: std::io::Error| {
        tracing::warn!(error = %e, "cannot watch source files; reload with SIGHUP");
    };
    let inotify = inotify::Inotify::init().map_err(unavailable).ok()?;
    let mut dir_of = HashMap::new();
    for d in dirs {
        match inotify.watches().add(&d, WATCH_MASK) {
            Ok(wd) => {
                dir_of.insert(wd, d);
            }
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch; reload with SIGHUP");
            }
        }
    }
    let mut events = inotify
        .into_event_stream([0u8; 4096])
        .map_err(unavailable)
        .ok()?;
    Some(FileWatch(tokio::spawn(async move {
        use futures_core::Stream;
        while let Some(ev) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut events).poll_next(cx)).await
        {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "watching source files failed; reload with SIGHUP");
                    return;
                }
            };
            // The kernel's queue overflowed: some change may be lost.
            let lost = ev.mask.contains(inotify::EventMask::Q_OVERFLOW);
            let ours = match (dir_of.get(&ev.wd), &ev.name) {
                (Some(d), Some(name)) => files.contains(&d.join(name)),
                _ => false,
            };
            if lost || ours {
                let _ = tx.try_send(());
            }
        }
    })))
}

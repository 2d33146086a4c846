//! `ramdir-load`: ramdir's load and benchmark tool.
//!
//! It exists to answer one question with numbers: how much does ramdir
//! cost compared with the fastest possible socketmap server on the same
//! machine, and how much memory and start-up time does a large directory
//! take. `bench/socketmap.sh` drives it; `docs/benchmarks.md` has results.
//!
//! - `gen-passwd`: a synthetic Dovecot passwd-file (and alias file) of any
//!   size, shaped like a real one.
//! - `ceiling`: a constant-reply socketmap server built from the same parts
//!   as ramdir's (tokio, the project's codec): the baseline.
//! - `socketmap`: the load client: C connections, one request at a time
//!   each (as Postfix), throughput, latency percentiles, reply counts.
//! - `lookup`: ramdir's socketmap service in-process, no I/O: the cost of
//!   the lookup alone, to set against the server's CPU per request.
//! - `wait`: time until a socketmap server answers (start-up time).
//! - `rss`: a process's resident memory (`VmRSS`, `VmHWM`).
//!
//! Everything speaks the Postfix socketmap protocol over Unix sockets only,
//! through `ramdir_postfix::socketmap::codec`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use ramdir_postfix::socketmap::codec::Request;

mod ceiling;
mod client;
mod genpasswd;
mod hist;
mod keys;
mod lookup;
mod procfs;

use keys::{DEFAULT_PATTERN, KeyPattern, KeySet};

/// ramdir's load and benchmark tool (socketmap over Unix sockets).
#[derive(Debug, Parser)]
#[command(name = "ramdir-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic Dovecot passwd-file (and optionally an alias file).
    GenPasswd {
        /// Number of users.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// Number of domains; user i is in domain i % D.
        #[arg(long, default_value_t = 100)]
        domains: u64,
        /// Output passwd-file.
        #[arg(long)]
        out: PathBuf,
        /// Also write an alias map source here (`aliasN@dom userN@dom`).
        #[arg(long)]
        aliases: Option<PathBuf>,
        /// Every n-th user gets an alias (0: none).
        #[arg(long, default_value_t = 10)]
        alias_every: u64,
        /// Every n-th user gets `userdb_quota_rule=*:storage=NM` (0: none).
        #[arg(long, default_value_t = 3)]
        quota_every: u64,
        /// Address pattern: first %d the user number, second the domain number.
        #[arg(long, default_value = DEFAULT_PATTERN)]
        pattern: String,
        /// Seed for the password hashes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the constant-reply socketmap server (the ceiling) until SIGTERM/SIGINT.
    Ceiling {
        /// Unix socket to listen on (an old socket file is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Data of the constant `OK <data>` reply.
        #[arg(long, default_value = "x")]
        reply: String,
    },
    /// Load a socketmap server and report throughput and latency.
    Socketmap {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        /// Concurrent connections (each one request at a time, as Postfix).
        #[arg(long, short = 'c', default_value_t = 1)]
        connections: usize,
        /// Client OS threads, each a current-thread tokio runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Stop after this many measured requests in total.
        #[arg(long)]
        max_requests: Option<u64>,
        /// Seconds after the end to wait for replies still in flight.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
        /// Table (map name) to query.
        #[arg(long, default_value = "mailboxes")]
        map: String,
        /// File of keys, one per line.
        #[arg(long, conflicts_with_all = ["key_pattern", "key_count"])]
        keys: Option<PathBuf>,
        /// Key pattern (as gen-passwd's --pattern).
        #[arg(long, default_value = DEFAULT_PATTERN)]
        key_pattern: String,
        /// Number of keys from the pattern (items 0..N).
        #[arg(long, required_unless_present = "keys")]
        key_count: Option<u64>,
        /// Domains for the pattern's second number (as gen-passwd's --domains).
        #[arg(long, default_value_t = 100)]
        key_domains: u64,
        /// Seed of the key sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also measure this server process's CPU time over the window.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time ramdir's socketmap lookups in-process (no sockets), one thread.
    Lookup {
        /// passwd-file(s) to load (ramdir's loader, default settings).
        #[arg(long, required = true)]
        passwd: Vec<PathBuf>,
        /// Alias map source(s).
        #[arg(long)]
        aliases: Vec<PathBuf>,
        /// Table.
        #[arg(long, default_value = "mailboxes")]
        map: String,
        /// Key pattern (as gen-passwd's --pattern).
        #[arg(long, default_value = DEFAULT_PATTERN)]
        key_pattern: String,
        /// Number of keys from the pattern (items 0..N).
        #[arg(long)]
        key_count: u64,
        /// Domains for the pattern's second number.
        #[arg(long, default_value_t = 100)]
        key_domains: u64,
        /// Lookups to time.
        #[arg(long, default_value_t = 2_000_000)]
        requests: u64,
        /// Seed of the key sequence.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Wait until a socketmap server answers; print the seconds it took.
    Wait {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// Count from this wall-clock time (`date +%s%N`) instead of from now.
        #[arg(long)]
        since_unix_ns: Option<u128>,
        /// Table of the probe request.
        #[arg(long, default_value = "mailboxes")]
        map: String,
        /// Key of the probe request.
        #[arg(long, default_value = "probe@ramdir-load.invalid")]
        key: String,
    },
    /// Print a process's resident memory (VmRSS, VmHWM).
    Rss {
        /// Process id.
        #[arg(long)]
        pid: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{what} {s} is not a duration in seconds"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::GenPasswd {
            users,
            domains,
            out,
            aliases,
            alias_every,
            quota_every,
            pattern,
            seed,
        } => {
            let opts = genpasswd::GenOptions {
                users,
                domains: domains.max(1),
                pattern: KeyPattern::parse(&pattern)?,
                quota_every,
                alias_every,
                seed,
            };
            genpasswd::run(&opts, &out, aliases.as_deref()).map_err(|e| format!("gen-passwd: {e}"))
        }
        Command::Ceiling { socket, reply } => {
            if reply.is_empty() {
                return Err("--reply must not be empty (Postfix rejects an empty OK)".into());
            }
            ceiling::run(&socket, &reply).map_err(|e| format!("ceiling: {e}"))
        }
        Command::Socketmap {
            socket,
            connections,
            threads,
            duration,
            warmup,
            max_requests,
            grace,
            map,
            keys,
            key_pattern,
            key_count,
            key_domains,
            seed,
            server_pid,
            json,
        } => {
            if connections == 0 {
                return Err("--connections must be at least 1".into());
            }
            let opts = client::LoadOptions {
                socket,
                connections,
                threads,
                warmup: secs(warmup, "warmup")?,
                duration: secs(duration, "duration")?,
                max_requests,
                grace: secs(grace, "grace")?,
                seed,
                server_pid,
            };
            let set = match keys {
                Some(f) => {
                    KeySet::from_file(&map, &f).map_err(|e| format!("{}: {e}", f.display()))?
                }
                None => KeySet::from_pattern(
                    &map,
                    &KeyPattern::parse(&key_pattern)?,
                    key_domains,
                    key_count.unwrap_or(0),
                ),
            };
            let report = client::run(&opts, &map, set)?;
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.tally.errors > 0 || report.stalled > 0 {
                return Err(format!(
                    "{} connection(s) failed, {} stalled",
                    report.tally.errors, report.stalled
                ));
            }
            Ok(())
        }
        Command::Lookup {
            passwd,
            aliases,
            map,
            key_pattern,
            key_count,
            key_domains,
            requests,
            seed,
        } => lookup::run(&lookup::LookupOptions {
            passwd,
            aliases,
            map,
            pattern: KeyPattern::parse(&key_pattern)?,
            key_count,
            key_domains,
            requests,
            seed,
        }),
        Command::Wait {
            socket,
            timeout,
            since_unix_ns,
            map,
            key,
        } => {
            let mut req = BytesMut::new();
            Request::new(&map, &key).encode(&mut req);
            let waited = client::wait_ready(&socket, &req, secs(timeout, "timeout")?)?;
            let elapsed = match since_unix_ns {
                Some(t0) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_err(|e| e.to_string())?
                        .as_nanos();
                    Duration::from_nanos(now.saturating_sub(t0) as u64)
                }
                None => waited,
            };
            println!("{:.3}", elapsed.as_secs_f64());
            Ok(())
        }
        Command::Rss { pid, json } => procfs::run(pid, json).map_err(|e| format!("pid {pid}: {e}")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ramdir-load: {e}");
            ExitCode::FAILURE
        }
    }
}

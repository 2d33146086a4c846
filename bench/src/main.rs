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
//! - `dict-ceiling`, `dict`: the same pair for the Dovecot dict protocol
//!   (`bench/dict.sh`), and `quota-fill` to set usage counters through it.
//! - `policy-ceiling`, `policy`: the same pair for Postfix policy
//!   delegation (`bench/policy.sh`).
//! - `auth`: userdb lookups through Dovecot's own auth-userdb socket (the
//!   auth-master protocol LMTP speaks), whatever Dovecot's userdb
//!   (`bench/auth.sh`).
//! - `e2e`: the end-to-end mail benchmark, Postfix → LMTP → Dovecot with
//!   each directory setup (`bench/e2e.sh`).
//! - `soak`: slapd and ramdir under a long mixed load over every listener
//!   while the sources change, every answer checked (`bench/soak.sh`).
//! - `gen-ldif`, `ldap-search`, `watch`: LDAP entries shaped like
//!   `gen-passwd`'s users, equality searches on an LDAP server, and the time
//!   a change takes to show through ramdir (`bench/ldap.sh`).
//!
//! Every protocol is spoken with the project's own codecs
//! (`ramdir_postfix::socketmap::codec`, `ramdir_postfix::policy::codec`,
//! `ramdir_dovecot::codec`; `auth` is Dovecot's protocol and has only a line
//! reader in `auth.rs`) over Unix sockets; only `ldap-search` uses the
//! `ldap3` crate (as ramdir does) and may use loopback TCP.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use ramdir_postfix::socketmap::codec::Request;

mod auth;
mod ceiling;
mod churn;
mod client;
mod dict;
mod e2e;
mod genpasswd;
mod hist;
mod keys;
mod ldapload;
mod lookup;
mod policy;
mod procfs;
mod soak;
mod watch;

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
        /// Passwords `{PLAIN}<address>` (for `auth --plain`) instead of
        /// random `{SSHA}` hashes.
        #[arg(long)]
        plain_passwords: bool,
        /// Shaped like a real passwd-file: `{SHA512-CRYPT}` hashes (as
        /// `doveadm pw -s SHA512-CRYPT` makes them, 106 characters after
        /// the scheme) and `userdb_quota_rule=*:storage=10G` (ramdir's
        /// default limit) on every user; `--quota-every` is then ignored.
        #[arg(long)]
        real: bool,
    },
    /// Run the constant-reply socketmap server (the ceiling) until SIGTERM/SIGINT.
    Ceiling {
        #[command(flatten)]
        serve: ServeArgs,
        /// Data of the constant `OK <data>` reply.
        #[arg(long, default_value = "x")]
        reply: String,
    },
    /// Load a socketmap server and report throughput and latency.
    Socketmap {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
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
    },
    /// Run a constant-reply Dovecot dict server (the dict ceiling) until
    /// SIGTERM/SIGINT: every `L` gets the same `O<value>`.
    DictCeiling {
        #[command(flatten)]
        serve: ServeArgs,
        /// The constant value (default: a userdb answer as ramdir gives it).
        #[arg(long, default_value = dict::DEFAULT_DICT_REPLY)]
        reply: String,
    },
    /// Connection churn on a Dovecot dict server: connect, `H`, one `L`,
    /// close, over and over (Dovecot without `idle_msecs`); prints JSON.
    DictChurn {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        /// Dict name sent in `H`.
        #[arg(long, default_value = "auth")]
        dict: String,
        /// Client threads, one connection at a time each.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 4)]
        duration: u64,
        /// Key pattern.
        #[arg(long)]
        key_pattern: String,
        /// Items of the pattern.
        #[arg(long)]
        key_count: u64,
        /// Domains of the pattern.
        #[arg(long, default_value_t = 100)]
        key_domains: u64,
        /// The server's pid (for its CPU time per connection).
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Load a Dovecot dict server with lookups (`H` once per connection,
    /// then one `L` at a time) and report throughput and latency.
    Dict {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// Dict name sent in the hello.
        #[arg(long, default_value = "auth")]
        dict: String,
        #[command(flatten)]
        keys: DictKeys,
    },
    /// Set quota usage counters of users through a dict socket (`B`, `S`,
    /// `S`, `C` per user), uniform in 0..=--max-bytes.
    QuotaFill {
        /// Unix socket of the dict server.
        #[arg(long)]
        socket: PathBuf,
        /// Quota dict name.
        #[arg(long, default_value = "quota")]
        dict: String,
        /// The users.
        #[command(flatten)]
        keys: PatternKeys,
        /// Largest usage in bytes.
        #[arg(long, default_value_t = 200_000_000)]
        max_bytes: u64,
        /// Concurrent connections (commits on different connections share fsyncs).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seed of the usage values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a constant-reply policy server (the policy ceiling) until
    /// SIGTERM/SIGINT: every request gets `action=DUNNO`.
    PolicyCeiling {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Load a Postfix policy server with RCPT-time requests as Postfix 3.7
    /// sends them and report throughput and latency.
    Policy {
        /// Unix socket of the server.
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// The recipients.
        #[command(flatten)]
        keys: PatternKeys,
        /// Requests per mail transaction (`instance`) on a connection.
        #[arg(long, default_value_t = 1)]
        rcpts_per_mail: u64,
    },
    /// Load Dovecot's auth-userdb socket with userdb lookups (auth-master
    /// protocol: `VERSION` once, then one `USER` at a time, as LMTP) and
    /// report throughput and latency.
    Auth {
        /// Dovecot's auth-userdb (or auth-master) socket.
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
        /// The `service=` of each request.
        #[arg(long, default_value = "lmtp")]
        service: String,
        /// User pattern (as gen-passwd's --pattern).
        #[arg(long, default_value = auth::DEFAULT_AUTH_PATTERN)]
        key_pattern: String,
        /// Users 0..N.
        #[arg(long)]
        key_count: u64,
        /// Domains of the pattern.
        #[arg(long, default_value_t = 100)]
        key_domains: u64,
        /// Log in instead: `--socket` is Dovecot's auth-client socket, and
        /// each request is an `AUTH … PLAIN` with the password
        /// `gen-passwd --plain-passwords` gave the user (its address).
        #[arg(long)]
        plain: bool,
    },
    /// Write LDAP entries (LDIF) for users numbered and addressed like
    /// gen-passwd's: `uid=u<i>,<base>` with mail, mailLocalAddress,
    /// mailQuotaBytes, mailEnabled, userPassword.
    GenLdif {
        /// Number of entries.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// First user number.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Number of domains; user i is in domain i % D.
        #[arg(long, default_value_t = 100)]
        domains: u64,
        /// Address pattern.
        #[arg(long, default_value = DEFAULT_PATTERN)]
        pattern: String,
        /// Parent DN of the entries.
        #[arg(long, default_value = "ou=people,dc=example,dc=org")]
        base: String,
        /// Leave out the `mailLocalAddress` alias.
        #[arg(long)]
        no_aliases: bool,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the password hashes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Load an LDAP server with equality searches (one in flight per
    /// connection) and report throughput and latency.
    LdapSearch {
        /// `ldap://host:port` or `ldapi://<percent-encoded path>`.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        load: LoadArgs,
        /// Bind DN (simple bind; none: anonymous).
        #[arg(long, requires = "bind_password_file")]
        bind_dn: Option<String>,
        /// File holding the bind password (a trailing newline is dropped).
        #[arg(long)]
        bind_password_file: Option<PathBuf>,
        /// Search base (subtree).
        #[arg(long)]
        base: String,
        /// Filter pattern: first %d the item, second its domain.
        #[arg(long, default_value = "(mail=user%07d@domain%d.test)")]
        filter_pattern: String,
        /// Items 0..N.
        #[arg(long)]
        key_count: u64,
        /// Domains of the pattern.
        #[arg(long, default_value_t = 100)]
        key_domains: u64,
        /// Attributes to return (comma-separated).
        #[arg(long, default_value = "mail")]
        attrs: String,
    },
    /// Time how long a change takes to show: poll a key over one
    /// persistent connection while running a command (after `--`); print
    /// JSON with the times from the command's start and from its exit.
    Watch {
        /// Unix socket (socketmap, or dict with --dict).
        #[arg(long)]
        socket: PathBuf,
        /// Speak the dict protocol with this dict name (default: socketmap).
        #[arg(long)]
        dict: Option<String>,
        /// Socketmap map name.
        #[arg(long, default_value = "mailboxes")]
        map: String,
        /// Key to poll (a dict key is the full `shared/…` key).
        #[arg(long)]
        key: String,
        /// Visible when found and the value contains this (default: found).
        #[arg(long, default_value = "")]
        expect: String,
        /// Microseconds between polls.
        #[arg(long, default_value_t = 100)]
        interval_us: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// The command making the change.
        #[arg(last = true, required = true)]
        command: Vec<String>,
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
        #[command(flatten)]
        keys: PatternKeys,
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
    /// End-to-end mail benchmark: Postfix → LMTP → Dovecot with each
    /// directory setup (`bench/e2e.sh`, docs/benchmarks.md).
    E2e {
        /// Setups in order: a (ramdir socketmap + dict), a-mq (a with
        /// Dovecot's maildir quota), b (postfix-ramdir.so
        /// + dict), c (hash: + passwd-file), c-cdb, d (ldap: + Dovecot ldap).
        #[arg(long, value_delimiter = ',', default_value = "a,b,c,d")]
        setups: Vec<String>,
        /// Users in the directory.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Messages per setup (at most --users).
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Parallel SMTP sessions.
        #[arg(long, default_value_t = 10)]
        sessions: u32,
        /// Message body bytes.
        #[arg(long, default_value_t = 2000)]
        size: u32,
        /// Deliver one message to every measured recipient first
        /// (unmeasured), so that the measured run delivers to mailboxes
        /// that exist and hold their quota usage, as on a host in
        /// service, rather than to first deliveries.
        #[arg(long)]
        prefill: bool,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Soak: a real slapd and ramdir (started here, stopped at the end)
    /// under a mixed load over every listener while the alias file and
    /// LDAP entries change; every answer checked (`bench/soak.sh`).
    Soak {
        /// Seconds of load.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Concurrent connections over all listeners.
        #[arg(long, default_value_t = 500)]
        connections: usize,
        /// Sampling window in seconds (RSS, fds, p99 latency).
        #[arg(long, default_value_t = 60)]
        sample_secs: u64,
        /// LDAP users.
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Seed of the request mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Settings every load subcommand shares.
#[derive(Debug, clap::Args)]
struct LoadArgs {
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
    /// Seed of the key sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also measure this server process's CPU time over the window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also measure the CPU time of every process whose command name
    /// (`/proc/PID/comm`) is one of these (comma-separated), e.g. a forking
    /// server's children; counted as the server's CPU.
    #[arg(long)]
    server_comm: Option<String>,
    /// Also measure the CPU time of this process and its direct children
    /// (a forking server's master, e.g. Dovecot's: auth, auth-worker, …).
    #[arg(long)]
    server_children: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(&self, socket: PathBuf) -> Result<client::LoadOptions, String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        Ok(client::LoadOptions {
            socket,
            connections: self.connections,
            threads: self.threads,
            warmup: secs(self.warmup, "warmup")?,
            duration: secs(self.duration, "duration")?,
            max_requests: self.max_requests,
            grace: secs(self.grace, "grace")?,
            seed: self.seed,
            server_pid: self.server_pid,
            server_comm: self
                .server_comm
                .as_deref()
                .map(|c| c.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            server_children: self.server_children,
        })
    }
}

/// Where a constant-reply server (a ceiling) listens, and its model.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Unix socket to listen on (an old socket file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// A blocking thread per connection instead of tokio.
    #[arg(long)]
    blocking: bool,
}

/// Keys (addresses) numbered 0..N by a pattern, as gen-passwd writes
/// them.
#[derive(Debug, clap::Args)]
struct PatternKeys {
    /// Key pattern (as gen-passwd's --pattern): first %d the item, second
    /// its domain.
    #[arg(long, default_value = DEFAULT_PATTERN)]
    key_pattern: String,
    /// Number of keys from the pattern (items 0..N).
    #[arg(long)]
    key_count: u64,
    /// Domains for the pattern's second number (as gen-passwd's --domains).
    #[arg(long, default_value_t = 100)]
    key_domains: u64,
}

/// The keys of the `dict` subcommand.
#[derive(Debug, clap::Args)]
struct DictKeys {
    /// Key pattern: first %d the item, second its domain; the username
    /// sent with a key is what follows its last `/`.
    #[arg(long, default_value = dict::DEFAULT_DICT_PATTERN)]
    key_pattern: String,
    /// Keys 0..N.
    #[arg(long)]
    key_count: u64,
    /// Domains of the pattern.
    #[arg(long, default_value_t = 100)]
    key_domains: u64,
}

/// Run a load and print its report; an error if connections failed.
fn report<T: client::Target>(
    opts: &client::LoadOptions,
    target: T,
    json: bool,
) -> Result<(), String> {
    let report = client::run(opts, target)?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.tally.errors > 0 || report.stalled > 0 {
        return Err(format!(
            "{} connection(s) failed, {} stalled; first error: {}",
            report.tally.errors,
            report.stalled,
            report.tally.first_error.as_deref().unwrap_or("-")
        ));
    }
    Ok(())
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
            plain_passwords,
            real,
        } => {
            let opts = genpasswd::GenOptions {
                users,
                domains: domains.max(1),
                pattern: KeyPattern::parse(&pattern)?,
                quota_every,
                alias_every,
                seed,
                plain_passwords,
                real,
            };
            genpasswd::run(&opts, &out, aliases.as_deref()).map_err(|e| format!("gen-passwd: {e}"))
        }
        Command::Ceiling { serve, reply } => {
            if reply.is_empty() {
                return Err("--reply must not be empty (Postfix rejects an empty OK)".into());
            }
            ceiling::run(&serve.socket, &reply, serve.blocking).map_err(|e| format!("ceiling: {e}"))
        }
        Command::Socketmap {
            socket,
            load,
            map,
            keys,
            key_pattern,
            key_count,
            key_domains,
        } => {
            let opts = load.options(socket)?;
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
            let target = client::SocketmapTarget {
                socket: opts.socket.clone(),
                map,
                keys: set,
            };
            report(&opts, target, load.json)
        }
        Command::DictCeiling { serve, reply } => ceiling::run_answer(
            "dict-ceiling",
            &serve.socket,
            dict::DictAnswer::new(reply),
            serve.blocking,
        )
        .map_err(|e| format!("dict-ceiling: {e}")),
        Command::DictChurn {
            socket,
            dict: name,
            threads,
            duration,
            key_pattern,
            key_count,
            key_domains,
            server_pid,
        } => churn::run(&churn::ChurnOptions {
            socket,
            dict: name,
            threads,
            duration: std::time::Duration::from_secs(duration),
            pattern: KeyPattern::parse(&key_pattern)?,
            count: key_count,
            domains: key_domains,
            server_pid,
        }),
        Command::Dict {
            socket,
            load,
            dict: name,
            keys,
        } => {
            let opts = load.options(socket)?;
            let target = dict::DictTarget::new(
                opts.socket.clone(),
                &name,
                &KeyPattern::parse(&keys.key_pattern)?,
                keys.key_domains,
                keys.key_count,
            );
            report(&opts, target, load.json)
        }
        Command::QuotaFill {
            socket,
            dict: name,
            keys,
            max_bytes,
            connections,
            seed,
        } => dict::fill_quota(&dict::FillOptions {
            socket,
            dict: name,
            pattern: KeyPattern::parse(&keys.key_pattern)?,
            domains: keys.key_domains,
            count: keys.key_count,
            max_bytes,
            connections,
            seed,
        }),
        Command::PolicyCeiling { serve } => ceiling::run_answer(
            "policy-ceiling",
            &serve.socket,
            policy::PolicyAnswer::default(),
            serve.blocking,
        )
        .map_err(|e| format!("policy-ceiling: {e}")),
        Command::Policy {
            socket,
            load,
            keys,
            rcpts_per_mail,
        } => {
            let opts = load.options(socket)?;
            let target = policy::PolicyTarget::new(
                opts.socket.clone(),
                &KeyPattern::parse(&keys.key_pattern)?,
                keys.key_domains,
                keys.key_count,
                rcpts_per_mail,
                load.seed,
            )?;
            report(&opts, target, load.json)
        }
        Command::Auth {
            socket,
            load,
            service,
            key_pattern,
            key_count,
            key_domains,
            plain,
        } => {
            let opts = load.options(socket)?;
            if plain {
                let target = auth::PlainTarget::new(
                    opts.socket.clone(),
                    &KeyPattern::parse(&key_pattern)?,
                    key_domains,
                    key_count,
                    &service,
                );
                return report(&opts, target, load.json);
            }
            let target = auth::AuthTarget::new(
                opts.socket.clone(),
                &KeyPattern::parse(&key_pattern)?,
                key_domains,
                key_count,
                &service,
            );
            report(&opts, target, load.json)
        }
        Command::GenLdif {
            users,
            first,
            domains,
            pattern,
            base,
            no_aliases,
            out,
            seed,
        } => ldapload::gen_ldif(
            &ldapload::LdifOptions {
                users,
                domains: domains.max(1),
                pattern: KeyPattern::parse(&pattern)?,
                base,
                aliases: !no_aliases,
                first,
                seed,
            },
            &out,
        )
        .map_err(|e| format!("gen-ldif: {e}")),
        Command::LdapSearch {
            url,
            load,
            bind_dn,
            bind_password_file,
            base,
            filter_pattern,
            key_count,
            key_domains,
            attrs,
        } => {
            let opts = load.options(PathBuf::from(&url))?;
            let bind = match (bind_dn, bind_password_file) {
                (Some(dn), Some(f)) => {
                    let pw =
                        std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                    Some((dn, pw.trim_end_matches(['\r', '\n']).to_string()))
                }
                _ => None,
            };
            let target = ldapload::LdapTarget {
                url,
                bind,
                base,
                filter: KeyPattern::parse(&filter_pattern)?,
                domains: key_domains,
                count: key_count,
                attrs: attrs.split(',').map(str::to_string).collect(),
            };
            report(&opts, target, load.json)
        }
        Command::Watch {
            socket,
            dict: name,
            map,
            key,
            expect,
            interval_us,
            timeout,
            command,
        } => {
            let t = watch::run(&watch::WatchOptions {
                socket,
                dict: name,
                map,
                key,
                expect,
                interval: Duration::from_micros(interval_us),
                timeout: secs(timeout, "timeout")?,
                command,
            })?;
            println!("{}", t.json());
            Ok(())
        }
        Command::Lookup {
            passwd,
            aliases,
            map,
            keys,
            requests,
            seed,
        } => lookup::run(&lookup::LookupOptions {
            passwd,
            aliases,
            map,
            pattern: KeyPattern::parse(&keys.key_pattern)?,
            key_count: keys.key_count,
            key_domains: keys.key_domains,
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
        Command::E2e {
            setups,
            users,
            messages,
            sessions,
            size,
            prefill,
            json,
        } => e2e::run(&e2e::E2eOptions {
            setups,
            users,
            messages,
            sessions,
            size,
            prefill,
            json,
        }),
        Command::Soak {
            secs,
            connections,
            sample_secs,
            users,
            seed,
            json,
        } => soak::run(&soak::SoakOptions {
            duration: Duration::from_secs(secs),
            connections,
            sample: Duration::from_secs(sample_secs.max(1)),
            users,
            seed,
            json,
        }),
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

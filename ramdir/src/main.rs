//! `ramdir`: the daemon and its command-line tools. Thin: parses arguments,
//! sets up logging and hands over to [`serve`] or [`commands`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod commands;
mod demo;
mod dovecot_map;
mod journal;
mod listener;
#[cfg(test)]
mod man;
mod metrics;
mod postfix_map;
mod privilege;
mod serve;
mod shared;
mod stats;
mod systemd;

// The configuration reader is the library's (shared with the fuzz
// targets); `crate::config` names it for the binary's modules.
use ramdir::config::{self, Config, DEFAULT_CONFIG};

/// In-memory mail directory for stock Postfix and Dovecot.
#[derive(Debug, Parser)]
#[command(name = "ramdir", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// tracing filter such as `ramdir_postfix=debug`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (SIGHUP reloads, SIGTERM stops).
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "demo")]
        config: PathBuf,
        /// Serve the embedded demo directory from a local folder instead.
        #[arg(long)]
        demo: bool,
        /// Folder for the demo files and sockets.
        #[arg(long, default_value = "ramdir-demo", requires = "demo")]
        demo_dir: PathBuf,
        /// Run as root although `[server] user` is not set (ramdir
        /// refuses to otherwise).
        #[arg(long)]
        allow_root: bool,
    },
    /// Look a key up in a table, as `postmap -q` would (exit 0 found,
    /// 1 not found, 75 temporary failure).
    Query {
        /// Configuration to load and answer from (in-process).
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "socket")]
        config: PathBuf,
        /// Ask a running daemon on this socketmap socket instead.
        #[arg(long, short)]
        socket: Option<PathBuf>,
        /// Table: domains, mailboxes, aliases, senders (socketmap);
        /// passdb, userdb (Dovecot auth dict, hash hidden); quota (usage).
        table: String,
        /// The key.
        key: String,
    },
    /// Show how an address resolves and why.
    Explain {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The address.
        address: String,
    },
    /// Show a running daemon's state (needs `[stats]` in the configuration).
    Stats {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Nagios/Icinga/NRPE check of a running daemon, from its `[stats]`
    /// socket (installed as check_ramdir): one status line with
    /// performance data; exit 0 OK, 1 WARNING, 2 CRITICAL (also: ramdir
    /// not running), 3 UNKNOWN (also: timeout, bad arguments, -h, -V).
    /// Ranges as in the monitoring plugins: N (0..N), N: (at least N),
    /// ~:N (at most N), A:B, @A:B (alert inside).
    Check(Box<CheckArgs>),
    /// Validate a configuration and load every source it names.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
}

/// `ramdir check`'s arguments.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Configuration naming the [stats] socket.
    #[arg(long, default_value = DEFAULT_CONFIG, conflicts_with = "socket")]
    config: PathBuf,
    /// The stats socket, instead of reading the configuration.
    #[arg(long, short = 'S')]
    socket: Option<PathBuf>,
    /// Warning range for the LDAP sync lag (seconds since the sync was
    /// lost; 0 while in sync).
    #[arg(long, short = 'w', value_name = "RANGE", value_parser = check::Range::parse)]
    warning: Option<check::Range>,
    /// Critical range for the LDAP sync lag.
    #[arg(long, short = 'c', value_name = "RANGE", value_parser = check::Range::parse)]
    critical: Option<check::Range>,
    /// Warning range for the directory age (seconds since the current
    /// generation was published).
    #[arg(long, value_name = "RANGE", value_parser = check::Range::parse)]
    age_warning: Option<check::Range>,
    /// Critical range for the directory age.
    #[arg(long, value_name = "RANGE", value_parser = check::Range::parse)]
    age_critical: Option<check::Range>,
    /// Warning range for the TEMP answers given since start.
    #[arg(long, value_name = "RANGE", value_parser = check::Range::parse)]
    temp_warning: Option<check::Range>,
    /// Critical range for the TEMP answers given since start.
    #[arg(long, value_name = "RANGE", value_parser = check::Range::parse)]
    temp_critical: Option<check::Range>,
    /// Critical when the directory has fewer users (an empty or
    /// partial load).
    #[arg(long, value_name = "N")]
    min_users: Option<u64>,
    /// Seconds to wait for the daemon; then UNKNOWN.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

fn init_logging(level: Option<&str>, default: &str) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if journal::active() {
        // Under systemd: priorities for journalctl -p, no timestamps.
        fmt.with_ansi(false).event_format(journal::Format).init();
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // A monitoring plugin answers -h, -V and bad usage with
            // UNKNOWN (3); the other commands keep clap's codes.
            let check = std::env::args().nth(1).as_deref() == Some("check");
            return ExitCode::from(if check { 3 } else { e.exit_code() as u8 });
        }
    };
    let quiet = !matches!(cli.command, Command::Serve { .. });
    init_logging(
        cli.log_level.as_deref(),
        if quiet { "warn" } else { "info" },
    );
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ramdir: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<u8, serve::CmdError> {
    match command {
        Command::Serve {
            config,
            demo,
            demo_dir,
            allow_root,
        } => {
            let path = if demo {
                demo::prepare(&demo_dir)?
            } else {
                config
            };
            let config = Config::load(&path)?;
            if demo {
                eprintln!("{}", demo::hints(&demo_dir));
            }
            serve::serve(config, allow_root)?;
            Ok(0)
        }
        Command::Query {
            config,
            socket,
            table,
            key,
        } => {
            let reply = match socket {
                Some(s) => commands::query_socket(&s, &table, &key)?,
                None => commands::query_config(&Config::load(&config)?, &table, &key)?,
            };
            println!("{}", reply.payload());
            Ok(commands::exit_status(&reply))
        }
        Command::Explain { config, address } => {
            let config = Config::load(&config)?;
            let dir = serve::load_directory(&config)?;
            let usage = |login: &str| {
                config.quota.as_ref()?;
                Some(commands::usage(&config, login).map_err(|e| e.to_string()))
            };
            print!("{}", commands::explain(&dir, &address, &usage));
            Ok(0)
        }
        Command::Stats { config } => {
            let config = Config::load(&config)?;
            let Some(l) = &config.stats else {
                return Err(format!("{}: no [stats] section", config.path.display()).into());
            };
            println!("{}", stats::fetch(&l.path)?);
            Ok(0)
        }
        Command::Check(args) => {
            let CheckArgs {
                config,
                socket,
                warning,
                critical,
                age_warning,
                age_critical,
                temp_warning,
                temp_critical,
                min_users,
                timeout,
            } = *args;
            let target = match socket {
                Some(s) => check::Target::Socket(s),
                None => check::Target::Config(config),
            };
            let t = check::Thresholds {
                lag_warning: warning,
                lag_critical: critical,
                age_warning,
                age_critical,
                temp_warning,
                temp_critical,
                min_users,
            };
            let o = check::run(&target, &t, std::time::Duration::from_secs(timeout));
            println!("{}", o.line);
            Ok(o.state as u8)
        }
        Command::CheckConfig { file } => {
            print!("{}", commands::check_config(&Config::load(&file)?)?);
            Ok(0)
        }
    }
}

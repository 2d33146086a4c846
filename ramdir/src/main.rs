//! `ramdir`: the daemon and its command-line tools. Thin: parses arguments,
//! sets up logging and hands over to [`serve`] or [`commands`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod demo;
mod listener;
mod postfix_map;
mod serve;
mod stats;

// The configuration reader is the library's (shared with the fuzz
// targets); `crate::config` names it for the binary's modules.
use ramdir::config::{self, Config, DEFAULT_CONFIG};

/// In-memory mail directory for stock Postfix and Dovecot.
#[derive(Debug, Parser)]
#[command(name = "ramdir", version, about)]
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
    /// Validate a configuration and load every source it names.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
}

fn init_logging(level: Option<&str>, default: &str) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            serve::serve(config)?;
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
        Command::CheckConfig { file } => {
            print!("{}", commands::check_config(&Config::load(&file)?)?);
            Ok(0)
        }
    }
}

//! `check-test-logs`: after the integration suite, fail if any daemon's
//! log (kept in `target/test-logs/` by the harness) holds a secret of the
//! test fixtures (see `ramdir_integration::logs`). Run by `scripts/test`
//! after `cargo test`. Exit 0 clean, 1 a secret found (each printed with
//! its file and line), 2 nothing to check (no logs kept: the suite did not
//! run, or the harness did not keep them).

use std::path::Path;
use std::process::ExitCode;

use ramdir_integration::logs;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(logs::archive_dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let secrets = logs::fixture_secrets(&root);
    let (found, files) = match logs::scan(&dir, &secrets) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("check-test-logs: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    if files == 0 {
        eprintln!("check-test-logs: no logs in {}", dir.display());
        return ExitCode::from(2);
    }
    for f in &found {
        println!("{}:{}: {}", f.file.display(), f.line, f.what);
    }
    if found.is_empty() {
        println!(
            "check-test-logs: {} log files in {}, {} fixture secrets (and every \
             {{SCHEME}} value, every generated password): none logged",
            files,
            dir.display(),
            secrets.len()
        );
        ExitCode::SUCCESS
    } else {
        println!("check-test-logs: {} lines hold secrets", found.len());
        ExitCode::from(1)
    }
}

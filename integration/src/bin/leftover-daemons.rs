//! `leftover-daemons`: list the processes of test stacks whose test
//! process is gone (see `ramdir_integration::leftovers`): daemons the
//! suite left behind. One line each: pid, stack, how it was recognised,
//! command line. Exit 0 none, 1 some found.
//!
//! `--sweep` stops them instead (what the harness does when a test run
//! starts) and exits 0. `--swept` prints what sweeps inside test runs
//! stopped (`swept-daemons.txt` in the test log directory) and exits 1
//! when there is any. `scripts/test-under-load.sh` runs all three.

use std::process::ExitCode;

use ramdir_integration::leftovers;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None => {
            let found = leftovers::leaked();
            for p in &found {
                println!("{p}");
            }
            if found.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("--sweep") => {
            for p in ramdir_integration::sweep_stale_stacks() {
                println!("stopped {p}");
            }
            ExitCode::SUCCESS
        }
        Some("--swept") => {
            let path = leftovers::sweep_record();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            print!("{text}");
            if text.trim().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(other) => {
            eprintln!("leftover-daemons: unknown argument {other:?} (none, --sweep or --swept)");
            ExitCode::from(2)
        }
    }
}

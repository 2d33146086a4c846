//! The soak in the normal test suite: `ramdir-load soak` for a short run
//! (60 s, 500 connections over the socketmap, policy, dict and milter
//! listeners) against a real slapd and ramdir while the alias file is
//! rewritten every 10 s and an LDAP entry changes every second. It fails
//! on any protocol error, wrong or temporary answer, or if ramdir dies.
//! The long run (30 minutes) is `bench/soak.sh`, by hand; its figures are
//! in docs/reliability.md.
//!
//! Needs root, slapd and ldap-utils (scripts/install-test-deps.sh) and the
//! daemon built in the same profile (`cargo build -p ramdir`), as the
//! integration tests do. Nothing is skipped: without them the test fails
//! saying what is missing.

use std::process::Command;

/// Seconds of load: long enough for six alias-file generations and sixty
/// LDAP changes, short enough for the suite.
const SECS: &str = "60";

#[test]
fn soak_short_run_has_no_error_and_no_wrong_answer() {
    let json = tempfile::NamedTempFile::new().expect("temp file");
    let out = Command::new(env!("CARGO_BIN_EXE_ramdir-load"))
        .args([
            "soak",
            "--secs",
            SECS,
            "--connections",
            "500",
            "--sample-secs",
            "10",
        ])
        .arg("--json")
        .arg(json.path())
        .output()
        .expect("run ramdir-load soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The report is complete: every protocol carried load, and the
    // sources changed during the run.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).expect("read report"))
            .expect("report is JSON");
    for p in [
        "socketmap",
        "policy",
        "dict-lookup",
        "dict-iterate",
        "dict-quota",
        "milter",
    ] {
        let r = &report["protocols"][p];
        assert!(
            r["requests"].as_u64().unwrap_or(0) > 0,
            "{p}: no requests: {r}"
        );
        assert_eq!(r["protocol_errors"], 0, "{p}: {r}");
        assert_eq!(r["wrong"], 0, "{p}: {r}");
        assert_eq!(r["temporary"], 0, "{p}: {r}");
    }
    assert!(
        report["file_generations"].as_u64().unwrap_or(0) >= 3,
        "{report}"
    );
    assert!(
        report["ldap_changes"].as_u64().unwrap_or(0) >= 20,
        "{report}"
    );
    assert_eq!(report["alive"], true);
    // The memory figures are there: RSS, the malloc heaps' part of it
    // (smaps) and the heap in use (ramdir's stats, glibc's mallinfo2).
    let last = report["samples"]
        .as_array()
        .and_then(|s| s.last())
        .unwrap_or_else(|| panic!("no samples: {report}"));
    for field in ["rss_kib", "heap_kib", "in_use_kib", "fds"] {
        assert!(last[field].as_u64().unwrap_or(0) > 0, "{field}: {last}");
    }
}

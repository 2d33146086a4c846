//! `ramdir serve` under a service manager: the sd_notify(3) messages it
//! sends to `NOTIFY_SOCKET` (READY once serving, STATUS with the directory's
//! figures, RELOADING/READY around a SIGHUP, STOPPING at SIGTERM, WATCHDOG
//! when `WATCHDOG_USEC` asks). The test plays systemd's part with a
//! datagram socket, as systemd 252 does.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for a step on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

/// Read datagrams until one contains `want`; returns everything read.
fn until(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no {want:?} within {WAIT:?}; got {seen:#?}");
}

#[test]
fn notifies_ready_status_reload_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.passwd");
    std::fs::write(
        &users,
        "alice@example.org:{PLAIN}x:5000:5000::/home/alice::\n\
         bob@example.org:{PLAIN}x:5000:5000::/home/bob::\n",
    )
    .unwrap();
    let config = dir.path().join("ramdir.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\npasswd_files = [{:?}]\nwatch_files = false\n\
             [socketmap]\nlisten = \"unix:{}\"\n",
            users.display(),
            dir.path().join("socketmap").display()
        ),
    )
    .unwrap();
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ramdir"))
        .args(["serve", "--allow-root", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        // Half of 400 ms: a WATCHDOG=1 every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success());
    };
    let mut seen = Vec::new();
    until(&sock, "READY=1", &mut seen);
    let ready = seen.last().unwrap().clone();
    assert!(
        ready.contains("STATUS=2 users, 0 aliases, 1 domains, generation"),
        "{ready}"
    );
    // The socket is bound before READY: Postfix ordered after us finds it.
    assert!(dir.path().join("socketmap").exists());
    until(&sock, "WATCHDOG=1", &mut seen);

    seen.clear();
    kill("-HUP");
    until(&sock, "READY=1", &mut seen);
    let reloading = seen
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"));
    assert!(
        reloading.is_some(),
        "no RELOADING=1 before READY=1: {seen:#?}"
    );

    kill("-TERM");
    until(&sock, "STOPPING=1", &mut seen);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Socket activation: systemd-socket-activate (from the systemd package)
/// plays the `.socket` unit: it owns the socket, starts ramdir on the
/// first connection with `LISTEN_FDS`, and ramdir answers on that socket
/// instead of binding its own, and leaves it in place when it stops (so
/// Postfix finds it during a restart).
#[test]
fn serves_a_socket_passed_by_systemd_and_leaves_it_in_place() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.passwd");
    std::fs::write(
        &users,
        "alice@example.org:{PLAIN}x:5000:5000::/home/alice::\n",
    )
    .unwrap();
    let socket = dir.path().join("socketmap");
    let config = dir.path().join("ramdir.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\npasswd_files = [{:?}]\nwatch_files = false\n\
             [socketmap]\nlisten = \"unix:{}\"\n",
            users.display(),
            socket.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_ramdir"))
        .args(["serve", "--allow-root", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let deadline = Instant::now() + WAIT;
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket from systemd-socket-activate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts ramdir, which answers on it.
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"27:mailboxes alice@example.org,").unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"20:OK alice@example.org,");
    drop(c);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("socket activation"), "{text}");
    let pid = child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    assert!(child.wait().unwrap().success());
    // Not ramdir's to remove.
    assert!(socket.exists(), "the inherited socket was removed");
}

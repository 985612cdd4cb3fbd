//! A postmaster walvault starts itself (recover --start, drills, restore-table,
//! the dump drill's new cluster): spawned with its log, its exit seen at once,
//! its own words read back, stopped.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The server log of a restored cluster started by walvault, in its data directory.
pub const LOG_FILE: &str = "walvault-recover.log";

/// Where a restored cluster's server log is: [`LOG_FILE`] in its data directory.
pub fn log_path(pgdata: &Path) -> PathBuf {
    pgdata.join(LOG_FILE)
}

/// A postmaster walvault started itself: its exit is seen the moment it
/// happens (a thread waits on it, so it is reaped and no zombie answers
/// `kill(pid, 0)`).
pub struct Server {
    pub pid: i32,
    exited: std::sync::Arc<std::sync::Mutex<Option<std::process::ExitStatus>>>,
}

impl Server {
    /// How it ended, once it has.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        *self.exited.lock().expect("exit status lock")
    }
}

/// Starts `postgres -D pgdata args...` in a session of its own (a Ctrl-C at
/// walvault's terminal does not reach it, and it outlives walvault), its
/// stdout and stderr appended to `log`.
pub fn spawn(postgres: &Path, pgdata: &Path, log: &Path, args: &[String]) -> Result<Server> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = std::process::Command::new(postgres);
    cmd.arg("-D")
        .arg(pgdata)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", postgres.display()))?;
    let pid = child.id() as i32;
    let exited = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = exited.clone();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            *slot.lock().expect("exit status lock") = Some(status);
        }
    });
    Ok(Server { pid, exited })
}

/// A running server's lock on `port`'s socket in `dir`: its pid, when alive.
pub fn socket_in_use(dir: &Path, port: u16) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join(format!(".s.PGSQL.{port}.lock"))).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // EPERM: alive, another user's.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

/// The postmaster's pid from postmaster.pid, when it is alive.
pub fn running_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Stops the server in `pgdata`: `sig` first (SIGINT fast, SIGQUIT immediate),
/// SIGKILL if it is still there after `within`. Returns once it is gone.
pub fn stop(pgdata: &Path, sig: i32, within: std::time::Duration) {
    let Some(pid) = running_pid(pgdata) else {
        return;
    };
    unsafe { libc::kill(pid, sig) };
    let t = std::time::Instant::now();
    while unsafe { libc::kill(pid, 0) } == 0 {
        if t.elapsed() > within {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if t.elapsed() > within * 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Why a server stopped, in its own words: its first FATAL or PANIC line,
/// else the last lines of its log.
pub fn words(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if let Some(l) = text
        .lines()
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
    {
        return l.trim().to_string();
    }
    let tail: Vec<&str> = text.lines().rev().take(6).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// The last lines of a server's log, for an error that would otherwise lose
/// them (a scratch cluster's log goes with its directory).
pub fn tail(log: &Path, lines: usize) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    (!last.is_empty()).then(|| last.into_iter().rev().collect::<Vec<_>>().join(" | "))
}

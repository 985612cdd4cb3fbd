//! Running a restored cluster: finding pg_ctl, starting, watching the postmaster.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A PostgreSQL program of the given major version: Debian's versioned
/// directory first, then PATH.
pub fn find_bin(name: &str, major: u32) -> Result<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}"));
    if debian.is_file() {
        return Ok(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} of PostgreSQL {major} not found (looked in /usr/lib/postgresql/{major}/bin and PATH)")
}

/// Starts the server without waiting (recovery may take long; the caller watches).
pub fn start(pg_ctl: &Path, pgdata: &Path, log: &Path, options: &str) -> Result<()> {
    let out = std::process::Command::new(pg_ctl)
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log)
        .args(["-W", "-o", options, "start"])
        .output()
        .with_context(|| format!("cannot run {}", pg_ctl.display()))?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The postmaster's pid from postmaster.pid, when it is alive.
pub fn running_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Quotes one word for the shell: pg_ctl hands `-o` options to `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}

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

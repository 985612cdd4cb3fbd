//! PostgreSQL's client programs (pg_dump, pg_restore, pg_dumpall, psql), found
//! the way the server programs are: a dump must be read by a pg_dump at least as
//! new as the server it dumps, and a pg_restore at least as new as the pg_dump
//! that wrote it. The newest major available is taken.

use super::majors::{NEWEST, OLDEST};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// A client program with the major its `--version` reported.
#[derive(Clone, Debug)]
pub struct Tool {
    pub path: PathBuf,
    pub major: u32,
}

impl Tool {
    pub fn command(&self) -> std::process::Command {
        std::process::Command::new(&self.path)
    }
}

/// `program` of PostgreSQL `min_major` or newer: the configured directories
/// (`postgres.bin_dir_N`, `postgres.bin_dir`), Debian's and the PGDG RPMs'
/// versioned directories, newest major first, then PATH. One line naming what
/// is missing and every place looked at otherwise.
pub fn find(program: &str, min_major: u32, settings: &crate::config::Postgres) -> Result<Tool> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for major in (min_major.max(OLDEST)..=NEWEST).rev() {
        if let Some((_, dir)) = settings.bin_dir_for(major) {
            dirs.push(dir);
        }
        dirs.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        dirs.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut looked = Vec::new();
    let mut best: Option<Tool> = None;
    for dir in dirs {
        let path = dir.join(program);
        if !path.is_file() {
            continue;
        }
        if looked.iter().any(|(p, _): &(PathBuf, String)| *p == path) {
            continue;
        }
        match super::ctl::program_major(&path) {
            Ok(major) if major >= min_major => {
                if best.as_ref().is_none_or(|b| major > b.major) {
                    best = Some(Tool {
                        path: path.clone(),
                        major,
                    });
                }
                looked.push((path, format!("PostgreSQL {major}")));
            }
            Ok(major) => looked.push((path, format!("PostgreSQL {major}, too old"))),
            Err(e) => looked.push((path, format!("{e:#}"))),
        }
    }
    if let Some(t) = best {
        return Ok(t);
    }
    let seen = if looked.is_empty() {
        "none found in the postgres.bin_dir settings, /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin or PATH".to_string()
    } else {
        format!(
            "found only {}",
            looked
                .iter()
                .map(|(p, w)| format!("{} ({w})", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    bail!(
        "{program} of PostgreSQL {min_major} or newer is needed: {seen}; install PostgreSQL {min_major}'s client programs (or newer), or set postgres.bin_dir_N"
    )
}

/// Runs a prepared command to its end; its stderr's last lines make the error.
pub fn run(mut cmd: std::process::Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            last_lines(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last meaningful lines of a program's stderr, on one line.
pub fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no message".into()
    } else {
        tail.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_the_major_needed() {
        let e = find(
            "walvault-no-such-program",
            16,
            &crate::config::Postgres::default(),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("walvault-no-such-program of PostgreSQL 16 or newer is needed"),
            "{msg}"
        );
    }

    #[test]
    fn stderr_tail_is_one_line() {
        assert_eq!(last_lines(b"a\n\nb\nc\nd\n"), "b | c | d");
        assert_eq!(last_lines(b""), "no message");
    }
}

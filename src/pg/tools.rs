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
        match super::server_bin::program_major(&path) {
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

/// A program's stderr on one line: its first error with the detail after it
/// (what a statement's failure says; the lines after are the statement), else
/// its last lines.
pub fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.contains("ERROR") || l.contains("error:"))
    {
        let mut out = vec![lines[i]];
        out.extend(
            lines[i + 1..]
                .iter()
                .take_while(|l| l.starts_with("DETAIL") || l.starts_with("HINT")),
        );
        return out.join(" | ");
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no message".into()
    } else {
        tail.join(" | ")
    }
}

/// Runs `cmd` with its stdout copied into `out` (a dump streamed to the
/// repository); an exit other than 0 is an error with its stderr's last lines,
/// so a failed program never passes for a short, complete output.
pub fn copy_stdout(
    mut cmd: std::process::Command,
    what: &str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {what}: {e}")))?;
    let errs = drain(child.stderr.take().expect("piped"));
    let mut stdout = child.stdout.take().expect("piped");
    let copied = std::io::copy(&mut stdout, out);
    if let Err(e) = copied {
        // The writing side failed (kept as it is: a closed pipe says the reader
        // stopped); the program is stopped with it.
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let status = child.wait()?;
    let err = errs.join().unwrap_or_default();
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{what} failed ({status}): {}",
            last_lines(&err)
        )));
    }
    copied
}

/// A program reading what walvault feeds its stdin (pg_restore, psql), its
/// stdout and stderr collected on threads.
pub struct Fed {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
    what: String,
}

impl Fed {
    pub fn spawn(
        mut cmd: std::process::Command,
        what: &str,
    ) -> Result<(Fed, std::process::ChildStdin)> {
        use std::process::Stdio;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {what}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = drain(child.stdout.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        Ok((
            Fed {
                child,
                stdout,
                stderr,
                what: what.to_string(),
            },
            stdin,
        ))
    }

    /// Kills the program if it still runs (its input must not reach its end:
    /// psql would commit).
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }

    /// Waits for the end (stdin must be closed by then); its stdout, or the
    /// error with its stderr's last lines.
    pub fn finish(mut self) -> Result<(String, String)> {
        let status = self.child.wait()?;
        let out = self.stdout.join().unwrap_or_default();
        let err = self.stderr.join().unwrap_or_default();
        if !status.success() {
            bail!("{} failed ({status}): {}", self.what, last_lines(&err));
        }
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }
}

/// A program's stdin that may close before the end (pg_restore --list reads
/// the table of contents only; a table's restore stops after its data): what
/// it no longer takes is dropped, so the stream is still decoded, and so
/// checked, to its end.
pub struct Tolerant<W> {
    inner: W,
    closed: bool,
}

impl<W: std::io::Write> Tolerant<W> {
    pub fn new(inner: W) -> Tolerant<W> {
        Tolerant {
            inner,
            closed: false,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Tolerant<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            r => r,
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }
}

fn drain<R: std::io::Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        b
    })
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
    fn a_failed_program_is_an_error_not_a_short_output() {
        let mut sh = std::process::Command::new("sh");
        sh.args([
            "-c",
            "echo partial; echo 'pg_dump: error: gone' >&2; exit 1",
        ]);
        let mut out = Vec::new();
        let e = copy_stdout(sh, "pg_dump", &mut out).unwrap_err();
        assert!(
            e.to_string().contains("pg_dump failed") && e.to_string().contains("gone"),
            "{e}"
        );
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", "cat; echo done >&2"]);
        let (fed, mut stdin) = Fed::spawn(sh, "cat").unwrap();
        std::io::Write::write_all(&mut stdin, b"fed").unwrap();
        drop(stdin);
        let (out, err) = fed.finish().unwrap();
        assert_eq!((out.as_str(), err.trim()), ("fed", "done"));
    }

    #[test]
    fn stderr_tail_is_one_line() {
        assert_eq!(last_lines(b"a\n\nb\nc\nd\n"), "b | c | d");
        assert_eq!(last_lines(b""), "no message");
        assert_eq!(
            last_lines(b"psql:x.sql:9: ERROR:  violates foreign key\nDETAIL:  Key (id)=(3)\nCREATE TABLE t (\n);\n"),
            "psql:x.sql:9: ERROR:  violates foreign key | DETAIL:  Key (id)=(3)"
        );
    }
}

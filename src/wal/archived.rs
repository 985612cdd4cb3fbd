//! Durable markers of files archived ahead of PostgreSQL's own call
//! (`pg_wal/walvault_archived/<name>`), and the `.ready` files still to push.
//!
//! A marker is written only after its upload returned, with fsync of file and
//! directory, so it always means "stored". It names the repository and the
//! file itself (device, inode, size, modification and change times):
//! PostgreSQL's later call for the file returns at once, without opening the
//! repository, only when both still match. A marker copied by pg_rewind (a new
//! inode), or left from another repository, is ignored. The directory sits inside pg_wal, which base backups
//! never copy.

use crate::files::write_atomically;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DIR: &str = "walvault_archived";

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Marker {
    repo: String,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Marker {
    fn of(repo: &str, path: &Path) -> Result<Marker> {
        use std::os::unix::fs::MetadataExt;
        let m =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Marker {
            repo: repo.to_string(),
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

pub struct Status {
    /// The directory of the WAL file PostgreSQL handed (pg_wal).
    wal_dir: PathBuf,
}

impl Status {
    /// The status of the pg_wal `path` lies in; `None` when it has no
    /// archive_status directory (a file pushed by hand from elsewhere).
    pub fn beside(path: &Path) -> Option<Status> {
        let wal_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        wal_dir
            .join("archive_status")
            .is_dir()
            .then_some(Status { wal_dir })
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.wal_dir.join(DIR).join(name)
    }

    /// Whether `name` (at `path`) was archived ahead into `repo`: its marker
    /// names this repository and this very file. The marker is consumed either way.
    pub fn take(&self, repo: &str, path: &Path, name: &str) -> Result<bool> {
        let m = self.marker(name);
        let Ok(text) = std::fs::read(&m) else {
            return Ok(false);
        };
        let valid = serde_json::from_slice::<Marker>(&text)
            .is_ok_and(|mk| Marker::of(repo, path).is_ok_and(|now| now == mk));
        if !valid {
            tracing::warn!(
                "{name}: ignoring a marker that does not match this repository and file"
            );
        }
        // PostgreSQL marks the file done once we return 0; a crash before that
        // makes it call again, and the repository then says "identical".
        std::fs::remove_file(&m).with_context(|| format!("removing {}", m.display()))?;
        Ok(valid)
    }

    /// Records that `name` is stored in `repo`, durably.
    pub fn mark(&self, repo: &str, name: &str) -> Result<()> {
        let dir = self.wal_dir.join(DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_vec(&Marker::of(repo, &self.wal_dir.join(name))?)?;
        write_atomically(&self.marker(name), &text)
    }

    /// Up to `n` `.ready` files other than `name`, without a marker yet, in the
    /// order PostgreSQL archives them (history files first, then by name).
    /// Markers whose `.ready` file is gone are removed on the way.
    pub fn ready_after(&self, name: &str, n: usize) -> Vec<(PathBuf, super::names::WalFile)> {
        let status = self.wal_dir.join("archive_status");
        let mut ready: Vec<String> = std::fs::read_dir(&status)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|f| f.strip_suffix(".ready"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(self.wal_dir.join(DIR)) {
            for e in rd.flatten() {
                let f = e.file_name().to_string_lossy().to_string();
                let stale = if f.starts_with('.') {
                    // A temporary file of a push that was killed: old means abandoned.
                    e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 60)
                } else {
                    !status.join(format!("{f}.ready")).exists()
                };
                if stale {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        ready.retain(|r| r != name && !self.marker(r).exists());
        ready.sort_by_key(|r| (!r.ends_with(".history"), r.clone()));
        ready
            .into_iter()
            .filter_map(|r| {
                let kind = super::names::WalFile::parse(&r).ok()?;
                Some((self.wal_dir.join(&r), kind))
            })
            .take(n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_repository_and_the_file() {
        let (d, wal) = crate::testing::temp_path("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        let (repo, other) = ("s3://b/main", "s3://b/other");
        for n in [
            "000000010000000000000003",
            "000000010000000000000002",
            "00000002.history",
        ] {
            std::fs::write(wal.join(n), n).unwrap();
            std::fs::write(wal.join("archive_status").join(format!("{n}.ready")), "").unwrap();
        }
        let own = wal.join("000000010000000000000002");
        assert!(Status::beside(&d.path().join("elsewhere/x")).is_none());
        let st = Status::beside(&own).unwrap();
        let order: Vec<String> = st
            .ready_after("000000010000000000000002", 8)
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(order, ["00000002.history", "000000010000000000000003"]);

        let n3 = "000000010000000000000003";
        let three = wal.join(n3);
        st.mark(repo, n3).unwrap();
        assert_eq!(st.ready_after("000000010000000000000002", 8).len(), 1);
        // Another repository's marker is ignored (and consumed).
        assert!(!st.take(other, &three, n3).unwrap());
        st.mark(repo, n3).unwrap();
        // A file written again (or copied in by pg_rewind): ignored.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&three, "changed").unwrap();
        assert!(!st.take(repo, &three, n3).unwrap());
        st.mark(repo, n3).unwrap();
        assert!(st.take(repo, &three, n3).unwrap());
        assert!(!st.take(repo, &three, n3).unwrap(), "consumed");
        // A marker whose .ready file is gone is cleaned.
        std::fs::write(wal.join("000000010000000000000009"), "9").unwrap();
        st.mark(repo, "000000010000000000000009").unwrap();
        st.ready_after("x", 8);
        assert!(!wal.join(DIR).join("000000010000000000000009").exists());
    }
}

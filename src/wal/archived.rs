//! Durable markers of files archived ahead of PostgreSQL's own call
//! (`pg_wal/walvault_archived/<name>`), and the `.ready` files still to push.
//!
//! A marker is written only after its upload returned, with fsync of file and
//! directory, so it always means "stored". It names the repository and the
//! file's sha256: PostgreSQL's later call for the file returns at once only when
//! both still match (a marker copied by pg_rewind, or left from another
//! repository, is ignored). The directory sits inside pg_wal, which base backups
//! never copy.

use crate::store::Store;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DIR: &str = "walvault_archived";

#[derive(Serialize, Deserialize)]
struct Marker {
    repo: String,
    sha256: String,
    len: u64,
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

    /// Whether `name` (at `path`) was archived ahead: its marker names this
    /// repository and the file's content. The marker is consumed either way.
    pub async fn take(&self, store: &dyn Store, path: &Path, name: &str) -> Result<bool> {
        let m = self.marker(name);
        let Ok(text) = std::fs::read(&m) else {
            return Ok(false);
        };
        let valid = match serde_json::from_slice::<Marker>(&text) {
            Ok(mk) if mk.repo == store.locate("") => {
                let (sha, len) = super::push::sha256_of_file(path).await?;
                hex::encode(sha) == mk.sha256 && len == mk.len
            }
            _ => false,
        };
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

    /// Records that `name` is stored, durably.
    pub fn mark(&self, store: &dyn Store, name: &str, sha256: &[u8; 32], len: u64) -> Result<()> {
        let dir = self.wal_dir.join(DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_vec(&Marker {
            repo: store.locate(""),
            sha256: hex::encode(sha256),
            len,
        })?;
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.marker(name))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
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
    use crate::store::fs::FsStore;

    #[tokio::test]
    async fn markers_mean_stored_and_match_content() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        let repo = FsStore::new(d.path().join("repo"));
        let other = FsStore::new(d.path().join("other"));
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

        let three = wal.join("000000010000000000000003");
        let (sha, len) = super::super::push::sha256_of_file(&three).await.unwrap();
        st.mark(&repo, "000000010000000000000003", &sha, len)
            .unwrap();
        assert_eq!(st.ready_after("000000010000000000000002", 8).len(), 1);
        // Another repository's marker is ignored (and consumed).
        assert!(!st
            .take(&other, &three, "000000010000000000000003")
            .await
            .unwrap());
        st.mark(&repo, "000000010000000000000003", &sha, len)
            .unwrap();
        // Changed content: ignored.
        std::fs::write(&three, "changed").unwrap();
        assert!(!st
            .take(&repo, &three, "000000010000000000000003")
            .await
            .unwrap());
        std::fs::write(&three, "000000010000000000000003").unwrap();
        st.mark(&repo, "000000010000000000000003", &sha, len)
            .unwrap();
        assert!(st
            .take(&repo, &three, "000000010000000000000003")
            .await
            .unwrap());
        assert!(
            !st.take(&repo, &three, "000000010000000000000003")
                .await
                .unwrap(),
            "consumed"
        );
        // A marker whose .ready file is gone is cleaned.
        st.mark(&repo, "000000010000000000000009", &sha, len)
            .unwrap();
        st.ready_after("x", 8);
        assert!(!wal.join(DIR).join("000000010000000000000009").exists());
    }
}

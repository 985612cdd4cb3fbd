//! Resuming a `backup-push` that was killed: each part stored is journaled in
//! the data directory (`walvault_backup_journal.jsonl`, never backed up) with
//! its file records; the next `backup-push` of that data directory, with the
//! same parent, takes over the unfinished backup's id and reuses every stored
//! part whose files still have the size and sha256 recorded (read and hashed
//! again, not compressed, encrypted nor sent again).
//!
//! The journal is local on purpose: the same lock (the data directory) guards
//! it, and it needs no key to read on a host that holds only the recipient.

use super::{FileRecord, Part};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const JOURNAL_FILE: &str = "walvault_backup_journal.jsonl";

fn path(pgdata: &Path) -> PathBuf {
    pgdata.join(JOURNAL_FILE)
}

#[derive(Serialize, Deserialize)]
struct Head {
    id: String,
    parent: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub index: u32,
    pub part: Part,
    pub records: Vec<FileRecord>,
}

/// What an interrupted backup left: its id, parent and the parts it stored.
pub struct Interrupted {
    pub id: String,
    pub parent: Option<String>,
    pub parts: BTreeMap<u32, Stored>,
}

/// The journal of the last backup-push here that did not finish, if any. A
/// torn last line (killed while writing it) is left out.
pub fn interrupted(pgdata: &Path) -> Option<Interrupted> {
    let text = std::fs::read_to_string(path(pgdata)).ok()?;
    let mut lines = text.lines();
    let head: Head = serde_json::from_str(lines.next()?).ok()?;
    let parts = lines
        .filter_map(|l| serde_json::from_str::<Stored>(l).ok())
        .map(|s| (s.index, s))
        .collect();
    Some(Interrupted {
        id: head.id,
        parent: head.parent,
        parts,
    })
}

/// The journal of the backup being taken.
pub struct Journal {
    file: Mutex<std::fs::File>,
}

impl Journal {
    /// A new journal for backup `id`, keeping the parts already stored under it.
    pub fn start(
        pgdata: &Path,
        id: &str,
        parent: Option<&str>,
        kept: &[&Stored],
    ) -> Result<Journal> {
        let p = path(pgdata);
        let mut text = serde_json::to_string(&Head {
            id: id.to_string(),
            parent: parent.map(str::to_string),
        })?;
        text.push('\n');
        for s in kept {
            text.push_str(&serde_json::to_string(s)?);
            text.push('\n');
        }
        let tmp = pgdata.join(format!("{JOURNAL_FILE}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        Ok(Journal {
            file: Mutex::new(file),
        })
    }

    /// Records a part as stored (after its upload returned).
    pub fn record(&self, index: u32, part: &Part, records: &[FileRecord]) -> Result<()> {
        let mut line = serde_json::to_vec(&Stored {
            index,
            part: part.clone(),
            records: records.to_vec(),
        })?;
        line.push(b'\n');
        let mut f = self.file.lock().expect("journal");
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(())
    }
}

/// Whether backup `id` (its start second) began within the last day: an
/// older one is left to retention and a new backup starts afresh.
pub fn recent(id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%SZ")
        .is_ok_and(|t| now - t.and_utc() < chrono::Duration::hours(24))
}

/// The backup is complete: nothing to resume.
pub fn finish(pgdata: &Path) {
    if let Err(e) = crate::store::fs::remove_if_present(&path(pgdata)) {
        tracing::warn!("cannot remove {}: {e:#}", path(pgdata).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recent_backup_is_resumed() {
        let now = "2026-12-02T12:00:00Z".parse().unwrap();
        assert!(recent("20261202T010000Z", now));
        assert!(!recent("20261201T110000Z", now));
        assert!(!recent("not-an-id", now));
    }
}
